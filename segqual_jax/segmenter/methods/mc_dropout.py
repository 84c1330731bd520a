"""MC-dropout (Gal & Ghahramani): T stochastic passes, entropy of the mean softmax.

The T passes go through the sampling engine (``sampling.summarize``): the
U-Net's deterministic prefix (every layer before the first dropout) runs once
per image, with the prefix skips' share of the decoder's convolutions
(``UNet.shared_prefix``), and only the rest is vectorised over keys in chunks,
never a Python loop. The map is the entropy of the mean softmax (``uncertainty.mc_map =
'entropy'``, the paper's) or the mutual information between prediction and
dropout mask (``'mutual_information'``, the epistemic part alone).
"""

from __future__ import annotations

import jax

from segqual_jax.segmenter import unet
from segqual_jax.segmenter.methods import base


class MCDropout(base.SamplingMethod):
  name = 'mc_dropout'
  trains_like = 'msp'

  def sample_features(self, params, images):
    return self.model.apply({'params': params}, images, method=unet.UNet.shared_prefix)

  def sample(self, params, features, key):
    h, skip_terms = features
    out = self.model.apply({'params': params}, h, (), skip_terms=skip_terms, deterministic=False,
                           rngs={'dropout': key}, method=unet.UNet.from_prefix)
    return jax.nn.softmax(out['logits'])

  def naive_sample(self, params, images, key):
    return jax.nn.softmax(self.apply(params, images, dropout_key=key)['logits'])

  def predict_samples(self, params, images, key, keep_labels=False):
    return self.summary_map(params, images, base.purpose_keys(key)['dropout'],
                            self.config.uncertainty.mc_samples, keep_labels)
