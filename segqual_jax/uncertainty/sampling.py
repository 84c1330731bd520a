"""Memory-bounded Monte-Carlo averaging over RNG keys.

Every stochastic method (MC-dropout passes, HCNN logit noise) needs
``mean_t g(key_t)`` for T keys. A plain ``vmap`` over all T keys holds T
samples in memory at once and, on CPU, is slower than a Python loop; a Python
loop re-dispatches T times. Here the keys are split once, ``vmap``-ed over
chunks of ``chunk_size`` keys, and the chunks are visited by ``lax.scan`` with
a running sum, so memory grows with the chunk, not with T, and the whole
computation is one traced function that ``jit`` compiles once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def sample_keys(key: jax.Array, num_samples: int) -> jax.Array:
  """The T keys of a sampling run; sample t of ``mean_over_samples`` uses key t."""
  return jax.random.split(key, num_samples)


def mean_over_samples(sample_fn: Callable[[jax.Array], Any], key: jax.Array,
                      num_samples: int, chunk_size: int) -> Any:
  """Mean of ``sample_fn(k)`` over ``num_samples`` keys split from ``key``.

  Args:
    sample_fn: key -> pytree of arrays (one sample).
    key: base key; identical keys give identical results.
    num_samples: T >= 1.
    chunk_size: samples computed together by ``vmap`` (memory ~ chunk_size
      samples); the remainder of T / chunk_size runs as one smaller chunk.

  Returns:
    The pytree mean over the T samples.
  """
  keys = sample_keys(key, num_samples)
  chunk = max(1, min(chunk_size, num_samples))
  num_full = num_samples // chunk
  batched = jax.vmap(sample_fn)
  add_chunk = lambda acc, ks: jax.tree.map(lambda a, s: a + s.sum(0), acc, batched(ks))
  shapes = jax.eval_shape(sample_fn, keys[0])
  total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  full = keys[:num_full * chunk].reshape((num_full, chunk) + keys.shape[1:])
  total, _ = jax.lax.scan(lambda acc, ks: (add_chunk(acc, ks), None), total, full)
  if num_full * chunk < num_samples:
    total = add_chunk(total, keys[num_full * chunk:])
  return jax.tree.map(lambda a: a / num_samples, total)
