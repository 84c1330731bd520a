"""Cheap QC: a gradient-boosting regressor on MC-dropout's image-level scores and mask shape.

Alias of ``configs/synthetic.py:cheap_qc`` (kept so every documented command works):
  python main.py --config=configs/cheap_qc.py --workdir=runs/cheap_qc
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('cheap_qc')
