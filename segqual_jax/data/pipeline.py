"""Input pipeline: splits in memory, deterministic batch order, augmentation.

No TFDS here (``loading.py`` builds and reads the data sets), so running f on
images -- predict, the bench, an accelerator without TFDS -- needs none of it.

Why in memory: the CPU-scale and paper-scale data sets (a few thousand images
at <= 224 px) fit comfortably, and random access by index lets the batch for
any step be recomputed from ``(seed, step)`` alone -- so a resumed run sees
exactly the batches an uninterrupted run would, without saving iterator state.
Augmentation runs inside the jitted step on device, keyed by the step's key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy import ndimage
import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split as arrays: ``images`` (N, S, S, 3) uint8, ``masks`` (N, S, S) uint8,
  and the case ids (file stems for real data, ``synthetic-<split>-<index>`` for
  generated data). A case's random key derives from its id (``core/keys.py``)."""
  name: str
  images: np.ndarray
  masks: np.ndarray
  ids: tuple = ()

  def __len__(self) -> int:
    return len(self.images)

  def take(self, idx: np.ndarray, name: str) -> 'Split':
    """The cases ``idx`` of this split, as a split called ``name``."""
    ids = tuple(self.ids[i] for i in idx) if self.ids else ()
    return Split(name, self.images[idx], self.masks[idx], ids)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder of a shuffled epoch is dropped)."""
  return max(1, num_examples // batch_size)


def forced_places(foreground_fraction: float, batch_size: int) -> int:
  """How many places at the end of a batch oversampling fills with lesion (nnU-Net's rounding)."""
  return int(round(foreground_fraction * batch_size))


def batch_indices(num_examples: int, batch_size: int, seed: int | tuple[int, ...],
                  step: int, foreground: np.ndarray | None = None,
                  foreground_fraction: float = 0.0) -> np.ndarray:
  """Example indices of training batch ``step``: a fresh permutation per epoch.

  With ``foreground`` (a bool per example: does it hold lesion) and a
  ``foreground_fraction`` > 0, the last ``forced_places(fraction, batch_size)`` places of
  the batch hold lesion: a drawn example without any is swapped for one drawn
  from the lesion examples (nnU-Net's ``oversample_foreground_percent``, 0.33).
  Why: in a volume most slices hold no lesion, so a uniform batch often has
  little of it for the loss to learn from; the first places stay uniform, so f
  still sees lesion-free slices at their usual rate there.

  A pure function of its arguments, so resuming at any step is exact.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(num_examples)
  if num_examples < batch_size:  # tiny data sets: repeat to fill one batch
    perm = np.resize(perm, batch_size)
  idx = perm[i * batch_size:(i + 1) * batch_size]
  forced = forced_places(foreground_fraction, batch_size)
  if foreground is None or forced == 0:
    return idx
  pool = np.flatnonzero(foreground)
  if not len(pool):
    raise ValueError('foreground oversampling: no example holds foreground')
  swap = np.arange(batch_size) >= batch_size - forced
  swap &= ~np.asarray(foreground, bool)[idx]
  draws = np.random.default_rng([*np.atleast_1d(seed), epoch, i, 1]).choice(pool, batch_size)
  return np.where(swap, draws, idx)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 RGB in [0, 255] -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def augment(key: jax.Array, *arrays: jax.Array):
  """Random horizontal flip and 90-degree rotation per example (the paper's).

  A flip and four rotations reach all eight symmetries of the square. Every
  array (N, H, W, ...) gets the same transform for the same example -- images
  and masks in stage 1, the stacked inputs of g in stage 2.

  Returns:
    The transformed arrays (a tuple, or the array itself if only one was given).
  """
  def one(k, *xs):
    k_rot, k_flip = jax.random.split(k)
    rot = jax.random.randint(k_rot, (), 0, 4)
    flip = jax.random.bernoulli(k_flip)

    def transform(a):
      a = jax.lax.switch(rot, [lambda a, r=r: jnp.rot90(a, r, axes=(0, 1)) for r in range(4)], a)
      return jnp.where(flip, a[:, ::-1], a)
    return tuple(transform(x) for x in xs)

  keys = jax.random.split(key, arrays[0].shape[0])
  out = jax.vmap(one)(keys, *arrays)
  return out if len(arrays) > 1 else out[0]


# nnU-Net v2's default 2D training augmentation (Isensee et al. 2021; its trainer's
# ``get_training_transforms``): the probability of each transform per example, in its order.
NNUNET_P = {'rotation': 0.2, 'scale': 0.2, 'noise': 0.1, 'blur': 0.2, 'brightness': 0.15,
            'contrast': 0.15, 'low_resolution': 0.25, 'inverted_gamma': 0.1, 'gamma': 0.3}
NNUNET_SCALE = (0.7, 1.4)  # zoom factor of the sampled field: > 1 shows more, objects smaller
NNUNET_NOISE_STD = (0.0, 0.1)  # noise std, in units of each channel's std (nnU-Net's images are z-scored)
NNUNET_BLUR_SIGMA = (0.5, 1.0)  # Gaussian blur sigma in pixels, each channel with probability 0.5
NNUNET_BRIGHTNESS = (0.75, 1.25)  # multiplier per channel
NNUNET_CONTRAST = (0.75, 1.25)  # factor about the channel's mean, per channel, range preserved
NNUNET_LOW_RESOLUTION = (0.5, 1.0)  # nearest down-sampling factor, then linear up; each channel p 0.5
NNUNET_GAMMA = (0.7, 1.5)  # per channel, on the range-normalised channel; mean and std kept
PER_CHANNEL_P = 0.5  # blur and low resolution touch each channel with this probability


def _either_side(key: jax.Array, low: float, high: float, shape=()) -> jax.Array:
  """nnU-Net's ``BGContrast`` draw: half the time below 1 (from [low, 1)), half above (from [1, high])."""
  k_side, k_low, k_high = jax.random.split(key, 3)
  return jnp.where(jax.random.bernoulli(k_side, 0.5, shape),
                   jax.random.uniform(k_low, shape, minval=low, maxval=1.0),
                   jax.random.uniform(k_high, shape, minval=1.0, maxval=high))


def _rotate_scale(image: jax.Array, mask: jax.Array, angle: jax.Array, scale: jax.Array):
  """One (H, W, C) image and (H, W) mask rotated by ``angle`` about the centre, sampling a
  field ``scale`` times the frame (> 1: objects smaller, as nnU-Net's scaling): bilinear for
  the image, nearest for the mask, zero outside the frame."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  cos, sin = jnp.cos(angle) * scale, jnp.sin(angle) * scale
  src_r = cy + cos * (rows - cy) - sin * (cols - cx)
  src_c = cx + sin * (rows - cy) + cos * (cols - cx)
  coords = [src_r, src_c]
  channels = [ndimage.map_coordinates(image[..., c], coords, order=1, mode='constant', cval=0.0)
              for c in range(image.shape[-1])]
  warped_mask = ndimage.map_coordinates(mask.astype(jnp.float32), coords, order=0,
                                        mode='constant', cval=0.0)
  return jnp.stack(channels, -1), jnp.round(warped_mask).astype(mask.dtype)


def _blur(x: jax.Array, sigma: jax.Array, radius: int = 3) -> jax.Array:
  """One (H, W) channel blurred by a separable Gaussian of ``sigma`` (<= radius / 3) pixels."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (taps / sigma) ** 2)
  weights = weights / weights.sum()
  for axis in (0, 1):
    padded = jnp.pad(x, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode='edge')
    n = x.shape[axis]
    x = sum(w * jax.lax.dynamic_slice_in_dim(padded, k, n, axis) for k, w in enumerate(weights))
  return x


def _low_resolution(x: jax.Array, factor: jax.Array) -> jax.Array:
  """One (H, W) channel seen at ``factor`` of its resolution: nearest down-sampling, then
  linear interpolation back onto the full grid (nnU-Net up-samples cubically)."""
  def axis_taps(n):
    coarse = jnp.maximum(jnp.round(n * factor), 1.0)
    u = jnp.arange(n, dtype=jnp.float32) * (coarse - 1) / max(n - 1, 1)  # fine pixel -> coarse position
    lo = jnp.floor(u)
    hi = jnp.minimum(lo + 1, coarse - 1)
    to_fine = lambda k: jnp.clip(jnp.round(k * (n - 1) / jnp.maximum(coarse - 1, 1)), 0, n - 1).astype(jnp.int32)
    return to_fine(lo), to_fine(hi), u - lo
  r0, r1, tr = axis_taps(x.shape[0])
  c0, c1, tc = axis_taps(x.shape[1])
  top = x[r0][:, c0] * (1 - tc) + x[r0][:, c1] * tc
  bottom = x[r1][:, c0] * (1 - tc) + x[r1][:, c1] * tc
  return top * (1 - tr)[:, None] + bottom * tr[:, None]


def _gamma(x: jax.Array, gamma: jax.Array, invert: bool) -> jax.Array:
  """Gamma on the channel rescaled to [0, 1] (of the inverted image when ``invert``), then
  the channel's mean and standard deviation restored (nnU-Net's ``p_retain_stats=1``)."""
  mean, std = x.mean(), x.std()
  x = -x if invert else x
  low, span = x.min(), jnp.maximum(x.max() - x.min(), 1e-6)
  x = ((x - low) / span) ** gamma * span + low
  x = -x if invert else x
  return (x - x.mean()) / jnp.maximum(x.std(), 1e-6) * std + mean


def _intensity(key: jax.Array, image: jax.Array, p: dict) -> jax.Array:
  """nnU-Net's intensity transforms on one (H, W, C) float image, in its order; each is
  applied to the example with its probability in ``p``, with its own draw per channel."""
  c = image.shape[-1]
  ks = iter(jax.random.split(key, 24))
  applied = {name: jax.random.bernoulli(next(ks), p[name]) for name in
             ('noise', 'blur', 'brightness', 'contrast', 'low_resolution', 'inverted_gamma', 'gamma')}
  per_channel = lambda k: jax.random.bernoulli(k, PER_CHANNEL_P, (c,))
  x = jnp.moveaxis(image, -1, 0)  # (C, H, W)
  std = x.std(axis=(1, 2))
  noise_std = jax.random.uniform(next(ks), (), minval=NNUNET_NOISE_STD[0], maxval=NNUNET_NOISE_STD[1])
  x = jnp.where(applied['noise'], x + (noise_std * std)[:, None, None] * jax.random.normal(next(ks), x.shape), x)
  sigma = jax.random.uniform(next(ks), (c,), minval=NNUNET_BLUR_SIGMA[0], maxval=NNUNET_BLUR_SIGMA[1])
  blurred = jax.vmap(_blur)(x, sigma)
  x = jnp.where(applied['blur'] & per_channel(next(ks))[:, None, None], blurred, x)
  multiplier = _either_side(next(ks), *NNUNET_BRIGHTNESS, (c,))
  x = jnp.where(applied['brightness'], x * multiplier[:, None, None], x)
  factor = _either_side(next(ks), *NNUNET_CONTRAST, (c,))[:, None, None]
  mean, low, high = x.mean((1, 2), keepdims=True), x.min((1, 2), keepdims=True), x.max((1, 2), keepdims=True)
  x = jnp.where(applied['contrast'], jnp.clip((x - mean) * factor + mean, low, high), x)
  zoom = jax.random.uniform(next(ks), (c,), minval=NNUNET_LOW_RESOLUTION[0], maxval=NNUNET_LOW_RESOLUTION[1])
  coarse = jax.vmap(_low_resolution)(x, zoom)
  x = jnp.where(applied['low_resolution'] & per_channel(next(ks))[:, None, None], coarse, x)
  for name, invert in (('inverted_gamma', True), ('gamma', False)):
    gamma = _either_side(next(ks), *NNUNET_GAMMA, (c,))
    x = jnp.where(applied[name], jax.vmap(lambda v, g, i=invert: _gamma(v, g, i))(x, gamma), x)
  return jnp.moveaxis(x, 0, -1)


def augment_nnunet(key: jax.Array, images: jax.Array, masks: jax.Array, p: dict | None = None):
  """``augment``'s flips and rotations, then nnU-Net v2's 2D spatial and intensity transforms.

  Why: the paper's dihedral symmetries suit dermoscopy, where a lesion has no
  up; a brain slice from another scanner or patient differs more in size,
  tilt, contrast, sharpness and noise than in orientation, and nnU-Net's
  default augmentation is what its published Dice on small MRI data sets rest
  on. Its probabilities and ranges are ``NNUNET_*``; where this differs: the
  images here are in [0, 1], not z-scored, so the noise is scaled by each
  channel's std, and low resolution is brought back linearly, not cubically.
  Images (N, H, W, C) float, masks (N, H, W); ``p`` overrides ``NNUNET_P``.
  """
  p = NNUNET_P if p is None else {**NNUNET_P, **p}
  k_dihedral, k_rest = jax.random.split(key)
  images, masks = augment(k_dihedral, images, masks)

  def one(k, image, mask):
    ks = jax.random.split(k, 5)
    angle = jnp.where(jax.random.bernoulli(ks[0], p['rotation']),
                      jax.random.uniform(ks[1], (), minval=-jnp.pi, maxval=jnp.pi), 0.0)
    scale = jnp.where(jax.random.bernoulli(ks[2], p['scale']),
                      jax.random.uniform(ks[3], (), minval=NNUNET_SCALE[0], maxval=NNUNET_SCALE[1]), 1.0)
    warped_image, warped_mask = _rotate_scale(image, mask, angle, scale)
    moved = (angle != 0.0) | (scale != 1.0)
    image = jnp.where(moved, warped_image, image)
    mask = jnp.where(moved, warped_mask, mask)
    return _intensity(ks[4], image, p), mask

  keys = jax.random.split(k_rest, images.shape[0])
  return jax.vmap(one)(keys, images, masks)


AUGMENTATIONS = {'dihedral': augment, 'nnunet': augment_nnunet}  # config.seg.augment -> (key, images, masks) fn


def eval_batches(batch_size: int, *arrays: np.ndarray):
  """Yields ``(*batch_arrays, n_valid)`` in order, the last batch zero-padded.

  Padding keeps one compiled shape for every batch; ``n_valid`` says how many
  rows are real.
  """
  n = len(arrays[0])
  for start in range(0, n, batch_size):
    batch = [a[start:start + batch_size] for a in arrays]
    valid = len(batch[0])
    if valid < batch_size:
      batch = [np.concatenate([b, np.zeros((batch_size - valid,) + b.shape[1:], b.dtype)]) for b in batch]
    yield (*batch, valid)
