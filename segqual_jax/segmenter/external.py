"""What the quality models see of a segmentation another model made: maps, scores, true overlap.

segqual-jax judges segmentations of any model (``data/segmentations.py``
reads them; ``config.external``). What g and cheap QC see besides the mask
depends on what that model exported:

* **Probabilities** give their maps for free -- the paper's best map is
  max-softmax, which any model exporting its softmax has: ``1 - max(p, 1-p)``
  and the binary entropy (``probability_maps``).
* **A mask only** gets a surrogate: the project's own trained f (any method)
  run on the same image. Its uncertainty map says where *a* model is unsure
  of this image; the disagreement map ``|mask - p_f|`` says where the outside
  mask departs from f; the agreement scores summarise both per image
  (``agreement_scores``), beside f's own image-level scores
  (``scores.image_scores``: its sample agreement, map aggregations).

``judge`` turns one batch of f's outputs and the segmentations under review
into what every quality model takes (``SegOutputs``' masks, maps and scores),
so stage 2, the evaluation and predict build them in one way. g's map
channels (``external.map_channels``): ``msp`` and ``entropy`` of the outside
model's own probabilities, ``surrogate`` (f's map) and ``disagreement``. The
scores are all of them, whatever the channels: f's own image scores
(``surrogate_*``), the agreement scores, and the map aggregations of the
outside model's ``msp`` map (``own_*``; all 0 for a mask: a mask states no
doubt).

Every score follows ``scores.py``'s convention, higher = better segmentation
(``QUALITY_SIGN``), so each is a quality score on its own and a cheap-QC
feature. ``native_overlaps`` scores any segmentation at the true mask's own
resolution, the user's bar (f's own too: its p(lesion) resampled).
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from segqual_jax.data import segmentations
from segqual_jax.metrics import overlap
from segqual_jax.segmenter import scores
from segqual_jax.segmenter.sampling import EPS

PROBABILITY_MAPS = ('msp', 'entropy')
AGREEMENT_SCORES = ('dice_with_f', 'disagreement_mean', 'disagreement_fg_mean')
# +1: higher raw value = better segmentation; -1: higher = worse.
QUALITY_SIGN = {'dice_with_f': 1.0, 'disagreement_mean': -1.0, 'disagreement_fg_mean': -1.0}


def probability_maps(probs: jax.Array) -> dict[str, jax.Array]:
  """The maps of a model's own p(lesion) (N, H, W): ``msp`` = 1 - max(p, 1 - p) (0..0.5) and
  ``entropy`` (nats, 0..ln 2)."""
  p = jnp.clip(probs, 0.0, 1.0)
  entropy = -(p * jnp.log(jnp.clip(p, EPS, 1.0)) + (1 - p) * jnp.log(jnp.clip(1 - p, EPS, 1.0)))
  return {'msp': 1.0 - jnp.maximum(p, 1.0 - p), 'entropy': entropy}


def disagreement(mask: jax.Array, f_probs: jax.Array) -> jax.Array:
  """``|mask - p_f|`` (N, H, W): 1 where the outside mask and a confident f disagree, 0.5
  where f is undecided, 0 where they agree."""
  return jnp.abs(mask.astype(jnp.float32) - f_probs)


def agreement_scores(mask: jax.Array, f_probs: jax.Array) -> dict[str, jax.Array]:
  """Per image (N,): ``dice_with_f`` (the outside mask against f's mask, p_f > 0.5),
  ``disagreement_mean`` (over the image) and ``disagreement_fg_mean`` (over the outside
  mask's foreground; 0 when it is empty)."""
  gap = disagreement(mask, f_probs)
  fg = mask.astype(jnp.float32)
  axes = tuple(range(1, mask.ndim))
  fg_mean = (gap * fg).sum(axes) / jnp.maximum(fg.sum(axes), 1.0)
  return {'dice_with_f': overlap.dice(mask.astype(bool), f_probs > 0.5),
          'disagreement_mean': gap.mean(axes), 'disagreement_fg_mean': fg_mean}


SURROGATE_PREFIX, OWN_PREFIX = 'surrogate_', 'own_'
OWN_MAP_CHANNELS = ('msp', 'entropy')  # channels that need the outside model's probabilities


def channel_names(config) -> tuple[str, ...]:
  """g's map channels for an outside segmentation (``external.map_channels``), in order."""
  return tuple(c.strip() for c in config.external.map_channels.split(',') if c.strip())


def active(config) -> bool:
  """Whether the run judges another model's segmentations (``external.predictions`` set)."""
  return bool(config.external.predictions.strip())


def map_channels(config) -> int:
  """How many map channels g takes: 1 for f's own map, else one per ``external.map_channels``."""
  return len(channel_names(config)) if active(config) else 1


def needs_probabilities(config) -> bool:
  """Whether g's channels come from the outside model's own probabilities (a mask cannot give them)."""
  return active(config) and any(c in OWN_MAP_CHANNELS for c in channel_names(config))


def read(config, path: str, image_size: tuple[int, int]) -> segmentations.Segmentation:
  """The outside model's segmentation in ``path`` at its image's ``(width, height)``, checked
  against what g's channels need; raises ``SegmentationError`` naming the file and the problem.
  Stage 2 and predict read every outside segmentation through here."""
  seg = segmentations.read(path, image_size)
  if needs_probabilities(config) and seg.kind == 'mask':
    raise segmentations.SegmentationError(
        path, f'a mask, but external.map_channels={config.external.map_channels!r} needs the '
              'model\'s own p(lesion) (a probability map)')
  return seg


def judge(channels: tuple[str, ...], band_px: int, seg_probs: np.ndarray, f_probs: np.ndarray,
          f_maps: np.ndarray, f_scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """What the quality models see of one batch of outside segmentations, at the model's size.

  Args:
    channels: g's map channels (``channel_names``).
    band_px: half-width of the boundary band of ``map_boundary_mean``.
    seg_probs: (N, S, S) the segmentations under review: p(lesion), or a mask's 0/1.
    f_probs, f_maps, f_scores: the surrogate f's p(lesion), map and image scores of the same images.

  Returns:
    ``{'masks': (N, S, S) uint8, 'maps': (N, S, S, C) float32, 'scores': {name: (N,)}}``.
  """
  masks = (np.asarray(seg_probs) > 0.5).astype(np.uint8)
  own = {k: np.asarray(v) for k, v in probability_maps(jnp.asarray(seg_probs)).items()}
  available = {'msp': own['msp'], 'entropy': own['entropy'], 'surrogate': np.asarray(f_maps),
               'disagreement': np.asarray(disagreement(jnp.asarray(masks), jnp.asarray(f_probs)))}
  maps = np.stack([available[c] for c in channels], -1).astype(np.float32)
  agreement = agreement_scores(jnp.asarray(masks), jnp.asarray(f_probs))
  own_scores = scores.image_scores(jnp.asarray(masks), jnp.asarray(own['msp']), None, band_px)
  image_scores = {**{SURROGATE_PREFIX + k: np.asarray(v) for k, v in f_scores.items()},
                  **{k: np.asarray(QUALITY_SIGN[k] * v, np.float32) for k, v in agreement.items()},
                  **{OWN_PREFIX + k: np.asarray(v) for k, v in own_scores.items()}}
  return {'masks': masks, 'maps': maps, 'scores': image_scores}


def native_overlaps(seg: segmentations.Segmentation, truth: np.ndarray) -> tuple[float, float]:
  """``(Dice, Jaccard)`` of ``seg`` against ``truth`` (H, W) at the truth's own resolution:
  ``seg`` resampled to it (nearest for a mask, bilinear then > 0.5 for probabilities)."""
  mask = segmentations.to_shape(seg, truth.shape).mask[None]
  truth = np.asarray(truth)[None] > 0
  return float(overlap.dice(mask, truth)[0]), float(overlap.jaccard(mask, truth)[0])
