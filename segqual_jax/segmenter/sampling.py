"""The sampling engine: memory-bounded, vectorised Monte-Carlo over RNG keys.

Every stochastic method draws its samples here (MC-dropout passes, HCNN logit
noise in the loss and at test time). Three choices make it fast:

* **Chunks.** A Python loop re-dispatches T times; one ``vmap`` over all T
  keys holds T samples at once and, on CPU, is slower than the loop (a T-times
  larger working set falls out of cache). The engine splits the keys once,
  ``vmap``-s over chunks of ``chunk`` keys and visits the chunks with
  ``lax.scan``, so memory grows with the chunk, not with T, and the whole run
  is one traced function that ``jit`` compiles once.
* **Running sums.** The scan carries sums (mean probability, mean per-sample
  entropy for the mutual information); per-sample label maps are kept, one
  byte a pixel, only when a score asks for them.
* **No work twice.** A method hands the engine only the stochastic part of
  its forward pass (``Method.sample_features`` runs the deterministic part
  once per image, see ``segmenter/unet.py``).

Sample t always uses key t of ``jax.random.split(key, T)``, whatever the
chunk, so the chunk changes speed and memory but not the samples.

The ``auto`` chunk rule (``config.sampling.chunk_size='auto'``), per backend:

* CPU: 1 -- a ``scan`` over single samples. XLA already spreads each
  operation over the cores, and wider chunks only enlarge the working set:
  the chunk sweep in experiments/BENCHMARKS.md finds chunk 1 fastest for both
  the convolution-bound MC-dropout sampler and the RNG-bound HCNN one.
* GPU/TPU: measured (``measured_chunk``). While the engine is traced,
  chunks 1, 4, 16, ... are compiled and timed once per shape and process, up
  to the largest whose working set fits the share
  ``auto_accelerator_memory_fraction`` of the device's memory; the smallest
  within 5 % of the fastest wins, so memory stays flat in T. One sample's
  working set is estimated as the bytes of every intermediate value of its
  traced program -- an upper bound, since XLA fuses and reuses buffers.
  ``chunk_size='measure'`` measures on any backend (a CPU too).

Always 1 <= chunk <= T. f runs ``vmap``-ped over the cases of a batch
(``runner.py``: each case has its own key), so the engine traces one case at
a time; ``cases_vmapped`` tells the auto rule how many cases share the device
at once, and the budget is for all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

EPS = 1e-6  # probability floor inside logarithms

log = logging.getLogger(__name__)

# Device memory the auto rule assumes when an accelerator does not report it.
_DEFAULT_ACCELERATOR_BYTES = 16 * 2**30
# ... and 'measure' on a CPU, which reports none: the candidates' memory cap.
_DEFAULT_CPU_BYTES = 2 * 2**30


_CASES = contextvars.ContextVar('segqual_cases_vmapped', default=1)


@contextlib.contextmanager
def cases_vmapped(num_cases: int):
  """While tracing f vmapped over ``num_cases`` cases: the auto chunk budgets for all of them."""
  token = _CASES.set(max(1, int(num_cases)))
  try:
    yield
  finally:
    _CASES.reset(token)


def cases_in_flight() -> int:
  """How many cases are traced together (1 outside ``cases_vmapped``)."""
  return _CASES.get()


def entropy(probs: jax.Array) -> jax.Array:
  """Entropy over the last (class) axis, in nats."""
  return -jnp.sum(probs * jnp.log(jnp.clip(probs, EPS, 1.0)), axis=-1)


def sample_keys(key: jax.Array, num_samples: int) -> jax.Array:
  """The T keys of a sampling run; sample t uses key t."""
  return jax.random.split(key, num_samples)


def _jaxpr_bytes(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      aval = var.aval
      if hasattr(aval, 'shape') and hasattr(aval, 'dtype'):
        itemsize = getattr(aval.dtype, 'itemsize', 8)  # typed PRNG keys: 2 x uint32
        total += int(np.prod(aval.shape, dtype=np.int64)) * itemsize
    for sub in jax_core.jaxprs_in_params(eqn.params):
      total += _jaxpr_bytes(sub)
  return total


def working_set_bytes(sample_fn: Callable[[Any], Any], key: Any) -> int:
  """Bytes of all intermediate values of one ``sample_fn(key)`` (tracing only).

  ``key`` is one input row of the engine: a key, or any pytree (an ensemble member).
  """
  return _jaxpr_bytes(jax.make_jaxpr(sample_fn)(key).jaxpr)


def accelerator_chunk(per_sample_bytes: int, memory_bytes: float, memory_fraction: float,
                      num_samples: int) -> int:
  """The largest chunk whose working set fits ``memory_fraction`` of the device."""
  budget = memory_fraction * memory_bytes
  return int(max(1, min(num_samples, budget // max(1, per_sample_bytes))))


# Measured chunks, per backend and traced sampling program: each is timed once per process.
_MEASURED: dict[tuple, int] = {}
MEASURE_CANDIDATE_STEP = 4  # candidates 1, 4, 16, 64, ... (and the memory cap), each compiled once
# The smallest candidate within this share of the fastest wins: memory grows with the
# chunk, and on an H200 chunk 27 beat 16 by 1.6 % at T=100 for 1.7x the memory.
MEASURE_TOLERANCE = 0.05


def _stand_in(aval, rng: np.random.Generator):
  """A concrete array of ``aval``'s shape and dtype (values do not change speed)."""
  if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
    count = int(np.prod(aval.shape, dtype=np.int64))
    return jax.random.split(jax.random.key(0), max(count, 1))[:count].reshape(aval.shape)
  if jnp.issubdtype(aval.dtype, jnp.floating):
    return jnp.asarray(rng.uniform(0.0, 1.0, aval.shape), aval.dtype)
  return jnp.zeros(aval.shape, aval.dtype)


def measure_candidates(cap: int, num_samples: int) -> list[int]:
  """The chunks a measurement times: 1, 4, 16, ... below ``cap``, and ``cap`` itself."""
  cap = max(1, min(cap, num_samples))
  candidates, chunk = [], 1
  while chunk < cap:
    candidates.append(chunk)
    chunk *= MEASURE_CANDIDATE_STEP
  return candidates + [cap]


def measured_chunk(sample_fn: Callable[[Any], Any], key: Any, num_samples: int, cap: int,
                   repeats: int = 2) -> tuple[int, dict[int, float]]:
  """The fastest chunk of ``measure_candidates(cap, T)``, timed on this device (the smallest
  within ``MEASURE_TOLERANCE`` of the fastest).

  Runs while the engine is being traced, so ``sample_fn`` closes over tracers:
  its program is traced once more (``make_jaxpr``), the tracers it closes over
  become inputs, and the timed stand-in -- the same program, ``scan_inputs``
  over T rows, vmapped over ``cases_in_flight()`` cases like the real engine --
  gets concrete arrays of their shapes. Each candidate is compiled and run
  once, then timed ``repeats`` times (the minimum counts); the winner is
  cached per process for this program, T and device, so a shape is measured
  once. Returns ``(chunk, seconds per candidate)``.
  """
  closed = jax.make_jaxpr(sample_fn)(key)
  row_leaves = jax.tree.leaves(key)
  row_avals = [jax.typeof(leaf) for leaf in row_leaves]
  const_avals = [jax.typeof(c) for c in closed.consts]
  cases = cases_in_flight()
  device = jax.devices()[0]
  cache_key = (device.platform, device.device_kind, str(closed.jaxpr), tuple(const_avals),
               tuple(row_avals), num_samples, cases, cap)
  if cache_key in _MEASURED:
    return _MEASURED[cache_key], {}
  with jax.ensure_compile_time_eval():  # concrete arrays and runs, though an engine is being traced
    seconds = _time_candidates(closed.jaxpr, const_avals, row_avals, cases, num_samples, cap,
                               repeats)
  fastest = min(seconds.values())
  best = min(c for c, t in seconds.items() if t <= (1 + MEASURE_TOLERANCE) * fastest)
  _MEASURED[cache_key] = best
  log.info('measured sampling chunk on %s (T=%d, %d case(s)): %s -> %d', device.device_kind,
           num_samples, cases, ', '.join(f'{c}: {1e3 * t:.1f} ms' for c, t in seconds.items()),
           best)
  return best, seconds


def _time_candidates(jaxpr, const_avals, row_avals, cases: int, num_samples: int, cap: int,
                     repeats: int) -> dict[int, float]:
  rng = np.random.default_rng(0)
  batched = lambda aval, lead: jax.ShapeDtypeStruct(lead + aval.shape, aval.dtype)
  consts = [_stand_in(batched(a, (cases,)), rng) for a in const_avals]
  rows = [_stand_in(batched(a, (cases, num_samples)), rng) for a in row_avals]

  def one_case(case_consts, case_rows, chunk):
    def one(row_leaves):
      return jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(jaxpr, case_consts))(*row_leaves), None
    return scan_inputs(one, case_rows, chunk)[0]

  seconds = {}
  for chunk in measure_candidates(cap, num_samples):
    program = jax.vmap(lambda c, r, chunk=chunk: one_case(c, r, chunk))
    run = jax.jit(program).lower(consts, rows).compile()
    jax.block_until_ready(run(consts, rows))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(run(consts, rows))
      times.append(time.perf_counter() - t0)
    seconds[chunk] = min(times)
  return seconds


def resolve_chunk(sampling_config, sample_fn: Callable[[Any], Any], key: Any,
                  num_samples: int) -> int:
  """The chunk for this run: ``config.sampling.chunk_size`` or the auto rule (module doc)."""
  setting = str(sampling_config.chunk_size)
  if setting.isdigit():
    return max(1, min(int(setting), num_samples))
  device = jax.devices()[0]
  if setting == 'auto' and device.platform == 'cpu':
    return 1
  stats = device.memory_stats() or {}
  cap = accelerator_chunk(working_set_bytes(sample_fn, key) * cases_in_flight(),
                          stats.get('bytes_limit', _DEFAULT_ACCELERATOR_BYTES if device.platform != 'cpu'
                                    else _DEFAULT_CPU_BYTES),
                          sampling_config.auto_accelerator_memory_fraction, num_samples)
  return measured_chunk(sample_fn, key, num_samples, cap)[0]


def scan_inputs(sample_fn: Callable[[Any], tuple[Any, Any]], inputs: Any,
                chunk: int, unroll: bool = False) -> tuple[Any, Any]:
  """Sums one part of ``sample_fn(x)`` and keeps the other, over the rows of ``inputs``.

  The engine's core. A "sample" is whatever one row of ``inputs`` selects:
  an RNG key (MC-dropout, HCNN, hierarchical latents), an ensemble member's
  parameters, or a test-time transform's index.

  Args:
    sample_fn: one row of ``inputs`` -> ``(summed, kept)``, two pytrees of
      arrays (either may be ``None``).
    inputs: a pytree whose leaves share a leading axis of length T >= 1.
    chunk: samples computed together by ``vmap`` (memory ~ chunk samples);
      the remainder of T / chunk runs as one smaller chunk.
    unroll: unroll the scan over chunks in the traced program. For a gradient
      through the engine (training an ensemble, where T = M is small): on
      XLA:CPU the backward pass of convolutions inside a rolled scan ran ~18x
      slower here than the same convolutions unrolled.

  Returns:
    ``(sum over the T samples of summed, kept stacked on a leading T axis)``.
  """
  num_samples = jax.tree.leaves(inputs)[0].shape[0]
  chunk = max(1, min(chunk, num_samples))
  num_full = num_samples // chunk
  batched = jax.vmap(sample_fn)
  row = lambda i: jax.tree.map(lambda x: x[i], inputs)
  summed_shape, _ = jax.eval_shape(sample_fn, row(0))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), summed_shape)

  def step(total, chunk_inputs):
    summed, kept = batched(chunk_inputs)
    return jax.tree.map(lambda a, s: a + s.sum(0), total, summed), kept

  full = jax.tree.map(lambda x: x[:num_full * chunk].reshape((num_full, chunk) + x.shape[1:]),
                      inputs)
  total, kept = jax.lax.scan(step, zeros, full, unroll=unroll)
  kept = jax.tree.map(lambda k: k.reshape((num_full * chunk,) + k.shape[2:]), kept)
  if num_full * chunk < num_samples:
    total, rest = step(total, jax.tree.map(lambda x: x[num_full * chunk:], inputs))
    kept = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), kept, rest)
  return total, kept


def scan_samples(sample_fn: Callable[[jax.Array], tuple[Any, Any]], key: jax.Array,
                 num_samples: int, chunk: int) -> tuple[Any, Any]:
  """``scan_inputs`` over T keys: sample t uses ``sample_keys(key, num_samples)[t]``."""
  return scan_inputs(sample_fn, sample_keys(key, num_samples), chunk)


def mean_over_samples(sample_fn: Callable[[jax.Array], Any], key: jax.Array,
                      num_samples: int, chunk: int) -> Any:
  """Mean of the pytree ``sample_fn(k)`` over T keys split from ``key``."""
  total, _ = scan_samples(lambda k: (sample_fn(k), None), key, num_samples, chunk)
  return jax.tree.map(lambda a: a / num_samples, total)


def summarize(sample_fn: Callable[[jax.Array], jax.Array], key: jax.Array, num_samples: int,
              chunk: int, keep_labels: bool = False,
              expected_entropy: bool = False) -> dict[str, jax.Array]:
  """``summarize_inputs`` over T keys split from ``key`` (sample t uses key t)."""
  return summarize_inputs(sample_fn, sample_keys(key, num_samples), chunk, keep_labels,
                          expected_entropy)


def summarize_inputs(sample_fn: Callable[[Any], jax.Array], inputs: Any, chunk: int,
                     keep_labels: bool = False,
                     expected_entropy: bool = False) -> dict[str, jax.Array]:
  """What the scores need from T probability samples, in bounded memory.

  Only what is asked for is computed: a per-sample entropy costs a log per
  pixel and class per sample, which is most of the work of a cheap sampler
  such as HCNN's logit noise.

  Args:
    sample_fn: one row of ``inputs`` -> class probabilities (N, H, W, C) of one sample.
    inputs, chunk: as in ``scan_inputs``.
    keep_labels: also return each sample's argmax label map.
    expected_entropy: also return the mean per-sample entropy and the mutual
      information.

  Returns:
    ``mean_probs`` (N, H, W, C) and ``entropy`` of the mean (total
    uncertainty, nats, (N, H, W)); with ``expected_entropy``, that (the
    aleatoric part) and ``mutual_information`` = their difference (the
    epistemic part, clipped at 0 against rounding); with ``keep_labels``,
    ``labels`` (T, N, H, W) uint8.
  """
  num_samples = jax.tree.leaves(inputs)[0].shape[0]
  num_classes = jax.eval_shape(sample_fn, jax.tree.map(lambda x: x[0], inputs)).shape[-1]
  binary = num_classes == 2

  def one(k):
    probs = sample_fn(k)
    # Two classes: carry p(lesion) alone. XLA then never builds the (.., 2)
    # array per sample, which halved HCNN's sampling time here.
    summed = {'probs': probs[..., 1] if binary else probs}
    if expected_entropy:
      summed['entropy'] = entropy(probs)
    kept = probs.argmax(-1).astype(jnp.uint8) if keep_labels else None
    return summed, kept

  total, labels = scan_inputs(one, inputs, chunk)
  mean_probs = total['probs'] / num_samples
  if binary:
    mean_probs = jnp.stack([1.0 - mean_probs, mean_probs], -1)
  out = {'mean_probs': mean_probs, 'entropy': entropy(mean_probs)}
  if expected_entropy:
    out['expected_entropy'] = total['entropy'] / num_samples
    out['mutual_information'] = jnp.maximum(out['entropy'] - out['expected_entropy'], 0.0)
  if keep_labels:
    out['labels'] = labels
  return out
