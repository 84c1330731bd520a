"""Calibrated auto-accept: LCE's g, with 30 % of the quality split held out to calibrate the rule.

Launch:
  python main.py --config=configs/auto_accept.py --workdir=runs/auto_accept
  python main.py --config=configs/auto_accept.py --workdir=runs/auto_accept --mode=predict \
      --input=DIR --output=OUT
Expected CPU runtime (2 cores): as configs/lce.py (~10 min). The evaluation
chooses, for alpha 0.05 and 0.1, the threshold on g's predicted quality above
which cases are accepted with at most alpha true failures (Dice < 0.8) among
them, with 90 % confidence, and reports it on the test split; predict applies
the alpha = 0.1 rule.
"""

from configs import lce


def get_config():
  config = lce.get_config()
  config.calibration.fraction = 0.3
  return config
