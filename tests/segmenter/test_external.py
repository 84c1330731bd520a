"""Issue 16's maps and scores for another model's segmentation, on tiny cases by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.segmenter import external


def test_probability_maps_of_an_outside_model():
  p = jnp.asarray([[[0.0, 0.5], [0.9, 1.0]]])
  maps = external.probability_maps(p)
  np.testing.assert_allclose(maps['msp'], [[[0.0, 0.5], [0.1, 0.0]]], atol=1e-6)
  h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
  np.testing.assert_allclose(maps['entropy'], [[[0.0, np.log(2)], [h, 0.0]]], atol=1e-5)


def test_surrogate_features_on_a_tiny_case():
  """Outside mask: the left column of a 2x2 image (2 px). Surrogate f: p = 1 top-left, 0.5
  bottom-left, 0.75 top-right, 0 bottom-right -> f's mask (p > 0.5) = top-left, top-right.
  dice_with_f = 2 * 1 / (2 + 2) = 0.5; |mask - p| = [[0, 0.75], [0.5, 0]]: mean 0.3125,
  over the outside mask's pixels (0 and 0.5) 0.25."""
  mask = jnp.asarray([[[1, 0], [1, 0]]], jnp.uint8)
  f_probs = jnp.asarray([[[1.0, 0.75], [0.5, 0.0]]])
  np.testing.assert_allclose(external.disagreement(mask, f_probs), [[[0.0, 0.75], [0.5, 0.0]]])
  scores = external.agreement_scores(mask, f_probs)
  assert set(scores) == set(external.AGREEMENT_SCORES) == set(external.QUALITY_SIGN)
  assert float(scores['dice_with_f'][0]) == pytest.approx(0.5)
  assert float(scores['disagreement_mean'][0]) == pytest.approx(0.3125)
  assert float(scores['disagreement_fg_mean'][0]) == pytest.approx(0.25)
  empty = external.agreement_scores(jnp.zeros((1, 2, 2), jnp.uint8), f_probs)
  assert float(empty['disagreement_fg_mean'][0]) == 0.0  # an empty outside mask: no foreground
  assert float(empty['dice_with_f'][0]) == 0.0  # f sees a lesion the outside model missed


def test_judge_builds_what_the_quality_models_see():
  """The same 2x2 case through ``judge``: the channels in the configured order, the agreement
  scores signed higher = better, f's own scores kept under ``surrogate_``, and the outside
  probabilities' map scores under ``own_`` (0 for a mask: a mask states no doubt)."""
  seg = np.asarray([[[0.9, 0.2], [0.7, 0.0]]], np.float32)  # mask (p > 0.5): the left column
  f_probs = np.asarray([[[1.0, 0.75], [0.5, 0.0]]], np.float32)
  f_maps = np.full((1, 2, 2), 0.3, np.float32)
  seen = external.judge(('disagreement', 'msp', 'surrogate'), 1, seg, f_probs, f_maps,
                        {'map_mean': np.asarray([-0.3], np.float32)})
  np.testing.assert_array_equal(seen['masks'], [[[1, 0], [1, 0]]])
  assert seen['maps'].shape == (1, 2, 2, 3)
  np.testing.assert_allclose(seen['maps'][..., 0], [[[0.0, 0.75], [0.5, 0.0]]])
  np.testing.assert_allclose(seen['maps'][..., 1], [[[0.1, 0.2], [0.3, 0.0]]], atol=1e-6)
  np.testing.assert_allclose(seen['maps'][..., 2], f_maps)
  s = seen['scores']
  assert s['dice_with_f'][0] == pytest.approx(0.5)
  assert s['disagreement_mean'][0] == pytest.approx(-0.3125)  # higher = better: negated
  assert s['surrogate_map_mean'][0] == pytest.approx(-0.3)
  assert s['own_map_mean'][0] == pytest.approx(-0.15)  # msp mean (0.1 + 0.2 + 0.3 + 0) / 4
  as_mask = external.judge(('surrogate',), 1, (seg > 0.5).astype(np.float32), f_probs, f_maps, {})
  assert as_mask['scores']['own_map_mean'][0] == 0.0
  assert as_mask['maps'].shape == (1, 2, 2, 1)


def test_a_mask_is_refused_where_g_needs_the_models_own_probabilities(tmp_path):
  from PIL import Image
  from configs import test as test_config
  from segqual_jax.data import segmentations
  config = test_config.get_config()
  config.external.predictions = str(tmp_path)
  config.external.map_channels = 'msp'
  Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / 'm.png')
  np.save(tmp_path / 'p.npy', np.full((8, 8), 0.7, np.float32))
  with pytest.raises(segmentations.SegmentationError, match="m.png: a mask, but external.map_channels='msp'"):
    external.read(config, str(tmp_path / 'm.png'), (8, 8))
  assert external.read(config, str(tmp_path / 'p.npy'), (8, 8)).kind == 'probabilities'
  config.external.map_channels = 'surrogate,disagreement'  # the surrogate's maps need no probabilities
  assert external.read(config, str(tmp_path / 'm.png'), (16, 16)).probs.shape == (16, 16)
