"""Running f with its uncertainty method over a whole split.

Stage 1 validates with it; stage 2 builds its quality labels with it (the
prediction, the uncertainty map, and the true Dice / Jaccard of each case).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from segqual_jax import artifacts, parallel
from segqual_jax.data import pipeline
from segqual_jax.evaluation import segmentation
from segqual_jax.uncertainty import scores


_SCORE_PREFIX = 'score/'


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
  """Per-case outputs of f on one split (numpy, in split order)."""
  predictions: np.ndarray  # (N, H, W) uint8 argmax labels
  uncertainty: np.ndarray  # (N, H, W) float32 maps, higher = more uncertain
  dice: np.ndarray  # (N,) true Dice against the split's masks
  jaccard: np.ndarray  # (N,) true Jaccard
  # image-level scores (uncertainty/scores.py), name -> (N,), higher = better; empty if not computed
  scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def save(self, path: str) -> None:
    """Writes an .npz atomically: a crash never leaves a file that looks complete."""
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'scores'}
    arrays.update({_SCORE_PREFIX + k: v for k, v in self.scores.items()})
    artifacts.write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')

  @classmethod
  def load(cls, path: str) -> 'SplitPredictions':
    with np.load(path) as f:
      scores = {k[len(_SCORE_PREFIX):]: f[k] for k in f.files if k.startswith(_SCORE_PREFIX)}
      return cls(**{field.name: f[field.name] for field in dataclasses.fields(cls)
                    if field.name != 'scores'}, scores=scores)

  def take(self, idx: np.ndarray) -> 'SplitPredictions':
    """The cases ``idx``."""
    return SplitPredictions(self.predictions[idx], self.uncertainty[idx], self.dice[idx],
                            self.jaccard[idx], {k: v[idx] for k, v in self.scores.items()})

  def summary(self, fail_dice: float = 0.8) -> dict[str, float]:
    """Mean scores, the share of failures (Dice < fail_dice) and mean uncertainty."""
    return {
        'num_cases': int(len(self.dice)),
        'mean_dice': float(self.dice.mean()),
        'mean_jaccard': float(self.jaccard.mean()),
        'fail_rate_dice_0.8': float(np.mean(self.dice < fail_dice)),
        'mean_uncertainty': float(self.uncertainty.mean()),
    }


def make_batch_predictor(predict: Callable, score_band_px: int | None = None) -> Callable:
  """Jits ``(params, uint8 images, masks, key) -> (labels, map, dice, jaccard[, scores])``.

  Args:
    predict: ``(params, images, key) -> (probabilities, map[, sample labels])``.
    score_band_px: if given, ``predict`` is a ``predict_samples`` with
      ``keep_labels=True`` and the batch also returns the image-level scores
      (``scores.image_scores`` with this boundary band), computed on device so
      the per-sample label maps never leave it.
  """
  @jax.jit
  def run(params, images, masks, key):
    out = predict(params, pipeline.to_float(images), key)
    probs, umap = out[0], out[1]
    labels = jnp.argmax(probs, -1).astype(jnp.uint8)
    result = (labels, umap, segmentation.dice(labels, masks), segmentation.jaccard(labels, masks))
    if score_band_px is not None:
      result += (scores.image_scores(labels, umap, out[2], score_band_px),)
    return result
  return run


def method_predictor(method, with_scores: bool) -> Callable:
  """The batch predictor of ``method.predict``, with the image-level scores if asked."""
  if not with_scores:
    return make_batch_predictor(method.predict)
  return make_batch_predictor(functools.partial(method.predict_samples, keep_labels=True),
                              method.config.uncertainty.score_band_px)


def predict_split(batch_predictor: Callable, params, split: pipeline.Split,
                  batch_size: int, key: jax.Array) -> SplitPredictions:
  """Runs ``batch_predictor`` over ``split`` in order; batch i uses ``fold_in(key, i)``."""
  outs = []
  params = parallel.replicate(params)
  for i, (images, masks, valid) in enumerate(pipeline.eval_batches(batch_size, split.images, split.masks)):
    images, masks = parallel.shard_batch((images, masks))
    result = parallel.fetch(batch_predictor(params, images, masks, jax.random.fold_in(key, i)))
    outs.append(jax.tree.map(lambda r: np.asarray(r)[:valid], result))
  if not outs:
    size = split.images.shape[1]
    empty = np.zeros((0, size, size))
    return SplitPredictions(empty.astype(np.uint8), empty.astype(np.float32), np.zeros(0), np.zeros(0))
  labels, umaps, dice, jac = (np.concatenate(parts) for parts in zip(*[o[:4] for o in outs]))
  image_scores = {}
  if len(outs[0]) > 4:
    image_scores = {k: np.concatenate([o[4][k] for o in outs]) for k in outs[0][4]}
  return SplitPredictions(labels, umaps.astype(np.float32), dice, jac, image_scores)
