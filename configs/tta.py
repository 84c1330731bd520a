"""Test-time augmentation: f trained like MSP's, 8 flips/rot90 at test time.

Alias of ``configs/synthetic.py:tta`` (kept so every documented command works):
  python main.py --config=configs/tta.py --workdir=runs/tta
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('tta')
