"""Maximum softmax probability: one pass, map = 1 - max softmax.

Launch:
  python main.py --config=configs/msp.py --workdir=runs/msp
Expected CPU runtime (2 cores): ~6 minutes for stage 1 on the embedded 64 px data
(--mode=train_seg); both stages and evaluation (the default --mode=all,
with g for this method and the two baselines): ~10 minutes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'msp'
  return config
