"""The config schema, its validation and which stage depends on which field (no JAX here)."""
