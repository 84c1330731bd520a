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
