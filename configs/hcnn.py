"""HCNN: logit-noise head, T=100 noise samples in the loss, map = noise scale.

Launch:
  python main.py --config=configs/hcnn.py --workdir=runs/hcnn --mode=train_seg
Expected CPU runtime (2 cores): ~8 minutes for stage 1 on the embedded 64 px data.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'hcnn'
  return config
