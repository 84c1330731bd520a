"""Dice and Jaccard on hand-computed cases."""

import numpy as np

from segqual_jax.metrics import overlap as segmentation


def test_hand_computed_cases():
  pred = np.zeros((4, 2, 4), np.uint8)
  target = np.zeros((4, 2, 4), np.uint8)
  pred[0, 0, :2] = 1; target[0, 0, 1:3] = 1  # overlap 1, sizes 2 and 2
  pred[1] = 1; target[1] = 1  # identical
  target[2, 0, 0] = 1  # empty prediction, non-empty target
  # case 3: both empty
  np.testing.assert_allclose(segmentation.dice(pred, target), [0.5, 1.0, 0.0, 1.0])
  np.testing.assert_allclose(segmentation.jaccard(pred, target), [1 / 3, 1.0, 0.0, 1.0])


def test_dice_jaccard_identity():
  rng = np.random.default_rng(0)
  pred, target = rng.random((2, 10, 16, 16)) > 0.6
  d, j = np.asarray(segmentation.dice(pred, target)), np.asarray(segmentation.jaccard(pred, target))
  np.testing.assert_allclose(d, 2 * j / (1 + j), rtol=1e-6)
