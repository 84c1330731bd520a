"""Stage 2: fit every configured quality model on f's outputs, then calibrate auto-accept.

The CNN g's use the same machinery as stage 1 (``training.loop``: state,
jitted donated step, keys from ``fold_in(seed, step)``, orbax checkpoints,
resume, non-finite stop); only the loss and the batches differ. Cheap QC and
RCA fit in seconds. Outputs per model in ``<workdir>/quality/<model>/``:
``checkpoints/`` (CNN), ``log.jsonl``, ``config.json`` and ``done.json`` once
complete. With ``calibration.fraction`` > 0, each model's auto-accept rules
(Learn then Test on the held-out calibration cases, ``quality/auto_accept.py``)
are written to ``<workdir>/quality/calibration.json``: calibration is part of
training the quality model, not of evaluating it, so predict finds the rule
whether or not the run was ever evaluated.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segqual_jax.config import stages
from segqual_jax.core import artifacts, checkpointing, keys, parallel, workdir as run_dirs
from segqual_jax.data import loading, pipeline
from segqual_jax.quality import auto_accept, cheap_qc, cnn, rca, registry
from segqual_jax.training import loop, quality_cases

log = logging.getLogger(__name__)


def make_loss_fn(model, name: str):
  predict = cnn.predict_fn(model, name)

  def loss_fn(params, state, batch, key):
    images, masks, maps, targets = batch
    # Flips/rot90 leave quality unchanged: transform image, mask and map alike.
    images, masks, maps = pipeline.augment(key, images, masks, maps)
    pred = predict(params, state, pipeline.to_float(images), masks, maps)
    loss = jnp.mean((pred - targets) ** 2)
    return loss, ({'loss': loss, 'rmse': jnp.sqrt(loss)}, state)
  return loss_fn


def _train_cnn(config, name: str, out_dir: str, split, outputs, targets: np.ndarray,
               z_scale: float) -> dict:
  """Trains (or resumes) one CNN g; returns its summary."""
  t_start = time.time()
  # Keyed by the model's fixed index, not its position in quality.models,
  # so adding a model to a run never changes another one's g.
  model_key = jax.random.fold_in(keys.purpose_key(config.seed, keys.QUALITY), cnn.NAMES.index(name))
  model = cnn.create_regressor(config.quality)
  tx = optax.adam(config.quality.learning_rate)
  params = cnn.init_params(model, name, jax.random.fold_in(model_key, 0), config.data.image_size)
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'),
                                            config.quality.checkpoint_every_steps)
  state = checkpointer.resume(loop.create_state(params, tx, cnn.model_state(z_scale)),
                              f'quality model {name}')
  per_epoch = pipeline.steps_per_epoch(len(targets), config.quality.batch_size)
  num_steps = per_epoch * config.quality.num_epochs
  step_key = jax.random.fold_in(model_key, 1)
  log_path = os.path.join(out_dir, 'log.jsonl')

  def batch_fn(step):
    idx = pipeline.batch_indices(len(targets), config.quality.batch_size, config.seed, step)
    return (split.images[idx], outputs.masks[idx], outputs.maps[idx], targets[idx]), step_key

  def epoch_end_fn(state, epoch, train_metrics):
    artifacts.append_jsonl(log_path, {'epoch': epoch, 'step': int(state['step']),
                                      **{f'train_{k}': v for k, v in train_metrics.items()}})
    log.info('quality %s epoch %d: train RMSE %.4f', name, epoch, train_metrics['rmse'])

  loop.run(name=f'train_quality[{name}]', state=state,
           train_step=loop.make_train_step(make_loss_fn(model, name), tx),
           batch_fn=batch_fn, num_steps=num_steps, steps_per_epoch=per_epoch,
           checkpointer=checkpointer, log_every_steps=config.quality.log_every_steps,
           epoch_end_fn=epoch_end_fn)
  checkpointer.close()
  return {'variant': name, 'steps': num_steps, 'num_cases': int(len(targets)),
          'label_source': config.quality.label_source,
          'z_scale': z_scale, 'wall_time_s': round(time.time() - t_start, 1)}


def calibrate(config, workdir: str) -> dict | None:
  """Each configured model's auto-accept rules, from the held-out calibration cases.

  Per model and alpha: the LTT threshold from the calibration cases (grid:
  quantiles of the model's predictions on its own training cases). Written
  to ``calibration.json``; None when the run has no calibration fraction.
  """
  if config.calibration.fraction <= 0:
    return None
  path = run_dirs.calibration_file(workdir)
  settings = stages.calibration_settings(config)
  names = stages.quality_model_names(config)
  done = run_dirs.completed(path, 'calibration', lambda c: c['settings'] == settings
                            and set(names) <= set(c['models']))
  if done is not None:
    return done
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  (fit_split, fit_out), (cal_split, cal_out) = quality_cases.holdout_parts(config, workdir, quality)
  cal = config.calibration
  failed = cal_out.dice < config.eval.fail_dice
  result = {'settings': settings, 'models': {}}
  for name in names:
    model = registry.load(config, workdir, name)
    batch = config.quality.eval_batch_size
    grid = auto_accept.threshold_grid(registry.predict_cases(model, fit_split.images, fit_out, batch),
                                      cal.grid_size)
    cal_pred = registry.predict_cases(model, cal_split.images, cal_out, batch)
    rules = {str(alpha): auto_accept.calibrate(cal_pred, failed, grid, alpha, cal.delta, cal.starts)
             for alpha in cal.alphas}
    result['models'][name] = {'delta': cal.delta, 'fail_dice': config.eval.fail_dice, 'rules': rules}
    log.info('calibrated auto-accept of %s on %d cases: %s', name, len(cal_split),
             ', '.join(f'alpha {a}: threshold {r["threshold"]}' for a, r in rules.items()))
  artifacts.write_json(path, result)
  return result


def train_quality(config, workdir: str) -> dict[str, dict]:
  """Fits every configured quality model on f's outputs, then calibrates their rules.

  Returns:
    ``{model name: final training summary}``.
  """
  parallel.check_batch_size(config.quality.batch_size, 'config.quality.batch_size')
  parallel.check_batch_size(config.quality.eval_batch_size, 'config.quality.eval_batch_size')
  parallel.check_batch_size(config.seg.eval_batch_size, 'config.seg.eval_batch_size')
  run_dirs.require_seg(workdir)
  needed = {'holdout': ('quality',), 'train': ('train',), 'oof': ('train',)}[config.quality.label_source]
  splits = loading.load_splits(config.data, names=needed)
  split, outputs = quality_cases.training_cases(config, workdir, splits)
  targets = (outputs.jaccard if config.quality.target == 'jaccard' else outputs.dice).astype(np.float32)
  log.info('quality models train on %d %s cases (label source %s): mean %s %.3f, %.1f%% with Dice < %.2f',
           len(targets), split.name, config.quality.label_source, config.quality.target,
           targets.mean(), 100 * np.mean(outputs.dice < config.eval.fail_dice), config.eval.fail_dice)
  z_scale = cnn.map_scale(outputs.maps)
  results = {}
  for name in stages.quality_model_names(config):
    out_dir = run_dirs.quality_dir(workdir, name)
    stages.record(out_dir, config, stages.quality_stage(name))
    done_path = run_dirs.quality_done(workdir, name)
    if (done := run_dirs.completed(done_path, f'quality model {name}')) is not None:
      results[name] = done
      continue
    if name == 'cheap_qc':
      results[name] = cheap_qc.fit(config, out_dir, outputs, targets)
    elif name == 'rca':
      results[name] = rca.fit(config, out_dir, split)
    else:
      results[name] = _train_cnn(config, name, out_dir, split, outputs, targets, z_scale)
    artifacts.write_json(done_path, results[name])
  calibrate(config, workdir)
  return results
