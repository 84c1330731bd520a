"""Deep ensembles (Lakshminarayanan et al. 2017): M U-Nets trained at once.

Member m is exactly the network a single-model run would train with its own
init key ``fold_in(init_key, m)``, its own data order (``batch_indices`` with
seed ``(seed, m)``) and its own step keys ``fold_in(step_key, m)``; the
ensemble trains all M in one jitted step, the single-model loss mapped over
parameters stacked on a leading member axis by the sampling engine
(``stack_loss``: ``vmap`` in chunks, see there why CPU takes chunk 1). The
loss is the sum of the member losses, so each member's gradient is its own,
and Adam is elementwise, so the stacked update is M independent updates
(tests/test_wider_methods.py checks this against separately trained members).

At test time the members are the sampling engine's inputs (their stacked
parameters, one member per sample), so they are vmapped in bounded chunks
like MC-dropout passes. The map is ``uncertainty.mc_map``: the entropy of the
ensemble mean or the mutual information between prediction and member.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from segqual_jax.segmenter import sampling
from segqual_jax.segmenter.methods import base


def member_key(key: jax.Array, member: int | jax.Array) -> jax.Array:
  """Member m's key for any purpose: ``fold_in(key, m)``."""
  return jax.random.fold_in(key, member)


def member_seed(seed: int, member: int) -> tuple[int, int]:
  """Member m's data-order seed."""
  return (seed, member)


def stack_loss(loss_fn: Callable, members: int, sampling_config) -> Callable:
  """The ensemble loss from a single-model ``loss_fn(params, state, batch, key)``.

  ``params`` carry a leading member axis, the batch arrays a member axis 1
  (``(B, M, ...)``: the batch axis stays first, so it is the one sharded over
  devices), and member m's key is ``member_key(key, m)``. Returns the sum of
  the member losses and the members' mean metrics.

  The members go through the sampling engine (``sampling.scan_inputs``), so
  training is vectorised exactly as far as ``config.sampling`` says. This
  matters: ``vmap`` over stacked *parameters* turns every convolution into a
  grouped one, which XLA:CPU ran ~20x slower than M plain ones
  here (experiments/BENCHMARKS.md), while accelerators run it well. With the
  auto chunk, CPU therefore takes one member at a time -- M plain
  convolutions in one jit, the member loop unrolled (a rolled scan's backward
  pass is as slow) -- and GPU/TPU vmap as many members as fit in memory.
  """
  def ensemble_loss(params, method_state, batch, key):
    def one(row):
      member_params, member_batch, member_key_ = row
      loss, (metrics, _) = loss_fn(member_params, method_state, member_batch, member_key_)
      return (loss, metrics), None

    keys = jax.vmap(lambda m: member_key(key, m))(jnp.arange(members))
    rows = (params, jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batch), keys)
    # A member's training working set: its gradient, not just its forward pass.
    grad_one = lambda row: jax.grad(lambda p: one((p, *row[1:]))[0][0])(row[0])
    chunk = sampling.resolve_chunk(sampling_config, grad_one,
                                   jax.tree.map(lambda x: x[0], rows), members)
    (loss, metrics), _ = sampling.scan_inputs(one, rows, chunk, unroll=True)
    return loss, (jax.tree.map(lambda x: x / members, metrics), method_state)
  return ensemble_loss


class DeepEnsemble(base.SamplingMethod):
  name = 'ensemble'

  @property
  def members(self) -> int:
    return self.config.uncertainty.ensemble_members

  def init_params(self, key, image_size):
    init = super().init_params
    return jax.tree.map(lambda *leaves: jnp.stack(leaves),
                        *[init(member_key(key, m), image_size) for m in range(self.members)])

  def sample_features(self, params, images):
    return images

  def sample_inputs(self, params, key, num_samples):
    del key, num_samples
    return params  # one member per sample

  def sample(self, params, features, member_params):
    del params
    return jax.nn.softmax(self.apply(member_params, features)['logits'])

  def predict_samples(self, params, images, key, keep_labels=False):
    return self.summary_map(params, images, key, self.members, keep_labels)

  def feature_params(self, params):
    return jax.tree.map(lambda x: x[0], params)

  def deterministic_predict(self, params, images, key=None):
    """Stage 1's per-epoch validation: the ensemble mean and ``1 - max`` of it."""
    probs, _, _ = self.predict_samples(params, images, key)
    return probs, 1.0 - probs.max(-1)
