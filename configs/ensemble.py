"""Deep ensemble: M = 5 U-Nets trained at once (one vmapped step), entropy of the mean.

Alias of ``configs/synthetic.py:ensemble`` (kept so every documented command works):
  python main.py --config=configs/ensemble.py --workdir=runs/ensemble
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('ensemble')
