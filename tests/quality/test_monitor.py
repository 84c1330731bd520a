"""The stream monitor: exact online p-values, Ville's bound over many streams, alarm and state."""

import json

import numpy as np
import pytest

from segqual_jax.quality import monitor


def _stream(rng, reference, scores, delta=0.05):
  m = monitor.Monitor.start(reference, delta, seed=int(rng.integers(1 << 62)))
  ps = [m.update(reference, s, f'case{i}') for i, s in enumerate(scores)]
  return m, np.array(ps)


def test_online_pvalues_are_uniform_and_false_alarms_stay_below_delta():
  """1,000 seeded exchangeable streams (references and stream from one distribution, with
  ties): Ville's inequality bounds the share that ever alarms by delta."""
  rng = np.random.default_rng(0)
  delta, alarms, pvalues = 0.05, 0, []
  for _ in range(1000):
    draws = np.round(rng.normal(size=30 + 60), 1)  # rounding makes ties: the smoothing handles them
    m, p = _stream(rng, draws[:30], draws[30:], delta)
    alarms += m.alarmed
    pvalues.append(p)
  assert alarms / 1000 <= delta, alarms
  p = np.concatenate(pvalues)
  assert abs(p.mean() - 0.5) < 0.01 and abs(np.mean(p < 0.1) - 0.1) < 0.01  # uniform


def test_one_name_sent_every_day_keeps_the_pvalues_uniform():
  """Every case named image.jpg: the tie-breaking uniforms come from the state's seed and the
  stream position, not from the name, so ties still get uniform p-values."""
  reference = np.zeros(20)  # every score tied: the p-value is theta alone
  m = monitor.Monitor.start(reference, 0.01)
  p = np.array([m.update(reference, 0.0, 'image.jpg') for _ in range(400)])
  assert abs(p.mean() - 0.5) < 0.05 and p.std() > 0.25 and not m.alarmed


def test_a_switch_to_unlike_cases_alarms_and_stays_alarmed():
  rng = np.random.default_rng(1)
  reference = rng.normal(size=100)
  calm = rng.normal(size=200)
  mixed = np.where(rng.random(200) < 0.2, 6.0 + rng.random(200), rng.normal(size=200))  # 20 % far
  m, _ = _stream(rng, reference, np.concatenate([calm, mixed]), delta=0.01)
  assert m.alarmed and m.alarm['index'] > 200  # not during the calm stretch
  delay = m.alarm['index'] - 200
  assert delay < 100, delay
  m.update(reference, 0.0, 'later')  # an ordinary case after the alarm does not clear it
  assert m.alarmed and 'STREAM MONITOR ALARM' in m.status_text()


def test_state_round_trip_and_refusals(tmp_path):
  reference = np.linspace(0, 1, 20)
  m = monitor.Monitor.start(reference, 0.01)
  first = [m.update(reference, float(i) / 5, f'c{i}', content=f'pixels{i}') for i in range(5)]
  capital = m.capital
  # the same image again is not fed again: it gets its first p-value (a resumed predict
  # reports what the first attempt fed), and the test is unchanged
  assert m.update(reference, 0.2, 'c1-again', content='pixels1') == first[1]
  assert len(m.stream) == 5 and m.capital == capital
  path = str(tmp_path / 'state.json')
  m.save(path)
  again = monitor.Monitor.load(path, reference)
  assert again.stream == m.stream and again.capital == pytest.approx(m.capital)
  assert again.seen == m.seen and again.update(reference, 0.4, 'c2-again', content='pixels2') == first[2]
  # the reloaded state gives the next case the same p-value (same seed, same index)
  assert again.update(reference, 0.5, 'next') == m.update(reference, 0.5, 'next')
  with pytest.raises(monitor.MonitorError, match='watches another run'):
    monitor.Monitor.load(path, reference + 1.0)
  with pytest.raises(monitor.MonitorError, match='no monitor state here'):
    monitor.Monitor.load(str(tmp_path / 'missing.json'), reference)
  (tmp_path / 'state.json').write_text('{"version": 1, "stream": [')  # torn by a crash
  with pytest.raises(monitor.MonitorError, match='unreadable monitor state'):
    monitor.Monitor.load(path)
  raw = m.to_json()
  raw['log_capital'] = raw['log_capital'][:3]
  (tmp_path / 'state.json').write_text(json.dumps(raw))
  with pytest.raises(monitor.MonitorError, match='capital is damaged'):
    monitor.Monitor.load(path)
