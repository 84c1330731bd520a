"""A patient's quality from its slices' results: the true volume Dice and the predicted one.

f and the quality models work on axial slices (``data/volumes.py``); the user's bar is the
Dice of the whole volume over all its voxels (> 0.8). Gathering back:

* ``true_dice``: 2 sum|P_k & T_k| / (sum|P_k| + sum|T_k|) over the slices k; a volume with no
  lesion in truth and none predicted has Dice 1, one where exactly one of them is empty 0
  (the convention of the 2D cases, ``metrics/overlap.py``).
* ``predicted_dice``: 2 sum d_k a_k / (2 sum a_k + sum_{a_k = 0} (1 - d_k) a_mean), with d_k
  each slice's predicted Dice and a_k f's lesion area on it. On a slice with lesion, if its
  true lesion were as large as f's, |P_k & T_k| = d_k a_k. On a slice where f found
  nothing, d_k is the quality model's belief that the slice is truly empty, so 1 - d_k
  times f's mean lesion area per lesion slice a_mean is the lesion f is expected to have
  missed there: it enlarges the denominator, as a missed lesion does. When f found nothing
  anywhere the smallest slice prediction stands for the volume (fail-safe: one slice the
  quality model doubts is enough to doubt the volume; a volume with no lesion and none
  predicted has Dice 1, but most volumes of a lesion data set hold one).
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


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
  """The Dice of one whole volume's masks (any shape), by the same rule as ``true_dice``."""
  return float(true_dice(predicted.reshape(1, -1), truth.reshape(1, -1), np.zeros(1, np.int64), 1)[0])


def predicted_dice(slice_dice: np.ndarray, masks: np.ndarray, groups: np.ndarray, num: int) -> np.ndarray:
  """Predicted volume Dice per group from slices' predicted Dice and f's slice masks."""
  area = (masks.reshape(len(masks), -1) > 0).sum(1).astype(np.float64)
  d = np.clip(np.asarray(slice_dice, np.float64), 0.0, 1.0)
  weighted = np.bincount(groups, d * area, num)
  total = np.bincount(groups, area, num)
  lesion_slices = np.bincount(groups, area > 0, num)
  mean_area = total / np.maximum(lesion_slices, 1)
  missed = np.bincount(groups, np.where(area > 0, 0.0, 1.0 - d), num) * mean_area
  smallest = np.full(num, np.inf)
  np.minimum.at(smallest, groups, d)
  with np.errstate(invalid='ignore', divide='ignore'):
    estimate = 2 * weighted / (2 * total + missed)
  return np.where(total > 0, estimate, smallest)


def slice_uncertainty(maps: np.ndarray, groups: np.ndarray, num: int) -> list[np.ndarray]:
  """Mean uncertainty of each slice, per group in slice order (the page's per-slice plot)."""
  per_slice = maps.reshape(len(maps), -1).mean(1)
  return [per_slice[groups == g] for g in range(num)]
