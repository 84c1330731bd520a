"""An honest interval around a case's predicted Dice: split conformal on the calibration cases.

"Predicted Dice 0.86" alone does not say whether the truth is 0.85 or
anything from 0.6 to 1. The run's calibration cases -- never seen by the
quality model, judged exactly as predict judges a new case -- have both a
prediction and the truth, so their errors say how far a new case's truth
can be from its prediction (Vovk et al.; Angelopoulos & Bates 2021):

* the lower side's score is ``predicted - true``, the upper side's
  ``true - predicted``; each side's ``ceil((n + 1)(1 - alpha/2)) / n``
  empirical quantile over the n calibration cases bounds that side with
  probability ``>= 1 - alpha/2`` for a new case exchangeable with them, so
  ``[predicted - lower, predicted + upper]`` holds the true value with
  probability ``>= 1 - alpha``. Two sides, not one absolute residual: a
  quality near 1 can only be over-predicted by a little and under-predicted
  by a lot, and the interval should say so.
* **scaled by how far the prediction is from perfect** (``kind='scaled'``):
  both sides are divided by ``floor + (1 - predicted)`` before the quantile
  and multiplied back after (a normalised score, Papadopoulos et al. 2008;
  Lei et al. 2018). A quality near 1 is bounded and the quality models are
  sure of it -- on ISIC 2017's calibration cases the errors of a case
  predicted at 0.9 are a third of one predicted at 0.6 -- so one quantile of
  the scaled errors gives narrow intervals to confident good cases and wide
  ones to doubtful cases, with the same guarantee: the scale is a fixed
  function of the prediction, not fitted on the calibration cases. ``floor``
  (``predict.interval_floor``) keeps a prediction of 1 from a zero-width
  interval.
* ``kind='constant'``: the same width for every case; the baseline the
  scaled one must beat.

The interval is fitted on Dice, the user's bar (a Jaccard-target model's
prediction converted first); the Jaccard interval follows endpoint by
endpoint (``J = D / (2 - D)`` is monotone, so the coverage carries over).
Endpoints are clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KINDS = ('scaled', 'constant')


def _side_quantile(scores: np.ndarray, alpha_side: float) -> float:
  """The split-conformal quantile of one side: the ``ceil((n + 1)(1 - a))``-th smallest score
  (+inf when that exceeds n: too few cases to bound the side)."""
  n = len(scores)
  rank = math.ceil((n + 1) * (1.0 - alpha_side))
  if n == 0 or rank > n:
    return math.inf
  return float(np.sort(scores)[rank - 1])


@dataclasses.dataclass(frozen=True)
class Interval:
  """Fitted quantiles of the scaled errors: ``bounds(predicted)`` is each case's interval."""
  kind: str  # 'scaled' | 'constant'
  alpha: float  # miscoverage: the interval holds the truth with probability >= 1 - alpha
  floor: float  # scaled: the scale is floor + (1 - predicted); constant: unused
  lower: float  # how far below its prediction the truth may lie, in units of the scale
  upper: float  # how far above
  cases: int  # calibration cases

  def scale(self, predicted: np.ndarray) -> np.ndarray:
    predicted = np.asarray(predicted, np.float64)
    if self.kind == 'constant':
      return np.ones_like(predicted)
    return self.floor + (1.0 - np.clip(predicted, 0.0, 1.0))

  def bounds(self, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` (N,) each, clipped to [0, 1]; NaN where the prediction is not finite."""
    predicted = np.asarray(predicted, np.float64)
    bad = ~np.isfinite(predicted)
    safe = np.where(bad, 0.0, predicted)
    scale = self.scale(safe)
    with np.errstate(invalid='ignore'):
      low = np.clip(safe - self.lower * scale, 0.0, 1.0)
      high = np.clip(safe + self.upper * scale, 0.0, 1.0)
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)

  def to_json(self) -> dict:
    return {'kind': self.kind, 'alpha': self.alpha, 'floor': self.floor,
            'lower': _finite(self.lower), 'upper': _finite(self.upper), 'cases': self.cases}

  @classmethod
  def from_json(cls, d: dict) -> 'Interval':
    back = lambda v: math.inf if v is None else float(v)
    return cls(d['kind'], float(d['alpha']), float(d['floor']), back(d['lower']), back(d['upper']),
               int(d['cases']))


def _finite(v: float):
  return None if not math.isfinite(v) else float(v)


def fit(predicted: np.ndarray, true: np.ndarray, alpha: float, kind: str = 'scaled',
        floor: float = 0.05) -> Interval:
  """Calibrates on ``predicted`` and ``true`` (n,) of the calibration cases (non-finite pairs
  left out); ``alpha`` the miscoverage in (0, 1)."""
  if kind not in KINDS:
    raise ValueError(f'unknown interval kind {kind!r}; one of {KINDS}')
  if not 0.0 < alpha < 1.0:
    raise ValueError(f'interval alpha must be in (0, 1), got {alpha}')
  if floor <= 0:
    raise ValueError(f'interval floor must be > 0, got {floor}')
  predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
  keep = np.isfinite(predicted) & np.isfinite(true)
  predicted, true = predicted[keep], true[keep]
  unscaled = Interval(kind, float(alpha), float(floor), 0.0, 0.0, int(len(predicted)))
  scale = unscaled.scale(predicted)
  return dataclasses.replace(unscaled, lower=_side_quantile((predicted - true) / scale, alpha / 2),
                             upper=_side_quantile((true - predicted) / scale, alpha / 2))


def coverage(interval: Interval, predicted: np.ndarray, true: np.ndarray) -> dict:
  """Empirical coverage and mean width of ``interval`` on cases with known truth."""
  low, high = interval.bounds(predicted)
  true = np.asarray(true, np.float64)
  ok = np.isfinite(low) & np.isfinite(true)
  inside = (true[ok] >= low[ok]) & (true[ok] <= high[ok])
  return {'cases': int(ok.sum()), 'coverage': float(inside.mean()) if ok.any() else math.nan,
          'mean_width': float((high[ok] - low[ok]).mean()) if ok.any() else math.nan}


def from_calibration(entry: dict | None, kind: str, alpha: float, floor: float,
                     fraction: float, other_gate: bool = False) -> tuple[Interval | None, str]:
  """A run's interval for one quality model (``entry``: its ``calibration.json`` record, None
  when it has none) and the words that say what it promises, or why there is none.
  ``other_gate``: the record was calibrated behind a gate at another ``predict.ood_alpha``."""
  if kind == 'none':
    return None, 'no interval (predict.interval=none)'
  if fraction <= 0:
    return None, 'no interval: the run has no calibration cases (calibration.fraction=0)'
  if other_gate:
    return None, ('no interval: the run was calibrated behind the gate at another '
                  'predict.ood_alpha (or eval.fail_dice); its calibration cases are not those '
                  'this gate lets through')
  if not entry or 'interval_cases' not in entry:
    return None, ('no interval: the run\'s calibration predates the intervals; rerun '
                  '--mode=train_quality (only the calibration is redone)')
  cases = entry['interval_cases']
  fitted = fit(cases['predicted_dice'], cases['true_dice'], alpha, kind, floor)
  if not (math.isfinite(fitted.lower) and math.isfinite(fitted.upper)):
    return fitted, (f'{100 * (1 - alpha):g} % interval of the predicted Dice: {fitted.cases} '
                    f'calibration cases are too few to bound it (>= {math.ceil(2 / alpha - 1)} '
                    'needed), so it is the whole range 0-1')
  how = ('wider the lower the predicted Dice' if kind == 'scaled' else 'one width for every case')
  return fitted, (f'{100 * (1 - alpha):g} % conformal interval of the predicted Dice ({kind}: {how}), '
                  f'from {fitted.cases} calibration cases behind the gate: it holds the true Dice '
                  f'of at least {100 * (1 - alpha):g} % of cases like them; not given for a case the '
                  'gate sends to review, nor in a run the batch test or the stream monitor '
                  'finds unlike them')
