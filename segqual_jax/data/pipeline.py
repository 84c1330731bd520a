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


# nnU-Net's default 2D training augmentation (Isensee et al. 2021, its
# ``get_training_transforms``): each transform's probability and range, per example.
# Left out: Gaussian blur, low-resolution simulation and the inverted-image gamma
# (p 0.1), which matter less at 64 px than at nnU-Net's full resolution.
NNUNET_ROTATION_P = 0.2  # rotation by an angle drawn from [-pi, pi]
NNUNET_SCALE_P, NNUNET_SCALE = 0.2, (0.7, 1.4)  # zoom: >1 shows a smaller field of view
NNUNET_NOISE_P, NNUNET_NOISE_VAR = 0.1, (0.0, 0.1)  # Gaussian noise, variance in units of the channel's variance
NNUNET_BRIGHTNESS_P, NNUNET_BRIGHTNESS = 0.15, (0.75, 1.25)  # multiplicative, per channel
NNUNET_CONTRAST_P, NNUNET_CONTRAST = 0.15, (0.75, 1.25)  # about the channel's mean, range preserved
NNUNET_GAMMA_P, NNUNET_GAMMA = 0.3, (0.7, 1.5)  # on the channel rescaled to [0, 1], range preserved


def _rotate_scale(image: jax.Array, mask: jax.Array, angle: jax.Array, scale: jax.Array):
  """One (H, W, C) image and (H, W) mask rotated by ``angle`` and zoomed by ``scale`` about
  the centre: bilinear for the image, nearest for the mask, zero outside the frame."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  src_r = cy + cos * (rows - cy) - sin * (cols - cx)
  src_c = cx + sin * (rows - cy) + cos * (cols - cx)
  coords = [src_r, src_c]
  channels = [ndimage.map_coordinates(image[..., c], coords, order=1, mode='constant', cval=0.0)
              for c in range(image.shape[-1])]
  warped_mask = ndimage.map_coordinates(mask.astype(jnp.float32), coords, order=0,
                                        mode='constant', cval=0.0)
  return jnp.stack(channels, -1), jnp.round(warped_mask).astype(mask.dtype)


def _intensity(key: jax.Array, image: jax.Array) -> jax.Array:
  """nnU-Net's intensity transforms on one (H, W, C) float image, each channel on its own."""
  def channel(k, x):
    ks = jax.random.split(k, 8)
    var = jax.random.uniform(ks[0], (), minval=NNUNET_NOISE_VAR[0], maxval=NNUNET_NOISE_VAR[1]) * x.var()
    x = jnp.where(jax.random.bernoulli(ks[1], NNUNET_NOISE_P),
                  x + jnp.sqrt(var) * jax.random.normal(ks[2], x.shape), x)
    x = jnp.where(jax.random.bernoulli(ks[3], NNUNET_BRIGHTNESS_P),
                  x * jax.random.uniform(ks[4], (), minval=NNUNET_BRIGHTNESS[0], maxval=NNUNET_BRIGHTNESS[1]), x)
    factor = jax.random.uniform(ks[5], (), minval=NNUNET_CONTRAST[0], maxval=NNUNET_CONTRAST[1])
    lo2, hi2 = x.min(), x.max()
    x = jnp.where(jax.random.bernoulli(ks[6], NNUNET_CONTRAST_P),
                  jnp.clip((x - x.mean()) * factor + x.mean(), lo2, hi2), x)
    # Gamma: below 1 or above 1 with equal chance (nnU-Net draws from each side half the time).
    kg = jax.random.split(ks[7], 3)
    gamma = jnp.where(jax.random.bernoulli(kg[0]),
                      jax.random.uniform(kg[1], (), minval=NNUNET_GAMMA[0], maxval=1.0),
                      jax.random.uniform(kg[1], (), minval=1.0, maxval=NNUNET_GAMMA[1]))
    lo3, span = x.min(), jnp.maximum(x.max() - x.min(), 1e-6)
    x = jnp.where(jax.random.bernoulli(kg[2], NNUNET_GAMMA_P),
                  ((x - lo3) / span) ** gamma * span + lo3, x)
    return x
  keys = jax.random.split(key, image.shape[-1])
  return jnp.moveaxis(jax.vmap(channel)(keys, jnp.moveaxis(image, -1, 0)), 0, -1)


def augment_nnunet(key: jax.Array, images: jax.Array, masks: jax.Array):
  """``augment``'s flips and rotations, then nnU-Net's 2D spatial and intensity transforms.

  Why: the paper's dihedral symmetries suit dermoscopy, where a lesion has no
  up; a brain slice from another scanner or patient differs more in size,
  tilt and contrast than in orientation, and nnU-Net's default augmentation
  (rotation, zoom, noise, brightness, contrast, gamma) is what its published
  Dice on small MRI data sets rest on. Images (N, H, W, C) float, masks (N, H, W).
  """
  k_dihedral, k_rest = jax.random.split(key)
  images, masks = augment(k_dihedral, images, masks)

  def one(k, image, mask):
    ks = jax.random.split(k, 5)
    angle = jnp.where(jax.random.bernoulli(ks[0], NNUNET_ROTATION_P),
                      jax.random.uniform(ks[1], (), minval=-jnp.pi, maxval=jnp.pi), 0.0)
    scale = jnp.where(jax.random.bernoulli(ks[2], NNUNET_SCALE_P),
                      jax.random.uniform(ks[3], (), minval=NNUNET_SCALE[0], maxval=NNUNET_SCALE[1]), 1.0)
    warped_image, warped_mask = _rotate_scale(image, mask, angle, scale)
    moved = (angle != 0.0) | (scale != 1.0)
    image = jnp.where(moved, warped_image, image)
    mask = jnp.where(moved, warped_mask, mask)
    return _intensity(ks[4], image), mask

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
