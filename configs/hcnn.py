"""HCNN: logit-noise head, T=100 noise samples in the loss, map = noise scale.

Launch:
  python main.py --config=configs/hcnn.py --workdir=runs/hcnn
Expected CPU runtime (2 cores): ~8 minutes for stage 1 on the embedded 64 px data
(--mode=train_seg); both stages and evaluation (the default --mode=all,
with g for this method and the two baselines): ~13 minutes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'hcnn'
  return config
