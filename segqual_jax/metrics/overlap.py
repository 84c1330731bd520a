"""Per-image overlap scores of binary segmentations.

Convention: an empty prediction against an empty ground truth is a perfect
segmentation (Dice = Jaccard = 1); an empty prediction against a non-empty one
scores 0. Without it, images with no lesion would produce NaN and silently drop
out of every average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _counts(pred: jax.Array, target: jax.Array):
  axes = tuple(range(1, pred.ndim))
  pred, target = pred.astype(bool), target.astype(bool)
  inter = jnp.sum(pred & target, axis=axes)
  return inter, jnp.sum(pred, axis=axes), jnp.sum(target, axis=axes)


def dice(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Dice per image of (N, ...) binary arrays; 1 when both are empty."""
  inter, p, t = _counts(pred, target)
  denom = p + t
  return jnp.where(denom == 0, 1.0, 2.0 * inter / jnp.maximum(denom, 1))


def jaccard(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Jaccard (IoU) per image of (N, ...) binary arrays; 1 when both are empty."""
  inter, p, t = _counts(pred, target)
  union = p + t - inter
  return jnp.where(union == 0, 1.0, inter / jnp.maximum(union, 1))


def dice_from_jaccard(j):
  """Dice of a segmentation whose Jaccard is ``j``: D = 2J / (1 + J) (exact, monotone)."""
  return 2.0 * j / (1.0 + j)


def as_dice(quality, target: str):
  """A predicted quality in ``target`` units (``dice`` | ``jaccard``) as Dice."""
  return quality if target == 'dice' else dice_from_jaccard(quality)


def jaccard_from_dice(d):
  """Jaccard of a segmentation whose Dice is ``d``: J = D / (2 - D)."""
  return d / (2.0 - d)
