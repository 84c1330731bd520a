"""Quality labels: f's prediction, uncertainty map and true Dice/Jaccard per case.

Which cases g learns from (``config.quality.label_source``):
* ``holdout`` (default) -- the ``quality`` split, which f never trained on, so g
  sees f's failures at their real rate;
* ``train`` -- f's own training split, the paper's choice (f is often too good
  there and g learns that everything passes);
* ``oof`` -- out-of-fold predictions on the training split: k extra copies of
  f, each trained without one fold, predict that fold.
Labels are cached per split in ``<workdir>/quality/labels/`` (written
atomically), so reruns and every g variant reuse one pass of f.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from segqual_jax.data import pipeline
from segqual_jax.evaluation import inference
from segqual_jax.quality import auto_accept
from segqual_jax.training import train_seg

log = logging.getLogger(__name__)

LABEL_KEY_SALT = 3  # fold_in(seed) purpose of the sampling keys for labels


def labels_dir(workdir: str) -> str:
  return os.path.join(workdir, 'quality', 'labels')


def _predict(config, model_workdir: str, split: pipeline.Split) -> inference.SplitPredictions:
  method, params = train_seg.restore_params(config, model_workdir)
  predictor = inference.method_predictor(method, with_scores=True)
  key = jax.random.fold_in(jax.random.key(config.seed), LABEL_KEY_SALT)
  return inference.predict_split(predictor, params, split, config.seg.eval_batch_size, key)


def split_labels(config, workdir: str, split: pipeline.Split) -> inference.SplitPredictions:
  """f's outputs on ``split`` with the image-level scores (cached as ``<split.name>.npz``).

  A cache written before the scores existed is recomputed: the keys are fixed,
  so the predictions and maps come out the same and only the scores are new.
  """
  path = os.path.join(labels_dir(workdir), f'{split.name}.npz')
  if os.path.exists(path):
    cached = inference.SplitPredictions.load(path)
    if cached.scores or not len(cached.dice):
      return cached
    log.info('%s has no image-level scores (written by an older version); recomputing', path)
  log.info('running f (%s) on the %s split (%d cases)', config.method, split.name, len(split))
  labels = _predict(config, workdir, split)
  os.makedirs(labels_dir(workdir), exist_ok=True)
  labels.save(path)
  return labels


def oof_labels(config, workdir: str, train: pipeline.Split) -> inference.SplitPredictions:
  """Out-of-fold predictions on ``train`` from k copies of f (cached as ``train_oof.npz``)."""
  path = os.path.join(labels_dir(workdir), 'train_oof.npz')
  if os.path.exists(path):
    return inference.SplitPredictions.load(path)
  k = config.quality.oof_folds
  folds = np.array_split(np.random.default_rng([config.seed, LABEL_KEY_SALT]).permutation(len(train)), k)
  parts = {}
  for i, fold in enumerate(folds):
    fold_workdir = os.path.join(workdir, 'seg_oof', f'fold{i}')
    keep = np.setdiff1d(np.arange(len(train)), fold)
    log.info('out-of-fold: training f on %d cases for fold %d of %d', len(keep), i + 1, k)
    train_seg.train_and_evaluate(config, fold_workdir,
                                 train_split=pipeline.Split('train', train.images[keep], train.masks[keep]))
    held_out = pipeline.Split(f'fold{i}', train.images[fold], train.masks[fold])
    parts[i] = _predict(config, fold_workdir, held_out)
  order = np.argsort(np.concatenate(folds))  # back to split order
  cat = lambda field: np.concatenate([getattr(parts[i], field) for i in range(k)])[order]
  labels = inference.SplitPredictions(cat('predictions'), cat('uncertainty'), cat('dice'), cat('jaccard'),
                                      {name: np.concatenate([parts[i].scores[name] for i in range(k)])[order]
                                       for name in parts[0].scores})
  os.makedirs(labels_dir(workdir), exist_ok=True)
  labels.save(path)
  return labels


def holdout_parts(config, workdir: str, quality: pipeline.Split):
  """The quality split's ``(g's part, calibration part)``, each as ``(split, labels)``.

  With ``calibration.fraction`` = 0 the calibration part is None. The part is
  a seeded sample (``data.seed``: the same cases for every model seed) and
  the labels of the whole split are computed and cached once.
  """
  labels = split_labels(config, workdir, quality)
  if config.calibration.fraction <= 0:
    return (quality, labels), None
  cal, rest = auto_accept.calibration_indices(len(quality), config.calibration.fraction, config.data.seed)
  return ((quality.take(rest, 'quality_fit'), labels.take(rest)),
          (quality.take(cal, 'calibration'), labels.take(cal)))


def training_labels(config, workdir: str, splits: dict[str, pipeline.Split]):
  """``(split, labels)`` g trains on, per ``config.quality.label_source``.

  With a calibration fraction, the held-out calibration cases are never among them.
  """
  source = config.quality.label_source
  if source == 'holdout':
    return holdout_parts(config, workdir, splits['quality'])[0]
  if source == 'train':
    return splits['train'], split_labels(config, workdir, splits['train'])
  return splits['train'], oof_labels(config, workdir, splits['train'])
