"""The quality network g and the input of each of its three kinds.

The CNN quality models (rows of the paper's Table 1) share one network and
differ in its input:
* ``uncertainty`` -- g(x, y_hat, z): the paper's method, with f's uncertainty map;
* ``no_uncertainty`` -- g(x, y_hat): the same network without the map;
* ``qualitynet`` -- g(x * y_hat): QualityNet (Huang et al. 2016), the image
  masked by the predicted segmentation.
The map z is divided by a scale fixed on g's training split (its 99th
percentile), because the methods' maps live on different scales (entropy <=
ln 2, HCNN's sigma unbounded) and g should see inputs of order one. z may have
several channels (N, H, W, C) -- an outside model's segmentation with the
surrogate's map and the disagreement map (``segmenter/external.py``) -- each
with its own scale.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segqual_jax.config import schema

NAMES = schema.CNN_QUALITY_MODELS


def make_inputs(name: str, images: jax.Array, masks: jax.Array, maps: jax.Array) -> jax.Array:
  """g's input for model ``name`` from float images (N, H, W, 3), the masks under review and
  scaled maps (N, H, W) or (N, H, W, C)."""
  y = masks.astype(images.dtype)[..., None]
  if name == 'uncertainty':
    z = maps if maps.ndim == 4 else maps[..., None]
    return jnp.concatenate([images, y, z.astype(images.dtype)], -1)
  if name == 'no_uncertainty':
    return jnp.concatenate([images, y], -1)
  if name == 'qualitynet':
    return images * y
  raise ValueError(f'unknown CNN quality model {name!r}; expected one of {NAMES}')


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


TAIL_SPAN = 10.0  # no scaled training map value exceeds this


def map_scale(maps):
  """The divisor that brings g's training maps to order one: their 99th percentile, but at
  least a ``TAIL_SPAN``-th of their largest value. A float for (N, H, W) maps, a list (one
  per channel) for (N, H, W, C).

  Why the floor: an f trained with a Dice loss (nnU-Net's, ``seg.loss=ce_dice``) is sure
  almost everywhere, and its uncertainty sits on fewer than 1 % of the pixels. The 99th
  percentile is then near 0 and those pixels became inputs in the hundreds, which
  saturated g's sigmoid from the first step: on LGG (seed 0) g learned nothing, its train
  RMSE flat at 0.38, the spread of the targets. Tied to the largest value, the floor holds
  however few pixels are uncertain. Every cross-entropy f measured had a largest value
  within 1.1-7.2 times its 99th percentile, so the floor leaves their scale as it was.
  """
  if maps.ndim == 4:
    p99, top = np.percentile(maps, 99, axis=(0, 1, 2)), maps.max(axis=(0, 1, 2))
    return [float(v) for v in np.maximum(np.maximum(p99, top / TAIL_SPAN), 1e-6)]
  return float(max(np.percentile(maps, 99), maps.max() / TAIL_SPAN, 1e-6))


def init_params(model: VGGRegressor, name: str, key: jax.Array, image_size: int,
                map_channels: int = 1):
  """Fresh parameters of g for model ``name`` (its input shape comes from ``make_inputs``)."""
  size = image_size
  maps = jnp.zeros((1, size, size) if map_channels == 1 else (1, size, size, map_channels))
  dummy = make_inputs(name, jnp.zeros((1, size, size, 3)), jnp.zeros((1, size, size)), maps)
  return jax.jit(lambda k: model.init(k, dummy)['params'])(key)


def model_state(z_scale) -> dict:
  """g's state beside its parameters: the map scale (``map_scale`` of its training maps),
  fixed with g, checkpointed with it and recorded in its ``done.json``."""
  return {'z_scale': jnp.asarray(z_scale, jnp.float32)}


def predict_fn(model: VGGRegressor, name: str):
  """``(params, model_state, float images, f's masks, f's maps) -> predicted quality``, pure.

  The scale is an argument, not a constant folded into the program: training
  and prediction then divide the maps by it in exactly the same way.
  """
  def predict(params, state, images, masks, maps):
    return model.apply({'params': params}, make_inputs(name, images, masks, maps / state['z_scale']))
  return predict
