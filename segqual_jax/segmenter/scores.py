"""Image-level quality scores from sampled label maps and pixel uncertainty maps.

The list of Zenk et al. 2024 ("Comparative benchmarking of failure detection
methods in medical image segmentation"), whose strongest simple baseline is
the pairwise Dice between sampled label maps:

* ``pairwise_dice`` -- mean Dice over all pairs of the K sampled label maps
  (ensemble members, MC-dropout passes, TTA transforms, latent draws). All
  K(K-1)/2 overlaps come from one Gram matrix ``L L^T`` of the flattened
  binary maps (intersections off the diagonal, areas on it): one matmul per
  image instead of an O(K^2) Python loop.
* ``samples_iou`` -- intersection over union of *all* K samples at once
  (Bayesian QuickNAT, Roy et al. 2019).
* ``area_cv`` -- coefficient of variation of the predicted area over the K
  samples (QuickNAT's volume CoV).
* aggregations of any pixel map: ``map_mean``, ``map_fg_mean`` (mean over the
  predicted foreground), ``map_boundary_mean`` (mean over a band around the
  predicted boundary) and ``map_p95`` (95th percentile).

Every score is returned as "higher = better segmentation" (``QUALITY_SIGN``
flips the uncertainty-like ones), so each one is directly a quality score a
threshold can act on, with no g, and also a feature for the cheap QC
regressor (``quality/cheap_qc.py``). Sample-based scores exist only for
methods that sample; single-pass methods get the map aggregations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SAMPLE_SCORES = ('pairwise_dice', 'samples_iou', 'area_cv')
MAP_SCORES = ('map_mean', 'map_fg_mean', 'map_boundary_mean', 'map_p95')
# +1: higher raw value = better segmentation; -1: higher = worse (uncertainty-like).
QUALITY_SIGN = {'pairwise_dice': 1.0, 'samples_iou': 1.0, 'area_cv': -1.0,
                'map_mean': -1.0, 'map_fg_mean': -1.0, 'map_boundary_mean': -1.0, 'map_p95': -1.0}


def _flat_binary(labels: jax.Array) -> jax.Array:
  """(K, N, H, W) label maps -> (N, K, P) float foreground indicators."""
  k, n = labels.shape[:2]
  return (labels > 0).reshape(k, n, -1).astype(jnp.float32).transpose(1, 0, 2)


def pairwise_dice(labels: jax.Array) -> jax.Array:
  """Mean Dice over the pairs i < j of K sampled label maps (K, N, H, W) -> (N,).

  Two empty maps agree perfectly (Dice 1). With K = 1 there is no pair: 1.
  """
  x = _flat_binary(labels)
  gram = jnp.einsum('nkp,nlp->nkl', x, x)  # intersections; areas on the diagonal
  area = jnp.diagonal(gram, axis1=1, axis2=2)
  denom = area[:, :, None] + area[:, None, :]
  dice = jnp.where(denom > 0, 2.0 * gram / jnp.maximum(denom, 1.0), 1.0)
  k = labels.shape[0]
  if k < 2:
    return jnp.ones(labels.shape[1], jnp.float32)
  upper = jnp.triu(jnp.ones((k, k), bool), 1)
  return jnp.sum(jnp.where(upper, dice, 0.0), axis=(1, 2)) / (k * (k - 1) / 2)


def samples_iou(labels: jax.Array) -> jax.Array:
  """|foreground of every sample| / |foreground of any sample| (K, N, H, W) -> (N,); empty: 1."""
  fg = labels > 0
  inter = jnp.all(fg, axis=0).sum((-2, -1))
  union = jnp.any(fg, axis=0).sum((-2, -1))
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0).astype(jnp.float32)


def area_cv(labels: jax.Array) -> jax.Array:
  """Std / mean of the K samples' foreground areas (K, N, H, W) -> (N,); 0 if all are empty."""
  area = (labels > 0).sum((-2, -1)).astype(jnp.float32)
  mean = area.mean(0)
  return jnp.where(mean > 0, area.std(0) / jnp.maximum(mean, 1e-9), 0.0)


def _dilate(mask: jax.Array, radius: int) -> jax.Array:
  """Binary dilation of (N, H, W) by a (2r+1)^2 square (a max-pool with stride 1)."""
  size = 2 * radius + 1
  return jax.lax.reduce_window(mask, False, jax.lax.bitwise_or, (1, size, size), (1, 1, 1), 'SAME')


def boundary_band(mask: jax.Array, radius: int) -> jax.Array:
  """Pixels within ``radius`` of the boundary of the binary masks (N, H, W): dilation minus erosion."""
  mask = mask > 0
  eroded = ~_dilate(~mask, radius)
  return _dilate(mask, radius) & ~eroded


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of (N, H, W) ``values`` over ``mask``; the whole-image mean where the mask is empty."""
  count = mask.sum((-2, -1))
  inside = jnp.sum(jnp.where(mask, values, 0.0), (-2, -1)) / jnp.maximum(count, 1)
  return jnp.where(count > 0, inside, values.mean((-2, -1)))


def map_scores(umap: jax.Array, predictions: jax.Array, band_radius: int) -> dict[str, jax.Array]:
  """The four aggregations of a pixel map (N, H, W) over the prediction (N, H, W), raw values."""
  foreground = predictions > 0
  flat = umap.reshape(umap.shape[0], -1)
  return {
      'map_mean': umap.mean((-2, -1)),
      'map_fg_mean': _masked_mean(umap, foreground),
      'map_boundary_mean': _masked_mean(umap, boundary_band(foreground, band_radius)),
      'map_p95': jnp.percentile(flat, 95.0, axis=-1),
  }


def image_scores(predictions: jax.Array, umap: jax.Array, sample_labels: jax.Array | None,
                 band_radius: int) -> dict[str, jax.Array]:
  """Every score available for one batch, oriented higher = better (``QUALITY_SIGN``).

  Args:
    predictions: (N, H, W) label map of the method's prediction.
    umap: (N, H, W) uncertainty map (higher = more uncertain).
    sample_labels: (K, N, H, W) sampled label maps, or None for a single-pass method.
    band_radius: half-width in pixels of the boundary band.
  """
  raw = map_scores(umap, predictions, band_radius)
  if sample_labels is not None:
    raw.update(pairwise_dice=pairwise_dice(sample_labels), samples_iou=samples_iou(sample_labels),
               area_cv=area_cv(sample_labels))
  return {name: (QUALITY_SIGN[name] * value).astype(jnp.float32) for name, value in raw.items()}
