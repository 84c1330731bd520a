"""RCA (reverse classification accuracy) on MSP's f, the paper's weakest baseline.

Alias of ``configs/synthetic.py:rca`` (kept so every documented command works):
  python main.py --config=configs/rca.py --workdir=runs/rca
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('rca')
