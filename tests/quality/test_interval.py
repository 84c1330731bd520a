"""The conformal interval around a predicted quality: coverage on a problem whose distribution is known."""

import math

import numpy as np
import pytest

from segqual_jax.quality import interval


def _draw(rng, n):
  """Predicted quality uniform on [0.3, 1]; the truth scatters more the lower the prediction
  (sd 0.02 at 1, 0.2 at 0.3), skewed downwards, clipped to [0, 1]."""
  predicted = rng.uniform(0.3, 1.0, n)
  sd = 0.02 + 0.18 * (1.0 - predicted) / 0.7
  true = np.clip(predicted - sd * (rng.exponential(1.0, n) - 0.7), 0.0, 1.0)
  return predicted, true


@pytest.mark.parametrize('kind', interval.KINDS)
def test_coverage_holds_over_seeded_draws(kind):
  """Over 300 draws of 150 calibration and 500 new cases, the mean coverage is >= 1 - alpha
  and not far above it (split conformal: at most 1 - alpha + 2 / (n + 1))."""
  alpha, covered = 0.1, []
  for seed in range(300):
    rng = np.random.default_rng(seed)
    fitted = interval.fit(*_draw(rng, 150), alpha, kind)
    covered.append(interval.coverage(fitted, *_draw(rng, 500))['coverage'])
  mean = float(np.mean(covered))
  assert 1 - alpha - 0.005 <= mean <= 1 - alpha + 2 / 151 + 0.005, mean


def test_scaled_is_narrower_where_the_predictions_are_good():
  rng = np.random.default_rng(0)
  cal = _draw(rng, 400)
  scaled = interval.fit(*cal, 0.1, 'scaled')
  constant = interval.fit(*cal, 0.1, 'constant')
  new = _draw(rng, 2000)
  s, c = interval.coverage(scaled, *new), interval.coverage(constant, *new)
  assert s['mean_width'] < c['mean_width'] and s['coverage'] >= 0.88, (s, c)
  low, high = scaled.bounds(np.array([0.95, 0.4]))
  assert high[0] - low[0] < high[1] - low[1]  # a confident good case gets a narrow interval
  low, high = constant.bounds(np.array([0.7, 0.5]))
  assert np.isclose(high[0] - low[0], high[1] - low[1])


def test_side_quantile_and_too_few_cases():
  """The quantile is the ceil((n + 1)(1 - a))-th smallest score; too few cases give an
  unbounded side (the interval [0, 1])."""
  assert interval._side_quantile(np.arange(1.0, 20.0), 0.05) == 19.0  # rank ceil(20 * .95) = 19
  assert math.isinf(interval._side_quantile(np.arange(1.0, 18.0), 0.05))  # rank 18 > 17 cases
  few = interval.fit(np.full(5, 0.8), np.full(5, 0.7), 0.1, 'constant')
  low, high = few.bounds(np.array([0.8]))
  assert (low[0], high[0]) == (0.0, 1.0)


def test_bounds_are_clipped_nan_for_no_prediction_and_survive_json():
  fitted = interval.fit(np.linspace(0.5, 1, 60), np.linspace(0.5, 1, 60) - 0.3, 0.1, 'constant')
  low, high = fitted.bounds(np.array([0.1, np.nan, np.inf]))
  assert low[0] == 0.0 and np.isnan(low[1]) and np.isnan(high[2])
  back = interval.Interval.from_json(fitted.to_json())
  np.testing.assert_array_equal(back.bounds(np.array([0.7]))[0], fitted.bounds(np.array([0.7]))[0])
  with pytest.raises(ValueError, match='alpha'):
    interval.fit(np.ones(3), np.ones(3), 1.5)
