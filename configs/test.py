"""Tiny CPU config for tests: 32x32 images, a 2-level U-Net, a few steps.

Launch:
  python main.py --config=configs/test.py --workdir=/tmp/segqual_test
Expected CPU runtime (2 cores): ~40 seconds for both stages and evaluation,
most of it compilation.
Pick a method with --config.method=mc_dropout (etc.).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 32
  config.data.num_train = 24
  config.data.num_validation = 8
  config.data.num_quality = 8
  config.data.num_test = 8
  config.seg.base_width = 4
  config.seg.depth = 2
  config.seg.batch_size = 8
  config.seg.eval_batch_size = 8
  config.seg.num_epochs = 2
  config.seg.learning_rate = 0.01  # f learns in 6 steps (val Dice ~0.6, an all-lesion mask 0.28)
  config.seg.log_every_steps = 2
  config.seg.checkpoint_every_steps = 2
  config.uncertainty.mc_samples = 3
  config.uncertainty.hcnn_train_samples = 4
  config.uncertainty.hcnn_test_samples = 4
  config.uncertainty.hier_samples = 3
  config.uncertainty.ensemble_members = 2
  config.sampling.chunk_size = '2'
  config.quality.widths = (4, 8)
  config.quality.dense = 8
  config.quality.batch_size = 4
  config.quality.num_epochs = 2
  config.quality.log_every_steps = 2
  config.quality.checkpoint_every_steps = 2
  config.quality.oof_folds = 2
  config.eval.num_figure_cases = 1
  return config
