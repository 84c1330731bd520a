"""The quality network g and the inputs of each quality-model variant.

Variants (rows of the paper's Table 1):
* ``uncertainty`` -- g(x, y_hat, z): the paper's method, with f's uncertainty map;
* ``no_uncertainty`` -- g(x, y_hat): the same network without the map;
* ``qualitynet`` -- g(x * y_hat): QualityNet (Huang et al. 2016), the image
  masked by the predicted segmentation.
The map z is divided by a scale fixed on g's training split (its 99th
percentile), because the methods' maps live on different scales (entropy <=
ln 2, HCNN's sigma unbounded) and g should see inputs of order one.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ('uncertainty', 'no_uncertainty', 'qualitynet')


def make_inputs(variant: str, images: jax.Array, predictions: jax.Array,
                uncertainty: jax.Array) -> jax.Array:
  """g's input for ``variant`` from float images (N, H, W, 3), labels and scaled maps (N, H, W)."""
  y = predictions.astype(images.dtype)[..., None]
  if variant == 'uncertainty':
    return jnp.concatenate([images, y, uncertainty.astype(images.dtype)[..., None]], -1)
  if variant == 'no_uncertainty':
    return jnp.concatenate([images, y], -1)
  if variant == 'qualitynet':
    return images * y
  raise ValueError(f'unknown quality-model variant {variant!r}; expected one of {VARIANTS}')


class VGGRegressor(nn.Module):
  """VGG-style CNN: [conv3x3-ReLU x2, max-pool] per width, global mean, MLP, sigmoid.

  The sigmoid keeps predictions in [0, 1], the range of Dice and Jaccard.
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  dense: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = (x - 0.5) * 2.0
    for width in self.widths:
      for _ in range(2):
        x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.mean(axis=(1, 2))
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.sigmoid(nn.Dense(1)(x))[..., 0]


def create_regressor(quality_config) -> VGGRegressor:
  return VGGRegressor(widths=tuple(quality_config.widths), dense=quality_config.dense)
