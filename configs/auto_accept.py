"""Calibrated auto-accept: LCE's g, with 30 % of the quality split held out to calibrate the rule.

Alias of ``configs/synthetic.py:auto_accept`` (kept so every documented command works):
  python main.py --config=configs/auto_accept.py --workdir=runs/auto_accept
"""

from configs import synthetic


def get_config():
  return synthetic.get_config('auto_accept')
