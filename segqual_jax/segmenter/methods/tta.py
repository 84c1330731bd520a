"""Test-time augmentation (Wang et al. 2019): the 8 flips/rotations of the square.

f is trained exactly like MSP's (cross-entropy, random flips and rot90 in
training), so with the same seed it is the same network. At test time each of
the 8 dihedral transforms of the image goes through f, its softmax is mapped
back to the original orientation, and the 8 predictions are aggregated like
samples: they are the sampling engine's inputs (the transform index instead
of a key), so they are vmapped in chunks like MC-dropout passes, and give the
same maps (``uncertainty.mc_map``: entropy of the mean or mutual information)
and the same label-map scores.

A transform is a pixel permutation. Its index table is built once per image
size by applying ``numpy.rot90``/``fliplr`` to a grid of pixel indices, and
its inverse is the table's ``argsort``, so the inverse is exact by
construction. Under ``vmap`` the transform is one gather, where a
``lax.switch`` over the 8 cases would compute all 8 branches per sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from segqual_jax.segmenter.methods import base

NUM_TRANSFORMS = 8


def transform_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(forward, inverse)`` (8, size*size) source pixel indices of each transform.

  Transform t = ``rot90(x, t % 4)`` after a left-right flip when ``t >= 4``
  (t = 0 is the identity).
  """
  grid = np.arange(size * size).reshape(size, size)
  forward = np.stack([np.rot90(np.fliplr(grid) if t >= 4 else grid, t % 4).ravel()
                      for t in range(NUM_TRANSFORMS)])
  return forward, np.argsort(forward, axis=1)


def _permute(x: jax.Array, table: jax.Array) -> jax.Array:
  """Gathers the pixels of (N, S, S, ...) ``x`` by a flat (S*S,) index table."""
  n, s = x.shape[0], x.shape[1]
  flat = x.reshape((n, s * s) + x.shape[3:])
  return jnp.take(flat, table, axis=1).reshape(x.shape)


def apply_transform(x: jax.Array, t: jax.Array) -> jax.Array:
  """Transform t of the square images or maps ``x`` (N, S, S, ...)."""
  forward, _ = transform_tables(x.shape[1])
  return _permute(x, jnp.asarray(forward)[t])


def invert_transform(x: jax.Array, t: jax.Array) -> jax.Array:
  """Undoes ``apply_transform(., t)`` exactly."""
  _, inverse = transform_tables(x.shape[1])
  return _permute(x, jnp.asarray(inverse)[t])


class TTA(base.SamplingMethod):
  name = 'tta'
  trains_like = 'msp'

  def sample_features(self, params, images):
    if images.shape[1] != images.shape[2]:
      raise ValueError(f'TTA needs square images, got {images.shape[1]}x{images.shape[2]}')
    return images

  def sample_inputs(self, params, key, num_samples):
    del params, key
    return jnp.arange(num_samples)

  def sample(self, params, features, t):
    probs = jax.nn.softmax(self.apply(params, apply_transform(features, t))['logits'])
    return invert_transform(probs, t)

  def predict_samples(self, params, images, key, keep_labels=False):
    return self.summary_map(params, images, key, self.config.uncertainty.tta_transforms,
                            keep_labels)
