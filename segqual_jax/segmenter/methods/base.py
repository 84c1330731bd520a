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

from segqual_jax.segmenter import unet
from segqual_jax.segmenter import sampling
from segqual_jax.segmenter.sampling import EPS, entropy  # noqa: F401  (the methods' shared names)


DICE_SMOOTH = 1e-5  # nnU-Net's: keeps the soft Dice finite on a batch without lesion


def purpose_keys(key: jax.Array) -> dict[str, jax.Array]:
  """Independent keys per use, derived by fold_in so adding one never shifts another."""
  return {name: jax.random.fold_in(key, i)
          for i, name in enumerate(('dropout', 'noise', 'hints', 'latent'))}


class Method:
  """Base class: MSP-style training (cross-entropy, dropout on)."""

  name = ''
  heads: tuple[str, ...] = ()
  members = 1  # networks trained at once (a deep ensemble's M; see ensemble.py)
  # Methods that differ only at test time train the very same f: MSP's
  # cross-entropy with dropout on. They name it here, and a run may reuse such
  # an f (config.seg.reuse_from) instead of training it again.
  trains_like = ''  # '' = its own training
  skip_latents = False  # Gaussian latents in the U-Net's skips (hierarchical.py)

  def __init__(self, config):
    self.config = config
    self.model = unet.create_unet(config.seg, self.heads, self.skip_latents)

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

  def features(self, params, images: jax.Array) -> jax.Array:
    """(N, D) f's pooled encoder statistics (``UNet.encoder_features``), dropout off: the
    applicability score's view of an image."""
    return self.model.apply({'params': self.feature_params(params)}, images,
                            method=unet.UNet.encoder_features)

  def feature_params(self, params):
    """The one network whose encoder gives the features (an ensemble: its first member)."""
    return params

  def loss(self, params, state: dict, images: jax.Array, masks: jax.Array, key: jax.Array):
    """Returns ``(loss, (metrics, new_state))``; the default is pixel cross-entropy
    (plus ``overlap_loss`` when ``config.seg.loss`` asks for it)."""
    out = self.apply(params, images, purpose_keys(key)['dropout'])
    loss = optax.softmax_cross_entropy_with_integer_labels(out['logits'], masks).mean()
    overlap = self.overlap_loss(out['logits'], masks)
    return loss + overlap, ({'loss': loss + overlap, 'overlap': overlap}, state)

  def overlap_loss(self, logits: jax.Array, masks: jax.Array) -> jax.Array:
    """nnU-Net's soft Dice term, ``1 -`` the mean over lesion classes of the soft Dice
    summed over the whole batch ("batch Dice"); 0 for ``config.seg.loss = 'ce'``.

    Why: on MRI slices most pixels, and most slices, hold no lesion. Pixel
    cross-entropy then pays little for a lesion f leaves out, and f
    under-segments (LGG: three false-negative voxels per false positive). The
    Dice term weighs the lesion as the user's bar does. Summed over the batch,
    a slice without lesion adds its false positives to the denominator instead
    of an undefined 0/0. Every method adds it to its own likelihood term, on
    its mean logits (HCNN's noise scale gets no gradient from it).
    """
    if self.config.seg.loss == 'ce':
      return jnp.zeros((), jnp.float32)
    probs = jax.nn.softmax(logits)[..., 1:]
    truth = jax.nn.one_hot(masks, logits.shape[-1])[..., 1:]
    axes = tuple(range(probs.ndim - 1))  # batch and pixels, per lesion class
    intersection = (probs * truth).sum(axes)
    total = probs.sum(axes) + truth.sum(axes)
    return 1.0 - jnp.mean((2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH))

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

  def predict_samples(self, params, images: jax.Array, key: jax.Array, keep_labels: bool = False):
    """``predict`` plus the per-sample label maps (T, N, H, W) the sample scores need.

    Single-pass methods have no samples: ``(probabilities, map, None)``.
    """
    del keep_labels
    return (*self.predict(params, images, key), None)

  # Stochastic methods split their forward pass for the sampling engine: the
  # deterministic part runs once per image, only the rest runs per key.

  def sample_features(self, params, images: jax.Array) -> Any:
    """The deterministic part of a sample, computed once per image."""
    raise NotImplementedError(f'{self.name} does not sample')

  def sample(self, params, features: Any, key: jax.Array) -> jax.Array:
    """Class probabilities (N, H, W, C) of one sample, selected by one row of ``sample_inputs``."""
    raise NotImplementedError(f'{self.name} does not sample')

  def sample_inputs(self, params, key: jax.Array, num_samples: int) -> Any:
    """What selects each sample, stacked on a leading axis: by default T keys.

    Methods whose samples are not random draws override it (an ensemble's
    members, the test-time transforms); the engine treats every kind alike.
    """
    del params
    return sampling.sample_keys(key, num_samples)

  def naive_sample(self, params, images: jax.Array, key: jax.Array) -> jax.Array:
    """The same sample from the whole forward pass: the reference the engine must equal."""
    return self.sample(params, self.sample_features(params, images), key)

  def chunk_for(self, sample_fn, key: Any, num_samples: int) -> int:
    """The engine's chunk for this sampling run (``config.sampling``); ``key`` is one input row."""
    return sampling.resolve_chunk(self.config.sampling, sample_fn, key, num_samples)

  def sample_summary(self, params, images: jax.Array, key: jax.Array, num_samples: int,
                     keep_labels: bool = False, expected_entropy: bool = False,
                     features: Any = None) -> dict[str, jax.Array]:
    """``sampling.summarize_inputs`` of ``num_samples`` samples selected from ``key``.

    ``features`` may pass in ``sample_features(params, images)`` when the
    caller needs them too, so the deterministic part still runs once.
    """
    if features is None:
      features = self.sample_features(params, images)
    inputs = self.sample_inputs(params, key, num_samples)
    sample_fn = lambda x: self.sample(params, features, x)
    chunk = self.chunk_for(sample_fn, jax.tree.map(lambda a: a[0], inputs), num_samples)
    return sampling.summarize_inputs(sample_fn, inputs, chunk, keep_labels, expected_entropy)


class SamplingMethod(Method):
  """A method whose prediction summarises samples drawn through the engine.

  Subclasses define ``sample_features``, ``sample`` (and, if their samples
  are not keys, ``sample_inputs``) and ``predict_samples``; ``predict`` is
  ``predict_samples`` without the label maps.
  """

  def predict(self, params, images: jax.Array, key: jax.Array):
    probs, umap, _ = self.predict_samples(params, images, key, keep_labels=False)
    return probs, umap

  def summary_map(self, params, images: jax.Array, key: jax.Array, num_samples: int,
                  keep_labels: bool):
    """``(mean probabilities, uncertainty.mc_map map, labels or None)`` of T samples."""
    mc_map = self.config.uncertainty.mc_map
    summary = self.sample_summary(params, images, key, num_samples, keep_labels=keep_labels,
                                  expected_entropy=mc_map == 'mutual_information')
    return summary['mean_probs'], summary[mc_map], summary.get('labels')
