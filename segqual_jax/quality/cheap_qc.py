"""Cheap QC: a scikit-learn regressor on image-level scores and mask-shape features.

A quality model beside the CNN g (``quality.models`` variant ``cheap_qc``),
in the spirit of the radiomics / hand-crafted-feature QC baselines: no
convolutional network at all, seconds to train. Its features per case:

* every image-level score f's method provides (``segmenter/scores.py``:
  the map aggregations for every method, plus pairwise Dice, IoU over
  samples and area CoV for sampling methods), computed with the labels;
* simple shape features of the predicted mask (``shape_features``): area,
  boundary length relative to area, number of connected components, the
  largest one's share, the share touching the image border and the
  centroid's distance from the centre.

The regressor (``cheap_qc.regressor``): gradient boosting, random forest, or
LASSO on standardised features with its penalty chosen by 5-fold
cross-validation on the training cases. It regresses the same target as g
(``quality.target``) on the same cases (the label source), so the two are
compared on equal terms. The fitted model is pickled in
``<workdir>/quality/cheap_qc/model.pkl`` (written atomically).
"""

from __future__ import annotations

import logging
import os
import pickle
import time

import numpy as np
from scipy import ndimage
from sklearn import ensemble, linear_model, pipeline, preprocessing

from segqual_jax.core import artifacts

log = logging.getLogger(__name__)

SHAPE_FEATURES = ('area_fraction', 'boundary_per_area', 'components', 'largest_component_share',
                  'border_share', 'centroid_offset')


def shape_features(predictions: np.ndarray) -> dict[str, np.ndarray]:
  """Shape features of binary label maps (N, H, W), each (N,); empty masks get 0s."""
  n, h, w = predictions.shape
  out = {k: np.zeros(n, np.float32) for k in SHAPE_FEATURES}
  yy, xx = np.mgrid[:h, :w]
  border = np.zeros((h, w), bool)
  border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
  for i, mask in enumerate(predictions > 0):
    area = mask.sum()
    if area == 0:
      continue
    boundary = mask & ~ndimage.binary_erosion(mask)
    labelled, count = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel())[1:]
    out['area_fraction'][i] = area / (h * w)
    out['boundary_per_area'][i] = boundary.sum() / np.sqrt(area)
    out['components'][i] = count
    out['largest_component_share'][i] = sizes.max() / area
    out['border_share'][i] = (mask & border).sum() / area
    cy, cx = yy[mask].mean() / (h - 1) - 0.5, xx[mask].mean() / (w - 1) - 0.5
    out['centroid_offset'][i] = np.hypot(cy, cx)
  return out


def feature_matrix(predictions: np.ndarray, scores: dict[str, np.ndarray],
                   names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
  """``(X (N, F), feature names)``; with ``names``, exactly those columns (a clear error if one is missing)."""
  columns = {**{f'score:{k}': np.asarray(v, np.float32) for k, v in sorted(scores.items())},
             **{f'shape:{k}': v for k, v in shape_features(predictions).items()}}
  names = names or list(columns)
  missing = [k for k in names if k not in columns]
  if missing:
    raise ValueError(f'cheap QC was trained with features {missing} that these predictions lack '
                     '(another uncertainty method?)')
  return np.stack([columns[k] for k in names], 1) if names else np.zeros((len(predictions), 0)), names


def make_regressor(kind: str, seed: int):
  """The configured scikit-learn regressor."""
  if kind == 'gradient_boosting':
    return ensemble.GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05,
                                              subsample=0.8, random_state=seed)
  if kind == 'random_forest':
    return ensemble.RandomForestRegressor(n_estimators=300, min_samples_leaf=3, random_state=seed, n_jobs=1)
  if kind == 'lasso':
    return pipeline.make_pipeline(preprocessing.StandardScaler(),
                                  linear_model.LassoCV(cv=5, random_state=seed, max_iter=20000))
  raise ValueError(f'unknown cheap_qc.regressor {kind!r}')


def model_path(out_dir: str) -> str:
  return os.path.join(out_dir, 'model.pkl')


def fit(config, out_dir: str, outputs, targets: np.ndarray) -> dict:
  """Fits the regressor on the training cases' features (f's ``SegOutputs``); pickles it."""
  t0 = time.time()
  x, names = feature_matrix(outputs.masks, outputs.scores)
  model = make_regressor(config.cheap_qc.regressor, config.seed).fit(x, targets)
  artifacts.write_bytes(model_path(out_dir), pickle.dumps({'model': model, 'features': names}))
  train_rmse = float(np.sqrt(np.mean((model.predict(x) - targets) ** 2)))
  log.info('cheap QC (%s) on %d cases, %d features: train RMSE %.4f', config.cheap_qc.regressor,
           len(targets), len(names), train_rmse)
  return {'variant': 'cheap_qc', 'regressor': config.cheap_qc.regressor, 'features': names,
          'num_cases': int(len(targets)), 'train_rmse': train_rmse,
          'wall_time_s': round(time.time() - t0, 1)}


def load_predictor(out_dir: str):
  """``(f's masks, image-level scores) -> predicted quality`` of the pickled regressor."""
  with open(model_path(out_dir), 'rb') as f:
    saved = pickle.load(f)

  def predict(predictions, scores):
    x, _ = feature_matrix(np.asarray(predictions), scores, saved['features'])
    return np.clip(saved['model'].predict(x), 0.0, 1.0)
  return predict
