"""Stage 2: the quality network g, its inputs and its training labels."""
