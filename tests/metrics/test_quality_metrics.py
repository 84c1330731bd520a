"""Failure-detection metrics against hand-computed cases and brute-force references."""

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from segqual_jax.metrics import quality as qm


def test_hand_computed_detection_error_and_auroc():
  # pass cases score 0.9, 0.6; fail cases 0.7, 0.2.
  pred = np.array([0.9, 0.6, 0.7, 0.2])
  passed = np.array([True, True, False, False])
  # d=0.6: 0.5*P(pass<=0.6)=0.25, 0.5*P(fail>0.6)=0.25 -> 0.5; d=0.2: 0 + 0.25 = 0.25;
  # d=0.7: 0.5*0.5 + 0 = 0.25; best 0.25.
  assert qm.detection_error(pred, passed) == pytest.approx(0.25)
  assert qm.auroc(pred, passed) == pytest.approx(0.75)  # 3 of 4 pass/fail pairs ordered


def test_detection_error_equals_brute_force_sweep():
  rng = np.random.default_rng(0)
  true = rng.random(300)
  pred = np.clip(true + rng.normal(0, 0.2, 300), 0, 1)
  passed = true >= 0.7
  sweep = [0.5 * np.mean(pred[passed] <= d) + 0.5 * np.mean(pred[~passed] > d)
           for d in np.concatenate([[-np.inf], np.sort(pred)])]
  assert qm.detection_error(pred, passed) == pytest.approx(min(sweep))


def test_aupr_and_correlations_match_references():
  rng = np.random.default_rng(1)
  true = rng.random(200)
  pred = true + rng.normal(0, 0.3, 200)
  passed = true >= 0.5
  assert qm.aupr_pass(pred, passed) == pytest.approx(skm.average_precision_score(passed, pred))
  assert qm.aupr_fail(pred, passed) == pytest.approx(skm.average_precision_score(~passed, -pred))
  c = qm.correlations(pred, true)
  assert c['pearson'] == pytest.approx(np.corrcoef(pred, true)[0, 1])
  assert c['spearman'] == pytest.approx(stats.spearmanr(pred, true)[0])
  assert qm.rmse(pred, true) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))


def test_aurc_hand_computed_and_oracle():
  conf = np.array([0.9, 0.8, 0.1])
  risk = np.array([0.0, 1.0, 0.5])
  # accepted in order: risks 0, 1, 0.5 -> selective risks 0, 0.5, 0.5 -> mean 1/3
  assert qm.aurc(conf, risk) == pytest.approx(1 / 3)
  # oracle order 0, 0.5, 1 -> 0, 0.25, 0.5 -> mean 0.25
  assert qm.e_aurc(conf, risk) == pytest.approx(1 / 3 - 0.25)
  assert qm.e_aurc(-risk, risk) == pytest.approx(0.0)


def test_single_class_reports_null_with_warning():
  pred = np.array([0.9, 0.8, 0.95])
  true = np.array([0.85, 0.9, 0.99])  # no failures at Dice < 0.8
  with pytest.warns(UserWarning, match='only one class'):
    m = qm.threshold_metrics(pred, true, 0.8)
  assert m['auroc'] is None and m['detection_error'] is None and m['aupr_fail'] is None
  assert m['fail_rate'] == 0.0


def test_all_metrics_schema():
  rng = np.random.default_rng(2)
  dice = rng.random(50)
  jac = dice / (2 - dice)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # both classes present: no warning expected
    m = qm.all_metrics(jac + 0.01, dice, jac, target='jaccard')
  assert set(m) == {'target', 'rmse', 'pearson', 'spearman', 'aurc', 'aurc_ci95', 'e_aurc',
                    'dice<0.8', 'jaccard<0.7'}
  assert m['rmse'] == pytest.approx(0.01)
  assert m['dice<0.8']['fail_rate'] == pytest.approx(np.mean(dice < 0.8))
  assert m['dice<0.8']['failures'] == int(np.sum(dice < 0.8))


def test_bootstrap_intervals_cover_the_point_value_and_shrink_with_more_cases():
  rng = np.random.default_rng(5)
  widths = []
  for n in (60, 600):
    dice = rng.random(n)
    pred = dice + rng.normal(0, 0.25, n)
    m = qm.all_metrics(pred, dice, dice / (2 - dice), target='dice')
    lo, hi = m['dice<0.8']['auroc_ci95']
    assert lo <= m['dice<0.8']['auroc'] <= hi
    a_lo, a_hi = m['aurc_ci95']
    assert a_lo <= m['aurc'] <= a_hi
    widths.append(hi - lo)
    # the resamples' rank formula is sklearn's AUROC, ties included
    rows = np.round(np.stack([pred, pred[::-1]]), 1)
    passed = np.stack([dice >= 0.8, dice[::-1] >= 0.8])
    np.testing.assert_allclose(qm.auroc_rows(rows, passed),
                               [qm.auroc(r, p) for r, p in zip(rows, passed)])
  assert widths[1] < widths[0] / 2  # ~1/sqrt(n)
  assert qm.all_metrics(pred, dice, dice / (2 - dice), 'dice')['dice<0.8']['auroc_ci95'] == \
      qm.all_metrics(pred, dice, dice / (2 - dice), 'dice')['dice<0.8']['auroc_ci95']  # seeded


def test_few_failures_are_flagged_as_a_small_sample():
  dice = np.r_[np.full(3, 0.5), np.full(40, 0.9)]
  m = qm.threshold_metrics(-np.abs(dice - 0.9), dice, 0.8)
  assert m['failures'] == 3 and m['small_sample']
  many = np.r_[np.full(15, 0.5), np.full(40, 0.9)]
  assert not qm.threshold_metrics(many, many, 0.8)['small_sample']
