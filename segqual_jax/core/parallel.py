"""Data parallelism over every device: one mesh, batches split, parameters replicated.

Training and sampling are written for one device; this module is the only
place that knows there may be more. A ``Mesh`` over ``jax.devices()`` with
one axis, ``data``: batches are placed with ``NamedSharding(mesh, P('data'))``
(each device gets ``batch / num_devices`` rows), training state with
``NamedSharding(mesh, P())`` (replicated). ``jit`` then partitions the same
program (GSPMD): convolutions and samplers run on each device's rows, and
the gradient mean becomes an all-reduce. One device is the special case of
a one-device mesh, so there is no second code path.

Multi-host (TPU pods, multi-node GPU): set ``config.runtime.distributed``;
``runtime.configure`` then calls ``jax.distributed.initialize()`` before
anything else touches JAX (Cloud TPU, SLURM and Open MPI are detected;
elsewhere ``runtime.coordinator_address``, ``num_processes`` and
``process_id`` say where the processes meet), and the same command runs on
every host. Every process computes the same global batch indices (a pure
function of the step), keeps its own contiguous block of rows, and
``jax.make_array_from_process_local_data`` assembles the global array;
results come back whole with ``process_allgather``; only process 0 writes
files (``artifacts.py``). Set ``config.runtime.threefry_partitionable=True``
there, so each device draws only its own random bits.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from segqual_jax.core import errors

AXIS = 'data'
_independent = False  # inside ``independent()``: this process's devices only, no collectives


@functools.cache
def _mesh(local: bool) -> Mesh:
  return Mesh(np.asarray(jax.local_devices() if local else jax.devices()), (AXIS,))


def mesh() -> Mesh:
  """The data-parallel mesh over all devices of all processes (this process's own inside
  ``independent()``)."""
  return _mesh(_independent)


def process_share() -> tuple[int, int]:
  """``(this process's index, the number of processes)`` of the job."""
  return jax.process_index(), jax.process_count()


@contextlib.contextmanager
def independent(active: bool = True):
  """Within it, each process of a multi-host job works alone: its own devices' mesh, whole
  batches of its own (no rows shared with other hosts, no gathering), and its own files
  written (``artifacts.is_writer``). For work that splits by case -- predict's share of the
  files -- where processes may run different numbers of batches, so a collective would
  wait forever. No-op with ``active`` False or on one host."""
  global _independent
  before = _independent
  _independent = bool(active) and jax.process_count() > 1
  try:
    yield
  finally:
    _independent = before


def is_independent() -> bool:
  return _independent


def num_devices() -> int:
  return mesh().size


def check_batch_size(batch_size: int, what: str) -> None:
  """A batch must split evenly over the devices; the error names ``what`` (a config field)."""
  if batch_size % num_devices():
    raise errors.ConfigError(
        f'{what}={batch_size} does not split over {num_devices()} devices: '
        f'use a multiple of {num_devices()}')


def _local_rows(batch_size: int) -> slice:
  """This process's contiguous rows of a global batch."""
  per_process = batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_batch(batch: Any) -> Any:
  """Places a global numpy batch (pytree, leading batch axis) split over the mesh."""
  sharding = NamedSharding(mesh(), PartitionSpec(AXIS))

  def place(array):
    array = np.asarray(array)
    check_batch_size(array.shape[0], 'a batch of rows')
    local = array[_local_rows(array.shape[0])] if jax.process_count() > 1 and not _independent else array
    return jax.make_array_from_process_local_data(sharding, local, array.shape)
  return jax.tree.map(place, batch)


def replicated() -> NamedSharding:
  """The layout of training state: whole on every device."""
  return NamedSharding(mesh(), PartitionSpec())


def _local_copy(x: Any) -> Any:
  """A replicated array of the global mesh as this process's own copy (``independent()``)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return x


def replicate(tree: Any) -> Any:
  """Places a pytree (training state, keys) in full on every device."""
  if _independent:  # restored over the global mesh; here each process keeps its own copy
    tree = jax.tree.map(_local_copy, tree)
  return jax.device_put(tree, replicated())


def barrier(name: str) -> None:
  """Waits until every process of a multi-host job gets here (no-op on one host)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def fetch(tree: Any) -> Any:
  """Numpy copies of (possibly sharded, multi-host) arrays, whole on every process."""
  if jax.process_count() > 1 and not _independent:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
