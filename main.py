"""segqual-jax entry point: wires flags to the library, nothing else.

  python main.py --config=configs/lce.py --workdir=runs/lce             # both stages + evaluation
  python main.py --config=configs/lce.py --workdir=runs/lce --mode=train_seg
  python main.py --config=configs/lce.py --workdir=runs/lce --mode=predict --input=DIR --output=OUT
  python main.py --config=configs/bench.py --workdir=runs/bench --mode=bench  # sampling speed
"""

import functools
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from segqual_jax import config_validation, runtime
from segqual_jax.training import loop

MODES = ('all', 'train_seg', 'train_quality', 'evaluate', 'predict', 'bench')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and outputs.')
_MODE = flags.DEFINE_enum('mode', 'all', MODES,
                          'all: train_seg, train_quality and evaluate in order, each skipped '
                          'when its output is already complete. predict: f and g of the '
                          'workdir on --input. bench: time the sampling engine against the '
                          'naive loop (config.bench).')
_INPUT = flags.DEFINE_string('input', None, 'predict: folder of images to assess.')
_OUTPUT = flags.DEFINE_string('output', None, 'predict: folder for predictions.csv, maps/, index.html.')
_MASKS = flags.DEFINE_string('masks', None, 'predict: optional folder of true masks (same stems).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'predict: allow a non-empty --output.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _MODE.value == 'predict' and not (_INPUT.value and _OUTPUT.value):
    raise app.UsageError('--mode=predict needs --input=DIR and --output=DIR')
  config = _CONFIG.value
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    sys.exit(f'error: {e}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  runtime.setup_logging()
  # Imported after validation: a bad config fails before JAX/TFDS load.
  from segqual_jax.data import builders
  from segqual_jax.evaluation import evaluate, predict
  from segqual_jax.quality import train_quality
  from segqual_jax.training import train_seg
  from segqual_jax.uncertainty import benchmark
  stages = {'train_seg': train_seg.train_and_evaluate,
            'train_quality': train_quality.train_quality,
            'evaluate': evaluate.evaluate,
            'predict': functools.partial(predict.predict_folder, input_dir=_INPUT.value,
                                         output_dir=_OUTPUT.value, masks_dir=_MASKS.value,
                                         overwrite=_OVERWRITE.value),
            'bench': benchmark.run}
  todo = ['train_seg', 'train_quality', 'evaluate'] if _MODE.value == 'all' else [_MODE.value]
  try:
    for name in todo:
      stages[name](config, _WORKDIR.value)
  except loop.TrainingInterrupted as e:
    sys.exit(f'{e}')  # exit status 1; the message says how to resume
  except (loop.NonFiniteLoss, config_validation.ConfigError, FileNotFoundError,
          builders.DataError, predict.PredictError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
