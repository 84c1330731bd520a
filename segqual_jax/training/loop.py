"""The training machinery both stages share: state, step, loop, workdir checks.

A stage supplies a ``loss_fn`` (made into a jitted, state-donating step by
``make_train_step``), a ``batch_fn(step)`` that is a pure function of the step
(so resume is exact), and an ``epoch_end_fn``; this module owns the rest:

* progress lines with steps/s and ETA every ``log_every_steps``;
* an orbax checkpoint every ``checkpoint_every_steps`` and at the end;
* a hard stop naming the step on a non-finite loss;
* Ctrl-C (SIGINT) finishes the current step, saves, and raises
  ``TrainingInterrupted``; rerunning the same command resumes. (SIGKILL cannot
  be caught: the rerun resumes from the last periodic checkpoint.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from segqual_jax import artifacts, parallel
from segqual_jax.config_validation import ConfigError, flatten
from segqual_jax.training import checkpointing

log = logging.getLogger(__name__)


# Fields that never change what a stage computes: they may differ on resume.
# (quality.models only lists which g to train; each g's own result ignores it.
# Not seg.eval_batch_size: MC keys are folded per batch, so it changes samples.)
RESUMABLE_CHANGES = ('testing.', 'seg.log_every_steps', 'seg.checkpoint_every_steps',
                     'quality.models', 'quality.log_every_steps',
                     'quality.checkpoint_every_steps', 'data.data_dir', 'eval.', 'bench.', 'predict.',
                     # the auto-accept rule is chosen at evaluation, from g's predictions
                     'calibration.alphas', 'calibration.delta', 'calibration.starts',
                     'calibration.grid_size',
                     # where a multi-host job's processes meet, not what they compute
                     'runtime.coordinator_address', 'runtime.num_processes',
                     'runtime.process_id',
                     # where a trained f was copied from: the copy is checked to be the
                     # same f (train_seg.reuse_trained), so the path (relative or absolute,
                     # or none on a later resume) does not change any result
                     'seg.reuse_from')


def create_state(params, tx: optax.GradientTransformation, method_state=None) -> dict:
  """A fresh training state: a plain dict pytree, checkpointed whole."""
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
          'method_state': {} if method_state is None else method_state}


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """Jitted ``(state, batch, base_key) -> (state, metrics)``, donating ``state``.

  Args:
    loss_fn: ``(params, method_state, batch, key) -> (loss, (metrics, method_state))``.
    tx: the optimiser.

  The step's key is ``fold_in(base_key, step)``: a resumed run needs no saved key.
  """
  def step(state, batch, base_key):
    key = jax.random.fold_in(base_key, state['step'])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, method_state)), grads = grad_fn(state['params'], state['method_state'], batch, key)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state, 'method_state': method_state}, metrics
  return jax.jit(step, donate_argnums=0)


def _defaults() -> dict:
  from configs import default  # the schema (imported late, like config_validation does)
  return flatten(json.loads(default.get_config().to_json()))


def prepare_stage_dir(out_dir: str, config, depends_on: tuple[str, ...] | None = None,
                      ignore: tuple[str, ...] = ()) -> None:
  """Creates ``out_dir`` and records ``config``; refuses a dir made by another config.

  Args:
    out_dir: the stage's output directory.
    config: the full config.
    depends_on: field prefixes the stage's result depends on (None: all fields).
      Changing any other field (e.g. g's settings for f's directory) reuses the stage.
    ignore: field prefixes it does not depend on, among ``depends_on``.
  """
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      before = flatten(json.load(f))
    now = flatten(json.loads(config.to_json()))
    defaults = _defaults()
    # A field added to the schema after the run was made, left at its default,
    # changes nothing: new fields get defaults that keep the old behaviour.
    added_at_default = lambda k: k not in before and now.get(k) == defaults.get(k)
    # str(): a field whose type widened (sampling.chunk_size: 10 -> '10') is unchanged.
    same = lambda a, b: a == b or (a is not None and b is not None and str(a) == str(b))
    diff = [k for k in sorted(set(before) | set(now))
            if not same(before.get(k), now.get(k)) and not k.startswith(RESUMABLE_CHANGES)
            and not added_at_default(k) and (depends_on is None or k.startswith(depends_on))
            and not (ignore and k.startswith(ignore))]
    if diff:
      details = ', '.join(f'config.{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in diff)
      raise ConfigError(f'{path} was written by a run with a different config ({details}). '
                        'Use a new --workdir, or the original config to resume.')
  artifacts.write_text(path, config.to_json(indent=2))


class TrainingInterrupted(RuntimeError):
  """Raised after a SIGINT once the state is safely checkpointed."""


class NonFiniteLoss(FloatingPointError):
  """The loss became NaN or infinite."""


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Progress:
  """Steps/s and ETA over the steps run in this process (compilation excluded)."""

  def __init__(self, name: str, first_step: int, num_steps: int):
    self.name, self.num_steps = name, num_steps
    self._t0, self._s0 = None, first_step

  def update(self, step: int, metrics: dict[str, float]) -> str:
    now = time.perf_counter()
    if self._t0 is None:  # the first step includes compilation: start the clock after it
      self._t0, self._s0 = now, step
      rate = float('nan')
    else:
      rate = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.num_steps - step) / rate if rate > 0 else float('nan')
    parts = ' '.join(f'{k}={v:.4g}' for k, v in metrics.items())
    eta_text = format_duration(eta) if math.isfinite(eta) else '?'
    return (f'{self.name} step {step}/{self.num_steps} {parts} | {rate:.2f} steps/s | ETA {eta_text}')


@contextlib.contextmanager
def _sigint_as_flag():
  """Turns the first Ctrl-C into a flag the loop checks between steps."""
  flag = {'stop': False}

  def handler(signum, frame):
    del signum, frame
    flag['stop'] = True
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts

  try:
    previous = signal.signal(signal.SIGINT, handler)
  except ValueError:  # not the main thread: leave signals alone
    yield flag
    return
  try:
    yield flag
  finally:
    signal.signal(signal.SIGINT, previous)


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


def run(*, name: str, state: Any, train_step: Callable, batch_fn: Callable[[int], tuple],
        num_steps: int, steps_per_epoch: int, checkpointer: checkpointing.Checkpointer,
        log_every_steps: int, epoch_end_fn: Callable[[Any, int, dict], None],
        testing=None) -> Any:
  """Trains from ``state['step']`` to ``num_steps``; returns the final state.

  Args:
    name: stage name for log lines and errors.
    state: training state pytree with an integer ``'step'`` leaf (restored or new).
    train_step: from ``make_train_step``.
    batch_fn: ``step -> (batch, base_key)``, a pure function of the step.
    num_steps: total steps of the run.
    steps_per_epoch: steps per epoch; ``epoch_end_fn`` runs after each epoch.
    checkpointer: where the state is saved.
    log_every_steps: progress-line interval.
    epoch_end_fn: ``(state, epoch, mean_train_metrics) -> None``.
    testing: ``config.testing`` (fault injection for tests) or None.
  """
  step = int(state['step'])
  state = parallel.replicate(state)  # batches are split over the devices, the state is not
  progress = Progress(name, step, num_steps)
  sums: dict[str, float] = {}
  count = 0
  with _sigint_as_flag() as sigint:
    while step < num_steps:
      batch, base_key = batch_fn(step)
      state, metrics = train_step(state, parallel.shard_batch(batch), base_key)
      step += 1
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(metrics['loss']):
        raise NonFiniteLoss(f'{name}: loss is {metrics["loss"]} at step {step} '
                            f'(the update of step {step - 1} -> {step}); stopping. The last '
                            f'good checkpoint is step {checkpointer.latest_step()}.')
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
      count += 1
      if step % log_every_steps == 0 or step == num_steps:
        log.info(progress.update(step, metrics))
      checkpointer.save(step, state, force=step == num_steps)
      if step % steps_per_epoch == 0 or step == num_steps:
        epoch_end_fn(state, math.ceil(step / steps_per_epoch), {k: v / count for k, v in sums.items()})
        sums, count = {}, 0
      if testing is not None and step == testing.interrupt_at_step:
        checkpointer.wait()
        os.kill(os.getpid(), getattr(signal, testing.interrupt_signal))
      if sigint['stop']:
        checkpointer.save(step, state, force=True)
        checkpointer.wait()
        raise TrainingInterrupted(f'{name}: interrupted after step {step}; checkpoint saved. '
                                  'Rerun the same command to resume.')
  checkpointer.wait()
  return state
