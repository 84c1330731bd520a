"""Heteroscedastic classifier (Kendall & Gal): Gaussian noise on the logits.

Training minimises the NLL of ``mean_t softmax(rho + sigma * eps_t)`` with
``eps_t ~ N(0, 1)`` drawn independently per sample, pixel *and class*; sigma is
one softplus channel per pixel (the paper's z). The network runs once: only the
cheap logit perturbation is sampled, vectorised over keys.

Test-time map (``config.uncertainty.hcnn_map``): ``'sigma'`` (default; the
learned aleatoric scale, as in the paper) or ``'entropy'`` of the sampled mean.
Probabilities are the sampled mean with ``hcnn_test_samples`` samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segqual_jax.uncertainty import base, sampling


class Heteroscedastic(base.Method):
  name = 'hcnn'
  heads = ('variance',)

  def _mean_probs(self, out, key, num_samples):
    logits, sigma = out['logits'], out['variance'][..., None]
    sample = lambda k: jax.nn.softmax(logits + sigma * jax.random.normal(k, logits.shape))
    return sampling.mean_over_samples(sample, key, num_samples, self.config.sampling.chunk_size)

  def loss(self, params, state, images, masks, key):
    keys = base.purpose_keys(key)
    out = self.apply(params, images, keys['dropout'])
    probs = self._mean_probs(out, keys['noise'], self.config.uncertainty.hcnn_train_samples)
    picked = jnp.take_along_axis(probs, masks[..., None].astype(jnp.int32), -1)[..., 0]
    loss = -jnp.log(jnp.clip(picked, base.EPS, 1.0)).mean()
    return loss, ({'loss': loss, 'sigma': out['variance'].mean()}, state)

  def predict(self, params, images, key):
    out = self.apply(params, images)
    probs = self._mean_probs(out, base.purpose_keys(key)['noise'],
                             self.config.uncertainty.hcnn_test_samples)
    if self.config.uncertainty.hcnn_map == 'entropy':
      return probs, base.entropy(probs)
    return probs, out['variance']
