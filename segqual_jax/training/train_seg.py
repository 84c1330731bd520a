"""Stage 1: train the segmentation network f with its uncertainty method.

Outputs in ``<workdir>/seg/``: ``checkpoints/`` (orbax), ``log.jsonl`` (one
record per epoch: train loss, validation Dice/Jaccard from a dropout-off pass,
on volumes also the validation patients' mean volume Dice), ``config.json`` and,
at the end, ``metrics.json`` -- the method's own prediction (e.g. 20 MC-dropout
passes) on the validation split: mean Dice, Jaccard (and volume Dice), share of
cases with Dice < 0.8, mean uncertainty and wall time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segqual_jax.config import stages
from segqual_jax.core import artifacts, checkpointing, keys, parallel, workdir as run_dirs
from segqual_jax.core.errors import ConfigError
from segqual_jax.data import loading, pipeline
from segqual_jax.quality import volume
from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.segmenter import runner
from segqual_jax.segmenter.methods import ensemble
from segqual_jax.training import loop

log = logging.getLogger(__name__)

def learning_rate(config, num_steps: int):
  """Adam's learning rate: the paper's constant one, or a cosine decay over ``num_steps``
  (the last update uses a rate just above 0).

  Why the decay: with a constant 1e-3 f's validation Dice still swings by a few
  points from one epoch to the next at the end of a short CPU-scale run, so
  which f a run ends with is partly chance; the decay lets it settle.
  """
  if config.seg.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(config.seg.learning_rate, max(num_steps, 1))
  return config.seg.learning_rate


def create_train_state(method: uncertainty.Method, config, key: jax.Array, num_steps: int):
  """Fresh stage-1 state and its optimiser (``num_steps``: the run's length, for a schedule)."""
  tx = optax.adam(learning_rate(config, num_steps))
  params = method.init_params(key, config.data.image_size)
  return loop.create_state(params, tx, method.init_state()), tx


def make_loss_fn(method: uncertainty.Method, augmentation: str = 'dihedral'):
  """Augments on device (``config.seg.augment``: ``pipeline.AUGMENTATIONS``), then the
  method's own loss.

  An ensemble's members each get this single-model loss (``ensemble.stack_loss``).
  """
  augment = pipeline.AUGMENTATIONS[augmentation]

  def loss_fn(params, model_state, batch, key):
    images, masks = augment(jax.random.fold_in(key, 0), pipeline.to_float(batch[0]), batch[1])
    return method.loss(params, model_state, images, masks.astype(jnp.int32),
                       jax.random.fold_in(key, 1))
  if method.members > 1:
    return ensemble.stack_loss(loss_fn, method.members, method.config.sampling)
  return loss_fn


def batch_indices(method: uncertainty.Method, num_examples: int, batch_size: int, seed: int,
                  step: int, foreground: np.ndarray | None = None,
                  foreground_fraction: float = 0.0) -> np.ndarray:
  """Training batch ``step``: (B,) indices, or (B, M) with member m's own data order
  (``foreground``, ``foreground_fraction``: ``pipeline.batch_indices``' oversampling)."""
  seeds = [seed] if method.members == 1 else [ensemble.member_seed(seed, m) for m in range(method.members)]
  idx = [pipeline.batch_indices(num_examples, batch_size, s, step, foreground, foreground_fraction)
         for s in seeds]
  return idx[0] if method.members == 1 else np.stack(idx, axis=1)


VALIDATION_LOGGED = ('mean_dice', 'mean_jaccard', 'mean_volume_dice')  # -> val_dice, ... in log.jsonl


def volume_summary_fn(config, split: pipeline.Split):
  """``outputs -> {'mean_volume_dice': ...}`` for a split of volume slices, else ``{}``.

  Why: the user's bar on volumes is the Dice of each whole volume, which the
  slices' mean Dice does not show (its lesion-free slices count Dice 1 each).
  Measured on the slices at the model's size (``data.image_size``), not on each
  volume's own grid as the evaluation's table is: a cheap per-epoch reading.
  """
  if config.data.name != 'nnunet':
    return lambda outputs: {}
  cases, groups = volume.groups_of(runner.case_ids(split))
  return lambda outputs: {'mean_volume_dice': float(
      volume.true_dice(outputs.masks, split.masks, groups, len(cases)).mean())}


def reuse_trained(config, source_workdir: str, out_dir: str) -> None:
  """Copies the trained f of ``source_workdir`` into ``out_dir``, after checking it is the same f.

  The source's stage 1 must be complete and its recorded config must equal
  this one in every field that shapes f's parameters (role ``f_train`` in
  ``config/stages.py``), with a method of the same training family
  (``Method.trains_like``); the test-time fields may differ.
  """
  source = run_dirs.seg_dir(source_workdir)
  if not os.path.exists(run_dirs.seg_done(source_workdir)):
    raise ConfigError(f'config.seg.reuse_from={source_workdir!r}: no complete stage 1 in {source}')
  before = stages.read_recorded(os.path.join(source, 'config.json'))
  now = stages.as_flat(config)
  if uncertainty.training_family(before['method']) != uncertainty.training_family(config.method):
    raise ConfigError(f'config.seg.reuse_from={source_workdir!r}: its f was trained by '
                           f'{before["method"]!r}, which does not train like {config.method!r}')
  diff = [k for k in stages.differences(before, now, stages.STAGES['seg_reuse']) if k != 'method']
  if diff:
    raise ConfigError(f'config.seg.reuse_from={source_workdir!r} trained another f: '
                           + ', '.join(f'config.{k}: {before.get(k)!r} there, {now.get(k)!r} here' for k in diff))
  for name in ('checkpoints', 'log.jsonl'):
    src, dst = os.path.join(source, name), os.path.join(out_dir, name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    elif os.path.exists(src):
      shutil.copyfile(src, dst)
  log.info('reusing the trained f of %s (method %s)', source_workdir, before['method'])


def train_and_evaluate(config, workdir: str, train_split: pipeline.Split | None = None,
                       seg_dir: str | None = None) -> dict:
  """Trains f (resuming if ``workdir`` has a checkpoint) and evaluates it.

  Skipped when ``seg/metrics.json`` already exists (the stage is complete).

  Args:
    config: the full config.
    workdir: run directory; outputs go to ``<workdir>/seg/``.
    train_split: train on this instead of the configured train split (the
      out-of-fold copies of f in stage 2).
    seg_dir: f's directory, when not ``<workdir>/seg`` (an out-of-fold copy).

  Returns:
    The final validation summary written to ``seg/metrics.json``.
  """
  out_dir = seg_dir or run_dirs.seg_dir(workdir)
  stages.record(out_dir, config, 'seg')
  if config.data.name == 'nnunet':  # predict reads the channels f learned from here, data or not
    shutil.copyfile(os.path.join(config.data.root, 'dataset.json'), os.path.join(out_dir, 'dataset.json'))
  metrics_path = os.path.join(out_dir, 'metrics.json')
  if (done := run_dirs.completed(metrics_path, 'stage 1')) is not None:
    return done

  parallel.check_batch_size(config.seg.batch_size, 'config.seg.batch_size')
  parallel.check_batch_size(config.seg.eval_batch_size, 'config.seg.eval_batch_size')
  t_start = time.time()
  splits = loading.load_splits(config.data, names=('train', 'validation'))
  train, validation = train_split or splits['train'], splits['validation']
  log.info('data: %d train, %d validation images of %d px (%.1f s)', len(train),
           len(validation), config.data.image_size, time.time() - t_start)

  per_epoch = pipeline.steps_per_epoch(len(train), config.seg.batch_size)
  num_steps = per_epoch * config.seg.num_epochs
  method = uncertainty.create_method(config)
  state, tx = create_train_state(method, config, keys.purpose_key(config.seed, keys.SEG_INIT), num_steps)
  if config.seg.reuse_from and train_split is None and not os.path.isdir(os.path.join(out_dir, 'checkpoints')):
    reuse_trained(config, config.seg.reuse_from, out_dir)
  checkpointer = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'),
                                            config.seg.checkpoint_every_steps)
  state = checkpointer.resume(state, 'stage 1')

  train_step = loop.make_train_step(make_loss_fn(method, config.seg.augment), tx)
  step_key = keys.purpose_key(config.seed, keys.SEG_STEPS)
  eval_key = keys.purpose_key(config.seed, keys.SEG_VALIDATION)
  deterministic = runner.batch_fn(runner.case_fn(method.deterministic_predict))
  log_path = os.path.join(out_dir, 'log.jsonl')
  volume_summary = volume_summary_fn(config, validation)

  foreground = train.masks.reshape(len(train), -1).any(axis=1)
  if config.seg.foreground_fraction > 0 and not foreground.any():
    raise ConfigError(f'config.seg.foreground_fraction={config.seg.foreground_fraction}: no training '
                      'image holds lesion to oversample')
  if 0 < config.seg.foreground_fraction and pipeline.forced_places(config.seg.foreground_fraction,
                                                                   config.seg.batch_size) == 0:
    raise ConfigError(f'config.seg.foreground_fraction={config.seg.foreground_fraction} forces no place '
                      f'of a batch of {config.seg.batch_size} (it rounds to 0); use >= '
                      f'{1 / config.seg.batch_size:.3g}')

  def batch_fn(step):
    idx = batch_indices(method, len(train), config.seg.batch_size, config.seed, step,
                        foreground, config.seg.foreground_fraction)
    return (train.images[idx], train.masks[idx]), step_key

  def epoch_end_fn(state, epoch, train_metrics):
    outputs = runner.run_split(deterministic, state['params'], validation, eval_key,
                               config.seg.eval_batch_size)
    val = {**outputs.summary(config.eval.fail_dice), **volume_summary(outputs)}
    record = {'epoch': epoch, 'step': int(state['step']), 'time_s': round(time.time() - t_start, 1),
              **{f'train_{k}': v for k, v in train_metrics.items()},
              **{f'val_{k[5:]}': v for k, v in val.items() if k in VALIDATION_LOGGED}}
    artifacts.append_jsonl(log_path, record)
    log.info('epoch %d: train loss %.4f | val Dice %.4f Jaccard %.4f%s', epoch,
             train_metrics.get('loss', float('nan')), val['mean_dice'], val['mean_jaccard'],
             f' | volume Dice {val["mean_volume_dice"]:.4f}' if 'mean_volume_dice' in val else '')

  state = loop.run(name='train_seg', state=state, train_step=train_step, batch_fn=batch_fn,
                   num_steps=num_steps, steps_per_epoch=per_epoch, checkpointer=checkpointer,
                   log_every_steps=config.seg.log_every_steps, epoch_end_fn=epoch_end_fn)
  checkpointer.close()

  final = runner.run_split(runner.batch_fn(runner.method_case_fn(method, with_scores=False)),
                           state['params'], validation, eval_key, config.seg.eval_batch_size)
  summary = {'method': config.method, 'split': 'validation', 'steps': num_steps,
             **final.summary(config.eval.fail_dice), **volume_summary(final),
             'wall_time_s': round(time.time() - t_start, 1)}
  artifacts.write_json(metrics_path, summary)
  log.info('stage 1 done (%s): %s', config.method, json.dumps(summary))
  return summary
