"""QualityNet baseline: g(x * y_hat) on an MSP-trained f.

Launch:
  python main.py --config=configs/qualitynet.py --workdir=runs/qualitynet
Expected CPU runtime (2 cores): ~8 minutes (stage 1 ~6, g ~1-2, evaluation < 1).
The same row also comes out of configs/msp.py, which trains this g beside
the uncertainty-based one on the same f.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'msp'
  config.quality.models = 'qualitynet'
  return config
