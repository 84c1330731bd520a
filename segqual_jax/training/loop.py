"""The training machinery both stages share: state, step, loop.

A stage supplies a ``loss_fn`` (made into a jitted, state-donating step by
``make_train_step``), a ``batch_fn(step)`` that is a pure function of the step
(so resume is exact), and an ``epoch_end_fn``; this module owns the rest:

* progress lines with steps/s and ETA every ``log_every_steps`` (the mean of
  the steps since the last line); step metrics stay on the device between
  fetches, which happen only on log steps, epoch ends and before a checkpoint
  (as the Flax examples do: a per-step fetch stalls the device every step);
* an orbax checkpoint every ``checkpoint_every_steps`` and at the end;
* a hard stop naming the step (or the steps since the last fetch) on a
  non-finite loss, and on non-finite parameters before any save, so no
  checkpoint holds a diverged state;
* Ctrl-C (SIGINT) finishes the current step, saves, and raises
  ``TrainingInterrupted``; rerunning the same command resumes. (SIGKILL cannot
  be caught: the rerun resumes from the last periodic checkpoint.)
* ``STEP_HOOKS``, run after every step: how the resume tests stop a run.

Which config a stage directory may be resumed with is ``config/stages.py``'s
business; where the directories are, ``core/workdir.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from segqual_jax.core import checkpointing, errors, parallel, runtime

log = logging.getLogger(__name__)


def create_state(params, tx: optax.GradientTransformation, model_state=None) -> dict:
  """A fresh training state: a plain dict pytree, checkpointed whole.

  ``model_state`` is what a model carries besides its trained parameters and
  passes through its loss: LCE's lambda, g's map scale.
  """
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
          'model_state': {} if model_state is None else model_state}


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """Jitted ``(state, batch, base_key) -> (state, metrics)``, donating ``state``.

  Args:
    loss_fn: ``(params, model_state, batch, key) -> (loss, (metrics, model_state))``.
    tx: the optimiser.

  The step's key is ``fold_in(base_key, step)``: a resumed run needs no saved key.
  """
  def step(state, batch, base_key):
    key = jax.random.fold_in(base_key, state['step'])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, model_state)), grads = grad_fn(state['params'], state['model_state'], batch, key)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state, 'model_state': model_state}, metrics
  return jax.jit(step, donate_argnums=0)


@jax.jit
def _add(a: dict, b: dict) -> dict:
  """Running sums of step metrics, on the device (one small dispatch, no host sync)."""
  return jax.tree.map(jnp.add, a, b)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_parameters(name: str, step: int, state, checkpointer) -> None:
  """Raises ``NonFiniteLoss`` before a save of non-finite parameters: a finite loss at step N
  was computed before update N, so the parameters it left are checked too."""
  if not bool(_all_finite(state['params'])):
    raise errors.NonFiniteLoss(f'{name}: the parameters are not finite after step {step}; stopping. '
                               f'The last good checkpoint is step {checkpointer.latest_step()}.')


TrainingInterrupted = errors.TrainingInterrupted
NonFiniteLoss = errors.NonFiniteLoss

# Callables ``(name, step) -> None`` run after every step of every loop. Tests
# register one to kill or interrupt a run at a chosen step (the resume tests);
# production code registers none. A hook list, not config fields: fault
# injection is not a setting of the product.
STEP_HOOKS: list = []


class Progress:
  """Steps/s and ETA over the steps run in this process (compilation excluded)."""

  def __init__(self, name: str, first_step: int, num_steps: int):
    self.name, self.num_steps = name, num_steps
    self._t0, self._s0 = None, first_step

  def step_done(self, step: int) -> None:
    """Called after every step: the clock starts after the first (it includes compilation)."""
    if self._t0 is None:
      self._t0, self._s0 = time.perf_counter(), step

  def update(self, step: int, metrics: dict[str, float]) -> str:
    now = time.perf_counter()
    parts = ' '.join(f'{k}={v:.4g}' for k, v in metrics.items())
    if self._t0 is None or step == self._s0:
      return f'{self.name} step {step}/{self.num_steps} {parts} | compiled; timing starts now'
    rate = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.num_steps - step) / rate if rate > 0 else float('nan')
    eta_text = runtime.format_duration(eta) if math.isfinite(eta) else '?'
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


def run(*, name: str, state: Any, train_step: Callable, batch_fn: Callable[[int], tuple],
        num_steps: int, steps_per_epoch: int, checkpointer: checkpointing.Checkpointer,
        log_every_steps: int, epoch_end_fn: Callable[[Any, int, dict], None]) -> Any:
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
  """
  step = int(state['step'])
  state = parallel.replicate(state)  # batches are split over the devices, the state is not
  progress = Progress(name, step, num_steps)
  sums: dict[str, float] = {}  # host sums of this epoch's metrics
  count = 0
  window, first = None, step + 1  # device sums of the steps since the last fetch, from step `first`
  with _sigint_as_flag() as sigint:
    while step < num_steps:
      batch, base_key = batch_fn(step)
      state, metrics = train_step(state, parallel.shard_batch(batch), base_key)
      step += 1
      window = metrics if window is None else _add(window, metrics)  # stays on the device
      progress.step_done(step)
      log_now = step % log_every_steps == 0 or step == num_steps
      epoch_end = step % steps_per_epoch == 0 or step == num_steps
      save_now = step == num_steps or checkpointer.due(step) or bool(STEP_HOOKS) or sigint['stop']
      if log_now or epoch_end or save_now:
        # Fetch (a device sync) only where the host needs the numbers: a log line, an
        # epoch's means, and before any checkpoint, so a saved state is never non-finite.
        fetched = {k: float(v) for k, v in jax.device_get(window).items()}
        if not math.isfinite(fetched['loss']):
          where = f'at step {step}' if first == step else f'in steps {first}-{step}'
          raise errors.NonFiniteLoss(f'{name}: loss is {fetched["loss"]} {where} (an update '
                                     f'after step {first - 1}); stopping. The last good '
                                     f'checkpoint is step {checkpointer.latest_step()}.')
        for k, v in fetched.items():
          sums[k] = sums.get(k, 0.0) + v
        count += step - first + 1
        if log_now:
          log.info(progress.update(step, {k: v / (step - first + 1) for k, v in fetched.items()}))
        window, first = None, step + 1
      if save_now:
        _check_parameters(name, step, state, checkpointer)
      checkpointer.save(step, state, force=step == num_steps)
      if epoch_end:
        epoch_end_fn(state, math.ceil(step / steps_per_epoch), {k: v / count for k, v in sums.items()})
        sums, count = {}, 0
      if STEP_HOOKS:
        checkpointer.wait()  # a hook may kill the process: the periodic save must be on disk
        for hook in STEP_HOOKS:
          hook(name, step)
      if sigint['stop']:  # read after the hooks: a Ctrl-C during this step stops at this step
        _check_parameters(name, step, state, checkpointer)  # it may have come after save_now
        checkpointer.save(step, state, force=True)
        checkpointer.wait()
        raise errors.TrainingInterrupted(f'{name}: interrupted after step {step}; checkpoint saved. '
                                  'Rerun the same command to resume.')
  checkpointer.wait()
  return state
