"""Hierarchical uncertainty (after Bai & Bai): Gaussian latents in the U-Net's skips.

Only the paper's abstract is available to us (``../shared/seeds/``): "the
multi-level uncertainties are modelled via the skip-connection module and
then sampled to generate an uncertainty map". The design chosen here from it:

* Every skip connection of level l (fine to coarse) becomes a Gaussian
  latent: two 1x1 convolutions of the encoder's skip tensor give a per-pixel,
  per-channel mean ``mu_l`` and log-variance ``log sigma_l^2``, and the decoder
  receives ``z_l = mu_l + sigma_l * eps`` (reparameterised, ``eps ~ N(0, 1)``)
  instead of the skip (``UNet._skip``). The bottleneck stays deterministic, so
  the latents carry exactly the multi-resolution detail the skips carry.
* Training draws one ``eps`` per step and minimises cross-entropy plus
  ``hier_kl_weight`` times the KL of each ``N(mu_l, sigma_l^2)`` from
  ``N(0, 1)`` (mean over elements, summed over levels): the variational
  information-bottleneck form, which keeps the variances from collapsing to 0.
  The U-Net's usual dropout stays on in training, as for every other row.
* At test time the encoder runs once (``sample_features``: the U-Net prefix)
  and ``hier_samples`` draws of all latents go through the sampling engine;
  the map is the entropy of the mean (or the mutual information,
  ``uncertainty.mc_map``). Dropout is off at test time, so the spread comes
  from the latents alone. The deterministic validation pass uses ``z_l = mu_l``.
"""

from __future__ import annotations

import jax
import optax

from segqual_jax.segmenter import unet
from segqual_jax.segmenter.methods import base


class Hierarchical(base.SamplingMethod):
  name = 'hierarchical'
  skip_latents = True

  def loss(self, params, state, images, masks, key):
    keys = base.purpose_keys(key)
    out = self.model.apply({'params': params}, images, deterministic=False, sample_latents=True,
                           rngs={'dropout': keys['dropout'], 'latent': keys['latent']})
    nll = optax.softmax_cross_entropy_with_integer_labels(out['logits'], masks).mean()
    overlap = self.overlap_loss(out['logits'], masks)
    loss = nll + self.config.uncertainty.hier_kl_weight * out['kl'] + overlap
    return loss, ({'loss': loss, 'nll': nll, 'kl': out['kl'], 'overlap': overlap}, state)

  def sample_features(self, params, images):
    return self.model.apply({'params': params}, images, method=unet.UNet.prefix)

  def sample(self, params, features, key):
    h, skips = features
    out = self.model.apply({'params': params}, h, skips, deterministic=True, sample_latents=True,
                           rngs={'latent': key}, method=unet.UNet.from_prefix)
    return jax.nn.softmax(out['logits'])

  def naive_sample(self, params, images, key):
    out = self.model.apply({'params': params}, images, deterministic=True, sample_latents=True,
                           rngs={'latent': key})
    return jax.nn.softmax(out['logits'])

  def predict_samples(self, params, images, key, keep_labels=False):
    return self.summary_map(params, images, base.purpose_keys(key)['latent'],
                            self.config.uncertainty.hier_samples, keep_labels)
