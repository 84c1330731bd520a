"""Loading a configured data set into memory splits, through its TFDS builder.

Why a module apart from ``pipeline.py``: TFDS (and the builders, which
subclass its classes) is imported only here and only when a data set is
loaded, so predict, the bench and an accelerator image without TFDS run f
without it. Records are read with ``as_data_source`` (array_record, no
TensorFlow).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging

import numpy as np

from segqual_jax.core import artifacts, errors, parallel
from segqual_jax.data.pipeline import Split

SPLITS = ('train', 'validation', 'quality', 'test')

log = logging.getLogger(__name__)


class _DropTfdsNoise(logging.Filter):
  """Drops TFDS's warnings that our (deliberately custom) builder configs are custom and
  that a folder about to be prepared has no dataset_info.json yet."""

  NOISE = ('Using custom data configuration', 'Variant folder')

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOISE)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's own chatter off: the custom-configuration warning on every load, and the
  "Downloading and preparing dataset Unknown size" banner it prints to stdout for
  data that is generated or read locally (our own log line says what happens)."""
  noise = _DropTfdsNoise()
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(noise)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.removeFilter(noise)


def make_builder(data_config):
  """The TFDS builder of ``config.data`` (synthetic, folder or isic2017), not yet prepared."""
  from segqual_jax.data import builders  # pylint: disable=g-import-not-at-top  (imports TFDS)
  if data_config.name == 'synthetic':
    return builders.synthetic_builder(data_config)
  if data_config.name == 'nnunet':
    return builders.nnunet_builder(data_config)
  return builders.real_builder(data_config)


def case_files(data_config) -> dict[str, tuple[str, str]]:
  """``{case id: (image path, true mask path)}`` of a real data set (``{}`` for synthetic data,
  whose cases exist only at the model's size, and for nnU-Net volumes, whose slices' true
  overlaps are measured at the model's size and their volumes' on the volume's own grid by
  ``evaluation/volume_table.py``): where native-resolution labels are read."""
  if data_config.name in ('synthetic', 'nnunet'):
    return {}
  key = (data_config.name, data_config.root, data_config.splits, data_config.seed)
  if key not in _CASE_FILES:
    with _quiet_tfds():
      _CASE_FILES[key] = {pair[0]: tuple(pair[1:]) for pair in make_builder(data_config).builder_config.pairs}
  return _CASE_FILES[key]


_CASE_FILES: dict[tuple, dict[str, tuple[str, str]]] = {}  # one listing (and header check) per data set and process


def _prepared(builder, data_config):
  """``builder`` after ``download_and_prepare``, also when another process wins the race.

  Two jobs started together on one machine (two seeds, or a training run and an
  experiment script) both find the data set unprepared and both write it; TFDS
  renames each one's finished temporary folder onto the same final folder, and the
  second rename raises ``FileExistsError``. The data the winner wrote are the same
  (the folder's name fingerprints the files, split and size), so the loser reads
  them instead of failing; a ``FileExistsError`` with nothing prepared is real.
  """
  try:
    builder.download_and_prepare()
  except OSError as e:  # FileExistsError, or ENOTEMPTY when the other rename lands in between
    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(e, FileExistsError):
      raise
    builder = make_builder(data_config)  # the old one read the folder's state before the winner's
    if not builder.is_prepared():
      raise
    log.info('another process prepared the %s data set first; reading its files', data_config.name)
  return builder


def load_splits(data_config, names=SPLITS) -> dict[str, Split]:
  """Prepares the configured data set if needed and loads ``names`` into memory.

  Raises ``DataError`` for a split the data set does not have, and
  for bad real data (the error lists the offending ids).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # our own log lines say what is happening
  with _quiet_tfds():
    builder = make_builder(data_config)
    if artifacts.is_writer():  # one process of a multi-host job prepares; the others wait
      if not builder.is_prepared():
        log.info('preparing the %s data set once (array_record files in %s)', data_config.name,
                 builder.data_dir)
      builder = _prepared(builder, data_config)
    parallel.barrier('data prepared')
    if not artifacts.is_writer():  # its builder saw the folder before the writer prepared it
      builder = make_builder(data_config)
    sources = builder.as_data_source()
  out = {}
  size = data_config.image_size
  for name in names:
    if name not in sources:
      raise errors.DataError(
          f'the {data_config.name} data set has no {name!r} split (it has {sorted(sources)}); '
          f'give one with config.data.splits, e.g. {name}=path/to/{name}.txt')
    source = sources[name]
    examples = source.__getitems__(range(len(source))) if len(source) else []
    # as_data_source yields records in shuffled storage order: sort by position
    # so index i of a split is always example i of its list (or generator).
    order = 'index' if data_config.name != 'synthetic' else 'id'
    examples = sorted(examples, key=lambda e: int(e[order]))
    ids = tuple(e['id'].decode() if isinstance(e['id'], bytes) else str(e['id']) for e in examples)
    if data_config.name == 'synthetic':  # generator indices repeat across splits; a case id must not
      ids = tuple(f'synthetic-{name}-{int(i):05d}' for i in ids)
    images = np.stack([e['image'] for e in examples]) if examples else np.zeros((0, size, size, 3), np.uint8)
    masks = np.stack([e['mask'] for e in examples]) if examples else np.zeros((0, size, size), np.uint8)
    out[name] = Split(name, images, masks, ids)
  return out
