"""Per-case overlap (Dice, Jaccard) and the quality-prediction metrics of the paper."""
