"""The one decision policy: the gate, the rule and the decision, as every caller applies them."""

import math
import types

import numpy as np
import pytest

from configs import test as test_config
from segqual_jax.quality import policy


def _config(**predict):
  config = test_config.get_config()
  for k, v in predict.items():
    setattr(config.predict, k, v)
  return config


def _model(rules=None, target='dice'):
  return types.SimpleNamespace(name='uncertainty', target=target, rules=rules)


def test_realised_rates_behind_the_gate():
  pred = np.array([0.95, 0.85, 0.5, 0.9])
  failed = np.array([False, True, True, False])
  assert policy.realised(pred, failed, 0.8) == {
      'cases': 4, 'accepted': 3, 'automation_rate': 0.75, 'accepted_failures': 1,
      'accepted_failure_rate': pytest.approx(1 / 3)}
  # the gate flags the failing 0.85 case: it is not accepted, whatever its prediction
  gated = policy.realised(pred, failed, 0.8, np.array([0.5, 0.01, 0.5, 0.5]), 0.05)
  assert gated['accepted'] == 2 and gated['accepted_failures'] == 0
  assert policy.realised(pred, failed, None)['accepted'] == 0  # no threshold: nothing accepted
  assert policy.realised(pred, failed, math.inf)['accepted'] == 0


def test_decide_is_the_same_rule_as_the_arrays():
  """A case's decision agrees with ``accepted`` over random cases, gates and thresholds."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    quality, p, threshold, ood = rng.random(), rng.random(), rng.random(), rng.choice([0.0, 0.3])
    d = policy.decide(quality, p, policy.DecisionRule(threshold, 'r'), policy.Gate(ood))
    accepted = policy.accepted(np.array([quality]), threshold, np.array([p]), ood)[0]
    assert (d.decision == 'pass') == accepted
    assert (d.decision == 'review') == (p < ood) == d.flagged
  # a case without a p-value (gate off) is judged; a suspended run reviews even a sure pass
  assert policy.decide(0.9, None, policy.DecisionRule(0.8, 'r'), policy.Gate(0.05)).decision == 'pass'
  suspended = policy.Gate(0.05, {'action': 'suspend'})
  d = policy.decide(0.99, 0.5, policy.DecisionRule(0.8, 'r'), suspended)
  assert d.decision == 'review' and not d.flagged and 'suspended' in d.reason
  assert policy.decide(0.79, 0.5, policy.DecisionRule(0.8, 'r'), policy.Gate(0.05)).decision == 'fail'


def test_stored_rules_match_the_settings_as_numbers():
  """Rules stored with float noise or another spelling of alpha are the run's rules; rules for
  another failure bar or gate level are not (loudly, when calibration was configured)."""
  entry = {'delta': 0.1, 'fail_dice': 0.8000000000000002, 'ood_alpha': 0.05,
           'rules': {'0.10': {'threshold': 0.731}, '0.05': {'threshold': None}}}
  config = _config(alpha=0.1, ood_alpha=0.05)
  config.calibration.fraction = 0.3
  rule = policy.decision_rule(config, _model(entry))
  assert rule.threshold == 0.731 and rule.warning is None and rule.description.startswith('calibrated')
  config.predict.alpha = 0.05
  none = policy.decision_rule(config, _model(entry))
  assert none.threshold == math.inf and 'every case goes to review' in none.description
  config.predict.ood_alpha = 0.02  # rules calibrated behind another gate level
  fallback = policy.decision_rule(config, _model(entry))
  assert fallback.description.startswith('fixed') and 'NOT CALIBRATED' in fallback.warning
  config.calibration.fraction = 0.0
  plain = policy.decision_rule(config, _model(None, target='jaccard'))
  assert plain.warning is None and plain.threshold == pytest.approx(0.8 / 1.2)  # Dice 0.8 in Jaccard


def test_batch_verdict_needs_enough_cases():
  predict = _config(shift_min_cases=5, shift_alpha=0.01, on_shift='suspend').predict
  reference = np.linspace(0, 1, 50)
  assert policy.batch_verdict(np.array([5.0] * 4), reference, predict) is None
  far = policy.batch_verdict(np.full(20, 5.0), reference, predict)
  assert far['rejected'] and far['action'] == 'suspend' and policy.Gate(0.05, far).suspended
  like = policy.batch_verdict(np.linspace(0.01, 0.99, 20), reference, predict)
  assert not like['rejected'] and like['action'] == 'none' and not policy.Gate(0.05, like).suspended


def test_benjamini_hochberg_by_hand():
  p = np.array([0.001, 0.2, 0.012, 0.04, 0.9])
  # sorted: 0.001 <= .05/5, 0.012 <= .1/5... p_(2)=0.012 <= 0.02, p_(3)=0.04 > 0.03, p_(4)=0.2 > 0.04
  np.testing.assert_array_equal(policy.benjamini_hochberg(p, 0.05), [True, False, True, False, False])
  assert not policy.benjamini_hochberg(np.array([0.5, 0.6]), 0.05).any()
  gate = policy.Gate(0.01, {'action': 'review_unusual', 'unusual_fdr': 0.05})
  # BH at its own level: it picks p = 0.012, which the gate at 0.01 lets through
  np.testing.assert_array_equal(policy.unusual(p, gate), [True, False, True, False, False])
  assert not policy.flagged(p, gate.ood_alpha)[2]
  assert not policy.unusual(p, policy.Gate(0.05, {'action': 'suspend'})).any()  # suspend reviews all instead
  d = policy.decide(0.99, 0.3, policy.DecisionRule(0.8, 'r'), gate, is_unusual=True)
  assert d.decision == 'review' and 'Benjamini-Hochberg' in d.reason and not d.flagged
