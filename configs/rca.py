"""RCA (reverse classification accuracy) on MSP's f, the paper's weakest baseline.

Launch:
  python main.py --config=configs/rca.py --workdir=runs/rca
Expected CPU runtime (2 cores): ~5 min for stage 1 on the embedded 64 px data;
RCA trains one small reverse U-Net per test image (50 steps, vmapped over
each batch of test images): ~1 min for 500 test images.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.quality.models = 'rca'
  return config
