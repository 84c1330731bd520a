"""segqual-jax entry point: wires flags to the library, nothing else.

  python main.py --config=configs/lce.py --workdir=runs/lce             # both stages + evaluation
  python main.py --config=configs/lce.py --workdir=runs/lce --mode=train_seg
  python main.py --workdir=runs/lce --mode=predict --input=DIR --output=OUT  # the run's own config
  python main.py --config=configs/bench.py --workdir=runs/bench --mode=bench  # sampling speed

Training and the benchmark need ``--config``. ``predict`` and ``evaluate`` use
a trained run, and the run's recorded config *is* their config
(``stages.for_run``): ``--config`` (optional) and ``--config.x=y`` overrides
set only what a trained run does not fix (``predict.*``, batch sizes, ...);
an override of a field that shaped the run's models is refused by name.

Only absl, ml_collections and ``segqual_jax.config`` load before the config
is validated; JAX, TFDS and the stages load after, so a bad config costs a
second.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from segqual_jax.config import stages, validation
from segqual_jax.core import errors

MODES = ('all', 'train_seg', 'train_quality', 'evaluate', 'predict', 'monitor', 'bench')
RUN_MODES = ('evaluate', 'predict', 'monitor')  # modes that use a trained run: its recorded config is theirs
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'default.py')

_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Config file. Needed to train and to bench; predict and evaluate '
    'read the trained run\'s own config (this file and --config.x=y then set only what the run '
    'does not fix).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and outputs.')
_MODE = flags.DEFINE_enum('mode', 'all', MODES,
                          'all: train_seg, train_quality and evaluate in order, each skipped '
                          'when its output is already complete. predict: f and g of the '
                          'workdir on --input. bench: time the sampling engine against the '
                          'naive loop (config.bench).')
_INPUT = flags.DEFINE_string('input', None, 'predict: an image file, or a folder of images '
                             '(subfolders included) to assess.')
_OUTPUT = flags.DEFINE_string('output', None, 'predict: folder for predictions.csv, maps/, index.html.')
_MASKS = flags.DEFINE_string('masks', None, 'predict: optional folder of true masks (same stems).')
_SEGMENTATIONS = flags.DEFINE_string(
    'segmentations', None, 'predict: folder of another model\'s segmentations of the --input '
    'images (<stem>.png or .npy: masks or p(lesion)); for a volume run, nnU-Net\'s prediction '
    'folder (<case>.npz probabilities or <case>.nii.gz labels); for a run trained with config.external.')
_MONITOR = flags.DEFINE_string(
    'monitor', None, 'predict: the stream monitor\'s state file (made by --mode=monitor '
    '--monitor_action=start); the cases of every predict given it form one stream, tested for a '
    'change with an anytime-valid alarm. --mode=monitor: the file to act on.')
_MONITOR_ACTION = flags.DEFINE_enum('monitor_action', 'show', ('start', 'show', 'reset'),
                                    '--mode=monitor: start a new monitor, show its state, or reset '
                                    'it (clears an alarm and the stream history).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'predict: replace this tool\'s files in a '
                               'non-empty --output.')
flags.mark_flags_as_required(['workdir'])


def _config_args(argv) -> str:
  """The command line's ``--config`` and ``--config.x=y`` arguments, for a hint to rerun."""
  return ' '.join(a for a in argv[1:] if a.startswith('--config')) or '--config=<config>'


def overridden_fields() -> set[str]:
  """The flattened config fields the command line overrides, as the config flag parsed them
  (``--config.x.y=v``, ``--config.x.y v``, a bool's ``--config.nox``, a ``--flagfile``)."""
  return set(config_flags.get_override_values(flags.FLAGS['config']))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _MODE.value == 'predict' and not (_INPUT.value and _OUTPUT.value):
    raise app.UsageError('--mode=predict needs --input=FILE_OR_DIR and --output=DIR')
  if _MODE.value == 'monitor' and not _MONITOR.value:
    raise app.UsageError('--mode=monitor needs --monitor=FILE')
  from_file = flags.FLAGS['config'].present
  if not from_file and _MODE.value not in RUN_MODES:
    raise app.UsageError(f'--mode={_MODE.value} needs --config=FILE (only {" and ".join(RUN_MODES)} '
                         'read a trained run\'s own config)')
  try:
    config = _CONFIG.value  # the config file is loaded lazily, here
    if _MODE.value in RUN_MODES:
      config, notes = stages.for_run(_WORKDIR.value, config, from_file, overridden_fields())
      for note in notes:
        logging.warning(note)
    validation.validate(config)
  except errors.ConfigError as e:
    sys.exit(f'error: {e}')
  except OSError as e:  # the file is missing or its get_config() raised
    detail = [line.strip() for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: --config: cannot load the config file ({detail[-1] if detail else e})')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # Imported after validation: a bad config fails before JAX/TFDS load.
  from segqual_jax.apps import bench, monitor, predict, volume_predict  # pylint: disable=g-import-not-at-top
  from segqual_jax.core import runtime  # pylint: disable=g-import-not-at-top
  from segqual_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from segqual_jax.training import train_quality, train_seg  # pylint: disable=g-import-not-at-top
  runtime.setup_logging()
  run_stage = {'train_seg': train_seg.train_and_evaluate,
            'train_quality': train_quality.train_quality,
            'evaluate': evaluate.evaluate,
            'predict': lambda c, w: predict.predict(c, w, _INPUT.value, _OUTPUT.value,
                                                    _MASKS.value, _OVERWRITE.value,
                                                    _SEGMENTATIONS.value, _MONITOR.value),
            'predict_volumes': lambda c, w: volume_predict.predict(c, w, _INPUT.value, _OUTPUT.value,
                                                                   _MASKS.value, _OVERWRITE.value,
                                                                   _SEGMENTATIONS.value),
               'monitor': lambda c, w: monitor.run(c, w, _MONITOR.value, _MONITOR_ACTION.value),
            'bench': bench.run}
  todo = ['train_seg', 'train_quality', 'evaluate'] if _MODE.value == 'all' else [_MODE.value]
  if todo == ['predict'] and config.data.name == 'nnunet':  # a volume run judges volumes
    if _MONITOR.value:
      sys.exit('error: --monitor is not supported for volume runs (data.name=nnunet) yet')
    todo = ['predict_volumes']
  try:
    runtime.configure(config)  # once per process, before anything is traced
    for name in todo:
      run_stage[name](config, _WORKDIR.value)
  except errors.TrainingInterrupted as e:
    sys.exit(f'{e}')  # exit status 1; the message says how to resume
  except errors.NotTrained as e:
    sys.exit(f'error: {e.message(_config_args(sys.argv))}')
  except errors.SegqualError as e:
    sys.exit(f'error: {e}')


def _parse_flags(argv):
  """absl's flag parsing, with a bad ``--config.x=y`` as one line naming the field.

  ml_collections rejects an unknown override while parsing, as a chained
  traceback; a misspelt field gets its close match instead.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    known = validation.known_fields()
    for arg in argv[1:]:
      field = arg.split('=', 1)[0][len('--config.'):] if arg.startswith('--config.') else None
      if field and field not in known:
        sys.exit(f'error: {arg}: unknown config field {validation.unknown_field_text(field)}')
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = ' '.join(dict.fromkeys(lines[:1] + lines[-1:]))  # first and last line, once each
    sys.exit(f'error: {text or type(e).__name__}')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
