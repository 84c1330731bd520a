"""A run directory's layout and which of its stages are complete.

One place names every path a run writes, so the trainers, the model loaders
and the apps agree without importing each other::

  <workdir>/seg/                     stage 1: f (checkpoints/, log.jsonl, config.json)
  <workdir>/seg/metrics.json         ... present once f is complete
  <workdir>/seg_oof/fold<i>/         out-of-fold copies of f (quality.label_source=oof)
  <workdir>/quality/f_outputs/       f's cached outputs on a split (<split>.npz); <split>_left_out.json: cases without an outside segmentation
  <workdir>/quality/<model>/         stage 2: one quality model (config.json, done.json)
  <workdir>/quality/applicability/   the applicability score (stage 2: score.npz, done.json)
  <workdir>/quality/calibration.json the calibrated auto-accept rules (stage 2)
  <workdir>/metrics.json             evaluation, present once it is complete
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from segqual_jax.core import artifacts, errors

log = logging.getLogger(__name__)

DONE = 'done.json'  # a quality model's completion file


def seg_dir(workdir: str) -> str:
  return os.path.join(workdir, 'seg')


def seg_done(workdir: str) -> str:
  """Stage 1's completion file: only a complete f counts (a checkpoint may be half-trained)."""
  return os.path.join(seg_dir(workdir), 'metrics.json')


def oof_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, 'seg_oof', f'fold{fold}')


def f_outputs_dir(workdir: str) -> str:
  return os.path.join(workdir, 'quality', 'f_outputs')


def quality_dir(workdir: str, model: str) -> str:
  return os.path.join(workdir, 'quality', model)


def quality_done(workdir: str, model: str) -> str:
  return os.path.join(quality_dir(workdir, model), DONE)


def applicability_dir(workdir: str) -> str:
  return os.path.join(workdir, 'quality', 'applicability')


def error_map_file(workdir: str) -> str:
  """The fitted per-pixel error map (``quality/error_map.py``)."""
  return os.path.join(workdir, 'quality', 'error_map', 'model.pkl')


def calibration_file(workdir: str) -> str:
  return os.path.join(workdir, 'quality', 'calibration.json')


def metrics_file(workdir: str) -> str:
  return os.path.join(workdir, 'metrics.json')


def require_seg(workdir: str) -> None:
  """Raises ``NotTrained`` unless stage 1 of ``workdir`` is complete."""
  if not os.path.exists(seg_done(workdir)):
    raise errors.NotTrained('complete stage 1 (the segmentation network f)', seg_dir(workdir), workdir)


def require_quality(workdir: str, model: str) -> None:
  """Raises ``NotTrained`` unless quality model ``model`` of ``workdir`` is complete."""
  if not os.path.exists(quality_done(workdir, model)):
    raise errors.NotTrained(f'trained quality model {model!r}', quality_dir(workdir, model), workdir)


def require_applicability(workdir: str) -> None:
  """Raises ``NotTrained`` unless the applicability score of ``workdir`` is fitted."""
  if not os.path.exists(os.path.join(applicability_dir(workdir), DONE)):
    raise errors.NotTrained('fitted applicability score', applicability_dir(workdir), workdir)


def completed(path: str, what: str, covers: Callable[[Any], bool] = lambda output: True) -> Any | None:
  """The output of a stage whose completion file ``path`` exists (logged), else None.

  ``covers(output)`` False also gives None: the stage finished, but for less
  than is configured now (e.g. fewer quality models), so it must run again.
  """
  if not os.path.exists(path):
    return None
  output = artifacts.read_json(path)
  if not covers(output):
    log.info('%s in %s does not cover the current config; running it again', what, path)
    return None
  log.info('%s already complete (%s); skipping', what, path)
  return output
