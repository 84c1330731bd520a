"""Uncertainty for a segmentation another model made (issue 16): its own, or a surrogate's.

segqual-jax is to judge segmentations of any model (``data/segmentations.py``
reads them). What g and cheap QC are to see besides the mask depends on what
that model exported (the external stage 1 that feeds these to them is issue
16's open part; nothing in the pipeline calls this module yet):

* **Probabilities** give their maps for free -- the paper's best map is
  max-softmax, which any model exporting its softmax has: ``1 - max(p, 1-p)``
  and the binary entropy (``probability_maps``).
* **A mask only** gets a surrogate: the project's own trained f (any method)
  run on the same image. Its uncertainty map says where *a* model is unsure
  of this image; the disagreement map ``|mask - p_f|`` says where the outside
  mask departs from f; the agreement scores summarise both per image
  (``agreement_scores``), beside f's own image-level scores
  (``scores.image_scores``: its sample agreement, map aggregations).

Every score follows ``scores.py``'s convention, higher = better segmentation
(``QUALITY_SIGN``), so each is a quality score on its own and a cheap-QC
feature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segqual_jax.metrics import overlap
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
