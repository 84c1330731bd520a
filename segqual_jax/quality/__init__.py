"""Stage 2 models: the quality network g, cheap QC, RCA, auto-accept, and one loader for all."""
