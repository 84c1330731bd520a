"""What users run on a trained workdir: predict (assess, render, write) and the sampling bench."""
