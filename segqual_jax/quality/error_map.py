"""Where is the segmentation under review probably wrong? A per-pixel model of its errors.

The uncertainty map shows where f hesitates; a clinician wants to know where
the *mask* is wrong -- a confidently missed lobe has low uncertainty and is
the costliest error. On cases with ground truth (the quality split's fitting
cases, never the calibration or test ones) every pixel's error is known
(the reviewed mask differs from the truth), so a pixel classifier can learn
it from what is known at predict time, per pixel:

* ``p_lesion``: f's p(lesion); ``inside``: the reviewed mask; ``disagreement``:
  |mask - p_lesion| (for f's own thresholded mask min(p, 1 - p), MSP's own
  map; for another model's mask its disagreement with f);
* ``uncertainty`` and its 5 x 5 local mean: the map and its neighbourhood;
* ``signed_distance``: distance to the mask's boundary in units of the image
  side, negative inside -- errors lie along boundaries and in whole missed or
  extra lobes, which the map alone does not tell apart;
* ``grey``, ``saturation``: what the pixel looks like; ``lesion_likeness``:
  how much nearer its colour is to the mean colour inside the mask than to
  the mean outside (a lesion-coloured pixel outside the mask is a likely
  missed part, a skin-coloured one inside a likely extra part);
  ``mask_share``: the mask's share of the image (a case-level cue).

A histogram gradient-boosting classifier (scikit-learn) on a seeded sample
of pixels gives each pixel's probability of being wrong: the error map.
Stage 2 fits it on the quality models' training cases (``quality.error_map``);
predict draws it per case (``maps/<name>_error.png``), for f's mask or an
outside model's, and the evaluation reports its pixel AUROC for the wrong
pixels beside the uncertainty map's (also ``experiments/error_map.py``).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
from scipy import ndimage

from segqual_jax.core import artifacts, keys, workdir as run_dirs

FEATURES = ('p_lesion', 'inside', 'disagreement', 'uncertainty', 'local_uncertainty', 'signed_distance',
            'grey', 'saturation', 'lesion_likeness', 'mask_share')
MAX_PIXELS = 300_000  # pixels sampled to fit the classifier (all of them when fewer)


def uncertainty_of(maps: np.ndarray) -> np.ndarray:
  """(N, H, W) uncertainty from maps (N, H, W) or (N, H, W, C) (channel 0: the method's map)."""
  maps = np.asarray(maps, np.float32)
  return maps[..., 0] if maps.ndim == 4 else maps


def signed_distance(mask: np.ndarray) -> np.ndarray:
  """(H, W) distance of each pixel to the mask's boundary over the image side, < 0 inside."""
  inside = np.asarray(mask) > 0
  side = float(max(inside.shape))
  if not inside.any():
    return np.full(inside.shape, 1.0, np.float32)  # no boundary: everything is far outside
  if inside.all():
    return np.full(inside.shape, -1.0, np.float32)
  out = ndimage.distance_transform_edt(~inside)
  into = ndimage.distance_transform_edt(inside)
  return ((out - into) / side).astype(np.float32)


def pixel_features(images: np.ndarray, masks: np.ndarray, probs: np.ndarray, maps: np.ndarray) -> np.ndarray:
  """(N, H, W, len(FEATURES)) of uint8 images (N, H, W, 3), the reviewed masks (N, H, W),
  f's p(lesion) (N, H, W) and its maps, all at the model's size."""
  images = np.asarray(images, np.float32) / 255.0
  inside = (np.asarray(masks) > 0).astype(np.float32)
  p = np.asarray(probs, np.float32)
  u = uncertainty_of(maps)
  local = ndimage.uniform_filter(u, size=(1, 5, 5), mode='nearest')
  distance = np.stack([signed_distance(m) for m in inside])
  value, low = images.max(-1), images.min(-1)
  saturation = (value - low) / np.maximum(value, 1e-3)
  share = inside.mean((1, 2))
  def mean_colour(weight):  # (N, 3) mean colour where weight is 1 (the image's mean where none)
    total = weight.sum((1, 2))[:, None]
    fallback = images.mean((1, 2))
    return np.where(total > 0, (images * weight[..., None]).sum((1, 2)) / np.maximum(total, 1), fallback)
  near_in = np.linalg.norm(images - mean_colour(inside)[:, None, None], axis=-1)
  near_out = np.linalg.norm(images - mean_colour(1.0 - inside)[:, None, None], axis=-1)
  return np.stack([p, inside, np.abs(inside - p), u, local, distance, images.mean(-1), saturation,
                   near_out - near_in, np.broadcast_to(share[:, None, None], p.shape)], -1)


def errors_of(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """(N, H, W) bool: where the reviewed mask differs from the true one."""
  return (np.asarray(masks) > 0) != (np.asarray(truth) > 0)


class ErrorMap:
  """A fitted per-pixel error classifier: ``predict`` gives P(pixel wrong)."""

  def __init__(self, model):
    self.model = model

  @classmethod
  def fit(cls, features: np.ndarray, errors: np.ndarray, seed: int = 0) -> 'ErrorMap':
    """Fits on (N, H, W, F) features and (N, H, W) errors (a seeded sample of the pixels)."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # slow to import
    x = features.reshape(-1, features.shape[-1])
    y = np.asarray(errors, bool).reshape(-1)
    if len(np.unique(y)) < 2:
      raise ValueError('the error map needs pixels both right and wrong to learn from')
    rng = np.random.default_rng([seed, keys.ERROR_MAP])
    take = rng.choice(len(y), min(len(y), MAX_PIXELS), replace=False)
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed)
    return cls(model.fit(x[take], y[take]))

  def predict(self, features: np.ndarray) -> np.ndarray:
    """(N, H, W) P(pixel wrong) of (N, H, W, F) features."""
    shape = features.shape[:-1]
    return self.model.predict_proba(features.reshape(-1, features.shape[-1]))[:, 1].reshape(shape).astype(np.float32)

  def save(self, path: str) -> None:
    artifacts.write_bytes(path, pickle.dumps({'model': self.model, 'features': FEATURES}))

  @classmethod
  def load(cls, path: str) -> 'ErrorMap':
    with open(path, 'rb') as f:
      saved = pickle.load(f)
    if tuple(saved['features']) != FEATURES:
      raise ValueError(f'{path} was fitted on features {saved["features"]}, this code computes {FEATURES}')
    return cls(saved['model'])


def for_run(config, workdir: str) -> 'ErrorMap | None':
  """The run's fitted error map; None when ``quality.error_map`` is off or the run predates it
  (predict then draws no error map and says nothing more: it is a picture, not a decision)."""
  path = run_dirs.error_map_file(workdir)
  if not config.quality.error_map or not os.path.exists(path):
    return None
  return ErrorMap.load(path)


def pixel_auroc(scores: np.ndarray, errors: np.ndarray) -> float | None:
  """AUROC of per-pixel ``scores`` for the pixels that are wrong, over all pixels pooled."""
  from sklearn.metrics import roc_auc_score
  y = np.asarray(errors, bool).reshape(-1)
  if y.all() or not y.any():
    return None
  return float(roc_auc_score(y, np.asarray(scores, np.float64).reshape(-1)))
