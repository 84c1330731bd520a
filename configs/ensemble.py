"""Deep ensemble: M = 5 U-Nets trained at once (one vmapped step), entropy of the mean.

Launch:
  python main.py --config=configs/ensemble.py --workdir=runs/ensemble
Expected CPU runtime (2 cores): stage 1 ~5x MSP's (~25 min on the embedded
64 px data: five networks' work per step); predictions cost 5 passes.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'ensemble'
  return config
