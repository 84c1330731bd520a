"""Stage 1: train the segmentation network f with its uncertainty method.

Outputs in ``<workdir>/seg/``: ``checkpoints/`` (orbax), ``log.jsonl`` (one
record per epoch: train loss, validation Dice/Jaccard from a dropout-off pass),
``config.json`` and, at the end, ``metrics.json`` -- the method's own
prediction (e.g. 20 MC-dropout passes) on the validation split: mean Dice,
Jaccard, share of cases with Dice < 0.8, mean uncertainty and wall time.
"""

from __future__ import annotations

import logging

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from segqual_jax import runtime, uncertainty
from segqual_jax.config_validation import ConfigError
from segqual_jax.data import pipeline
from segqual_jax.evaluation import inference
from segqual_jax.training import checkpointing, loop

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption without changing
# what is being trained.
_RESUMABLE_CHANGES = ('testing.', 'seg.log_every_steps', 'seg.checkpoint_every_steps',
                      'seg.eval_batch_size', 'data.data_dir')


def create_train_state(method: uncertainty.Method, config, key: jax.Array):
  """Fresh state dict and its optimiser."""
  tx = optax.adam(config.seg.learning_rate)
  params = method.init_params(key, config.data.image_size)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': tx.init(params), 'method_state': method.init_state()}
  return state, tx


def make_train_step(method: uncertainty.Method, tx: optax.GradientTransformation):
  """Jitted, state-donating step; its key is ``fold_in(base_key, step)``."""
  def step(state, images, masks, base_key):
    key = jax.random.fold_in(base_key, state['step'])
    images, masks = pipeline.augment(jax.random.fold_in(key, 0), pipeline.to_float(images), masks)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (_, (metrics, method_state)), grads = grad_fn(
        state['params'], state['method_state'], images, masks.astype(jnp.int32),
        jax.random.fold_in(key, 1))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
                 'opt_state': opt_state, 'method_state': method_state}
    return new_state, metrics
  return jax.jit(step, donate_argnums=0)


def _deterministic_predict(method: uncertainty.Method):
  """Dropout-off softmax: the cheap per-epoch validation pass for every method."""
  def predict(params, images, key):
    del key
    probs = jax.nn.softmax(method.apply(params, images)['logits'])
    return probs, 1.0 - probs.max(-1)
  return predict


def _flat(config) -> dict:
  out = {}
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update({f'{k}.{kk}': vv for kk, vv in _flat(v).items()})
    else:
      out[k] = v
  return out


def _check_same_config(path: str, config) -> None:
  """Refuses to resume a workdir that was trained with a different config."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    before = _flat(json.load(f))
  now = _flat(json.loads(config.to_json()))
  diff = [k for k in sorted(set(before) | set(now))
          if before.get(k) != now.get(k) and not k.startswith(_RESUMABLE_CHANGES)]
  if diff:
    details = ', '.join(f'config.{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in diff)
    raise ConfigError(f'{path} was written by a run with a different config ({details}). '
                      'Use a new --workdir, or the original config to resume.')


def seg_dir(workdir: str) -> str:
  return os.path.join(workdir, 'seg')


def restore_params(config, workdir: str):
  """Trained f parameters of ``workdir`` (for later stages); clear error if absent."""
  runtime.configure(config)
  method = uncertainty.create_method(config)
  ckpt_dir = os.path.join(seg_dir(workdir), 'checkpoints')
  checkpointer = checkpointing.Checkpointer(ckpt_dir, every_steps=1)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no stage-1 checkpoint in {ckpt_dir}; run first: python main.py '
                            f'--config=<config> --workdir={workdir} --mode=train_seg')
  target = jax.eval_shape(lambda: create_train_state(method, config, jax.random.key(0))[0])
  state = checkpointer.restore(target)
  checkpointer.close()
  return method, state['params']


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains f (resuming if ``workdir`` has a checkpoint) and evaluates it.

  Returns:
    The final validation summary written to ``seg/metrics.json``.
  """
  runtime.configure(config)
  out_dir = seg_dir(workdir)
  os.makedirs(out_dir, exist_ok=True)
  config_path = os.path.join(out_dir, 'config.json')
  _check_same_config(config_path, config)
  with open(config_path, 'w') as f:
    f.write(config.to_json(indent=2))

  t_start = time.time()
  splits = pipeline.load_splits(config.data, names=('train', 'validation'))
  train, validation = splits['train'], splits['validation']
  log.info('data: %d train, %d validation images of %d px (%.1f s)', len(train),
               len(validation), config.data.image_size, time.time() - t_start)

  method = uncertainty.create_method(config)
  base_key = jax.random.key(config.seed)
  state, tx = create_train_state(method, config, jax.random.fold_in(base_key, 0))
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'),
                                            config.seg.checkpoint_every_steps)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    log.info('resuming stage 1 from step %d', int(state['step']))

  per_epoch = pipeline.steps_per_epoch(len(train), config.seg.batch_size)
  num_steps = per_epoch * config.seg.num_epochs
  train_step = make_train_step(method, tx)
  step_key = jax.random.fold_in(base_key, 1)
  eval_key = jax.random.fold_in(base_key, 2)
  det_predictor = inference.make_batch_predictor(_deterministic_predict(method))
  log_path = os.path.join(out_dir, 'log.jsonl')

  def batch_fn(step):
    idx = pipeline.batch_indices(len(train), config.seg.batch_size, config.seed, step)
    return train.images[idx], train.masks[idx], step_key

  def epoch_end_fn(state, epoch, train_metrics):
    val = inference.predict_split(det_predictor, state['params'], validation,
                                  config.seg.eval_batch_size, eval_key).summary()
    record = {'epoch': epoch, 'step': int(state['step']), 'time_s': round(time.time() - t_start, 1),
              **{f'train_{k}': v for k, v in train_metrics.items()},
              'val_dice': val['mean_dice'], 'val_jaccard': val['mean_jaccard']}
    loop.append_jsonl(log_path, record)
    log.info('epoch %d: train loss %.4f | val Dice %.4f Jaccard %.4f', epoch,
                 train_metrics.get('loss', float('nan')), val['mean_dice'], val['mean_jaccard'])

  state = loop.run(name='train_seg', state=state, train_step=train_step, batch_fn=batch_fn,
                   num_steps=num_steps, steps_per_epoch=per_epoch, checkpointer=checkpointer,
                   log_every_steps=config.seg.log_every_steps, epoch_end_fn=epoch_end_fn,
                   testing=config.testing)
  checkpointer.close()

  predictor = inference.make_batch_predictor(method.predict)
  final = inference.predict_split(predictor, state['params'], validation,
                                  config.seg.eval_batch_size, eval_key)
  summary = {'method': config.method, 'split': 'validation', 'steps': num_steps,
             **final.summary(), 'wall_time_s': round(time.time() - t_start, 1)}
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  log.info('stage 1 done (%s): %s', config.method, json.dumps(summary))
  return summary
