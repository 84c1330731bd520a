"""MC-dropout: T=20 dropout passes, map = entropy of the mean softmax.

Launch:
  python main.py --config=configs/mc_dropout.py --workdir=runs/mc_dropout
Expected CPU runtime (2 cores): ~7 minutes for stage 1 on the embedded 64 px data
(--mode=train_seg); both stages and evaluation (the default --mode=all,
with g for this method and the two baselines): ~11 minutes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'mc_dropout'
  return config
