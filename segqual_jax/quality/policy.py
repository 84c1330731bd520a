"""What happens to a case: the decision rule, the applicability gate and the decision.

One module for the policy every caller applies -- stage 2's calibration (the
rules are calibrated on the cases the gate lets through), the evaluation
(what the rules do on the test split), ``--mode=predict`` and the shift
suite -- so "accepted" means the same thing in each:

* ``gated`` / ``accepted``: a case the gate flags (conformal p-value below
  ``predict.ood_alpha``) is never accepted; the others are accepted when their
  predicted quality is at least the rule's threshold.
* ``decision_rule``: the calibrated rule of a quality model at
  ``predict.alpha`` when the run has one made for the current settings, else
  the fixed rule "predicted Dice >= eval.fail_dice" (with a loud warning
  when calibration was configured).
* ``decide``: one case's ``review`` / ``pass`` / ``fail`` and why, in words:
  ``review`` when the gate flags it, the stream monitor has alarmed
  (``monitor.py``) or the run is suspended (the batch test), else what
  ``accepted`` says.

The numbers of the calibration itself (Learn then Test) are
``auto_accept.py``'s; the gate's score and p-values ``applicability.py``'s.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from segqual_jax.core import values
from segqual_jax.metrics import overlap
from segqual_jax.quality import applicability

DECISIONS = ('pass', 'fail', 'review')


@dataclasses.dataclass(frozen=True)
class DecisionRule:
  """Accept when the quality model's output (in its ``target`` units) is >= ``threshold``.

  ``threshold`` is ``inf`` when the calibration cases support accepting
  nothing. ``warning`` is set when the run promised more than this rule keeps
  (a calibrated run without a usable rule); predict says it in the log, the
  summary and the HTML.
  """
  threshold: float
  description: str
  warning: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
  """One case's decision (``pass`` | ``fail`` | ``review``) and why, in words."""
  decision: str
  reason: str

  @property
  def flagged(self) -> bool:
    """Sent to review by the per-case gate (not by a suspension)."""
    return self.reason.startswith(FLAGGED)


FLAGGED = 'outside the training distribution'


@dataclasses.dataclass(frozen=True)
class Gate:
  """The applicability gate of a run: the per-case level and the batch test's verdict."""
  ood_alpha: float  # review a case whose p-value is below this (0: gate off)
  batch: dict | None = None  # batch_verdict's result, or None (not run)
  monitor: str | None = None  # the stream monitor's status in words (None: no --monitor)
  monitor_alarm: bool = False  # the stream monitor has alarmed: no case is auto-accepted

  @property
  def suspended(self) -> bool:
    return bool(self.batch and self.batch['action'] == 'suspend')


def flagged(pvalues: np.ndarray, ood_alpha: float) -> np.ndarray:
  """Which cases the gate sends to review: conformal p-value below ``ood_alpha`` (a case
  without a p-value, or a gate at 0, flags nothing)."""
  p = np.asarray([np.inf if v is None else v for v in np.ravel(pvalues)], float)
  return p.reshape(np.shape(pvalues)) < ood_alpha


def let_through(pvalues: np.ndarray | None, ood_alpha: float, num_cases: int) -> np.ndarray:
  """(N,) bool: the cases the gate lets through (all of them without p-values)."""
  if pvalues is None:
    return np.ones(num_cases, bool)
  return ~flagged(pvalues, ood_alpha).reshape(num_cases)


def gated(predicted: np.ndarray, pvalues: np.ndarray | None, ood_alpha: float) -> np.ndarray:
  """Predicted quality with every case the gate flags set to -inf: no threshold accepts
  it. Calibration fits its threshold on these values, so the rules hold for the cases
  the gate lets through."""
  predicted = np.asarray(predicted, float)
  return np.where(let_through(pvalues, ood_alpha, predicted.size).reshape(predicted.shape), predicted, -np.inf)


def accepted(predicted: np.ndarray, threshold: float | None, pvalues: np.ndarray | None = None,
             ood_alpha: float = 0.0) -> np.ndarray:
  """Which cases the rule accepts: behind the gate, predicted quality >= ``threshold``
  (None or inf: none)."""
  behind = gated(predicted, pvalues, ood_alpha)
  if threshold is None:
    return np.zeros(behind.shape, bool)
  return behind >= threshold


def realised(predicted: np.ndarray, failed: np.ndarray, threshold: float | None,
             pvalues: np.ndarray | None = None, ood_alpha: float = 0.0) -> dict:
  """What a rule does on a split: the share accepted and the failures among them."""
  accept = accepted(predicted, threshold, pvalues, ood_alpha)
  failed = np.asarray(failed, bool)
  n = int(accept.sum())
  return {'cases': int(len(accept)), 'accepted': n,
          'automation_rate': float(n / max(len(accept), 1)),
          'accepted_failures': int((accept & failed).sum()),
          'accepted_failure_rate': float((accept & failed).sum() / n) if n else None}


def usable_rules(entry: dict | None, config, unit: str = 'case') -> dict | None:
  """A quality model's stored calibration (``calibration.json``'s entry) when it was made
  for the configured ``eval.fail_dice`` and ``predict.ood_alpha`` and for cases of ``unit``
  (``case``: an image or slice, g's own units; ``volume``: a predicted volume Dice), else None."""
  if not entry or entry.get('unit', 'case') != unit:
    return None
  if not (values.same(entry['fail_dice'], config.eval.fail_dice)
          and values.same(entry.get('ood_alpha', 0.0), config.predict.ood_alpha)):
    return None
  return entry


def decision_rule(config, model, unit: str = 'case') -> DecisionRule:
  """The calibrated rule of quality ``model`` (``.name``, ``.target``, ``.rules``) at
  ``predict.alpha`` when the run has one, else the fixed rule "predicted Dice >=
  eval.fail_dice" (loudly, if calibration was configured)."""
  fail_dice, alpha = config.eval.fail_dice, config.predict.alpha
  fixed_threshold = overlap.jaccard_from_dice(fail_dice) if model.target == 'jaccard' else fail_dice
  fixed = f'fixed: pass if predicted Dice >= {fail_dice}'
  entry = usable_rules(model.rules, config, unit)
  rule = values.lookup(entry['rules'], alpha) if entry else None
  if rule is None:
    if config.calibration.fraction <= 0:
      return DecisionRule(float(fixed_threshold), fixed)
    warning = (f'NOT CALIBRATED: this run is configured for calibration (calibration.fraction='
               f'{config.calibration.fraction}) but has no calibrated rule for quality model '
               f'{model.name!r} at predict.alpha={alpha}, eval.fail_dice={fail_dice}, '
               f'predict.ood_alpha={config.predict.ood_alpha} '
               f'(the run\'s quality/calibration.json is missing or made for other settings). '
               'The fixed rule decides instead; its failure rate among accepted cases is not bounded. '
               'Rerun --mode=train_quality to calibrate.')
    return DecisionRule(float(fixed_threshold), fixed, warning)
  promise = (f'calibrated: accepted-failure rate (Dice < {fail_dice}) <= {alpha} '
             f'with {100 * (1 - entry["delta"]):g} % confidence; ')
  if rule['threshold'] is None:
    return DecisionRule(math.inf, promise + 'the calibration cases cannot support accepting '
                        'any case, so every case goes to review')
  return DecisionRule(float(rule['threshold']), promise + f'pass if predicted {model.target} >= '
                      f'{rule["threshold"]:.4f}')


def batch_verdict(scores: np.ndarray, reference_scores: np.ndarray, predict_config) -> dict | None:
  """The batch test of a run's applicability ``scores`` with what it means for the run
  (``rejected``, ``alpha``, ``action``: suspend / review_unusual / warn / none, and
  ``unusual_fdr``); None below ``predict.shift_min_cases`` cases."""
  if len(scores) < predict_config.shift_min_cases:
    return None
  batch = applicability.batch_test(scores, reference_scores)
  batch['rejected'] = batch['pvalue'] < predict_config.shift_alpha
  batch['alpha'] = predict_config.shift_alpha
  batch['action'] = predict_config.on_shift if batch['rejected'] else 'none'
  batch['unusual_fdr'] = predict_config.unusual_fdr
  return batch


def benjamini_hochberg(pvalues: np.ndarray, q: float) -> np.ndarray:
  """Which of a run's cases Benjamini-Hochberg calls unusual at false-discovery rate ``q``
  (the largest k with p_(k) <= q k / n, and every case at or below it)."""
  p = np.asarray(pvalues, float)
  order = np.argsort(p, kind='stable')
  below = p[order] <= q * np.arange(1, len(p) + 1) / max(len(p), 1)
  out = np.zeros(len(p), bool)
  if below.any():
    out[order[:int(np.flatnonzero(below).max()) + 1]] = True
  return out


def unusual(pvalues: np.ndarray, gate: Gate) -> np.ndarray:
  """The cases a shifted run sends to review under ``on_shift=review_unusual``: BH at level
  ``predict.unusual_fdr`` over the run's applicability p-values; none in any other case.

  Its own level, above ``ood_alpha``: BH at ``ood_alpha`` can only pick cases with
  p <= ood_alpha, which the per-case gate already reviews."""
  if not (gate.batch and gate.batch['action'] == 'review_unusual'):
    return np.zeros(len(pvalues), bool)
  return benjamini_hochberg(pvalues, gate.batch['unusual_fdr'])


def decide(quality: float, pvalue: float | None, rule: DecisionRule, gate: Gate,
           is_unusual: bool = False) -> Decision:
  """A readable case's decision: review (outside what the run can judge), pass or fail.
  ``is_unusual``: ``unusual`` picked it in a shifted run."""
  if flagged(np.array([pvalue], object), gate.ood_alpha)[0]:
    return Decision('review', f'{FLAGGED} (applicability p = {pvalue:.3g} < {gate.ood_alpha}): '
                              'not judged')
  if is_unusual:
    return Decision('review', 'unusual within a run unlike the calibration cases (Benjamini-Hochberg '
                              f'over the run\'s applicability p-values at {gate.batch["unusual_fdr"]}): '
                              'not judged')
  if gate.monitor_alarm:
    return Decision('review', 'auto-accept stopped: the stream monitor has alarmed (the stream no longer '
                              'looks like the run\'s cases) and has not been reset')
  if gate.suspended:
    return Decision('review', 'auto-accept suspended for this run (batch unlike the calibration cases)')
  if accepted(np.array([quality]), rule.threshold)[0]:
    return Decision('pass', 'predicted quality at or above the rule\'s threshold')
  return Decision('fail', 'predicted failure: predicted quality below the rule\'s threshold')


def shift_text(batch: dict) -> str:
  """The batch test's verdict in words (a warning of the run)."""
  what = (f'the {batch["cases"]} cases of this run as a whole look unlike the cases the run was '
          f'calibrated and fitted on (one-sided two-sample KS of their applicability scores: '
          f'D = {batch["statistic"]:.3f}, p = {batch["pvalue"]:.2g} < {batch["alpha"]})')
  if batch['action'] == 'suspend':
    return (f'AUTO-ACCEPT SUSPENDED: {what}, so no promise about them holds; every case goes '
            'to review (predict.on_shift=suspend).')
  if batch['action'] == 'review_unusual':
    return (f'SHIFTED RUN: {what}; its most unusual cases (Benjamini-Hochberg over their p-values) go '
            'to review and the rest are decided as usual (predict.on_shift=review_unusual); the '
            'calibrated failure rate was measured to hold this way on ISIC 2017 mixed folders, '
            'not proven.')
  return (f'SHIFT WARNING: {what}; the decisions below were made anyway (predict.on_shift=warn) '
          'and the calibrated failure rate does not hold for them.')


def gate_text(gate: Gate) -> str:
  """The gate's settings, the batch test's verdict and the stream monitor, in words (the HTML)."""
  return _gate_only_text(gate) + (f' {gate.monitor}' if gate.monitor else '')


def _gate_only_text(gate: Gate) -> str:
  if gate.ood_alpha <= 0:
    return 'Applicability gate off (predict.ood_alpha=0): every case is judged, however unlike the training cases.'
  text = (f'Applicability gate: a case whose applicability p-value is below {gate.ood_alpha} is '
          'unlike the cases the run can judge and goes to review, whatever its predicted quality.')
  if gate.batch is None:
    return text + ' Too few cases for the batch test; only the per-case gate applied.'
  b = gate.batch
  return text + (f' Batch test (one-sided two-sample KS of the applicability scores, {b["cases"]} cases): '
                 f'D = {b["statistic"]:.3f}, p = {b["pvalue"]:.2g}: '
                 + ('the run looks unlike the calibration cases.' if b['rejected']
                    else 'no evidence that the run differs from the calibration cases.'))
