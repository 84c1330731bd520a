"""ISIC 2017 at the paper's full settings, for GPU/TPU runs.

Launch:
  python main.py --config=configs/paper/isic2017.py:lce --workdir=runs/paper/isic2017_lce
  # a TPU pod / several GPU hosts: the same command on every host, plus
  #   --config.runtime.distributed=True --config.runtime.threefry_partitionable=True
Expected runtime: stage 1 ~1-2 h on one modern GPU (1300 images at 224 px, 120
epochs); stage 2 minutes. Not for a CPU: ~2 days of stage 1 on 2 cores (an estimate from the measured 128 px step time, scaled by pixels and width).

DeVries & Taylor 2018: 224x224 inputs, batch 16, Adam 1e-3, f for 120 epochs,
g for 30 epochs, MC-dropout T=20, HCNN T=100. Images are upsampled here from
the shared 128 px copy; point config.data.root at a full-resolution folder
(images/, masks/) or, with config.data.name=isic2017, at the official download
to train on full-resolution sources.
"""

from configs import isic2017


def paper_config(name: str, method: str):
  """The shared-data config of ``name`` with the paper's sizes and schedules."""
  config = isic2017.real_data_config(name, method, image_size=224)
  config.seg.num_epochs = 120  # paper
  config.seg.base_width = 32  # a wider f where compute allows (224 = 14 * 2**4)
  config.seg.eval_batch_size = 64
  config.seg.checkpoint_every_steps = 1000
  config.seg.log_every_steps = 100
  config.quality.num_epochs = 30  # paper
  config.quality.checkpoint_every_steps = 1000
  return config


def get_config(method: str = 'msp'):
  return paper_config('isic2017', method)
