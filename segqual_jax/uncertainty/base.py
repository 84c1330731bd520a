"""The interface every uncertainty method implements.

A method owns the U-Net heads it needs, its training loss (which may carry a
small state, e.g. LCE's lambda) and its test-time prediction:

    predict(params, images, key) -> (probabilities (N, H, W, C), uncertainty (N, H, W))

Convention for every map: **higher means more uncertain**. MSP reports
``1 - max softmax``, LCE ``1 - c``, MC-dropout the entropy (nats) of the mean
softmax, HCNN the predicted noise scale (or the entropy of its sampled mean).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from segqual_jax.models import unet

EPS = 1e-6


def entropy(probs: jax.Array) -> jax.Array:
  """Entropy over the last (class) axis, in nats."""
  return -jnp.sum(probs * jnp.log(jnp.clip(probs, EPS, 1.0)), axis=-1)


def purpose_keys(key: jax.Array) -> dict[str, jax.Array]:
  """Independent keys per use, derived by fold_in so adding one never shifts another."""
  return {name: jax.random.fold_in(key, i)
          for i, name in enumerate(('dropout', 'noise', 'hints'))}


class Method:
  """Base class: MSP-style training (cross-entropy, dropout on)."""

  name = ''
  heads: tuple[str, ...] = ()

  def __init__(self, config):
    self.config = config
    self.model = unet.create_unet(config.seg, self.heads)

  def init_params(self, key: jax.Array, image_size: int) -> Any:
    """Fresh parameters; jitted, because op-by-op init of a U-Net takes ~20 s on CPU."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda k: self.model.init({'params': k}, dummy)['params'])(key)

  def init_state(self) -> dict:
    """Method state carried across training steps (checkpointed with params)."""
    return {}

  def apply(self, params, images: jax.Array, dropout_key: jax.Array | None = None):
    """Forward pass; dropout is active iff a key is given."""
    rngs = None if dropout_key is None else {'dropout': dropout_key}
    return self.model.apply({'params': params}, images,
                            deterministic=dropout_key is None, rngs=rngs)

  def loss(self, params, state: dict, images: jax.Array, masks: jax.Array, key: jax.Array):
    """Returns ``(loss, (metrics, new_state))``; the default is pixel cross-entropy."""
    out = self.apply(params, images, purpose_keys(key)['dropout'])
    loss = optax.softmax_cross_entropy_with_integer_labels(out['logits'], masks).mean()
    return loss, ({'loss': loss}, state)

  def deterministic_predict(self, params, images: jax.Array, key: jax.Array | None = None):
    """One dropout-off pass: softmax and ``1 - max softmax``.

    MSP's prediction, and every method's cheap per-epoch validation pass.
    """
    del key
    probs = jax.nn.softmax(self.apply(params, images)['logits'])
    return probs, 1.0 - probs.max(-1)

  def predict(self, params, images: jax.Array, key: jax.Array):
    """The method's own ``(probabilities, uncertainty map)``."""
    raise NotImplementedError
