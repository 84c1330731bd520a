"""Kvasir-SEG (colonoscopy polyps) at CPU scale, with the shared evaluation protocol.

Launch (METHOD as in configs/isic2017.py):
  python main.py --config=configs/kvasir_seg.py:lce --workdir=runs/kvasir_seg/lce
Table 1, 1 seed:
  python experiments/table1.py --config_base=configs/kvasir_seg.py --seeds=0 \
      --workdir=runs/kvasir_seg --out=experiments/table1_kvasir_seg.md
Expected CPU runtime (2 cores): stage 1 ~4-5 min per method (560 images at
64 px, 12 epochs x 35 steps = 420 steps), stage 2 ~1 min per g.

Data: ../shared/data/kvasir_seg/128, protocol lists as for ISIC 2017 (f on
seg_train 560, g on quality_train 220, metrics on test 220).
"""

from configs import isic2017


def get_config(method: str = 'msp'):
  return isic2017.real_data_config('kvasir_seg', method)
