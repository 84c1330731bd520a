"""A calibrated auto-accept rule: few accepted failures, with a stated confidence.

The clinical rule is "accept a segmentation without review when its predicted
quality is at least lambda". We choose lambda on a calibration split so that
the *accepted-failure rate* -- the share of true failures (Dice < 0.8) among
accepted cases, R(lambda) = P(fail | q >= lambda) -- satisfies

    P( R(lambda_hat) <= alpha ) >= 1 - delta,

over the draw of the calibration set, with Learn then Test (Angelopoulos,
Bates, Candes, Jordan & Lei 2021, "Learn then Test: Calibrating predictive
algorithms to achieve risk control", arXiv:2110.01052):

1. A grid of candidate thresholds fixed *before* looking at the calibration
   data: quantiles of the quality model's predictions on its own training
   split, which the calibration split never overlaps.
2. For each lambda_j the null hypothesis H_j: R(lambda_j) > alpha and its
   p-value from the binomial tail. Given the n_j calibration cases accepted at
   lambda_j, their failures k_j are Binomial(n_j, R(lambda_j)) (the cases are
   i.i.d.), so p_j = P(Binomial(n_j, alpha) <= k_j) is a valid p-value
   conditionally on n_j, hence also unconditionally.
3. Family-wise error control at delta by LTT's fixed-sequence testing, run
   from several starts (each chain at level delta / starts, a Bonferroni
   union over chains, so the family-wise error stays <= delta): each chain walks from its start towards more lenient thresholds
   and rejects H_j while p_j <= delta / starts. A single chain from the
   strictest threshold would stop at once: with a handful of accepted cases no
   test can reject, even with zero failures.
4. lambda_hat = the most lenient rejected threshold. With probability
   >= 1 - delta every rejected H_j is false, so R(lambda_hat) <= alpha. If
   nothing is rejected, nothing is accepted automatically (threshold None).

The guarantee is on the population rate; a finite test split shows a
realised rate scattered around it. tests/test_auto_accept.py checks the
guarantee over many synthetic calibration draws with a known R. How a rule
is applied to a case (behind the applicability gate) is ``policy.py``'s.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from segqual_jax.core import keys


def calibration_indices(num_cases: int, fraction: float, seed: int,
                        groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(calibration, rest)`` sorted indices: a seeded ``fraction`` of a split held out for calibration.

  With ``groups`` (each case's patient, for the slices of volumes) the fraction is of the
  patients, and a patient's slices all fall on one side: the calibration cases are then
  whole volumes, drawn independently of the ones the quality models fit.
  """
  if groups is None:
    perm = np.random.default_rng([seed, keys.CALIBRATION_SPLIT]).permutation(num_cases)
    n_cal = int(round(fraction * num_cases))
    return np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
  groups = np.asarray(groups)
  cal_groups, _ = calibration_indices(len(np.unique(groups)), fraction, seed)
  held = np.isin(groups, np.unique(groups)[cal_groups])
  return np.flatnonzero(held), np.flatnonzero(~held)


def threshold_grid(reference_scores: np.ndarray, size: int) -> np.ndarray:
  """Candidate thresholds, strictest first: ``size`` quantiles of scores independent of calibration."""
  levels = np.linspace(1.0, 0.0, size)
  return np.unique(np.quantile(np.asarray(reference_scores, float), levels))[::-1]


def binomial_pvalues(scores: np.ndarray, failed: np.ndarray, grid: np.ndarray,
                     alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(p-values, accepted counts, accepted failures)`` of H_j: R(grid_j) > alpha."""
  scores, failed = np.asarray(scores, float), np.asarray(failed, bool)
  accepted = scores[None, :] >= np.asarray(grid, float)[:, None]  # (J, n)
  n = accepted.sum(1)
  k = (accepted & failed[None, :]).sum(1)
  p = np.where(n > 0, stats.binom.cdf(k, n, alpha), 1.0)
  return p, n, k


def fixed_sequence_multistart(pvalues: np.ndarray, delta: float, starts: int) -> np.ndarray:
  """Rejected hypotheses (bool per grid index), FWER <= delta.

  ``starts`` chains start at evenly spaced grid indices; each walks towards
  higher indices (more lenient thresholds) at level ``delta / starts`` and
  stops at its first non-rejection.
  """
  num = len(pvalues)
  rejected = np.zeros(num, bool)
  if num == 0:
    return rejected
  starts = max(1, min(starts, num))
  level = delta / starts
  for start in np.unique(np.linspace(0, num - 1, starts).round().astype(int)):
    for j in range(start, num):
      if pvalues[j] > level:
        break
      rejected[j] = True
  return rejected


def calibrate(scores: np.ndarray, failed: np.ndarray, grid: np.ndarray, alpha: float,
              delta: float, starts: int) -> dict:
  """The LTT threshold for accepted-failure rate <= alpha with confidence 1 - delta.

  Args:
    scores: predicted quality of the calibration cases (higher = better).
    failed: whether each calibration case truly failed.
    grid: candidate thresholds, strictest first (``threshold_grid``).
    alpha: the tolerated accepted-failure rate.
    delta: the tolerated probability that the calibration draw breaks it.
    starts: chains of the fixed-sequence test.

  Returns:
    ``threshold`` (None when the calibration cases cannot support accepting
    anything with that confidence) and the calibration split's accepted share and accepted-failure rate.
  """
  p, n, k = binomial_pvalues(scores, failed, grid, alpha)
  rejected = fixed_sequence_multistart(p, delta, starts)
  if not rejected.any():
    return {'threshold': None, 'calibration_cases': int(len(scores)),
            'calibration_accepted_share': 0.0, 'calibration_accepted_failure_rate': None}
  j = int(np.flatnonzero(rejected).max())
  return {'threshold': float(grid[j]), 'calibration_cases': int(len(scores)),
          'calibration_accepted_share': float(n[j] / max(len(scores), 1)),
          'calibration_accepted_failure_rate': float(k[j] / max(n[j], 1))}
