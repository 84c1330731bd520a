"""Kvasir-SEG at the paper's full settings (224 px, 120/30 epochs), for GPU/TPU runs.

Launch:
  python main.py --config=configs/paper/kvasir_seg.py:lce --workdir=runs/paper/kvasir_lce
Expected runtime: ~1 h for stage 1 on one modern GPU.
"""

from configs.paper import isic2017 as paper


def get_config(method: str = 'msp'):
  return paper.paper_config('kvasir_seg', method)
