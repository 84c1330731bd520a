"""MC-dropout (Gal & Ghahramani): T stochastic passes, entropy of the mean softmax.

The T passes go through ``sampling.mean_over_samples``: vectorised over split
keys in chunks of ``config.sampling.chunk_size``, never a Python loop.
"""

from __future__ import annotations

import jax

from segqual_jax.uncertainty import base, sampling


class MCDropout(base.Method):
  name = 'mc_dropout'

  def predict(self, params, images, key):
    sample = lambda k: jax.nn.softmax(self.apply(params, images, dropout_key=k)['logits'])
    probs = sampling.mean_over_samples(sample, base.purpose_keys(key)['dropout'],
                                       self.config.uncertainty.mc_samples,
                                       self.config.sampling.chunk_size)
    return probs, base.entropy(probs)
