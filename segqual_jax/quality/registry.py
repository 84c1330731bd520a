"""Any trained quality model behind one interface, loaded without its trainer.

``load(config, workdir, name)`` gives a ``QualityModel`` for every entry of
``config.schema.QUALITY_MODELS``: the three CNN g's (parameters restored from
their checkpoint, nothing of the optimiser), cheap QC (a pickled regressor)
and RCA (its reference cases). Each predicts ``quality.target`` (Jaccard or
Dice) from one padded batch of f's outputs; the CNN g's also expose a pure
``device_fn`` so that predict can run f and g in one jitted pass. The
calibrated auto-accept rules of stage 2 ride with the model (``rules``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from segqual_jax.config import schema
from segqual_jax.core import artifacts, checkpointing, errors, parallel, workdir as run_dirs
from segqual_jax.data import pipeline
from segqual_jax.quality import cheap_qc, cnn, rca
from segqual_jax.segmenter import external

NAMES = schema.QUALITY_MODELS


@dataclasses.dataclass(frozen=True)
class QualityModel:
  """A trained quality model of a run.

  ``predict(images, outputs)`` takes one batch: uint8 images (B, S, S, 3) and
  f's outputs ``{'masks', 'maps', 'scores'}`` as numpy; it returns (B,)
  predicted quality in ``target`` units.
  """
  name: str
  target: str  # 'jaccard' | 'dice': the units of its predictions
  needs_scores: bool  # whether f must compute the image-level scores for it
  predict: Callable[[np.ndarray, dict], np.ndarray]
  # CNN g only: pure ``(variables, float images, masks, maps) -> quality`` and its variables
  device_fn: Callable | None = None
  device_params: Any = None
  rules: dict | None = None  # calibrated auto-accept rules ``{alpha: rule}``, if the run has them


def kind(name: str) -> str:
  """``cnn`` for the three g inputs, else the name (``cheap_qc``, ``rca``)."""
  return 'cnn' if name in cnn.NAMES else name


def load_cnn_params(config, workdir: str, name: str):
  """``(model, params, z_scale)`` of CNN quality model ``name``; parameters only."""
  model = cnn.create_regressor(config.quality)
  target = jax.eval_shape(lambda: cnn.init_params(model, name, jax.random.key(0), config.data.image_size,
                                                  external.map_channels(config)))
  checkpointer = checkpointing.Checkpointer(
      os.path.join(run_dirs.quality_dir(workdir, name), 'checkpoints'), every_steps=1)
  params = checkpointer.restore_items({'params': target})['params']
  checkpointer.close()
  z_scale = artifacts.read_json(run_dirs.quality_done(workdir, name))['z_scale']
  return model, params, z_scale


def load(config, workdir: str, name: str) -> QualityModel:
  """Trained quality model ``name`` of ``workdir``; ``NotTrained`` if it is not complete."""
  if name not in NAMES:
    raise errors.ConfigError(f'unknown quality model {name!r}; one of {", ".join(NAMES)}')
  run_dirs.require_quality(workdir, name)
  out_dir = run_dirs.quality_dir(workdir, name)
  target = config.quality.target
  rules = calibration_rules(workdir, name)
  if kind(name) == 'cnn':
    model, params, z_scale = load_cnn_params(config, workdir, name)
    g = cnn.predict_fn(model, name)
    fn = lambda variables, images, masks, maps: g(variables['params'], variables['state'], images, masks, maps)
    variables = {'params': params, 'state': cnn.model_state(z_scale)}
    jitted = jax.jit(lambda v, images, masks, maps: fn(v, pipeline.to_float(images), masks, maps))
    replicated = parallel.replicate(variables)

    def predict(images, outputs):
      sharded = parallel.shard_batch((images, outputs['masks'], outputs['maps']))
      return np.asarray(parallel.fetch(jitted(replicated, *sharded)))
    return QualityModel(name, target, False, predict, fn, variables, rules)
  if name == 'mean':  # the members it was trained and calibrated with, whatever the config lists now
    members = [load(config, workdir, m) for m in artifacts.read_json(run_dirs.quality_done(workdir, name))['members']]
    return QualityModel(name, target, any(m.needs_scores for m in members),
                        lambda images, outputs: np.mean([m.predict(images, outputs) for m in members], 0),
                        rules=rules)
  if name == 'cheap_qc':
    regressor = cheap_qc.load_predictor(out_dir)
    return QualityModel(name, target, True,
                        lambda images, outputs: regressor(outputs['masks'], outputs['scores']),
                        rules=rules)
  scorer = rca.load_predictor(config, out_dir)

  def predict_rca(images, outputs):
    return scorer(*parallel.shard_batch((images, outputs['masks'])))
  return QualityModel(name, target, False, predict_rca, rules=rules)


def mean_members(config) -> list[str]:
  """The quality models ``mean`` averages when stage 2 makes it: every other configured one
  but RCA (whose predictions need a registration per reference: too slow to run beside the
  others). Stored in its ``done.json`` and read back by ``load``: the mean that was
  calibrated is the one predict applies, whatever a later config lists.

  An ensemble of unlike predictors (g sees the image, mask and map; cheap QC f's image-level
  scores) errs less than either where their errors differ; it needs no training of its own,
  and it is calibrated, gated and given an interval like any other quality model."""
  names = [n.strip() for n in config.quality.models.split(',')]
  return [n for n in names if n and n not in ('mean', 'rca')]


def calibration_rules(workdir: str, name: str) -> dict | None:
  """The calibrated rules of ``name`` from stage 2's ``calibration.json``, if any."""
  path = run_dirs.calibration_file(workdir)
  if not os.path.exists(path):
    return None
  entry = artifacts.read_json(path)['models'].get(name)
  return None if entry is None else entry


def predict_cases(model: QualityModel, images: np.ndarray, outputs, batch_size: int) -> np.ndarray:
  """``model``'s predicted quality of every case: ``images`` (N, S, S, 3) uint8 and f's
  ``SegOutputs`` of them, in padded batches of ``batch_size``."""
  names = sorted(outputs.scores)
  out = []
  for images_b, masks_b, maps_b, *score_columns, valid in pipeline.eval_batches(
      batch_size, images, outputs.masks, outputs.maps, *[outputs.scores[n] for n in names]):
    batch = {'masks': masks_b, 'maps': maps_b, 'scores': dict(zip(names, score_columns))}
    out.append(np.asarray(model.predict(images_b, batch))[:valid])
  return np.concatenate(out) if out else np.zeros(0)
