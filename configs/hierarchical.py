"""Hierarchical uncertainty: Gaussian latents in the U-Net's skips, 20 draws at test time.

Launch:
  python main.py --config=configs/hierarchical.py --workdir=runs/hierarchical
Expected CPU runtime (2 cores): stage 1 ~6 min on the embedded 64 px data
(MSP's plus the 1x1 latent convolutions); predictions cost 20 decoder passes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'hierarchical'
  return config
