"""``--mode=monitor``: start, reset or show a stream monitor's state (``quality/monitor.py``).

A person's command, deliberately: predict never creates or clears a monitor,
so an alarm cannot be forgotten by a lost file or a fresh start.

  python main.py --workdir=W --mode=monitor --monitor=FILE --monitor_action=start
  python main.py --workdir=W --mode=monitor --monitor=FILE --monitor_action=show
  python main.py --workdir=W --mode=monitor --monitor=FILE --monitor_action=reset
"""

from __future__ import annotations

import os

from segqual_jax.apps import predict as predict_app
from segqual_jax.core import errors, workdir as run_dirs
from segqual_jax.quality import applicability, monitor

ACTIONS = ('start', 'show', 'reset')


def run(config, workdir: str, path: str, action: str) -> str:
  """Carries out ``action`` on the state in ``path``; returns (and prints) what it did."""
  if action not in ACTIONS:
    raise errors.PredictError(f'--monitor_action={action}: one of {", ".join(ACTIONS)}')
  run_dirs.require_seg(workdir)
  score = applicability.load(config, workdir)
  if score is None:
    raise errors.PredictError('the stream monitor tests the applicability scores, and this run has '
                              'the gate off (predict.ood_alpha=0)')
  if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
    raise errors.PredictError(f'--monitor={path}: no such folder for the state file')
  fresh = lambda: monitor.Monitor.start(score.reference_scores, config.predict.monitor_delta)
  with monitor.locked(path):
    if action == 'show':
      text = predict_app.open_monitor(path, score).status_text()
    elif action == 'start':
      if os.path.exists(path):
        raise errors.PredictError(f'--monitor={path} exists: show it, or reset it (a start never '
                                  'overwrites a monitor, which could hold an alarm)')
      fresh().save(path)
      text = (f'started a stream monitor in {path} for the run in {workdir}: alarm when the martingale '
              f'reaches {1 / config.predict.monitor_delta:g} (predict.monitor_delta='
              f'{config.predict.monitor_delta}); pass --monitor={path} to every predict of this stream.')
    else:
      text = f'reset the stream monitor in {path}: {_cleared(path, score)}. ' + (
          'A new test starts with the next predict (martingale 1, auto-accept allowed again); reset '
          'only once the cause of an alarm is understood or fixed.')
      fresh().save(path)
  print(text)
  return text


def _cleared(path: str, score: applicability.Applicability) -> str:
  """What a reset throws away, in words (read without the gate check, so an alarm kept for an
  older gate is still named)."""
  try:
    before = monitor.Monitor.load(path)
  except monitor.MonitorError as e:
    return f'replaced an unusable state ({e.problem})'
  what = (f'cleared the alarm of {before.alarm["time"]} (case {before.alarm["index"]}, '
          f'{before.alarm["case"]}) and ' if before.alarmed else '')
  other = ('' if before.fingerprint == monitor.fingerprint(score.reference_scores)
           else ' (it watched another fitted gate)')
  return what + f'dropped the stream history of {len(before.stream)} cases{other}'
