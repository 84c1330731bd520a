"""Orbax checkpoints of a training state, in one small module.

Only this file touches the orbax API, so a move to a newer orbax interface is a
one-file change. The state is a plain pytree (dict of params, optimiser state,
step and method state); restore goes through a ``jax.eval_shape`` target so
the restored tree has exactly the structure and dtypes training expects.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from segqual_jax.core import parallel

log = logging.getLogger(__name__)


class Checkpointer:
  """Periodic, asynchronous checkpoints of one training state in ``directory``."""

  def __init__(self, directory: str, every_steps: int, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        item_handlers=ocp.StandardCheckpointHandler(),  # so metadata is readable before a restore
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, target: Any) -> Any:
    """The latest state, shaped like ``target`` (a real or ``eval_shape`` tree).

    Restored replicated on every device of the mesh (``parallel.py``), the
    layout training and prediction use.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated()), target)
    return self._manager.restore(self._manager.latest_step(),
                                 args=ocp.args.StandardRestore(abstract))

  def restore_items(self, targets: dict[str, Any]) -> dict[str, Any]:
    """Top-level items of the latest state (e.g. ``{'params': ...}``), shaped like ``targets``.

    Why: a model is loaded without its trainer. The items not asked for (the
    optimiser state) are read as the checkpoint's own metadata describes them
    and dropped, so the loader needs neither the optimiser nor its config.
    """
    step = self._manager.latest_step()
    metadata = self._manager.item_metadata(step)
    tree = getattr(metadata, 'tree', metadata)
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated())
    full = jax.tree.map(abstract, dict(tree))
    full.update({k: jax.tree.map(abstract, t) for k, t in targets.items()})
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(full))
    return {k: restored[k] for k in targets}

  def resume(self, state: Any, what: str) -> Any:
    """The latest saved state if there is one (logged), else ``state`` unchanged."""
    if self.latest_step() is None:
      return state
    state = self.restore(state)
    log.info('resuming %s from step %d', what, int(state['step']))
    return state

  def due(self, step: int) -> bool:
    """Whether ``save(step, ...)`` would save (orbax's own interval decision): the training
    loop checks the state is finite before every save, not only on log steps."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves at ``step`` if the interval says so (or ``force``); returns whether it did.

    A step that is already saved is skipped: a forced save right after a
    periodic one (Ctrl-C, end of training) must not fail.
    """
    if force:
      self.wait()  # an in-flight save of this very step must be visible below
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
