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

import dataclasses
import os

import numpy as np

from segqual_jax.data import volumes
from segqual_jax.metrics import overlap
from segqual_jax.segmenter import external, judged


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


def gate(pvalues: np.ndarray | None, ood_alpha: float, lesion_area: np.ndarray | None = None
         ) -> tuple[bool, float | None, float | None, float | None]:
  """The applicability gate per volume: ``(flagged, median p, share of slices with p <=
  ood_alpha / 2, the same share of f's lesion area)`` of one volume's slices (the lesion
  share is None when f found no lesion).

  A volume is flagged when at least half of its slices, or slices holding at least half
  of f's lesion area, have p <= ``ood_alpha`` / 2. If each slice's p-value is valid, the
  expected share of such slices is at most ``ood_alpha`` / 2, so by Markov's inequality
  the unweighted share reaches one half with probability at most ``ood_alpha``, whatever
  the correlation between a volume's slices; the lesion-weighted share's weights come from
  the same slices, so the two together may flag up to about twice that (review, never a
  wrong accept)."""
  if pvalues is None or ood_alpha <= 0 or len(pvalues) == 0:
    return False, None, None, None
  low = np.asarray(pvalues) <= ood_alpha / 2
  share = float(np.mean(low))
  area = None if lesion_area is None else np.asarray(lesion_area, np.float64)
  lesion_share = float(np.sum(area * low) / np.sum(area)) if area is not None and area.sum() > 0 else None
  flagged = share >= 0.5 or (lesion_share is not None and lesion_share >= 0.5)
  return flagged, float(np.median(pvalues)), share, lesion_share


def native_dice(config, cases: list[str], masks: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Each case's volume Dice on the label file's own grid: of f's slice masks resized onto
  it, or, with ``external.predictions``, of the outside model's own volume as it wrote it."""
  root = config.data.root
  spec = volumes.read_dataset_json(root)
  folder = judged.predictions_dir(config) if external.active(config) else None
  out = []
  for g, case in enumerate(cases):
    vol = volumes.read_case(os.path.join(root, 'imagesTr'), case, spec, os.path.join(root, 'labelsTr'))
    if folder is None:
      reviewed = volumes.to_volume(masks[groups == g], vol.shape, nearest=True)
    else:
      reviewed = volumes.read_prediction(folder, case, spec, vol.shape, vol.affine)[0] > 0.5
    out.append(dice(reviewed, vol.label))
  return np.asarray(out)


@dataclasses.dataclass(frozen=True)
class Volumes:
  """A split's slices gathered into volumes, as cases of the decision policy.

  ``pvalues`` is the volume gate's verdict in the form ``quality/policy.py`` reads a case's
  conformal p-value: 0 for a volume ``gate`` flags, 1 for one it lets through (None
  without a gate), so calibration, its test and predict apply the one policy to volumes.
  """
  cases: list[str]
  groups: np.ndarray  # (slices,) index of each slice's volume
  predicted: dict[str, np.ndarray]  # quality model -> predicted volume Dice per volume
  true: np.ndarray | None  # true volume Dice on the volume's own grid (None without labels)
  pvalues: np.ndarray | None


def as_volumes(config, ids, masks: np.ndarray, predicted: dict[str, np.ndarray], target: str,
               slice_pvalues: np.ndarray | None, with_truth: bool = True) -> Volumes:
  """Slices (ids ``<case>:zNNN``, f's masks, each model's slice predictions in ``target``
  units, the gate's slice p-values) -> ``Volumes``; the true Dice read from the data set."""
  cases, groups = groups_of(ids)
  n = len(cases)
  vol_pred = {name: predicted_dice(np.asarray(overlap.as_dice(np.asarray(p, np.float64), target)),
                                   masks, groups, n) for name, p in predicted.items()}
  pvalues = None
  if slice_pvalues is not None:
    area = (masks.reshape(len(masks), -1) > 0).sum(1)
    flagged = [gate(np.asarray(slice_pvalues)[groups == g], config.predict.ood_alpha, area[groups == g])[0]
               for g in range(n)]
    pvalues = np.where(flagged, 0.0, 1.0)
  true = native_dice(config, cases, masks, groups) if with_truth else None
  return Volumes(cases, groups, vol_pred, true, pvalues)
