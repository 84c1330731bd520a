"""Process-wide JAX settings taken from ``config.runtime``, applied in one place.

Why a config field rather than a constant: ``jax_threefry_partitionable=True``
(JAX's default) lets random bits be generated shard-locally across devices,
but on CPU it makes every RNG op compile ~5x slower (U-Net init: 12 s vs
2.7 s here). Single-host CPU runs want False; sharded GPU/TPU runs want True.
The two settings draw different random bits, so a run and its resumption must
use the same value (the workdir config check enforces it).

``runtime.matmul_precision``: on NVIDIA GPUs JAX computes float32 convolutions
in TF32 by default. Measured on an H200 (experiments/case_keys_cost.py, 224 px,
batch 32): a case's MC-dropout map alone vs inside the batch then differs by
up to 7e-4 (HCNN 3e-3) and boundary pixels of its mask can flip, because
another batch size picks another convolution algorithm; with ``highest`` the
difference is 7e-7 and the masks agree, at 3.6x the MC-dropout time. It
changes rounding only, so it may differ between training and prediction.
"""

import logging

import jax


def configure(config) -> None:
  """Applies ``config.runtime`` to this process before anything is traced.

  With ``runtime.distributed`` it first joins the multi-host job
  (``jax.distributed.initialize()``, once per process; see ``parallel.py``).
  """
  rt = config.runtime
  if rt.distributed and not jax.distributed.is_initialized():
    given = {'coordinator_address': rt.coordinator_address or None,
             'num_processes': rt.num_processes if rt.num_processes > 0 else None,
             'process_id': rt.process_id if rt.process_id >= 0 else None}
    # CPU processes exchange collectives over gloo (accelerators use their own).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  jax.config.update('jax_threefry_partitionable', bool(config.runtime.threefry_partitionable))
  # 'highest': float32 convolutions and matmuls on GPUs whose default is TF32, so a case's
  # outputs do not depend on the batch it is computed in beyond float32 rounding.
  precision = config.runtime.matmul_precision
  jax.config.update('jax_default_matmul_precision', None if precision == 'default' else precision)


def setup_logging() -> logging.Logger:
  """Our progress lines at INFO on stderr, independent of absl's (chatty) verbosity."""
  logger = logging.getLogger('segqual_jax')
  if not logger.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
  return logger


def format_duration(seconds: float) -> str:
  """``5m07s`` or ``1h02m03s``: the one format of every ETA line (training and predict)."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'
