"""MC-dropout: T=20 dropout passes, map = entropy of the mean softmax.

Alias of ``configs/synthetic.py:mc_dropout`` (kept so every documented command works):
  python main.py --config=configs/mc_dropout.py --workdir=runs/mc_dropout
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('mc_dropout')
