"""The calibrated auto-accept rule keeps its promise (issue 6, item 7), checked statistically."""

import math

import numpy as np
import pytest

from segqual_jax.quality import auto_accept


def _risk(lam):
  """Synthetic world: q ~ U(0, 1), P(fail | q) = 0.6 (1 - q)^2, so R(lam) = P(fail | q >= lam) = 0.2 (1 - lam)^2."""
  return 0.2 * (1.0 - lam) ** 2


def _draw(rng, n):
  q = rng.random(n)
  return q, rng.random(n) < 0.6 * (1.0 - q) ** 2


@pytest.mark.parametrize('alpha', [0.05, 0.1])
def test_guarantee_holds_over_many_calibration_draws(alpha):
  delta, reps, n = 0.1, 300, 1000
  rng = np.random.default_rng(2026)
  grid = np.linspace(1.0, 0.0, 101)  # fixed before any draw
  violations = naive_violations = 0
  automation = []
  for _ in range(reps):
    q, failed = _draw(rng, n)
    lam = auto_accept.calibrate(q, failed, grid, alpha, delta, starts=8)['threshold']
    if lam is not None:
      violations += _risk(lam) > alpha
      automation.append(1.0 - lam)
    else:
      automation.append(0.0)
    # The uncalibrated rule "the most lenient threshold whose empirical rate is <= alpha".
    _, nacc, k = auto_accept.binomial_pvalues(q, failed, grid, alpha)
    ok = (nacc > 0) & (k <= alpha * nacc)
    naive_violations += _risk(grid[np.flatnonzero(ok).max()]) > alpha
  # P(violation) <= delta, with 3 binomial standard errors of slack for the finite repetitions.
  assert violations / reps <= delta + 3 * math.sqrt(delta * (1 - delta) / reps)
  # The check can fail: the uncalibrated rule breaks the promise far more often than delta.
  assert naive_violations / reps > 2 * delta
  # And the rule is not vacuous: it automates a real share of the cases. The best any
  # rule can do is accept q >= lam* with R(lam*) = alpha, a share of sqrt(alpha / 0.2).
  best = math.sqrt(alpha / 0.2)
  assert np.mean(automation) > 0.4 * best


def test_fixed_sequence_stops_at_first_non_rejection():
  p = np.array([0.5, 0.001, 0.001, 0.2, 0.001])
  got = auto_accept.fixed_sequence_multistart(p, delta=0.1, starts=1)
  assert not got.any()  # one chain from the strictest end stops at once
  got = auto_accept.fixed_sequence_multistart(p, delta=0.1, starts=5)  # level 0.02 each
  np.testing.assert_array_equal(got, [False, True, True, False, True])


def test_nothing_accepted_without_evidence():
  q = np.array([0.9, 0.8, 0.7])
  out = auto_accept.calibrate(q, np.array([False, False, True]), np.array([0.9, 0.8, 0.7]), 0.1, 0.1, 2)
  assert out['threshold'] is None  # 3 cases cannot show a rate <= 10 % with 90 % confidence


def test_calibration_split_is_seeded_and_disjoint():
  cal, rest = auto_accept.calibration_indices(50, 0.3, seed=1)
  assert len(cal) == 15 and len(rest) == 35 and not set(cal) & set(rest)
  again, _ = auto_accept.calibration_indices(50, 0.3, seed=1)
  np.testing.assert_array_equal(cal, again)
  grid = auto_accept.threshold_grid(np.linspace(0, 1, 11), 5)
  np.testing.assert_allclose(grid, [1.0, 0.75, 0.5, 0.25, 0.0])
