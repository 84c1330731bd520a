"""The segmentation network f: a U-Net with optional uncertainty heads.

Design choices and why:
* GroupNorm instead of BatchNorm: it has no running statistics, so the model is
  a pure function of ``(params, x)`` and MC-dropout samples never need a
  separate inference-mode switch for normalisation.
* Dropout (p=0.5 by default) after the *central* blocks only -- the
  ``central_levels`` encoder/decoder levels next to the bottleneck, plus the
  bottleneck itself -- as in Bayesian SegNet and DeVries & Taylor 2018. It is
  active in training for every method (same architecture for all rows of
  Table 1) and at test time only when a method samples it (MC-dropout).
* Heads: ``logits`` always; ``variance`` (softplus, HCNN's per-pixel noise
  scale -- the paper's z in softmax(rho + z * eps)); ``confidence`` (sigmoid,
  LCE's c). A method asks for the heads it needs.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

HEADS = ('variance', 'confidence')


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each followed by normalisation and ReLU."""
  features: int
  norm: str = 'group'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3))(x)
      if self.norm == 'group':
        x = nn.GroupNorm(num_groups=min(8, self.features))(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net over NHWC float images in [0, 1].

  Attributes:
    base_width: channels of the first level; doubled at each down-sampling.
    depth: number of down-samplings; the input side must be divisible by 2**depth.
    num_classes: output classes (2 for lesion / background).
    dropout_rate: dropout probability after the central blocks.
    central_levels: how many encoder/decoder levels next to the bottleneck get dropout.
    norm: 'group' or 'none'.
    heads: extra heads to build, a subset of ``HEADS``.
  """
  base_width: int = 16
  depth: int = 4
  num_classes: int = 2
  dropout_rate: float = 0.5
  central_levels: int = 1
  norm: str = 'group'
  heads: Sequence[str] = ()

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
    """Returns ``logits`` (N, H, W, C) and, if built, ``variance`` and ``confidence`` (N, H, W)."""
    x = (x - 0.5) * 2.0
    dropout = nn.Dropout(self.dropout_rate, deterministic=deterministic)
    is_central = lambda level: level >= self.depth - self.central_levels
    skips = []
    for level in range(self.depth):
      x = ConvBlock(self.base_width * 2**level, self.norm)(x)
      if is_central(level):
        x = dropout(x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = dropout(ConvBlock(self.base_width * 2**self.depth, self.norm)(x))
    for level in reversed(range(self.depth)):
      x = nn.ConvTranspose(self.base_width * 2**level, (2, 2), strides=(2, 2))(x)
      x = ConvBlock(self.base_width * 2**level, self.norm)(jnp.concatenate([x, skips[level]], -1))
      if is_central(level):
        x = dropout(x)
    out = {'logits': nn.Conv(self.num_classes, (1, 1), name='logits')(x)}
    if 'variance' in self.heads:
      out['variance'] = nn.softplus(nn.Conv(1, (1, 1), name='variance')(x))[..., 0]
    if 'confidence' in self.heads:
      out['confidence'] = nn.sigmoid(nn.Conv(1, (1, 1), name='confidence')(x))[..., 0]
    return out


def create_unet(seg_config, heads: Sequence[str] = ()) -> UNet:
  """The U-Net described by ``config.seg`` with the given extra heads."""
  return UNet(base_width=seg_config.base_width, depth=seg_config.depth,
              num_classes=2, dropout_rate=seg_config.dropout_rate,
              central_levels=seg_config.central_levels, norm=seg_config.norm,
              heads=tuple(heads))
