"""A patient's quality from its slices' results: the true volume Dice and the predicted one.

f and the quality models work on axial slices (``data/volumes.py``); the user's bar is the
Dice of the whole volume over all its voxels (> 0.8). Gathering back:

* ``true_dice``: 2 sum|P_k & T_k| / (sum|P_k| + sum|T_k|) over the slices k; a volume with no
  lesion in truth and none predicted has Dice 1, one where exactly one of them is empty 0
  (the convention of the 2D cases, ``metrics/overlap.py``).
* ``predicted_dice``: each slice's predicted Dice d_k weighted by f's lesion area a_k on it,
  sum d_k a_k / sum a_k -- the volume Dice if each slice's true lesion were as large as
  f's (then |P_k & T_k| = d_k a_k). Slices where f found nothing contribute no area; when f
  found nothing anywhere, the mean of the slices' predictions (each one says how likely an
  empty slice is right) stands for the volume's. A lesion f missed on slices where it found
  nothing at all is not in this estimate: the quality model sees such a slice as an empty,
  probably correct mask unless the image tells it otherwise.
"""

from __future__ import annotations

import numpy as np

from segqual_jax.data import volumes


def groups_of(ids) -> tuple[list[str], np.ndarray]:
  """``(cases in first-seen order, index of each slice's case)`` of slice ids ``<case>:zNNN``."""
  cases, index, where = [], {}, []
  for sid in ids:
    case = volumes.case_of(sid)
    if case not in index:
      index[case] = len(cases)
      cases.append(case)
    where.append(index[case])
  return cases, np.asarray(where, np.int64)


def true_dice(masks: np.ndarray, truth: np.ndarray, groups: np.ndarray, num: int) -> np.ndarray:
  """Volume Dice per group from slice masks (N, H, W) and true masks, both binary."""
  m = masks.reshape(len(masks), -1) > 0
  t = truth.reshape(len(truth), -1) > 0
  inter = np.bincount(groups, (m & t).sum(1), num)
  total = np.bincount(groups, m.sum(1) + t.sum(1), num)
  return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def predicted_dice(slice_dice: np.ndarray, masks: np.ndarray, groups: np.ndarray, num: int) -> np.ndarray:
  """Predicted volume Dice per group from slices' predicted Dice and f's slice masks."""
  area = (masks.reshape(len(masks), -1) > 0).sum(1).astype(np.float64)
  d = np.asarray(slice_dice, np.float64)
  weighted = np.bincount(groups, d * area, num)
  total = np.bincount(groups, area, num)
  mean = np.bincount(groups, d, num) / np.maximum(np.bincount(groups, minlength=num), 1)
  return np.where(total > 0, weighted / np.maximum(total, 1e-12), mean)


def slice_uncertainty(maps: np.ndarray, groups: np.ndarray, num: int) -> list[np.ndarray]:
  """Mean uncertainty of each slice, per group in slice order (the page's per-slice plot)."""
  per_slice = maps.reshape(len(maps), -1).mean(1)
  return [per_slice[groups == g] for g in range(num)]
