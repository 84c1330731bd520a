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
* Skip latents (``skip_latents``, the hierarchical method): each skip
  connection becomes a Gaussian latent, see ``UNet._skip``.
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

  The forward pass is split at the first dropout: ``prefix`` (every layer
  before it -- the shallow encoder levels with their skips and the first
  central block) is deterministic, ``from_prefix`` is the rest. ``__call__``
  is exactly ``from_prefix(prefix(x))``, so a sampler can run the prefix once
  per image and draw only the rest per key, with the same dropout masks as a
  full pass under the same key (the prefix draws no random numbers).

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
  skip_latents: bool = False

  def setup(self):
    # Submodule names are those the original single-method (compact) U-Net got
    # by creation order, because flax derives parameter-init and dropout keys
    # from them: checkpoints and published results stay bit-reproducible.
    width = lambda level: self.base_width * 2**level
    depth = self.depth
    blocks = {f'ConvBlock_{level}': ConvBlock(width(level), self.norm) for level in range(depth)}
    blocks[f'ConvBlock_{depth}'] = ConvBlock(width(depth), self.norm)
    for i, level in enumerate(reversed(range(depth))):
      blocks[f'ConvTranspose_{i}'] = nn.ConvTranspose(width(level), (2, 2), strides=(2, 2))
      blocks[f'ConvBlock_{depth + 1 + i}'] = ConvBlock(width(level), self.norm)
    for name, module in blocks.items():
      setattr(self, name, module)
    self.Dropout_0 = nn.Dropout(self.dropout_rate)
    self.logits = nn.Conv(self.num_classes, (1, 1))
    if 'variance' in self.heads:
      self.variance = nn.Conv(1, (1, 1))
    if 'confidence' in self.heads:
      self.confidence = nn.Conv(1, (1, 1))
    if self.skip_latents:  # hierarchical uncertainty: a Gaussian latent per skip connection
      for level in range(depth):
        setattr(self, f'SkipMean_{level}', nn.Conv(width(level), (1, 1)))
        setattr(self, f'SkipLogVar_{level}', nn.Conv(width(level), (1, 1)))

  def _skip(self, level: int, skip: jax.Array, sample_latents: bool) -> tuple[jax.Array, jax.Array]:
    """The decoder's view of a skip tensor, and its KL term.

    Without latents: the skip itself, KL 0. With them: ``z = mu + sigma * eps``
    (``eps`` from the 'latent' RNG stream when ``sample_latents``, else
    ``z = mu``), where ``mu`` and ``log sigma^2`` are 1x1 convolutions of the
    skip, and the KL of ``N(mu, sigma^2)`` from ``N(0, 1)``, averaged over
    elements.
    """
    if not self.skip_latents:
      return skip, jnp.zeros(())
    mean = getattr(self, f'SkipMean_{level}')(skip)
    logvar = jnp.clip(getattr(self, f'SkipLogVar_{level}')(skip), -10.0, 5.0)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    if not sample_latents:
      return mean, kl
    eps = jax.random.normal(self.make_rng('latent'), mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps, kl

  def _down(self, level: int) -> ConvBlock:
    return getattr(self, f'ConvBlock_{level}')  # level == depth is the bottleneck

  def _upsample(self, level: int) -> nn.ConvTranspose:
    return getattr(self, f'ConvTranspose_{self.depth - 1 - level}')

  def _up(self, level: int) -> ConvBlock:
    return getattr(self, f'ConvBlock_{2 * self.depth - level}')

  @property
  def first_central_level(self) -> int:
    """Encoder levels below this one have no dropout; ``depth`` means only the bottleneck."""
    return self.depth - min(self.central_levels, self.depth)

  def prefix(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """The deterministic layers before the first dropout.

    Returns:
      ``(h, skips)``: the first central block's output, not yet dropped out,
      and the skip tensors of the non-central encoder levels.
    """
    x = (x - 0.5) * 2.0
    skips = []
    for level in range(self.first_central_level):
      x = self._down(level)(x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return self._down(self.first_central_level)(x), tuple(skips)

  def from_prefix(self, h: jax.Array, skips: tuple[jax.Array, ...], *,
                  deterministic: bool = True, sample_latents: bool = False) -> dict[str, jax.Array]:
    """Everything after the prefix, starting with its dropout.

    ``sample_latents`` draws the skip latents (``skip_latents`` only) from the
    'latent' RNG stream; ``out['kl']`` is their summed KL term.
    """
    drop = lambda t: self.Dropout_0(t, deterministic=deterministic)
    skips = list(skips)
    x = h
    for level in range(self.first_central_level, self.depth):
      if level > self.first_central_level:
        x = self._down(level)(x)
      x = drop(x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    if self.first_central_level < self.depth:
      x = self._down(self.depth)(x)
    x = drop(x)
    kl = jnp.zeros(())
    for level in reversed(range(self.depth)):
      x = self._upsample(level)(x)
      skip, level_kl = self._skip(level, skips[level], sample_latents)
      kl = kl + level_kl
      x = self._up(level)(jnp.concatenate([x, skip], -1))
      if level >= self.first_central_level:
        x = drop(x)
    out = {'logits': self.logits(x)}
    if 'variance' in self.heads:
      out['variance'] = nn.softplus(self.variance(x))[..., 0]
    if 'confidence' in self.heads:
      out['confidence'] = nn.sigmoid(self.confidence(x))[..., 0]
    if self.skip_latents:
      out['kl'] = kl
    return out

  def encoder_features(self, x: jax.Array) -> jax.Array:
    """(N, 2 * sum of encoder widths) per-image statistics of f's encoder, dropout off.

    The channel means and standard deviations of every encoder level and the
    bottleneck: what f "sees" of an image at each scale, from colour and
    brightness (level 0) to the lesion-level layout (bottleneck). The
    applicability score (``quality/applicability.py``) measures how far an
    image's vector lies from those of f's in-distribution cases.
    """
    h, levels = self.prefix(x)
    levels = list(levels)
    x = h
    for level in range(self.first_central_level, self.depth):
      if level > self.first_central_level:
        x = self._down(level)(x)
      levels.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    if self.first_central_level < self.depth:
      x = self._down(self.depth)(x)
    levels.append(x)  # the bottleneck (the prefix's output when only it has dropout)
    return jnp.concatenate([jnp.concatenate([t.mean((1, 2)), t.std((1, 2))], -1) for t in levels], -1)

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               sample_latents: bool = False) -> dict[str, jax.Array]:
    """Returns ``logits`` (N, H, W, C) and, if built, ``variance`` and ``confidence`` (N, H, W)
    and the skip latents' ``kl``."""
    h, skips = self.prefix(x)
    return self.from_prefix(h, skips, deterministic=deterministic, sample_latents=sample_latents)


def feature_levels(seg_config) -> tuple[int, ...]:
  """The feature count of each level of ``UNet.encoder_features`` (means and deviations of
  every encoder level and the bottleneck), in order."""
  return tuple(2 * seg_config.base_width * 2**level for level in range(seg_config.depth + 1))


def create_unet(seg_config, heads: Sequence[str] = (), skip_latents: bool = False) -> UNet:
  """The U-Net described by ``config.seg`` with the given extra heads (and skip latents)."""
  return UNet(base_width=seg_config.base_width, depth=seg_config.depth,
              num_classes=2, dropout_rate=seg_config.dropout_rate,
              central_levels=seg_config.central_levels, norm=seg_config.norm,
              heads=tuple(heads), skip_latents=skip_latents)
