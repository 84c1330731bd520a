"""Data: image reading, the synthetic generator, TFDS builders, the in-memory pipeline."""
