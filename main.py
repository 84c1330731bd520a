"""segqual-jax entry point: wires flags to the library, nothing else.

  python main.py --config=configs/lce.py --workdir=runs/lce             # both stages + evaluation
  python main.py --config=configs/lce.py --workdir=runs/lce --mode=train_seg
  python main.py --config=configs/bench.py --workdir=runs/bench --mode=bench  # sampling speed
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from segqual_jax import config_validation, runtime
from segqual_jax.training import loop

MODES = ('all', 'train_seg', 'train_quality', 'evaluate', 'bench')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and outputs.')
_MODE = flags.DEFINE_enum('mode', 'all', MODES,
                          'all: train_seg, train_quality and evaluate in order, each skipped '
                          'when its output is already complete. bench: time the sampling '
                          'engine against the naive loop (config.bench).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    sys.exit(f'error: {e}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  runtime.setup_logging()
  # Imported after validation: a bad config fails before JAX/TFDS load.
  from segqual_jax.evaluation import evaluate
  from segqual_jax.quality import train_quality
  from segqual_jax.training import train_seg
  from segqual_jax.uncertainty import benchmark
  stages = {'train_seg': train_seg.train_and_evaluate,
            'train_quality': train_quality.train_quality,
            'evaluate': evaluate.evaluate,
            'bench': benchmark.run}
  todo = ['train_seg', 'train_quality', 'evaluate'] if _MODE.value == 'all' else [_MODE.value]
  try:
    for name in todo:
      stages[name](config, _WORKDIR.value)
  except loop.TrainingInterrupted as e:
    sys.exit(f'{e}')  # exit status 1; the message says how to resume
  except (loop.NonFiniteLoss, config_validation.ConfigError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
