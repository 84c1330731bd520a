"""Running f with its uncertainty method over a whole split.

Stage 1 validates with it; stage 2 builds its quality labels with it (the
prediction, the uncertainty map, and the true Dice / Jaccard of each case).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from segqual_jax import artifacts, parallel
from segqual_jax.data import pipeline
from segqual_jax.evaluation import segmentation


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
  """Per-case outputs of f on one split (numpy, in split order)."""
  predictions: np.ndarray  # (N, H, W) uint8 argmax labels
  uncertainty: np.ndarray  # (N, H, W) float32 maps, higher = more uncertain
  dice: np.ndarray  # (N,) true Dice against the split's masks
  jaccard: np.ndarray  # (N,) true Jaccard

  def save(self, path: str) -> None:
    """Writes an .npz atomically: a crash never leaves a file that looks complete."""
    artifacts.write_atomic(path, lambda tmp: np.savez(tmp, **dataclasses.asdict(self)),
                           suffix='.tmp.npz')

  @classmethod
  def load(cls, path: str) -> 'SplitPredictions':
    with np.load(path) as f:
      return cls(**{field.name: f[field.name] for field in dataclasses.fields(cls)})

  def summary(self, fail_dice: float = 0.8) -> dict[str, float]:
    """Mean scores, the share of failures (Dice < fail_dice) and mean uncertainty."""
    return {
        'num_cases': int(len(self.dice)),
        'mean_dice': float(self.dice.mean()),
        'mean_jaccard': float(self.jaccard.mean()),
        'fail_rate_dice_0.8': float(np.mean(self.dice < fail_dice)),
        'mean_uncertainty': float(self.uncertainty.mean()),
    }


def make_batch_predictor(predict: Callable) -> Callable:
  """Jits ``(params, uint8 images, key) -> (labels, map, dice, jaccard)`` for a batch."""
  @jax.jit
  def run(params, images, masks, key):
    probs, umap = predict(params, pipeline.to_float(images), key)
    labels = jnp.argmax(probs, -1).astype(jnp.uint8)
    return labels, umap, segmentation.dice(labels, masks), segmentation.jaccard(labels, masks)
  return run


def predict_split(batch_predictor: Callable, params, split: pipeline.Split,
                  batch_size: int, key: jax.Array) -> SplitPredictions:
  """Runs ``batch_predictor`` over ``split`` in order; batch i uses ``fold_in(key, i)``."""
  outs = []
  params = parallel.replicate(params)
  for i, (images, masks, valid) in enumerate(pipeline.eval_batches(batch_size, split.images, split.masks)):
    images, masks = parallel.shard_batch((images, masks))
    result = parallel.fetch(batch_predictor(params, images, masks, jax.random.fold_in(key, i)))
    outs.append([np.asarray(r)[:valid] for r in result])
  if not outs:
    size = split.images.shape[1]
    empty = np.zeros((0, size, size))
    return SplitPredictions(empty.astype(np.uint8), empty.astype(np.float32), np.zeros(0), np.zeros(0))
  labels, umaps, dice, jac = (np.concatenate(parts) for parts in zip(*outs))
  return SplitPredictions(labels, umaps.astype(np.float32), dice, jac)
