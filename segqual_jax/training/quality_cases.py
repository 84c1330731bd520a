"""The cases quality models learn from: f's outputs with their true Dice/Jaccard.

Which cases (``config.quality.label_source``):
* ``holdout`` (default) -- the ``quality`` split, which f never trained on, so g
  sees f's failures at their real rate;
* ``train`` -- f's own training split, the paper's choice (f is often too good
  there and g learns that everything passes);
* ``oof`` -- out-of-fold outputs on the training split: k extra copies of
  f, each trained without one fold, predict that fold (this module trains
  them, which is why it lives in ``training``); folds hold whole patients.
The cases come from ``segmenter.judged`` (f's segmentations or another
model's, true overlaps at native resolution); f's outputs are cached per split
(``segmenter.runner.cached_outputs``), so reruns, every quality model and the
evaluation reuse one pass of f. With ``calibration.fraction`` > 0 a seeded share of the quality split
is held out from every quality model to calibrate the auto-accept rule.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from segqual_jax.core import keys, workdir as run_dirs
from segqual_jax.core.errors import ConfigError
from segqual_jax.data import corruptions, pipeline, volumes
from segqual_jax.quality import auto_accept, volume
from segqual_jax.segmenter import judged, runner
from segqual_jax.training import train_seg

log = logging.getLogger(__name__)


def oof_folds(ids: list[str], k: int, seed: int) -> list[np.ndarray]:
  """``k`` seeded folds of the indices of ``ids``, whole patients at a time: the slices of a
  volume (``<case>:zNNN``) share a fold, so no copy of f has seen a slice of the patient it
  labels; a 2D case is its own patient (the folds are then a permutation cut in k)."""
  patients = list(dict.fromkeys(volumes.case_of(i) for i in ids))
  if len(patients) < k:
    raise ConfigError(f'quality.oof_folds={k}: the training split holds {len(patients)} patient(s)')
  rows: dict[str, list[int]] = {}
  for i, case_id in enumerate(ids):
    rows.setdefault(volumes.case_of(case_id), []).append(i)
  order = np.random.default_rng([seed, keys.OOF_FOLDS]).permutation(len(patients))
  return [np.asarray([i for p in part for i in rows[patients[p]]], np.int64)
          for part in np.array_split(order, k)]


def oof_outputs(config, workdir: str, train: pipeline.Split) -> runner.SegOutputs:
  """Out-of-fold outputs on ``train`` from k copies of f (cached as ``train_oof.npz``)."""
  path = os.path.join(run_dirs.f_outputs_dir(workdir), 'train_oof.npz')
  if os.path.exists(path):
    cached = runner.SegOutputs.load(path)
    if cached.probs is not None:  # older caches lack p(lesion), which native-size labels need
      return cached
  folds = oof_folds(runner.case_ids(train), config.quality.oof_folds, config.seed)
  k = len(folds)
  parts = []
  for i, fold in enumerate(folds):
    fold_dir = run_dirs.oof_dir(workdir, i)
    keep = np.setdiff1d(np.arange(len(train)), fold)
    log.info('out-of-fold: training f on %d cases for fold %d of %d', len(keep), i + 1, k)
    train_seg.train_and_evaluate(config, workdir, train_split=train.take(keep, 'train'),
                                 seg_dir=os.path.join(fold_dir, 'seg'))
    parts.append(runner.outputs_of(config, workdir, train.take(fold, 'train'), os.path.join(fold_dir, 'seg')))
  order = np.argsort(np.concatenate(folds))  # back to split order
  outputs = runner.SegOutputs.concatenate(parts).take(order)
  os.makedirs(run_dirs.f_outputs_dir(workdir), exist_ok=True)
  outputs.save(path)
  return outputs


def holdout_parts(config, workdir: str, quality: pipeline.Split):
  """The quality split's ``(g's part, calibration part)``, each as ``(split, f's outputs)``.

  With ``calibration.fraction`` = 0 the calibration part is None. The part is
  a seeded sample (``data.seed``: the same cases for every model seed) and
  f's outputs on the whole split are computed and cached once.
  """
  cases = judged.judged(config, workdir, quality)
  quality, outputs = cases.split, cases.outputs
  if config.calibration.fraction <= 0:
    return (quality, outputs), None
  groups = volume.groups_of(runner.case_ids(quality))[1] if config.data.name == 'nnunet' else None
  cal, rest = auto_accept.calibration_indices(len(quality), config.calibration.fraction, config.data.seed,
                                              groups)
  if not len(cal) or not len(rest):
    unit = 'patients' if groups is not None else 'cases'
    raise ConfigError(f'config.calibration.fraction={config.calibration.fraction}: of the quality split\'s '
                      f'{len(np.unique(groups)) if groups is not None else len(quality)} {unit}, '
                      f'{"none is" if not len(cal) else "every one is"} held out for calibration; '
                      'both the quality models and the calibration need some')
  return ((quality.take(rest, 'quality_fit'), outputs.take(rest)),
          (quality.take(cal, 'calibration'), outputs.take(cal)))


def training_cases(config, workdir: str, splits: dict[str, pipeline.Split]):
  """``(split, f's outputs)`` the quality models train on, per ``config.quality.label_source``,
  with their corrupted copies when ``quality.shift_corruptions`` asks for them.

  With a calibration fraction, the held-out calibration cases are never among them.
  """
  source = config.quality.label_source
  if source == 'holdout':
    split, outputs = holdout_parts(config, workdir, splits['quality'])[0]
  elif source == 'train':
    cases = judged.judged(config, workdir, splits['train'])
    split, outputs = cases.split, cases.outputs
  else:
    split = splits['train']
    outputs = judged.with_labels(config, oof_outputs(config, workdir, split), split)
  return with_shifted_copies(config, workdir, split, outputs)


def shifted_copies(config, split: pipeline.Split) -> list[pipeline.Split]:
  """``quality.shift_copies`` corrupted copies of ``split``: in copy c, each case gets a
  corruption and severity drawn from its own stream (ids ``<id>~<corruption><severity>``).

  Drawn rather than every corruption at every severity: the cost (f's pass
  and the quality models' epochs) grows with the copies, not with the menu.
  """
  q = config.quality
  names = [c.strip() for c in q.shift_corruptions.split(',') if c.strip()]
  severities = tuple(q.shift_severities)
  ids = runner.case_ids(split)
  # f's outputs are cached by split name: the digest of the cases and of the menu keeps
  # copies of another selection (another calibration fraction, other corruptions) apart.
  digest = hashlib.sha256(repr((ids, names, severities)).encode()).hexdigest()[:8]
  out = []
  for copy in range(q.shift_copies):
    drawn = [corruptions.drawn_corruption(i, copy, names, severities, config.data.seed) for i in ids]
    images = np.stack([corruptions.corrupt(im, c, s, i, config.data.seed)
                       for im, i, (c, s) in zip(split.images, ids, drawn)]) if ids else split.images
    out.append(pipeline.Split(f'{split.name}-{digest}~copy{copy}', images, split.masks,
                              tuple(corruptions.copy_id(i, c, s) for i, (c, s) in zip(ids, drawn))))
  return out


def with_shifted_copies(config, workdir: str, split: pipeline.Split, outputs: runner.SegOutputs):
  """Shift-aware training: ``split`` and its corrupted copies, each labelled by f's own
  outputs on it (f's Dice on a dark copy is what the quality model must learn to expect).

  The copies' f outputs are cached beside the split's. The calibration cases
  and the applicability score stay clean: the rules and the gate are about
  the cases a deployment sends, not about this augmentation.
  """
  copies = shifted_copies(config, split) if config.quality.shift_corruptions.strip() else []
  if not copies:
    return split, outputs
  truth_ids = runner.case_ids(split)  # a copy's truth is its original's mask
  parts = [outputs] + [judged.with_labels(config, runner.cached_outputs(config, workdir, c), c, truth_ids)
                       for c in copies]
  log.info('shift-aware quality models: %d cases + %d corrupted copies (drawn from %s, severities %s); '
           'mean Dice of f on them %.3f vs %.3f', len(split), sum(len(c) for c in copies),
           config.quality.shift_corruptions, tuple(config.quality.shift_severities),
           np.mean([p.dice.mean() for p in parts[1:]]), outputs.dice.mean())
  images = np.concatenate([split.images] + [c.images for c in copies])
  masks = np.concatenate([split.masks] + [c.masks for c in copies])
  ids = runner.case_ids(split) + sum((c.ids for c in copies), ())
  return pipeline.Split(split.name + '+shifted', images, masks, ids), runner.SegOutputs.concatenate(parts)
