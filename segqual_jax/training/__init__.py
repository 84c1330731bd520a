"""Training both stages: the shared loop, f's trainer, g's cases, g's trainer and calibration."""
