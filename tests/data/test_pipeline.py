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


def _racing(monkeypatch, prepare_first: bool):
  """``download_and_prepare`` as the loser of two processes sees it: the winner's folder is
  in place (``prepare_first``), then TFDS's rename of its own copy raises."""
  from segqual_jax.data import builders
  original = builders.SyntheticLesions.download_and_prepare

  def lose(self, *args, **kwargs):
    if prepare_first:
      original(self, *args, **kwargs)
    raise FileExistsError(f'Cannot rename incomplete folder. Destination {self.data_dir} already exists.')
  monkeypatch.setattr(builders.SyntheticLesions, 'download_and_prepare', lose)


def test_a_process_that_loses_the_race_to_prepare_the_data_reads_the_winners_files(tmp_path, monkeypatch):
  """Two seeds started together on one machine both prepare the same data set; the second
  rename fails. The loser must read the data, not stop a training run."""
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  _racing(monkeypatch, prepare_first=True)
  splits = loading.load_splits(config.data, names=('test',))
  assert len(splits['test']) == config.data.num_test


def test_a_file_exists_error_with_nothing_prepared_is_raised(tmp_path, monkeypatch):
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = str(tmp_path)
  _racing(monkeypatch, prepare_first=False)
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
  _, zoomed = pipeline._rotate_scale(jnp.zeros((32, 32, 1)), jnp.asarray(square), 0.0, 2.0)
  zoomed = np.asarray(zoomed)
  assert set(np.unique(zoomed)) <= {0, 1} and 230 <= zoomed.sum() <= 290  # about 4 x 64
  assert zoomed[16, 16] == 1 and zoomed[0, 0] == 0


def test_nnunet_augmentation_is_reproducible_keeps_masks_binary_and_varies_cases():
  rng = np.random.default_rng(2)
  n = 64
  images = jnp.asarray(rng.random((n, 16, 16, 3)), jnp.float32)
  masks = jnp.asarray(np.tile((np.arange(16) >= 8)[None, None, :], (n, 16, 1)), jnp.uint8)
  aug_i, aug_m = pipeline.augment_nnunet(jax.random.key(3), images, masks)
  again_i, again_m = pipeline.augment_nnunet(jax.random.key(3), images, masks)
  np.testing.assert_array_equal(np.asarray(aug_i), np.asarray(again_i))
  np.testing.assert_array_equal(np.asarray(aug_m), np.asarray(again_m))
  aug_i, aug_m = np.asarray(aug_i), np.asarray(aug_m)
  assert aug_i.shape == images.shape and aug_m.shape == masks.shape and np.isfinite(aug_i).all()
  assert set(np.unique(aug_m)) <= {0, 1}
  # The dihedral step alone keeps a half-plane mask's area (128 px); rotation by a free
  # angle or zoom changes it on about 1 - 0.8**2 = 36 % of the cases.
  moved = np.mean(aug_m.reshape(n, -1).sum(1) != 128)
  assert 0.15 < moved < 0.6, moved
  # Intensities, on the cases left where the dihedral step put them: each channel is
  # touched with probability 1 - 0.9 * 0.85**2 * 0.7 = 54 %.
  plain_i, plain_m = pipeline.augment(jax.random.split(jax.random.key(3))[0], images, masks)
  still = (aug_m == np.asarray(plain_m)).all(axis=(1, 2))
  assert still.sum() > n // 3
  changed = ~np.isclose(aug_i[still], np.asarray(plain_i)[still], atol=1e-6).all(axis=(1, 2))
  assert 0.35 < changed.mean() < 0.75, changed.mean()
