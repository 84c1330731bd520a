"""QualityNet baseline: g(x * y_hat) on an MSP-trained f.

Alias of ``configs/synthetic.py:qualitynet`` (kept so every documented command works):
  python main.py --config=configs/qualitynet.py --workdir=runs/qualitynet
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('qualitynet')
