"""HCNN: logit-noise head, T=100 noise samples in the loss, map = noise scale.

Alias of ``configs/synthetic.py:hcnn`` (kept so every documented command works):
  python main.py --config=configs/hcnn.py --workdir=runs/hcnn
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('hcnn')
