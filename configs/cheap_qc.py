"""Cheap QC: a gradient-boosting regressor on MC-dropout's image-level scores and mask shape.

Launch:
  python main.py --config=configs/cheap_qc.py --workdir=runs/cheap_qc
Expected CPU runtime (2 cores): ~7 min for stage 1 on the embedded 64 px data,
seconds for the regressor; g (uncertainty) is trained beside it for comparison
(~1-2 min). Other regressors: --config.cheap_qc.regressor=random_forest|lasso.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.method = 'mc_dropout'  # a sampling method: its pairwise Dice etc. become features
  config.quality.models = 'uncertainty,cheap_qc'
  return config
