"""Process-wide plumbing every layer may use: files, devices, checkpoints, keys, errors, run layout."""
