"""The per-pixel error map: its features by hand, and that it learns where a mask is wrong."""

import numpy as np
import pytest

from segqual_jax.quality import error_map


def test_signed_distance_is_negative_inside_and_in_units_of_the_side():
  mask = np.zeros((10, 10), np.uint8)
  mask[3:7, 3:7] = 1
  d = error_map.signed_distance(mask)
  assert d[5, 5] < 0 < d[0, 0]
  assert d[0, 5] == pytest.approx(3 / 10)  # three pixels above the square's top row
  assert np.all(error_map.signed_distance(np.zeros((4, 4))) == 1.0)


def _cases(rng, n=40, size=24):
  """Lesion discs whose 'reviewed' mask misses a random lobe: the missed pixels are the
  errors, lesion-coloured and outside the mask, with a confident p(lesion) there."""
  yy, xx = np.mgrid[:size, :size]
  images, masks, truth, probs = [], [], [], []
  for _ in range(n):
    cy, cx, r = rng.integers(8, 16, 2).tolist() + [int(rng.integers(4, 7))]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    lobe = ((yy - cy - r) ** 2 + (xx - cx) ** 2 <= (r // 2 + 1) ** 2) & ~disc
    true = disc | lobe
    image = np.full((size, size, 3), (200, 160, 140), np.float64)
    image[true] = (90, 50, 40)
    images.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    masks.append(disc.astype(np.uint8))
    truth.append(true.astype(np.uint8))
    probs.append(np.where(disc, 0.9, 0.05) + rng.uniform(0, 0.05, disc.shape))
  probs = np.asarray(probs, np.float32)
  maps = 1.0 - np.maximum(probs, 1.0 - probs)  # MSP: low everywhere, missed lobe included
  return np.stack(images), np.stack(masks), np.stack(truth), probs, maps


def test_the_error_map_finds_a_confidently_missed_lobe_the_uncertainty_map_does_not():
  rng = np.random.default_rng(0)
  images, masks, truth, probs, maps = _cases(rng)
  features = error_map.pixel_features(images, masks, probs, maps)
  assert features.shape == masks.shape + (len(error_map.FEATURES),)
  fitted = error_map.ErrorMap.fit(features, error_map.errors_of(masks, truth), seed=0)
  images, masks, truth, probs, maps = _cases(np.random.default_rng(1))
  errors = error_map.errors_of(masks, truth)
  predicted = fitted.predict(error_map.pixel_features(images, masks, probs, maps))
  assert predicted.shape == masks.shape and 0 <= predicted.min() and predicted.max() <= 1
  learned, raw = error_map.pixel_auroc(predicted, errors), error_map.pixel_auroc(maps, errors)
  assert learned > 0.9 and learned > raw + 0.1, (learned, raw)


def test_saved_and_loaded_it_predicts_the_same(tmp_path):
  rng = np.random.default_rng(2)
  images, masks, truth, probs, maps = _cases(rng, n=10)
  features = error_map.pixel_features(images, masks, probs, maps)
  fitted = error_map.ErrorMap.fit(features, error_map.errors_of(masks, truth))
  path = str(tmp_path / 'error_map.pkl')
  fitted.save(path)
  np.testing.assert_array_equal(error_map.ErrorMap.load(path).predict(features), fitted.predict(features))
  with pytest.raises(ValueError, match='right and wrong'):
    error_map.ErrorMap.fit(features, np.zeros(masks.shape, bool))
  assert error_map.pixel_auroc(np.ones(4), np.zeros(4, bool)) is None
