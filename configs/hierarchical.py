"""Hierarchical uncertainty: Gaussian latents in the U-Net's skips, 20 draws at test time.

Alias of ``configs/synthetic.py:hierarchical`` (kept so every documented command works):
  python main.py --config=configs/hierarchical.py --workdir=runs/hierarchical
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('hierarchical')
