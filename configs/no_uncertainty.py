"""The "no uncertainty" baseline: g(x, y_hat) on an MSP-trained f.

Alias of ``configs/synthetic.py:no_uncertainty`` (kept so every documented command works):
  python main.py --config=configs/no_uncertainty.py --workdir=runs/no_uncertainty
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('no_uncertainty')
