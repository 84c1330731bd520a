"""LCE: learned per-pixel confidence with hints and a budget, map = 1 - c.

Launch:
  python main.py --config=configs/lce.py --workdir=runs/lce
Expected CPU runtime (2 cores): ~6 minutes for stage 1 on the embedded 64 px data
(--mode=train_seg); both stages and evaluation (the default --mode=all,
with g for this method and the two baselines): ~10 minutes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'lce'
  return config
