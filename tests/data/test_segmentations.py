"""Reading another model's segmentations: every format, every odd file, native resolution."""

import re

import numpy as np
import pytest
from PIL import Image

from segqual_jax.data import segmentations
from segqual_jax.metrics import overlap


def _png(path, array):
  Image.fromarray(array).save(path)
  return str(path)


def _disc(size=32):
  yy, xx = np.mgrid[:size, :size]
  return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2)


@pytest.mark.parametrize('scale', [255, 1, 7])
def test_binary_png_masks(tmp_path, scale):
  disc = _disc()
  seg = segmentations.read(_png(tmp_path / 'a.png', disc.astype(np.uint8) * scale))
  assert seg.kind == 'mask' and seg.probs.dtype == np.float32
  np.testing.assert_array_equal(seg.mask, disc)


def test_probability_pngs_8_and_16_bit(tmp_path):
  ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
  seg8 = segmentations.read(_png(tmp_path / 'p8.png', np.round(ramp * 255).astype(np.uint8)))
  assert seg8.kind == 'probabilities'
  np.testing.assert_allclose(seg8.probs, ramp, atol=0.5 / 255)
  Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / 'p16.png')
  seg16 = segmentations.read(str(tmp_path / 'p16.png'))
  assert seg16.kind == 'probabilities'
  np.testing.assert_allclose(seg16.probs, ramp, atol=1e-4)


def test_npy_probabilities_and_masks(tmp_path):
  ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
  np.save(tmp_path / 'p.npy', ramp)
  seg = segmentations.read(str(tmp_path / 'p.npy'))
  assert seg.kind == 'probabilities'
  np.testing.assert_allclose(seg.probs, ramp)
  disc = _disc()
  for name, array in (('b.npy', disc), ('u.npy', disc.astype(np.uint8)),
                      ('f.npy', disc.astype(np.float32)), ('c.npy', disc[..., None])):
    np.save(tmp_path / name, array)
    seg = segmentations.read(str(tmp_path / name))
    assert seg.kind == 'mask', name
    np.testing.assert_array_equal(seg.mask, disc)


def test_bad_segmentations_name_the_file_and_the_problem(tmp_path):
  cases = {
      'logits.npy': (np.full((16, 16), 3.0, np.float32), 'outside [0, 1]'),
      'percent.npy': (np.full((16, 16), -0.5, np.float32), 'outside [0, 1]'),
      'nan.npy': (np.full((16, 16), np.nan, np.float32), 'NaN'),
      'rgb.npy': (np.zeros((16, 16, 3), np.float32), 'expected (H, W)'),
      'labels.npy': (np.arange(256).reshape(16, 16), 'integer array'),
  }
  for name, (array, reason) in cases.items():
    np.save(tmp_path / name, array)
    with pytest.raises(segmentations.SegmentationError, match=re.escape(reason)) as e:
      segmentations.read(str(tmp_path / name))
    assert name in str(e.value)
  colour = np.zeros((16, 16, 3), np.uint8)
  colour[..., 0] = 255
  _png(tmp_path / 'colour.png', colour)
  with pytest.raises(segmentations.SegmentationError, match='multi-channel'):
    segmentations.read(str(tmp_path / 'colour.png'))
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  with pytest.raises(segmentations.SegmentationError, match='broken.png'):
    segmentations.read(str(tmp_path / 'broken.png'))


def test_gray_saved_as_rgb_and_empty_predictions_are_valid(tmp_path):
  disc = _disc().astype(np.uint8) * 255
  seg = segmentations.read(_png(tmp_path / 'g.png', np.stack([disc] * 3, -1)))
  assert seg.kind == 'mask' and 'identical channels' in seg.notes[0]
  np.testing.assert_array_equal(seg.mask, disc > 0)
  empty = segmentations.read(_png(tmp_path / 'e.png', np.zeros((16, 16), np.uint8)))
  assert empty.kind == 'mask' and not empty.mask.any() and 'empty prediction' in empty.notes[-1]


def test_size_is_fitted_to_the_image_or_refused(tmp_path):
  disc = _disc(32)
  path = _png(tmp_path / 'half.png', disc.astype(np.uint8) * 255)
  seg = segmentations.read(path, image_size=(64, 64))  # same aspect: resized, said
  assert seg.probs.shape == (64, 64) and 'resized from 32x32' in seg.notes[-1]
  with pytest.raises(segmentations.SegmentationError, match='aspect ratio differs'):
    segmentations.read(path, image_size=(64, 48))


def test_index_and_path_of(tmp_path):
  find = lambda stem: segmentations.path_of(segmentations.index(str(tmp_path)), str(tmp_path), stem)
  np.save(tmp_path / 'a.npy', np.zeros((16, 16), np.float32))
  _png(tmp_path / 'b.PNG', np.zeros((16, 16), np.uint8))
  assert find('a').endswith('a.npy')
  assert find('b').endswith('b.PNG')
  assert find('c') is None
  assert set(segmentations.index(str(tmp_path))) == {'a', 'b'}
  _png(tmp_path / 'a.png', np.zeros((16, 16), np.uint8))
  with pytest.raises(segmentations.SegmentationError, match='more than one'):
    find('a')


def test_native_resolution_dice_by_hand(tmp_path):
  """Truth 20x20, left half lesion (200 px). The prediction, stored at 10x10 with its four left
  columns set, is upsampled by nearest neighbour to the truth's size: columns 0-7 (160 px).
  Dice = 2 * 160 / (200 + 160) = 0.8889; Jaccard = 160 / 200 = 0.8."""
  truth = np.zeros((20, 20), np.uint8)
  truth[:, :10] = 1
  small = np.zeros((10, 10), np.uint8)
  small[:, :4] = 255
  seg = segmentations.read(_png(tmp_path / 's.png', small))
  native = segmentations.to_shape(seg, truth.shape).mask
  assert native.sum() == 160 and native[:, :8].all()
  assert float(overlap.dice(native[None], truth[None])[0]) == pytest.approx(320 / 360, abs=1e-6)
  assert float(overlap.jaccard(native[None], truth[None])[0]) == pytest.approx(0.8, abs=1e-6)
  # A probability map is resized bilinearly, then thresholded at 0.5.
  probs = np.zeros((10, 10), np.float32)
  probs[:, :4] = 0.98
  np.save(tmp_path / 'p.npy', probs + 0.01)
  pseg = segmentations.read(str(tmp_path / 'p.npy'))
  assert pseg.kind == 'probabilities'
  pnative = segmentations.to_shape(pseg, truth.shape)
  assert pnative.probs.shape == (20, 20) and 0.02 < pnative.probs[0, 8] < 0.98
  assert pnative.mask[:, :8].all() and not pnative.mask[:, 9:].any()


def test_otsu_segmenter_finds_a_dark_lesion_and_writes_a_readable_mask(tmp_path):
  """experiments/otsu_segmenter.py (issue 16's classical external segmenter): a dark disc on
  pale, noisy skin is found, and its file is read back as a mask at the image's own size."""
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      'otsu_segmenter', os.path.join(os.path.dirname(__file__), '..', '..', 'experiments',
                                     'otsu_segmenter.py'))
  otsu = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(otsu)
  rng = np.random.default_rng(0)
  disc = _disc(96)[:, 8:88]  # 96 x 80
  rgb = np.where(disc[..., None], [110, 70, 50], [225, 190, 175]).astype(np.float64)
  rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
  assert 60 < otsu.otsu_threshold(rgb[..., 2].astype(np.float64)) < 165
  mask = otsu.segment(rgb)
  dice = float(overlap.dice(mask[None], disc[None])[0])
  assert dice > 0.95
  Image.fromarray(mask * 255).save(tmp_path / 'x.png')
  seg = segmentations.read(str(tmp_path / 'x.png'), image_size=(80, 96))
  assert seg.kind == 'mask' and seg.probs.shape == (96, 80)
