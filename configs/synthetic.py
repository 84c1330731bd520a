"""The embedded synthetic data, one config per method or quality model.

Launch (METHOD: msp | mc_dropout | hcnn | lce | ensemble | tta | hierarchical |
no_uncertainty | qualitynet | cheap_qc | rca | auto_accept):
  python main.py --config=configs/synthetic.py:lce --workdir=runs/lce
configs/<METHOD>.py are thin aliases of these (``configs/lce.py`` is
``synthetic.py:lce``), so every documented command keeps working.

Expected CPU runtime (2 cores), 64 px, 1000 training images: stage 1 ~5-7 min
(the 5-member ensemble ~25 min: five networks' work per step), stage 2 ~1-2 min
per CNN g (seconds for cheap QC, ~1 min of RCA for 500 test images),
evaluation < 1 min.
"""

from configs import default

# name -> (config.method, config.quality.models or None for the default three g's, overrides)
VARIANTS = {
    'msp': ('msp', None, {}),
    'mc_dropout': ('mc_dropout', None, {}),
    'hcnn': ('hcnn', None, {}),
    'lce': ('lce', None, {}),
    'ensemble': ('ensemble', None, {}),
    'tta': ('tta', None, {}),
    'hierarchical': ('hierarchical', None, {}),
    'no_uncertainty': ('msp', 'no_uncertainty', {}),  # also a row of msp's run
    'qualitynet': ('msp', 'qualitynet', {}),  # also a row of msp's run
    # a sampling method: its pairwise Dice etc. become cheap QC's features; g beside it
    'cheap_qc': ('mc_dropout', 'uncertainty,cheap_qc', {}),
    'rca': ('msp', 'rca', {}),
    # LCE's g with 30 % of the quality split held out to calibrate the auto-accept rule
    'auto_accept': ('lce', None, {'calibration.fraction': 0.3}),
}


def get_config(name: str = 'msp'):
  if name not in VARIANTS:
    raise ValueError(f'unknown synthetic config {name!r}; one of {sorted(VARIANTS)}')
  method, models, overrides = VARIANTS[name]
  config = default.get_config()
  config.method = method
  if models is not None:
    config.quality.models = models
  for path, value in overrides.items():
    section, field = path.split('.')
    config[section][field] = value
  return config
