"""Base config: both stages and evaluation on the embedded synthetic data (MSP).

Launch:
  python main.py --config=configs/default.py --workdir=runs/default
Expected CPU runtime (2 cores): stage 1 ~5 min (620 steps of 16 images at
64 px), stage 2 ~1-2 min per quality model, evaluation < 1 min.
The schema itself (every field with its comment) is
``segqual_jax/config/schema.py``; configs/synthetic.py:METHOD picks a method.
"""

from segqual_jax.config.schema import get_config  # noqa: F401
