"""The stream monitor on a trained run's own score distributions: false alarms and delay.

  python experiments/stream_monitor.py --workdir=runs/clinical/seed0 --out=experiments/stream/clinical_seed0.json

Needs the run's shift suites (``experiments/shift.py --suite=dev`` and
``--suite=test``), whose cached f outputs hold every set's features; the
run's fitted applicability score turns them into scores, and the real
``quality/monitor.py`` runs over seeded streams built from them:

* **false alarms**: ``--streams`` seeded orderings of the dev suite's clean
  cases (the calibration cases: exchangeable with the references by
  construction), and of the test split's clean cases (ISIC's test list mixes
  official train and validation cases: not exchangeable by design, so this
  one measures how the monitor reads a mild real difference);
* **delay to alarm**: ``--clean_prefix`` clean test cases, then a stream in
  which each case is, with probability ``--contamination``, drawn from a far
  set or a severity-3 corruption, else clean; the number of cases after the
  switch until the alarm (median and quartiles over ``--switch_streams``
  streams; "never" when no alarm within ``--horizon`` cases);
* **a clinic's calls**: the same switch streams (Kvasir-SEG and noise 3, the
  first ``--call_streams`` of each) fed in calls of 1, 5 and 10 cases, the
  monitor's state written to a file after each call and read back before the
  next, as ``predict --monitor=FILE`` does: the alarm must come on the same
  case as in one uninterrupted stream (the monitor tests case by case, so a
  call's size cannot matter; a folder under ``predict.shift_min_cases`` gets
  no batch test, so between calls the monitor is the only run-level check).

Nothing here is tuned: delta is the config's ``predict.monitor_delta``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.quality import applicability, monitor  # noqa: E402
from segqual_jax.segmenter import runner  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run with its shift suites (experiments/shift.py).')
_OUT = flags.DEFINE_string('out', None, 'JSON result (a .md table is written beside it).')
_STREAMS = flags.DEFINE_integer('streams', 1000, 'Seeded exchangeable streams for the false-alarm rate.')
_SWITCH_STREAMS = flags.DEFINE_integer('switch_streams', 200, 'Seeded streams per contaminating set.')
_CONTAMINATION = flags.DEFINE_float('contamination', 0.2, 'Share of contaminating cases after the switch.')
_CLEAN_PREFIX = flags.DEFINE_integer('clean_prefix', 100, 'Clean cases before the switch.')
_HORIZON = flags.DEFINE_integer('horizon', 400, 'Cases after the switch within which an alarm counts.')
_CALL_STREAMS = flags.DEFINE_integer('call_streams', 20, 'Switch streams per set replayed in calls of 1, 5, 10.')
CALL_SIZES = (1, 5, 10)
CALL_SETS = ('far__kvasir_seg', 'noise_3')
SWITCH_SETS = ('far__kvasir_seg', 'far__synthetic_generator', 'far__uniform_noise', 'brightness_3',
               'contrast_3', 'jpeg_3', 'blur_3', 'noise_3')


def scores_of(workdir: str, suite: str, name: str, score: applicability.Applicability) -> np.ndarray:
  return score.score(runner.SegOutputs.load(os.path.join(workdir, 'shift', f'{suite}__{name}.npz')).features)


def run_stream(scores: np.ndarray, references: np.ndarray, delta: float, tag: str,
               call_size: int | None = None, state_path: str | None = None) -> int | None:
  """The 1-based index at which the monitor alarms on ``scores``, or None (the thetas' seed
  from ``tag``, so every number here is reproducible). With ``call_size``, the state goes
  through ``state_path`` between calls of that many cases, as between predict calls."""
  state = monitor.Monitor.start(references, delta, seed=int.from_bytes(tag.encode()[-8:], 'little'))
  for i, s in enumerate(scores):
    if call_size and i % call_size == 0:
      state.save(state_path)
      state = monitor.Monitor.load(state_path, references)
    state.update(references, float(s), f'{tag}-{i}')
    if state.alarmed:
      return i + 1
  return None


def false_alarms(scores: np.ndarray, references: np.ndarray, delta: float, streams: int, tag: str) -> dict:
  rng = np.random.default_rng([0, len(scores)])
  alarms = [run_stream(rng.permutation(scores), references, delta, f'{tag}{k}') for k in range(streams)]
  fired = [a for a in alarms if a is not None]
  return {'streams': streams, 'cases_per_stream': int(len(scores)), 'alarm_rate': len(fired) / streams,
          'median_alarm_index': float(np.median(fired)) if fired else None}


def switch_streams(clean: np.ndarray, far: np.ndarray, count: int) -> list[np.ndarray]:
  """Seeded streams: ``--clean_prefix`` clean cases, then ``--contamination`` of ``far``."""
  rng = np.random.default_rng([1, len(far)])
  out = []
  for _ in range(count):
    prefix = rng.choice(clean, _CLEAN_PREFIX.value)
    after = np.where(rng.random(_HORIZON.value) < _CONTAMINATION.value,
                     rng.choice(far, _HORIZON.value), rng.choice(clean, _HORIZON.value))
    out.append(np.concatenate([prefix, after]))
  return out


def in_calls(clean: np.ndarray, far: np.ndarray, references: np.ndarray, delta: float, tag: str,
             state_path: str) -> dict:
  """``{call size: streams whose alarm came on another case than in one stream}``."""
  streams = switch_streams(clean, far, _CALL_STREAMS.value)
  whole = [run_stream(s, references, delta, f'{tag}{k}') for k, s in enumerate(streams)]
  return {'streams': len(streams), 'alarmed': sum(a is not None for a in whole),
          'differ': {size: sum(run_stream(s, references, delta, f'{tag}{k}', size, state_path) != a
                               for k, (s, a) in enumerate(zip(streams, whole)))
                     for size in CALL_SIZES}}


def delays(clean: np.ndarray, far: np.ndarray, references: np.ndarray, delta: float, tag: str) -> dict:
  out = []
  for k, stream in enumerate(switch_streams(clean, far, _SWITCH_STREAMS.value)):
    alarm = run_stream(stream, references, delta, f'{tag}{k}')
    out.append(None if alarm is None else alarm - _CLEAN_PREFIX.value)
  after_switch = [d for d in out if d is not None and d > 0]
  return {'streams': len(out), 'alarm_before_switch': sum(d is not None and d <= 0 for d in out),
          'never': sum(d is None for d in out),
          'delay_quartiles': np.percentile(after_switch, [25, 50, 75]).tolist() if after_switch else None}


def main(argv):
  del argv
  workdir = _WORKDIR.value
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  score = applicability.load(config, workdir)
  delta, refs = config.predict.monitor_delta, score.reference_scores
  dev_clean, test_clean = scores_of(workdir, 'dev', 'clean', score), scores_of(workdir, 'test', 'clean', score)
  result = {'workdir': os.path.realpath(workdir), 'delta': delta, 'reference_cases': int(len(refs)),
            'views': config.applicability.views, 'contamination': _CONTAMINATION.value,
            'clean_prefix': _CLEAN_PREFIX.value, 'horizon': _HORIZON.value,
            'false_alarms': {'dev clean (exchangeable)': false_alarms(dev_clean, refs, delta, _STREAMS.value, 'dev'),
                             'test clean': false_alarms(test_clean, refs, delta, _STREAMS.value, 'test')},
            'switch': {}}
  for name in SWITCH_SETS:
    result['switch'][name] = delays(test_clean, scores_of(workdir, 'test', name, score), refs, delta, name)
    print(name, result['switch'][name], flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    result['calls'] = {name: in_calls(test_clean, scores_of(workdir, 'test', name, score), refs, delta, name,
                                      os.path.join(tmp, 'monitor.json')) for name in CALL_SETS}
  artifacts.write_json(_OUT.value, result)
  lines = [f'Stream monitor, {workdir}: delta {delta}, {len(refs)} reference cases, views {config.applicability.views}.',
           '', '| stream | streams | cases each | alarm rate |', '|---|---|---|---|']
  lines += [f"| {k} | {v['streams']} | {v['cases_per_stream']} | {100 * v['alarm_rate']:.1f} % |"
            for k, v in result['false_alarms'].items()]
  lines += ['', f'After {_CLEAN_PREFIX.value} clean test cases, {100 * _CONTAMINATION.value:g} % of each '
            f'case from the set (else clean), up to {_HORIZON.value} cases:', '',
            '| set | streams | alarm before the switch | no alarm | cases to alarm: 25 / 50 / 75 % |',
            '|---|---|---|---|---|']
  for name, v in result['switch'].items():
    q = '-' if v['delay_quartiles'] is None else ' / '.join(f'{x:.0f}' for x in v['delay_quartiles'])
    lines.append(f"| {name} | {v['streams']} | {v['alarm_before_switch']} | {v['never']} | {q} |")
  lines += ['', 'The same streams in calls of ' + ', '.join(map(str, CALL_SIZES)) + ' cases, the state '
            'saved and read back between calls: streams whose alarm came on another case:', '',
            '| set | streams | alarmed in one stream | ' + ' | '.join(f'calls of {k}' for k in CALL_SIZES) + ' |',
            '|---|---|---|' + '---|' * len(CALL_SIZES)]
  for name, v in result['calls'].items():
    lines.append(f"| {name} | {v['streams']} | {v['alarmed']} | "
                 + ' | '.join(str(v['differ'][k]) for k in CALL_SIZES) + ' |')
  artifacts.write_text(os.path.splitext(_OUT.value)[0] + '.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
