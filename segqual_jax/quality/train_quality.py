"""Stage 2: train the quality network g for each configured variant.

Same machinery as stage 1 (``training.loop``: state, jitted donated step, keys
from ``fold_in(seed, step)``, orbax checkpoints, resume, non-finite stop); only
the loss and the batches differ. Outputs per variant in
``<workdir>/quality/<variant>/``: ``checkpoints/``, ``log.jsonl``, ``config.json``
and ``done.json`` once training is complete.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segqual_jax import artifacts, parallel, runtime
from segqual_jax.data import pipeline
from segqual_jax.quality import cheap_qc, models, rca
from segqual_jax.quality import labels as quality_labels
from segqual_jax.training import checkpointing, loop

log = logging.getLogger(__name__)


def variants(config) -> list[str]:
  return [v.strip() for v in config.quality.models.split(',') if v.strip()]


def variant_dir(workdir: str, variant: str) -> str:
  return os.path.join(workdir, 'quality', variant)


def uncertainty_scale(umaps: np.ndarray) -> float:
  """The 99th percentile of g's training maps: divides z to order one."""
  return float(max(np.percentile(umaps, 99), 1e-6))


def create_train_state(config, variant: str, key: jax.Array, z_scale: float):
  """``(model, optimiser, fresh state)`` of g; the map scale rides in ``method_state``
  so it is checkpointed with g's parameters."""
  model = models.create_regressor(config.quality)
  tx = optax.adam(config.quality.learning_rate)
  size = config.data.image_size
  # g's input shape comes from the one place that builds its inputs.
  dummy = models.make_inputs(variant, jnp.zeros((1, size, size, 3)), jnp.zeros((1, size, size)),
                             jnp.zeros((1, size, size)))
  params = jax.jit(lambda k: model.init(k, dummy)['params'])(key)
  return model, tx, loop.create_state(params, tx, {'z_scale': jnp.asarray(z_scale, jnp.float32)})


def predict_fn(model, variant: str):
  """``(params, method_state, uint8 images, labels, maps) -> predicted quality``."""
  def predict(params, method_state, images, predictions, umaps):
    x = models.make_inputs(variant, pipeline.to_float(images), predictions,
                           umaps / method_state['z_scale'])
    return model.apply({'params': params}, x)
  return predict


def make_loss_fn(model, variant: str):
  predict = predict_fn(model, variant)

  def loss_fn(params, method_state, batch, key):
    images, predictions, umaps, targets = batch
    # Flips/rot90 leave quality unchanged: transform image, mask and map alike.
    images, predictions, umaps = pipeline.augment(key, images, predictions, umaps)
    pred = predict(params, method_state, images, predictions, umaps)
    loss = jnp.mean((pred - targets) ** 2)
    return loss, ({'loss': loss, 'rmse': jnp.sqrt(loss)}, method_state)
  return loss_fn


def restore(config, workdir: str, variant: str):
  """Trained g of ``variant``: ``(model, params, method_state)``; clear error if absent."""
  runtime.configure(config)
  out_dir = variant_dir(workdir, variant)
  if not os.path.exists(os.path.join(out_dir, 'done.json')):
    raise FileNotFoundError(f'no trained quality model in {out_dir}; run first: python main.py '
                            f'--config=<config> --workdir={workdir} --mode=train_quality')
  model = models.create_regressor(config.quality)
  target = jax.eval_shape(lambda: create_train_state(config, variant, jax.random.key(0), 1.0)[2])
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'), every_steps=1)
  state = checkpointer.restore(target)
  checkpointer.close()
  return model, state['params'], state['method_state']


def load_predictor(config, workdir: str, variant: str):
  """Any trained quality model as ``(images, predictions, maps, scores) -> (N,) numpy``.

  The arguments are one padded batch (numpy, ``seg.eval_batch_size`` rows):
  uint8 images, f's labels, f's maps and the image-level scores by name. The
  CNN variants and RCA run sharded over the devices; cheap QC runs on the host.
  """
  out_dir = variant_dir(workdir, variant)
  if variant in models.VARIANTS:
    model, params, method_state = restore(config, workdir, variant)
    g = jax.jit(predict_fn(model, variant))
    return lambda images, predictions, umaps, scores: np.asarray(parallel.fetch(
        g(params, method_state, *parallel.shard_batch((images, predictions, umaps)))))
  if not os.path.exists(os.path.join(out_dir, 'done.json')):
    raise FileNotFoundError(f'no trained quality model in {out_dir}; run first: python main.py '
                            f'--config=<config> --workdir={workdir} --mode=train_quality')
  if variant == 'cheap_qc':
    return cheap_qc.load_predictor(out_dir)
  rca_predict = rca.load_predictor(config, out_dir)
  return lambda images, predictions, umaps, scores: rca_predict(
      *parallel.shard_batch((images, predictions)), umaps, scores)


def _train_cnn(config, variant: str, out_dir: str, split, labels, targets: np.ndarray,
               z_scale: float) -> dict:
  """Trains (or resumes) one CNN g; returns its summary."""
  t_start = time.time()
  # Keyed by the variant's fixed index, not its position in quality.models,
  # so adding a variant to a run never changes another variant's g.
  base_key = jax.random.fold_in(jax.random.key(config.seed), 10)
  variant_key = jax.random.fold_in(base_key, models.VARIANTS.index(variant))
  model, tx, state = create_train_state(config, variant, jax.random.fold_in(variant_key, 0), z_scale)
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'),
                                            config.quality.checkpoint_every_steps)
  state = checkpointer.resume(state, f'quality model {variant}')
  per_epoch = pipeline.steps_per_epoch(len(targets), config.quality.batch_size)
  num_steps = per_epoch * config.quality.num_epochs
  step_key = jax.random.fold_in(variant_key, 1)
  log_path = os.path.join(out_dir, 'log.jsonl')

  def batch_fn(step):
    idx = pipeline.batch_indices(len(targets), config.quality.batch_size, config.seed, step)
    return (split.images[idx], labels.predictions[idx], labels.uncertainty[idx], targets[idx]), step_key

  def epoch_end_fn(state, epoch, train_metrics):
    artifacts.append_jsonl(log_path, {'epoch': epoch, 'step': int(state['step']),
                                      **{f'train_{k}': v for k, v in train_metrics.items()}})
    log.info('quality %s epoch %d: train RMSE %.4f', variant, epoch, train_metrics['rmse'])

  loop.run(name=f'train_quality[{variant}]', state=state,
           train_step=loop.make_train_step(make_loss_fn(model, variant), tx),
           batch_fn=batch_fn, num_steps=num_steps, steps_per_epoch=per_epoch,
           checkpointer=checkpointer, log_every_steps=config.quality.log_every_steps,
           epoch_end_fn=epoch_end_fn, testing=config.testing)
  checkpointer.close()
  return {'variant': variant, 'steps': num_steps, 'num_cases': int(len(targets)),
          'label_source': config.quality.label_source,
          'z_scale': z_scale, 'wall_time_s': round(time.time() - t_start, 1)}


# Fields a quality model's result never depends on: the other kinds' settings.
_OTHER_MODELS_FIELDS = {'cnn': ('cheap_qc.', 'rca.'), 'cheap_qc': ('rca.', 'quality.widths', 'quality.dense',
                        'quality.batch_size', 'quality.learning_rate', 'quality.num_epochs'),
                        'rca': ('cheap_qc.', 'quality.widths', 'quality.dense', 'quality.batch_size',
                                'quality.learning_rate', 'quality.num_epochs')}


def train_quality(config, workdir: str) -> dict[str, dict]:
  """Builds the quality models' training labels with f, then fits every configured model.

  Returns:
    ``{variant: final training summary}``.
  """
  runtime.configure(config)
  parallel.check_batch_size(config.quality.batch_size, 'config.quality.batch_size')
  needed = {'holdout': ('quality',), 'train': ('train',), 'oof': ('train',)}[config.quality.label_source]
  splits = pipeline.load_splits(config.data, names=needed)
  split, labels = quality_labels.training_labels(config, workdir, splits)
  targets = (labels.jaccard if config.quality.target == 'jaccard' else labels.dice).astype(np.float32)
  log.info('quality models train on %d %s cases (label source %s): mean %s %.3f, %.1f%% with Dice < %.2f',
           len(targets), split.name, config.quality.label_source, config.quality.target,
           targets.mean(), 100 * np.mean(labels.dice < config.eval.fail_dice), config.eval.fail_dice)
  z_scale = uncertainty_scale(labels.uncertainty)
  results = {}
  for variant in variants(config):
    out_dir = variant_dir(workdir, variant)
    kind = variant if variant in _OTHER_MODELS_FIELDS else 'cnn'
    loop.prepare_stage_dir(out_dir, config, ignore=_OTHER_MODELS_FIELDS[kind])
    done_path = os.path.join(out_dir, 'done.json')
    if (done := loop.completed(done_path, f'quality model {variant}')) is not None:
      results[variant] = done
      continue
    if variant == 'cheap_qc':
      results[variant] = cheap_qc.fit(config, out_dir, labels, targets)
    elif variant == 'rca':
      results[variant] = rca.fit(config, out_dir, split)
    else:
      results[variant] = _train_cnn(config, variant, out_dir, split, labels, targets, z_scale)
    artifacts.write_json(done_path, results[variant])
  return results
