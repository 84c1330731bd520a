"""Test-time augmentation: f trained like MSP's, 8 flips/rot90 at test time.

Launch:
  python main.py --config=configs/tta.py --workdir=runs/tta
Expected CPU runtime (2 cores): stage 1 as MSP (~5 min on the embedded 64 px
data); predictions cost 8 passes. Map: entropy of the mean of the 8
back-transformed softmaxes (uncertainty.mc_map).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'tta'
  return config
