"""Learned confidence estimates (DeVries & Taylor 2018), per pixel.

Training: ``p' = c * softmax(rho) + (1 - c) * onehot(y)`` on a random half of
each batch (the other half uses c = 1: no hints), loss ``NLL(p') + lambda *
mean(-log c)``. lambda follows the reference code: starting at
``lce_lambda_init`` and after each step divided by 1.01 when the confidence
loss is under the budget beta (confidence is cheap enough: penalise less) and
by 0.99 otherwise. lambda lives in the method state, so it is checkpointed and
a resumed run continues the same schedule. The map is ``1 - c``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segqual_jax.segmenter.methods import base


def update_lambda(lmbda: jax.Array, confidence_loss: jax.Array, budget: float) -> jax.Array:
  """The reference rule: /1.01 if budget > confidence loss, else /0.99."""
  return jnp.where(budget > confidence_loss, lmbda / 1.01, lmbda / 0.99)


class LearnedConfidence(base.Method):
  name = 'lce'
  heads = ('confidence',)

  def init_state(self):
    return {'lmbda': jnp.asarray(self.config.uncertainty.lce_lambda_init, jnp.float32)}

  def loss(self, params, state, images, masks, key):
    keys = base.purpose_keys(key)
    out = self.apply(params, images, keys['dropout'])
    probs = jnp.clip(jax.nn.softmax(out['logits']), base.EPS, 1.0 - base.EPS)
    conf = jnp.clip(out['confidence'], base.EPS, 1.0 - base.EPS)
    n = images.shape[0]
    hinted = jax.random.permutation(keys['hints'], n) < n // 2  # exactly half
    c = jnp.where(hinted[:, None, None], conf, 1.0)[..., None]
    onehot = jax.nn.one_hot(masks, probs.shape[-1])
    mixed = c * probs + (1.0 - c) * onehot
    nll = -jnp.sum(onehot * jnp.log(mixed), -1).mean()
    confidence_loss = -jnp.log(conf).mean()
    lmbda = state['lmbda']
    overlap = self.overlap_loss(out['logits'], masks)
    loss = nll + jax.lax.stop_gradient(lmbda) * confidence_loss + overlap
    new_state = {'lmbda': update_lambda(lmbda, jax.lax.stop_gradient(confidence_loss),
                                        self.config.uncertainty.lce_budget)}
    metrics = {'loss': loss, 'nll': nll, 'confidence_loss': confidence_loss, 'lambda': lmbda,
               'overlap': overlap}
    return loss, (metrics, new_state)

  def predict(self, params, images, key):
    del key  # deterministic
    out = self.apply(params, images)
    return jax.nn.softmax(out['logits']), 1.0 - out['confidence']
