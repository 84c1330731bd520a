"""Stage 2: fit every configured quality model on f's outputs, then calibrate auto-accept.

The CNN g's use the same machinery as stage 1 (``training.loop``: state,
jitted donated step, keys from ``fold_in(seed, step)``, orbax checkpoints,
resume, non-finite stop); only the loss and the batches differ. Cheap QC and
RCA fit in seconds. Outputs per model in ``<workdir>/quality/<model>/``:
``checkpoints/`` (CNN), ``log.jsonl``, ``config.json`` and ``done.json`` once
complete. Then the applicability score of the gate is fitted
(``fit_applicability``, ``<workdir>/quality/applicability/``). With
``calibration.fraction`` > 0, each model's auto-accept rules
(Learn then Test on the held-out calibration cases, ``quality/auto_accept.py``)
are written to ``<workdir>/quality/calibration.json``: calibration is part of
training the quality model, not of evaluating it, so predict finds the rule
whether or not the run was ever evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segqual_jax.config import stages
from segqual_jax.core import artifacts, checkpointing, keys, parallel, values, workdir as run_dirs
from segqual_jax.data import loading, pipeline
from segqual_jax.metrics import overlap
from segqual_jax.core.errors import ConfigError
from segqual_jax.quality import applicability, auto_accept, cheap_qc, cnn, error_map, policy, rca, registry, volume
from segqual_jax.segmenter import external, runner
from segqual_jax.training import loop, quality_cases

log = logging.getLogger(__name__)


RANK_TEMPERATURE = 0.05  # a pair ordered wrongly by this much of Dice/Jaccard costs ~log 2 + 1


def rank_loss(pred: jax.Array, targets: jax.Array) -> jax.Array:
  """RankNet's pairwise logistic loss over the batch: for every pair whose true quality
  differs, ``log(1 + exp(-(p_i - p_j) / T))`` with i the better case, averaged over them.

  The squared error alone is satisfied by predicting the mean where g cannot tell cases
  apart; the accept/review decision needs the order to be right.
  """
  better = (targets[:, None] > targets[None, :]).astype(pred.dtype)
  margins = (pred[:, None] - pred[None, :]) / RANK_TEMPERATURE
  pairs = jnp.maximum(better.sum(), 1.0)
  return jnp.sum(better * jax.nn.softplus(-margins)) / pairs


def make_loss_fn(model, name: str, rank_weight: float = 0.0):
  predict = cnn.predict_fn(model, name)

  def loss_fn(params, state, batch, key):
    images, masks, maps, targets = batch
    # Flips/rot90 leave quality unchanged: transform image, mask and map alike.
    images, masks, maps = pipeline.augment(key, images, masks, maps)
    pred = predict(params, state, pipeline.to_float(images), masks, maps)
    mse = jnp.mean((pred - targets) ** 2)
    metrics = {'rmse': jnp.sqrt(mse)}
    loss = mse
    if rank_weight:
      metrics['rank'] = rank_loss(pred, targets)
      loss = loss + rank_weight * metrics['rank']
    return loss, ({'loss': loss, **metrics}, state)
  return loss_fn


def train_cnn(config, name: str, out_dir: str, split, outputs, targets: np.ndarray, z_scale,
              member: int = 0) -> dict:
  """Trains (or resumes) one CNN g; returns its summary.

  ``member`` > 0 draws another initialisation and batch order (a member of an ensemble
  of g's, ``experiments/regressors.py``); member 0 is the run's own g.
  """
  t_start = time.time()
  # Keyed by the model's fixed index, not its position in quality.models,
  # so adding a model to a run never changes another one's g.
  model_key = jax.random.fold_in(keys.purpose_key(config.seed, keys.QUALITY), cnn.NAMES.index(name))
  if member:
    model_key = jax.random.fold_in(model_key, 1000 + member)
  model = cnn.create_regressor(config.quality)
  tx = optax.adam(config.quality.learning_rate)
  params = cnn.init_params(model, name, jax.random.fold_in(model_key, 0), config.data.image_size,
                           external.map_channels(config))
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'),
                                            config.quality.checkpoint_every_steps)
  state = checkpointer.resume(loop.create_state(params, tx, cnn.model_state(z_scale)),
                              f'quality model {name}')
  z_scale = np.asarray(state['model_state']['z_scale']).tolist()  # a resumed g keeps the scale it began with
  per_epoch = pipeline.steps_per_epoch(len(targets), config.quality.batch_size)
  num_steps = per_epoch * config.quality.num_epochs
  step_key = jax.random.fold_in(model_key, 1)
  log_path = os.path.join(out_dir, 'log.jsonl')

  def batch_fn(step):
    order_seed = (config.seed, member) if member else config.seed
    idx = pipeline.batch_indices(len(targets), config.quality.batch_size, order_seed, step)
    return (split.images[idx], outputs.masks[idx], outputs.maps[idx], targets[idx]), step_key

  def epoch_end_fn(state, epoch, train_metrics):
    artifacts.append_jsonl(log_path, {'epoch': epoch, 'step': int(state['step']),
                                      **{f'train_{k}': v for k, v in train_metrics.items()}})
    log.info('quality %s epoch %d: train RMSE %.4f', name, epoch, train_metrics['rmse'])

  loop.run(name=f'train_quality[{name}]', state=state,
           train_step=loop.make_train_step(make_loss_fn(model, name, config.quality.rank_weight), tx),
           batch_fn=batch_fn, num_steps=num_steps, steps_per_epoch=per_epoch,
           checkpointer=checkpointer, log_every_steps=config.quality.log_every_steps,
           epoch_end_fn=epoch_end_fn)
  checkpointer.close()
  return {'variant': name, 'steps': num_steps, 'num_cases': int(len(targets)),
          'label_source': config.quality.label_source,
          'z_scale': z_scale, 'wall_time_s': round(time.time() - t_start, 1)}


def image_block_fit(config) -> dict[int, np.ndarray]:
  """``{block: features}`` of the image-statistics blocks on ``applicability.image_fit``'s
  images ({} when it is ''): those blocks do not depend on f, so f's training images --
  disjoint from the reference cases, and ~2.6 times the quality split on ISIC 2017 --
  fit them (``applicability.fit``'s ``block_fit``)."""
  name = config.applicability.image_fit
  if not name:
    return {}
  images = loading.load_splits(config.data, names=(name,))[name].images
  if len(images) < 2:
    return {}
  stats = runner.image_statistics_of(images)
  return {b: stats[:, cols] for b, cols in runner.image_statistic_blocks(config.seg).items()}


def batch_blocks(config):
  """The batch test's own groups of blocks (``applicability.batch_views``), or None: the batch
  test then compares the gate's score (``batch_views`` '', or the ``knn`` score, which has one
  block and no views of its own)."""
  a = config.applicability
  if not a.batch_views or a.score != 'mahalanobis':
    return None
  return runner.feature_blocks(config.seg, a.batch_views)


def fit_applicability(config, workdir: str) -> applicability.Applicability | None:
  """Fits the applicability score on f's features of the quality split's non-calibration cases
  (its image-statistics blocks on ``applicability.image_fit``'s images: ``image_block_fit``).

  Those are cases f never trained on (its features on its own training cases
  are tighter than on any new case), and never the calibration cases, whose
  p-values must be exchangeable with a new case's. A seeded share of them
  (``applicability.reference_fraction``) is held out as the reference the
  p-values count against. Stored in ``quality/applicability/``; refitted
  when its settings change. None when the gate is off (``predict.ood_alpha`` 0).
  """
  if config.predict.ood_alpha <= 0:
    return None
  out_dir = run_dirs.applicability_dir(workdir)
  settings = stages.applicability_settings(config)
  path = applicability.score_path(out_dir)
  if run_dirs.completed(os.path.join(out_dir, run_dirs.DONE), 'applicability score',
                        lambda d: values.same(d['settings'], settings)
                        and d.get('feature_dim') == applicability.feature_width(config)
                        and (config.data.name != 'nnunet' or d.get('volume_groups'))) is not None:
    return applicability.Applicability.load(path)
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  if len(quality) < 3:
    raise ConfigError(f'the applicability gate needs >= 3 cases in the quality split (it has '
                      f'{len(quality)}); add them, or set predict.ood_alpha=0 to run without the gate')
  (fit_split, outputs), _ = quality_cases.holdout_parts(config, workdir, quality)
  a = config.applicability
  groups = volume.groups_of(runner.case_ids(fit_split))[1]
  fit_idx, ref_idx = applicability.split_indices(len(outputs), a.reference_fraction, config.data.seed, groups)
  block_fit = image_block_fit(config)
  score = applicability.fit(a.score, outputs.features[fit_idx], outputs.features[ref_idx], a.knn_k,
                            runner.feature_levels(config.seg), config.data.seed,
                            runner.feature_blocks(config.seg, a.views), block_fit,
                            batch_blocks(config))
  if config.data.name == 'nnunet':  # the batch test of a run of volumes compares volumes
    score = dataclasses.replace(score, reference_groups=np.asarray(groups)[ref_idx])
  os.makedirs(out_dir, exist_ok=True)
  score.save(path)
  done = {'settings': settings, 'fitting_cases': int(len(fit_idx)),
          'image_fitting_cases': int(len(next(iter(block_fit.values()))) if block_fit else len(fit_idx)),
          'reference_cases': int(len(ref_idx)), 'feature_dim': int(outputs.features.shape[1]),
          'smallest_pvalue': 1.0 / (len(ref_idx) + 1),
          'volume_groups': score.reference_groups is not None}  # the batch test per run of volumes needs them
  artifacts.write_json(os.path.join(out_dir, run_dirs.DONE), done)
  log.info('applicability score (%s) fitted on %d cases, %d reference cases (smallest p-value %.4f)',
           a.score, len(fit_idx), len(ref_idx), done['smallest_pvalue'])
  if (warning := applicability.powerless_warning(len(ref_idx), config.predict.ood_alpha)):
    log.warning(warning)
  return score


def calibrate(config, workdir: str) -> dict | None:
  """Each configured model's auto-accept rules, from the held-out calibration cases.

  Per model and alpha: the LTT threshold from the calibration cases (grid:
  quantiles of the model's predictions on its own training cases). The rule
  is calibrated as predict applies it: behind the applicability gate, so a
  calibration case the gate sends to review is never counted as accepted.
  Written to ``calibration.json``; None when the run has no calibration fraction.

  For volumes (``data.name=nnunet``) the calibration cases are whole patients and the
  unit of everything is the volume, as predict decides: each model's slice predictions
  gathered into a predicted volume Dice (``quality/volume.py``), the true Dice of the
  volume on its own grid, the gate per volume; the grid is fixed Dice levels.
  """
  if config.calibration.fraction <= 0:
    return None
  path = run_dirs.calibration_file(workdir)
  settings = stages.calibration_settings(config)
  names = stages.quality_model_names(config)
  unit = 'volume' if config.data.name == 'nnunet' else 'case'
  done = run_dirs.completed(path, 'calibration', lambda c: values.same(c['settings'], settings)
                            and c.get('unit', 'case') == unit
                            and set(names) <= set(c['models'])
                            and all('interval_cases' in c['models'][n] for n in names))
  if done is not None:
    return done
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  (fit_split, fit_out), (cal_split, cal_out) = quality_cases.holdout_parts(config, workdir, quality)
  cal = config.calibration
  score = fit_applicability(config, workdir)
  cal_p = None if score is None else score.pvalues(score.score(cal_out.features))
  batch = config.quality.eval_batch_size
  models = {name: registry.load(config, workdir, name) for name in names}
  predicted = {name: registry.predict_cases(m, cal_split.images, cal_out, batch) for name, m in models.items()}
  if config.data.name == 'nnunet':  # the unit is the volume: whole calibration patients
    vols = volume.as_volumes(config, runner.case_ids(cal_split), cal_out.masks, predicted,
                             config.quality.target, cal_p)
    predicted, true, pvalues = vols.predicted, vols.true, vols.pvalues
    targets = dict.fromkeys(names, 'dice')
    # A grid fixed before the calibration volumes are seen: predicted volume Dice in [0, 1].
    grids = dict.fromkeys(names, np.linspace(1.0, 0.0, cal.grid_size))
  else:
    true, pvalues = cal_out.dice, cal_p
    targets = {name: m.target for name, m in models.items()}
    grids = {name: auto_accept.threshold_grid(registry.predict_cases(m, fit_split.images, fit_out, batch),
                                              cal.grid_size) for name, m in models.items()}
  failed = np.asarray(true) < config.eval.fail_dice
  result = {'settings': settings, 'unit': unit, 'models': {},
            'gated_calibration_cases': 0 if pvalues is None else int(np.sum(policy.flagged(pvalues, config.predict.ood_alpha)))}
  for name in names:
    cal_pred = policy.gated(predicted[name], pvalues, config.predict.ood_alpha)
    rules = {str(alpha): auto_accept.calibrate(cal_pred, failed, grids[name], alpha, cal.delta, cal.starts)
             for alpha in cal.alphas}
    result['models'][name] = {'delta': cal.delta, 'fail_dice': config.eval.fail_dice,
                              'ood_alpha': config.predict.ood_alpha, 'unit': unit, 'rules': rules,
                              'interval_cases': interval_cases(predicted[name], true, targets[name],
                                                               pvalues, config.predict.ood_alpha)}
    log.info('calibrated auto-accept of %s on %d %ss: %s', name, len(failed), unit,
             ', '.join(f'alpha {a}: threshold {r["threshold"]}' for a, r in rules.items()))
  artifacts.write_json(path, result)
  return result


def interval_cases(predicted: np.ndarray, true_dice: np.ndarray, target: str,
                   pvalues: np.ndarray | None, ood_alpha: float) -> dict:
  """The calibration cases an interval around a predicted Dice is fitted on
  (``quality/interval.py``): each case's predicted and true Dice, behind the gate -- a case
  the gate sends to review gets no interval in predict, so it does not calibrate one. Kept
  as numbers, not as a fitted interval, so ``predict.interval_alpha`` stays free."""
  dice = np.asarray(overlap.as_dice(np.asarray(predicted, np.float64), target))
  keep = policy.let_through(pvalues, ood_alpha, len(dice)) & np.isfinite(dice) & np.isfinite(true_dice)
  return {'predicted_dice': [round(float(v), 6) for v in dice[keep]],
          'true_dice': [round(float(v), 6) for v in np.asarray(true_dice)[keep]]}


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
    if name == 'mean':  # nothing to fit: the average of the others (registry.mean_members)
      results[name] = {'members': registry.mean_members(config)}
    elif name == 'cheap_qc':
      results[name] = cheap_qc.fit(config, out_dir, outputs, targets)
    elif name == 'rca':
      results[name] = rca.fit(config, out_dir, split)
    else:
      results[name] = train_cnn(config, name, out_dir, split, outputs, targets, z_scale)
    artifacts.write_json(done_path, results[name])
  fit_error_map(config, workdir, split, outputs)
  fit_applicability(config, workdir)
  calibrate(config, workdir)
  return results


def fit_error_map(config, workdir: str, split, outputs) -> None:
  """Fits the per-pixel error map on the quality models' training cases (their true masks
  say where the segmentation under review is wrong); skipped when fitted or switched off."""
  path = run_dirs.error_map_file(workdir)
  if not config.quality.error_map or os.path.exists(path):
    return
  t0 = time.time()
  errors = error_map.errors_of(outputs.masks, split.masks)
  if errors.all() or not errors.any():
    log.warning('error map not fitted: the training masks are all right or all wrong')
    return
  fitted = error_map.ErrorMap.fit(error_map.pixel_features(split.images, outputs.masks, outputs.probs,
                                                           outputs.maps), errors, seed=config.seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fitted.save(path)
  log.info('error map fitted on %d cases (%.1f %% of pixels wrong) in %.1f s', len(split),
           100 * errors.mean(), time.time() - t0)
