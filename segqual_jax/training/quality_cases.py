"""The cases quality models learn from: f's outputs with their true Dice/Jaccard.

Which cases (``config.quality.label_source``):
* ``holdout`` (default) -- the ``quality`` split, which f never trained on, so g
  sees f's failures at their real rate;
* ``train`` -- f's own training split, the paper's choice (f is often too good
  there and g learns that everything passes);
* ``oof`` -- out-of-fold outputs on the training split: k extra copies of
  f, each trained without one fold, predict that fold (this module trains
  them, which is why it lives in ``training``).
f's outputs are cached per split (``segmenter.runner.cached_outputs``), so
reruns, every quality model and the evaluation reuse one pass of f. With ``calibration.fraction`` > 0 a seeded share of the quality split
is held out from every quality model to calibrate the auto-accept rule.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from segqual_jax.core import keys, workdir as run_dirs
from segqual_jax.data import pipeline
from segqual_jax.quality import auto_accept
from segqual_jax.segmenter import runner
from segqual_jax.training import train_seg

log = logging.getLogger(__name__)


def oof_outputs(config, workdir: str, train: pipeline.Split) -> runner.SegOutputs:
  """Out-of-fold outputs on ``train`` from k copies of f (cached as ``train_oof.npz``)."""
  path = os.path.join(run_dirs.f_outputs_dir(workdir), 'train_oof.npz')
  if os.path.exists(path):
    return runner.SegOutputs.load(path)
  k = config.quality.oof_folds
  folds = np.array_split(np.random.default_rng([config.seed, keys.OOF_FOLDS]).permutation(len(train)), k)
  parts = []
  for i, fold in enumerate(folds):
    fold_dir = run_dirs.oof_dir(workdir, i)
    keep = np.setdiff1d(np.arange(len(train)), fold)
    log.info('out-of-fold: training f on %d cases for fold %d of %d', len(keep), i + 1, k)
    train_seg.train_and_evaluate(config, workdir, train_split=train.take(keep, 'train'),
                                 seg_dir=os.path.join(fold_dir, 'seg'))
    parts.append(runner.outputs_of(config, workdir, train.take(fold, 'train'), os.path.join(fold_dir, 'seg')))
  order = np.argsort(np.concatenate(folds))  # back to split order
  cat = lambda get: np.concatenate([get(p) for p in parts])[order]
  outputs = runner.SegOutputs(cat(lambda p: p.masks), cat(lambda p: p.maps),
                              {name: cat(lambda p: p.scores[name]) for name in parts[0].scores},
                              cat(lambda p: p.dice), cat(lambda p: p.jaccard))
  os.makedirs(run_dirs.f_outputs_dir(workdir), exist_ok=True)
  outputs.save(path)
  return outputs


def holdout_parts(config, workdir: str, quality: pipeline.Split):
  """The quality split's ``(g's part, calibration part)``, each as ``(split, f's outputs)``.

  With ``calibration.fraction`` = 0 the calibration part is None. The part is
  a seeded sample (``data.seed``: the same cases for every model seed) and
  f's outputs on the whole split are computed and cached once.
  """
  outputs = runner.cached_outputs(config, workdir, quality)
  if config.calibration.fraction <= 0:
    return (quality, outputs), None
  cal, rest = auto_accept.calibration_indices(len(quality), config.calibration.fraction, config.data.seed)
  return ((quality.take(rest, 'quality_fit'), outputs.take(rest)),
          (quality.take(cal, 'calibration'), outputs.take(cal)))


def training_cases(config, workdir: str, splits: dict[str, pipeline.Split]):
  """``(split, f's outputs)`` the quality models train on, per ``config.quality.label_source``.

  With a calibration fraction, the held-out calibration cases are never among them.
  """
  source = config.quality.label_source
  if source == 'holdout':
    return holdout_parts(config, workdir, splits['quality'])[0]
  if source == 'train':
    return splits['train'], runner.cached_outputs(config, workdir, splits['train'])
  return splits['train'], oof_outputs(config, workdir, splits['train'])
