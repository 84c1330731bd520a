"""LCE: learned per-pixel confidence with hints and a budget, map = 1 - c.

Alias of ``configs/synthetic.py:lce`` (kept so every documented command works):
  python main.py --config=configs/lce.py --workdir=runs/lce
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('lce')
