"""Evaluation on the test split: metrics.json, Table 1 reports, figures."""
