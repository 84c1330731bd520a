"""Maximum softmax probability (Hendrycks & Gimpel): one deterministic pass.

The map is ``1 - max_c softmax`` so that, like every method here, higher means
more uncertain (the paper's z = max softmax is its complement).
"""

from __future__ import annotations

from segqual_jax.segmenter.methods import base


class MaxSoftmax(base.Method):
  name = 'msp'

  def predict(self, params, images, key):
    return self.deterministic_predict(params, images, key)
