"""Batch order and augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.data import loading, pipeline


def test_batch_indices_cover_each_epoch_once_and_are_reproducible():
  n, bs = 40, 8
  epoch0 = np.concatenate([pipeline.batch_indices(n, bs, 1, s) for s in range(5)])
  assert sorted(epoch0) == list(range(n))
  epoch1 = np.concatenate([pipeline.batch_indices(n, bs, 1, s) for s in range(5, 10)])
  assert sorted(epoch1) == list(range(n)) and not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(pipeline.batch_indices(n, bs, 1, 7), pipeline.batch_indices(n, bs, 1, 7))
  assert len(pipeline.batch_indices(3, 8, 0, 0)) == 8  # tiny splits fill a batch


def test_foreground_oversampling_fills_the_batch_tail_with_lesion_examples():
  n, bs = 60, 8
  foreground = np.zeros(n, bool)
  foreground[[3, 17, 42]] = True  # 5 % of the examples hold lesion
  batches = [pipeline.batch_indices(n, bs, 1, s, foreground, 0.33) for s in range(30)]
  uniform = [pipeline.batch_indices(n, bs, 1, s) for s in range(30)]
  for got, plain in zip(batches, uniform):
    assert foreground[got[-3:]].all()  # round(0.33 * 8) = 3 places hold lesion
    np.testing.assert_array_equal(got[:-3], plain[:-3])  # the rest stays the uniform order
    keep = foreground[plain[-3:]]
    np.testing.assert_array_equal(got[-3:][keep], plain[-3:][keep])  # lesion examples are not swapped
  assert {int(i) for b in batches for i in b[-3:]} == {3, 17, 42}  # every lesion example is drawn
  np.testing.assert_array_equal(pipeline.batch_indices(n, bs, 1, 7, foreground, 0.33), batches[7])
  np.testing.assert_array_equal(pipeline.batch_indices(n, bs, 1, 7, foreground, 0.0), uniform[7])
  with pytest.raises(ValueError, match='no example holds foreground'):
    pipeline.batch_indices(n, bs, 1, 0, np.zeros(n, bool), 0.5)


def _dihedral(a):
  out = []
  for flip in (False, True):
    b = a[:, ::-1] if flip else a
    out += [np.rot90(b, r, axes=(0, 1)) for r in range(4)]
  return out


def test_augment_applies_one_symmetry_to_image_and_mask_alike():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((16, 8, 8, 3)), jnp.float32)
  masks = jnp.asarray(rng.random((16, 8, 8)) > 0.5, jnp.uint8)
  aug_i, aug_m = pipeline.augment(jax.random.key(0), images, masks)
  seen = set()
  for i in range(16):
    candidates = [k for k, t in enumerate(_dihedral(np.asarray(images[i])))
                  if np.array_equal(t, np.asarray(aug_i[i]))]
    assert len(candidates) == 1
    k = candidates[0]
    np.testing.assert_array_equal(_dihedral(np.asarray(masks[i]))[k], np.asarray(aug_m[i]))
    seen.add(k)
  assert len(seen) > 3  # transforms actually vary across the batch


def test_loading_data_keeps_tfds_chatter_out_of_the_log(tmp_path, capsys, caplog):
  """TFDS's "Downloading and preparing dataset Unknown size" banner (stdout) and its
  custom-configuration warning (every load) are noise for generated or local data."""
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  with caplog.at_level('INFO'):
    splits = loading.load_splits(config.data, names=('test',))
    loading.load_splits(config.data, names=('test',))  # prepared: loads again
  assert len(splits['test']) == config.data.num_test
  out = capsys.readouterr()
  assert 'Downloading and preparing' not in out.out + out.err
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if 'custom data configuration' in m or 'Variant folder' in m]
  assert sum('preparing the synthetic data set once' in m for m in messages) == 1  # our own line


def _racing(monkeypatch, data_config, prepare_first: bool, error=None):
  """``download_and_prepare`` as the loser of two processes sees it: the winner (another
  builder, as in another process) has prepared the folder (``prepare_first``), then TFDS's
  rename of the loser's own copy raises ``error``."""
  from segqual_jax.data import builders
  original = builders.SyntheticLesions.download_and_prepare

  def lose(self, *args, **kwargs):
    if prepare_first:
      original(loading.make_builder(data_config))  # the winner's builder, not the loser's
    raise error or FileExistsError(f'Cannot rename incomplete folder. Destination {self.data_dir} exists.')
  monkeypatch.setattr(builders.SyntheticLesions, 'download_and_prepare', lose)


@pytest.mark.parametrize('errno_name', ['EEXIST', 'ENOTEMPTY'])
def test_a_process_that_loses_the_race_to_prepare_the_data_reads_the_winners_files(tmp_path, monkeypatch,
                                                                                  errno_name):
  """Two seeds started together on one machine both prepare the same data set; the second
  rename fails (FileExistsError, or ENOTEMPTY when the winner's rename lands between TFDS's
  check and its own). The loser must read the data, not stop a training run."""
  import errno
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  error = None if errno_name == 'EEXIST' else OSError(errno.ENOTEMPTY, 'Directory not empty')
  _racing(monkeypatch, config.data, prepare_first=True, error=error)
  splits = loading.load_splits(config.data, names=('test',))
  assert len(splits['test']) == config.data.num_test


def test_a_file_exists_error_with_nothing_prepared_is_raised(tmp_path, monkeypatch):
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  _racing(monkeypatch, config.data, prepare_first=False)
  with pytest.raises(FileExistsError):
    loading.load_splits(config.data, names=('test',))


def test_rotate_scale_turns_image_and_mask_alike_and_zooms_about_the_centre():
  rng = np.random.default_rng(1)
  image = rng.random((16, 16, 2)).astype(np.float32)
  mask = (rng.random((16, 16)) > 0.5).astype(np.uint8)
  turned_i, turned_m = pipeline._rotate_scale(jnp.asarray(image), jnp.asarray(mask), jnp.pi / 2, 1.0)
  np.testing.assert_allclose(np.asarray(turned_i), np.rot90(image, -1, axes=(0, 1)), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(turned_m), np.rot90(mask, -1))
  square = np.zeros((32, 32), np.uint8)
  square[12:20, 12:20] = 1  # 64 pixels about the centre
  _, zoomed = pipeline._rotate_scale(jnp.zeros((32, 32, 1)), jnp.asarray(square), 0.0, 0.5)
  zoomed = np.asarray(zoomed)  # half the field: objects twice as large
  assert set(np.unique(zoomed)) <= {0, 1} and 230 <= zoomed.sum() <= 290  # about 4 x 64
  assert zoomed[16, 16] == 1 and zoomed[0, 0] == 0
  _, shrunk = pipeline._rotate_scale(jnp.zeros((32, 32, 1)), jnp.asarray(square), 0.0, 2.0)
  assert 10 <= np.asarray(shrunk).sum() <= 22  # about 64 / 4


NONE = dict.fromkeys(pipeline.NNUNET_P, 0.0)


def _batch(n=32, seed=2):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(0.2 + 0.6 * rng.random((n, 16, 16, 3)), jnp.float32)
  mask = np.zeros((16, 16), np.uint8)
  mask[1:6, 2:9] = 1  # off the centre: a zoom or a free rotation moves it
  return images, jnp.asarray(np.tile(mask, (n, 1, 1)))


def test_nnunet_augmentation_with_nothing_switched_on_is_the_dihedral_step():
  images, masks = _batch()
  key = jax.random.key(3)
  aug_i, aug_m = pipeline.augment_nnunet(key, images, masks, NONE)
  plain_i, plain_m = pipeline.augment(jax.random.split(key)[0], images, masks)
  np.testing.assert_array_equal(np.asarray(aug_i), np.asarray(plain_i))
  np.testing.assert_array_equal(np.asarray(aug_m), np.asarray(plain_m))


def test_nnunet_augmentation_is_reproducible_and_moves_about_a_third_of_the_cases():
  images, masks = _batch(n=200)
  key = jax.random.key(4)
  aug_i, aug_m = pipeline.augment_nnunet(key, images, masks)
  again_i, again_m = pipeline.augment_nnunet(key, images, masks)
  np.testing.assert_array_equal(np.asarray(aug_i), np.asarray(again_i))
  np.testing.assert_array_equal(np.asarray(aug_m), np.asarray(again_m))
  aug_i, aug_m = np.asarray(aug_i), np.asarray(aug_m)
  assert aug_i.shape == images.shape and np.isfinite(aug_i).all() and set(np.unique(aug_m)) <= {0, 1}
  _, plain_m = pipeline.augment(jax.random.split(key)[0], images, masks)
  moved = np.mean((aug_m != np.asarray(plain_m)).any(axis=(1, 2)))
  assert 0.25 < moved < 0.47, moved  # rotation or zoom: 1 - 0.8 ** 2 = 36 %


@pytest.mark.parametrize('name', ['noise', 'blur', 'brightness', 'contrast', 'low_resolution',
                                  'inverted_gamma', 'gamma'])
def test_each_nnunet_intensity_transform_does_what_it_says(name):
  images, masks = _batch()
  key = jax.random.key(5)
  plain_i, plain_m = pipeline.augment(jax.random.split(key)[0], images, masks)
  aug_i, aug_m = pipeline.augment_nnunet(key, images, masks, {**NONE, name: 1.0})
  np.testing.assert_array_equal(np.asarray(aug_m), np.asarray(plain_m))  # intensities only
  x, y = np.asarray(plain_i, np.float64), np.asarray(aug_i, np.float64)
  changed = ~np.isclose(x, y, atol=1e-6).all(axis=(1, 2))  # (cases, channels)
  if name in ('blur', 'low_resolution'):  # each channel with probability 0.5
    assert 0.3 < changed.mean() < 0.7, changed.mean()
  else:
    assert changed.all()
  ax = (1, 2)
  if name == 'noise':
    ratio = (y - x).std(axis=ax) / x.std(axis=ax)
    assert ratio.max() <= 0.1 + 0.02 and ratio.mean() > 0.02
  elif name == 'blur':  # smoother: less variation between neighbours
    tv = lambda a: np.abs(np.diff(a, axis=1)).sum(axis=ax)
    assert (tv(y)[changed] < 0.8 * tv(x)[changed]).all()
  elif name == 'brightness':
    m = (y / x).reshape(len(x), -1, 3)
    assert np.allclose(m, m[:, :1], atol=1e-5) and (m >= 0.75 - 1e-6).all() and (m <= 1.25 + 1e-6).all()
  elif name == 'contrast':
    assert (y.min(axis=ax) >= x.min(axis=ax) - 1e-6).all() and (y.max(axis=ax) <= x.max(axis=ax) + 1e-6).all()
  elif name == 'low_resolution':
    assert (y.min(axis=ax) >= x.min(axis=ax) - 1e-6).all() and (y.max(axis=ax) <= x.max(axis=ax) + 1e-6).all()
  else:  # gamma, plain or inverted: the channel's mean and std kept
    np.testing.assert_allclose(y.mean(axis=ax), x.mean(axis=ax), atol=1e-4)
    np.testing.assert_allclose(y.std(axis=ax), x.std(axis=ax), atol=1e-4)


def test_low_resolution_at_full_resolution_changes_nothing():
  x = jnp.asarray(np.random.default_rng(6).random((16, 16)), jnp.float32)
  np.testing.assert_allclose(np.asarray(pipeline._low_resolution(x, 1.0)), np.asarray(x), atol=1e-5)
  half = np.asarray(pipeline._low_resolution(x, 0.5))
  assert not np.allclose(half, np.asarray(x)) and len(np.unique(np.round(half[0], 5))) > 2
