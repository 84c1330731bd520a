"""The embedded generator and its TFDS builder."""

import numpy as np

from segqual_jax.data import builders, loading, synthetic


def test_generator_is_deterministic_per_seed():
  cfg = synthetic.GeneratorConfig(image_size=32)
  a = synthetic.generate_example(3, 'train', 7, cfg)
  b = synthetic.generate_example(3, 'train', 7, cfg)
  c = synthetic.generate_example(4, 'train', 7, cfg)
  d = synthetic.generate_example(3, 'test', 7, cfg)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])
  assert not np.array_equal(a['image'], d['image'])


def test_masks_are_binary_and_images_rgb():
  cfg = synthetic.GeneratorConfig(image_size=48)
  for i in range(20):
    ex = synthetic.generate_example(0, 'train', i, cfg)
    assert ex['image'].shape == (48, 48, 3) and ex['image'].dtype == np.uint8
    assert ex['mask'].shape == (48, 48) and ex['mask'].dtype == np.uint8
    assert set(np.unique(ex['mask'])) <= {0, 1}


def test_difficulties_all_occur():
  """Every kind of hard case shows up at roughly its configured rate."""
  cfg = synthetic.GeneratorConfig(image_size=32)
  exs = [synthetic.generate_example(0, 'quality', i, cfg) for i in range(300)]
  share = lambda k, pred=bool: np.mean([pred(e[k]) for e in exs])
  assert 0.02 < share('lazy') < 0.16
  assert 0.08 < share('low_contrast') < 0.25
  assert 0.05 < share('n_parts', lambda n: n > 1) < 0.22
  assert 0.25 < share('hair') < 0.45
  assert 0.04 < share('small') < 0.22
  fractions = [e['mask'].mean() for e in exs]
  assert min(fractions) < 0.03 and max(fractions) > 0.3  # a real spread of lesion sizes


def test_tfds_builder_round_trip(config):
  """Prepared array_record data, read TF-free, equals the generator output in id order."""
  splits = loading.load_splits(config.data)
  assert set(splits) == set(builders.SPLITS)
  assert len(splits['train']) == config.data.num_train
  gen_cfg = synthetic.GeneratorConfig(image_size=config.data.image_size)
  for i in (0, 5):
    ex = synthetic.generate_example(config.data.seed, 'validation', i, gen_cfg)
    np.testing.assert_array_equal(splits['validation'].images[i], ex['image'])
    np.testing.assert_array_equal(splits['validation'].masks[i], ex['mask'])
  import sys
  assert 'tensorflow' not in sys.modules  # TF-free all the way
