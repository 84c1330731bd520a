"""How well predicted quality separates good segmentations from failures.

Pure numpy/scikit-learn functions of ``(predicted quality, true quality)``.
Conventions (the paper's, DeVries & Taylor 2018, Table 1):

* A case **fails** when its true score is below the threshold (Dice < 0.8 by
  default; the paper uses Jaccard < 0.7). "Pass" is the positive class for
  AUROC and AUPR-Pass; AUPR-Fail treats failure as positive and ranks by
  ``-predicted``.
* Detection error = min over thresholds d of
  ``0.5 P(pred <= d | pass) + 0.5 P(pred > d | fail)``, read off the ROC curve
  (``0.5 (1 - TPR) + 0.5 FPR`` at every operating point) rather than swept.
* Risk-coverage (Geifman & El-Yaniv; Zenk et al. 2024): cases are accepted in
  order of decreasing predicted quality; risk = 1 - true Dice. AURC is the mean
  selective risk over the n coverage levels k/n; E-AURC subtracts the AURC of
  the oracle ordering (by true risk).
* With only one class present (e.g. no failures in the test split) the
  ranking metrics are undefined: they are ``None`` and a warning is issued.
* Uncertainty: AUROC and AURC carry a 95 % percentile-bootstrap interval
  over the cases (``BOOTSTRAP_RESAMPLES``, seeded, so a table is
  reproducible), and each failure definition counts its failures: with fewer
  than ``MIN_CLASS_CASES`` failures (or passes) ``small_sample`` is set and
  the reports say so -- 12 cases once printed "AUROC 100.0 %" with no caveat.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm


BOOTSTRAP_RESAMPLES = 1000
MIN_CLASS_CASES = 10  # fewer failures (or passes) than this: the ranking metrics are flagged


def _resamples(n: int, seed: int = 0) -> np.ndarray:
  """(B, n) case indices of the bootstrap resamples (seeded: the same for every model)."""
  return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))


def _interval(values: np.ndarray) -> list[float] | None:
  values = values[np.isfinite(values)]
  if len(values) < BOOTSTRAP_RESAMPLES // 2:  # most resamples undefined: no honest interval
    return None
  return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def auroc_rows(predicted: np.ndarray, passed: np.ndarray) -> np.ndarray:
  """AUROC of every row of (B, n) arrays at once (rank formula, ties averaged as sklearn
  does); NaN for a row with one class only."""
  passed = np.asarray(passed, bool)
  ranks = stats.rankdata(np.asarray(predicted, float), axis=1)
  n_pos = passed.sum(1)
  n_neg = passed.shape[1] - n_pos
  with np.errstate(invalid='ignore', divide='ignore'):
    auc = ((ranks * passed).sum(1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
  return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def mean_interval(values: np.ndarray) -> list[float] | None:
  """95 % bootstrap interval of the mean of per-case ``values`` (a coverage, a width)."""
  values = np.asarray(values, float)
  if len(values) < 2:
    return None
  return _interval(values[_resamples(len(values))].mean(1))


def auroc_interval(predicted: np.ndarray, passed: np.ndarray) -> list[float] | None:
  """95 % bootstrap interval of the AUROC."""
  passed = np.asarray(passed, bool)
  if len(passed) < 2:
    return None
  idx = _resamples(len(passed))
  return _interval(auroc_rows(np.asarray(predicted, float)[idx], passed[idx]))


def aurc_interval(confidence: np.ndarray, risk: np.ndarray) -> list[float] | None:
  """95 % bootstrap interval of the AURC."""
  risk = np.asarray(risk, float)
  if len(risk) < 2:
    return None
  idx = _resamples(len(risk))
  conf, r = np.asarray(confidence, float)[idx], risk[idx]
  order = np.argsort(-conf, axis=1, kind='stable')
  cumulative = np.cumsum(np.take_along_axis(r, order, 1), axis=1)
  return _interval((cumulative / np.arange(1, r.shape[1] + 1)).mean(1))


def rmse(predicted: np.ndarray, true: np.ndarray) -> float:
  return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(true)) ** 2)))


def _both_classes(passed: np.ndarray, name: str) -> bool:
  if passed.all() or not passed.any():
    warnings.warn(f'{name}: only one class present ({int(passed.sum())} of {len(passed)} '
                  'cases pass); reporting null')
    return False
  return True


def detection_error(predicted: np.ndarray, passed: np.ndarray) -> float | None:
  """min_d 0.5 P(pred <= d | pass) + 0.5 P(pred > d | fail), from the ROC curve."""
  if not _both_classes(passed, 'detection error'):
    return None
  fpr, tpr, _ = skm.roc_curve(passed, predicted)
  return float(np.min(0.5 * (1.0 - tpr) + 0.5 * fpr))


def auroc(predicted: np.ndarray, passed: np.ndarray) -> float | None:
  if not _both_classes(passed, 'AUROC'):
    return None
  return float(skm.roc_auc_score(passed, predicted))


def aupr_pass(predicted: np.ndarray, passed: np.ndarray) -> float | None:
  if not _both_classes(passed, 'AUPR-Pass'):
    return None
  return float(skm.average_precision_score(passed, predicted))


def aupr_fail(predicted: np.ndarray, passed: np.ndarray) -> float | None:
  if not _both_classes(passed, 'AUPR-Fail'):
    return None
  return float(skm.average_precision_score(~passed, -np.asarray(predicted)))


def risk_coverage(confidence: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Coverage k/n and selective risk (mean risk of the k most confident cases)."""
  order = np.argsort(-np.asarray(confidence), kind='stable')
  cumulative = np.cumsum(np.asarray(risk, float)[order])
  k = np.arange(1, len(order) + 1)
  return k / len(order), cumulative / k


def aurc(confidence: np.ndarray, risk: np.ndarray) -> float:
  """Area under the risk-coverage curve: mean selective risk over coverages k/n."""
  return float(np.mean(risk_coverage(confidence, risk)[1]))


def e_aurc(confidence: np.ndarray, risk: np.ndarray) -> float:
  """AURC minus the oracle's AURC (ordering by true risk): 0 is a perfect ranking."""
  risk = np.asarray(risk, float)
  return aurc(confidence, risk) - aurc(-risk, risk)


def correlations(predicted: np.ndarray, true: np.ndarray) -> dict[str, float | None]:
  if np.std(predicted) == 0 or np.std(true) == 0:
    warnings.warn('correlation: a constant input; reporting null')
    return {'pearson': None, 'spearman': None}
  return {'pearson': float(stats.pearsonr(predicted, true)[0]),
          'spearman': float(stats.spearmanr(predicted, true)[0])}


def threshold_metrics(predicted: np.ndarray, true: np.ndarray, threshold: float) -> dict:
  """Failure-detection metrics when a case fails iff ``true < threshold``."""
  passed = np.asarray(true) >= threshold
  failures = int((~passed).sum())
  return {
      'threshold': threshold,
      'fail_rate': float(np.mean(~passed)),
      'failures': failures,
      'small_sample': bool(min(failures, len(passed) - failures) < MIN_CLASS_CASES),
      'detection_error': detection_error(predicted, passed),
      'auroc': auroc(predicted, passed),
      'auroc_ci95': auroc_interval(predicted, passed),
      'aupr_pass': aupr_pass(predicted, passed),
      'aupr_fail': aupr_fail(predicted, passed),
  }


def all_metrics(predicted: np.ndarray, true_dice: np.ndarray, true_jaccard: np.ndarray,
                target: str, fail_dice: float = 0.8, fail_jaccard: float = 0.7) -> dict:
  """Every metric of one quality model, for both failure definitions.

  Args:
    predicted: predicted quality per case (of the ``target`` metric).
    true_dice, true_jaccard: true scores per case.
    target: 'dice' or 'jaccard' -- what ``predicted`` estimates (RMSE is against it).
    fail_dice, fail_jaccard: failure thresholds.
  """
  predicted = np.asarray(predicted, float)
  true_target = np.asarray(true_dice if target == 'dice' else true_jaccard, float)
  risk = 1.0 - np.asarray(true_dice, float)
  return {
      'target': target,
      'rmse': rmse(predicted, true_target),
      **correlations(predicted, true_target),
      'aurc': aurc(predicted, risk),
      'aurc_ci95': aurc_interval(predicted, risk),
      'e_aurc': e_aurc(predicted, risk),
      f'dice<{fail_dice}': threshold_metrics(predicted, true_dice, fail_dice),
      f'jaccard<{fail_jaccard}': threshold_metrics(predicted, true_jaccard, fail_jaccard),
  }
