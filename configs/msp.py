"""Maximum softmax probability: one pass, map = 1 - max softmax.

Alias of ``configs/synthetic.py:msp`` (kept so every documented command works):
  python main.py --config=configs/msp.py --workdir=runs/msp
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('msp')
