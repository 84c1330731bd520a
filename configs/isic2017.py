"""ISIC 2017 (dermoscopy) at CPU scale, with the shared evaluation protocol.

Launch (METHOD: msp | mc_dropout | hcnn | lce | no_uncertainty | qualitynet | tta | ensemble |
hierarchical):
  python main.py --config=configs/isic2017.py:lce --workdir=runs/isic2017/lce
Table 1, 3 seeds:
  python experiments/table1.py --config_base=configs/isic2017.py --seeds=0,1,2 \
      --workdir=runs/isic2017 --out=experiments/table1_isic2017.md
Expected CPU runtime (2 cores): stage 1 ~8 min per method (1300 images at
64 px, 12 epochs; the 5-member ensemble ~5x that), stage 2 ~1-2 min per g,
evaluation < 1 min.

Data: ../shared/data/isic2017/128 (128 px PNGs of the official train and val
sets), resized here to 64 px. Protocol lists (../shared/data/isic2017/protocol):
f trains on seg_train (1300), g on f's predictions for quality_train (499),
every metric comes from test (350). f's per-epoch validation log uses
quality_train: nothing is selected on it, and test is never looked at before
the end.
"""

import os

from configs import default

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
PROTOCOL = ('train=../protocol/seg_train.txt,validation=../protocol/quality_train.txt,'
            'quality=../protocol/quality_train.txt,test=../protocol/test.txt')
METHOD_CONFIGS = {  # method name -> (config.method, g variants)
    'msp': ('msp', 'uncertainty,no_uncertainty,qualitynet'),
    'mc_dropout': ('mc_dropout', 'uncertainty'),
    'hcnn': ('hcnn', 'uncertainty'),
    'lce': ('lce', 'uncertainty'),
    'no_uncertainty': ('msp', 'no_uncertainty'),
    'qualitynet': ('msp', 'qualitynet'),
    'tta': ('tta', 'uncertainty'),
    'ensemble': ('ensemble', 'uncertainty'),
    'hierarchical': ('hierarchical', 'uncertainty'),
}


def real_data_config(name: str, method: str, image_size: int = 64):
  """The shared-data config for data set ``name`` and ``method`` (see METHOD_CONFIGS)."""
  if method not in METHOD_CONFIGS:
    raise ValueError(f'unknown method {method!r}; one of {sorted(METHOD_CONFIGS)}')
  config = default.get_config()
  config.method, config.quality.models = METHOD_CONFIGS[method]
  config.data.name = 'folder'
  config.data.root = os.path.join(SHARED, name, '128')
  config.data.splits = PROTOCOL
  config.data.image_size = image_size
  config.seg.num_epochs = 12
  return config


def get_config(method: str = 'msp'):
  return real_data_config('isic2017', method)
