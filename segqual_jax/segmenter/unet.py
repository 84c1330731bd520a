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

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segqual_jax.data import image_statistics

HEADS = ('variance', 'confidence')


class GroupNorm(nn.Module):
  """Group normalisation with flax's parameters (``scale``, ``bias``) and a faster reduction.

  ``nn.GroupNorm`` reduces over (H, W, channels of a group) of a reshaped
  (N, H, W, G, C/G) tensor; XLA:CPU runs that strided reduction ~8x slower
  than a per-channel sum over (H, W) at 128 px x 16 channels, and GroupNorm
  then cost a quarter of f's forward pass. Here the per-channel sums of x and
  x^2 come first (one contiguous reduction), the group statistics from those
  (a tiny sum), and the normalisation folds into one multiply-add per element.
  The variance is E[x^2] - E[x]^2, as in flax's default ``use_fast_variance``;
  outputs agree with ``nn.GroupNorm`` to float32 rounding (tested), and
  checkpoints of either load in the other.
  """
  num_groups: int
  epsilon: float = 1e-6  # flax's default

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    per_group = channels // self.num_groups
    dtype, x = x.dtype, x.astype(jnp.float32)  # statistics in float32 under any compute dtype
    spatial = tuple(range(1, x.ndim - 1))
    count = per_group * math.prod(x.shape[1:-1])
    group_sum = lambda t: t.sum(spatial).reshape(t.shape[0], self.num_groups, per_group).sum(-1)
    mean = group_sum(x) / count
    var = jnp.maximum(group_sum(x * x) / count - mean * mean, 0.0)
    inv = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per_group, -1) * scale
    shift = bias - jnp.repeat(mean, per_group, -1) * inv
    expand = lambda t: t.reshape(t.shape[:1] + (1,) * len(spatial) + t.shape[1:])
    return (x * expand(inv) + expand(shift)).astype(dtype)


class Conv(nn.Module):
  """A 3x3 'SAME' convolution with ``nn.Conv``'s parameters that can also apply a slice of
  its input channels.

  A convolution of a concatenation is the sum of the convolutions of its
  parts. The decoder's first convolution at each level sees
  ``concat([upsampled, skip])``; when the skip is the same for every sample
  (an encoder level before the first dropout), the sampler computes the skip
  part once per image (``in_offset``) and only the upsampled part per sample.

  Attributes:
    features: output channels.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x: jax.Array, in_offset: int = 0, in_total: int | None = None,
               use_bias: bool = True) -> jax.Array:
    """Convolves ``x`` with input channels ``[in_offset, in_offset + x.shape[-1])`` of the
    kernel, whose input has ``in_total`` channels (default ``x.shape[-1]``); adds the bias
    iff ``use_bias``."""
    in_total = x.shape[-1] if in_total is None else in_total
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, in_total, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if in_offset or x.shape[-1] != in_total:
      kernel = kernel[:, :, in_offset:in_offset + x.shape[-1]]
    x = x.astype(kernel.dtype)  # the parameters' dtype is the compute dtype (``compute_params``)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias if use_bias else y


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each followed by normalisation and ReLU.

  A decoder block takes its skip tensor either raw (``skip``: concatenated
  after the upsampled input) or as ``skip_term(skip)``, the skip's share of
  the first convolution computed beforehand -- the same output up to float
  rounding, with the skip's half of the convolution done once per image
  instead of once per sample.
  """
  features: int
  norm: str = 'group'

  def setup(self):
    # The names nn.compact gave these layers, so earlier checkpoints load.
    self.Conv_0 = Conv(self.features)
    self.Conv_1 = Conv(self.features)
    if self.norm == 'group':
      self.GroupNorm_0 = GroupNorm(num_groups=min(8, self.features))
      self.GroupNorm_1 = GroupNorm(num_groups=min(8, self.features))

  def _finish(self, x: jax.Array, i: int) -> jax.Array:
    if self.norm == 'group':
      x = getattr(self, f'GroupNorm_{i}')(x)
    return nn.relu(x)

  def skip_term(self, x_channels: int, skip: jax.Array) -> jax.Array:
    """The first convolution's response to ``skip`` (with its bias), for an input of
    ``x_channels`` upsampled channels followed by the skip's."""
    return self.Conv_0(skip, in_offset=x_channels, in_total=x_channels + skip.shape[-1])

  def __call__(self, x: jax.Array, skip: jax.Array | None = None,
               skip_term: jax.Array | None = None) -> jax.Array:
    if skip_term is not None:  # a decoder level's skip is as wide as the level: ``features``
      x = self.Conv_0(x, in_total=x.shape[-1] + self.features, use_bias=False) + skip_term
    else:
      x = self.Conv_0(x if skip is None else jnp.concatenate([x, skip], -1))
    x = self._finish(x, 0)
    return self._finish(self.Conv_1(x), 1)


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

  def shared_prefix(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """``prefix`` with its skips turned into ``skip_terms``: all a dropout sample shares."""
    h, skips = self.prefix(x)
    return h, self.skip_terms(skips)

  def skip_terms(self, skips: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Each prefix skip's share of its decoder block's first convolution (``ConvBlock.skip_term``).

    Deterministic, so a sampler computes them once per image with the prefix
    and passes them to ``from_prefix``: a quarter of the per-sample
    convolution work of the shallow decoder levels is then done once.
    """
    if self.skip_latents:
      raise ValueError('skip latents make every skip random: there is no shared skip term')
    return tuple(self._up(level).skip_term(self.base_width * 2**level, skip)
                 for level, skip in enumerate(skips))

  def from_prefix(self, h: jax.Array, skips: tuple[jax.Array, ...], *,
                  deterministic: bool = True, sample_latents: bool = False,
                  skip_terms: tuple[jax.Array, ...] | None = None) -> dict[str, jax.Array]:
    """Everything after the prefix, starting with its dropout.

    ``sample_latents`` draws the skip latents (``skip_latents`` only) from the
    'latent' RNG stream; ``out['kl']`` is their summed KL term. With
    ``skip_terms`` (``skip_terms(skips)``), ``skips`` is not read: the prefix
    skips enter through their precomputed terms.
    """
    drop = lambda t: self.Dropout_0(t, deterministic=deterministic)
    skips = dict(enumerate(skips)) if skip_terms is None else {}
    x = h
    for level in range(self.first_central_level, self.depth):
      if level > self.first_central_level:
        x = self._down(level)(x)
      x = drop(x)
      skips[level] = x
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    if self.first_central_level < self.depth:
      x = self._down(self.depth)(x)
    x = drop(x)
    kl = jnp.zeros(())
    for level in reversed(range(self.depth)):
      x = self._upsample(level)(x)
      if level in skips:
        skip, level_kl = self._skip(level, skips[level], sample_latents)
        kl = kl + level_kl
        x = self._up(level)(x, skip=skip)
      else:
        x = self._up(level)(x, skip_term=skip_terms[level])
      if level >= self.first_central_level:
        x = drop(x)
    f32 = lambda t: t.astype(jnp.float32)  # outputs in float32 under any compute dtype
    out = {'logits': f32(self.logits(x))}
    if 'variance' in self.heads:
      out['variance'] = nn.softplus(f32(self.variance(x)))[..., 0]
    if 'confidence' in self.heads:
      out['confidence'] = nn.sigmoid(f32(self.confidence(x)))[..., 0]
    if self.skip_latents:
      out['kl'] = kl
    return out

  def encoder_features(self, x: jax.Array) -> jax.Array:
    """(N, 2 * sum of encoder widths) per-image statistics of f's encoder, dropout off.

    The channel means and standard deviations of every encoder level and the
    bottleneck: what f "sees" of an image at each scale, from colour and
    brightness (level 0) to the lesion-level layout (bottleneck). Then, for
    ``grid_levels``, each channel's mean on a ``FEATURE_GRID`` x
    ``FEATURE_GRID`` grid of cells: *where* f sees it (a frame's border, a
    corner overlay), which one mean per channel pools away. The
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
    levels = [t.astype(jnp.float32) for t in levels]
    pooled = [jnp.concatenate([t.mean((1, 2)), t.std((1, 2))], -1) for t in levels]
    on_grid = [jax.vmap(lambda u: image_statistics.cell_means(u, FEATURE_GRID))(levels[level]).reshape(len(x), -1)
               for level in grid_levels(self.depth)]
    return jnp.concatenate(pooled + on_grid, -1)

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               sample_latents: bool = False) -> dict[str, jax.Array]:
    """Returns ``logits`` (N, H, W, C) and, if built, ``variance`` and ``confidence`` (N, H, W)
    and the skip latents' ``kl``."""
    h, skips = self.prefix(x)
    return self.from_prefix(h, skips, deterministic=deterministic, sample_latents=sample_latents)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_params(params, dtype: str):
  """f's parameters cast to the compute dtype ``dtype`` ('float32' | 'bfloat16').

  The U-Net computes in its parameters' dtype (each convolution casts its
  input to its kernel's; GroupNorm takes its statistics in float32; every
  output is float32), so one cast of the parameters switches a whole
  inference -- the deterministic pass and every sample of the engine -- to
  bfloat16, with no second network. Training always keeps float32 parameters.
  """
  target = COMPUTE_DTYPES[dtype]
  if target == jnp.float32:
    return params
  return jax.tree.map(lambda a: a.astype(target) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                      params)


FEATURE_GRID = 2  # cells per side of the encoder's grid features


def grid_levels(depth: int) -> tuple[int, ...]:
  """The encoder levels whose channel means ``UNet.encoder_features`` also keeps on a grid: 1
  and 2 (at 64 px, 32 and 16 px wide: the lesion's and the frame's layout), those that exist."""
  return tuple(level for level in (1, 2) if level <= depth)


def feature_levels(seg_config) -> tuple[int, ...]:
  """The feature count of each block of ``UNet.encoder_features``, in order: means and
  deviations of every encoder level and the bottleneck (``depth + 1`` blocks), then the
  grid means of each of ``grid_levels``."""
  pooled = tuple(2 * seg_config.base_width * 2**level for level in range(seg_config.depth + 1))
  return pooled + tuple(FEATURE_GRID ** 2 * seg_config.base_width * 2**level
                        for level in grid_levels(seg_config.depth))


def create_unet(seg_config, heads: Sequence[str] = (), skip_latents: bool = False) -> UNet:
  """The U-Net described by ``config.seg`` with the given extra heads (and skip latents)."""
  return UNet(base_width=seg_config.base_width, depth=seg_config.depth,
              num_classes=2, dropout_rate=seg_config.dropout_rate,
              central_levels=seg_config.central_levels, norm=seg_config.norm,
              heads=tuple(heads), skip_latents=skip_latents)
