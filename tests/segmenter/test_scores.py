"""Image-level scores from sampled label maps and pixel maps (issue 6, item 4)."""

import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.segmenter import scores


def _dice(a, b):
  a, b = a > 0, b > 0
  total = a.sum() + b.sum()
  return 1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total


@pytest.mark.parametrize('k', [1, 2, 5])
def test_pairwise_dice_from_gram_matrix_equals_loop(k):
  rng = np.random.default_rng(k)
  labels = (rng.random((k, 4, 9, 7)) > rng.random((1, 4, 1, 1))).astype(np.uint8)
  labels[:, 3] = 0  # an image whose samples are all empty: they agree perfectly
  if k > 1:
    labels[0, 2] = 0  # one empty sample among non-empty ones
  got = np.asarray(scores.pairwise_dice(jnp.asarray(labels)))
  for n in range(4):
    pairs = [_dice(labels[i, n], labels[j, n]) for i in range(k) for j in range(i + 1, k)]
    ref = np.mean(pairs) if pairs else 1.0
    assert got[n] == pytest.approx(ref, rel=1e-6, abs=1e-7)
  assert got[3] == 1.0


def test_samples_iou_and_area_cv_equal_numpy():
  rng = np.random.default_rng(0)
  labels = (rng.random((6, 3, 10, 10)) > 0.4).astype(np.uint8)
  labels[:, 2] = 0
  fg = labels > 0
  inter, union = fg.all(0).sum((1, 2)), fg.any(0).sum((1, 2))
  iou_ref = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  np.testing.assert_allclose(scores.samples_iou(jnp.asarray(labels)), iou_ref, rtol=1e-6)
  area = fg.sum((2, 3)).astype(float)
  cv_ref = np.where(area.mean(0) > 0, area.std(0) / np.maximum(area.mean(0), 1e-9), 0.0)
  np.testing.assert_allclose(scores.area_cv(jnp.asarray(labels)), cv_ref, rtol=1e-5)


def test_boundary_band_and_map_aggregations_equal_numpy():
  pred = np.zeros((2, 12, 12), np.uint8)
  pred[0, 3:9, 4:10] = 1  # a 6x6 square; image 1 is empty
  band = np.asarray(scores.boundary_band(jnp.asarray(pred), 1))
  ref = np.zeros_like(band)
  ref[0, 2:10, 3:11] = True
  ref[0, 4:8, 5:9] = False  # dilation minus erosion by one pixel
  np.testing.assert_array_equal(band, ref)
  rng = np.random.default_rng(1)
  umap = rng.random((2, 12, 12)).astype(np.float32)
  got = {k: np.asarray(v) for k, v in scores.map_scores(jnp.asarray(umap), jnp.asarray(pred), 1).items()}
  np.testing.assert_allclose(got['map_mean'], umap.mean((1, 2)), rtol=1e-6)
  assert got['map_fg_mean'][0] == pytest.approx(umap[0][pred[0] > 0].mean(), rel=1e-6)
  assert got['map_fg_mean'][1] == pytest.approx(umap[1].mean(), rel=1e-6)  # empty: whole map
  assert got['map_boundary_mean'][0] == pytest.approx(umap[0][ref[0]].mean(), rel=1e-6)
  np.testing.assert_allclose(got['map_p95'], np.percentile(umap.reshape(2, -1), 95, axis=1), rtol=1e-5)


def test_image_scores_are_oriented_higher_is_better():
  """A confident, consistent case must score above an unsure, inconsistent one on every score."""
  good_pred = np.zeros((16, 16), np.uint8)
  good_pred[4:12, 4:12] = 1
  rng = np.random.default_rng(0)
  labels = np.stack([np.stack([good_pred, (rng.random((16, 16)) > 0.5).astype(np.uint8)])
                     for _ in range(4)])  # (K=4, N=2): image 0 agrees, image 1 is noise
  umap = np.stack([np.full((16, 16), 0.05), rng.random((16, 16)) * 0.7]).astype(np.float32)
  got = scores.image_scores(jnp.asarray(labels[0]), jnp.asarray(umap), jnp.asarray(labels), 1)
  assert set(got) == set(scores.SAMPLE_SCORES + scores.MAP_SCORES)
  for name, value in got.items():
    assert float(value[0]) >= float(value[1]), name
  single = scores.image_scores(jnp.asarray(labels[0]), jnp.asarray(umap), None, 1)
  assert set(single) == set(scores.MAP_SCORES)
