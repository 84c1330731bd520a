"""Shared fixtures: the tiny test config and one prepared data dir per session."""

import os
import tempfile

import pytest

# Tests run on CPU; keep XLA to the host even where a GPU build is installed.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole session, inherited by the main.py
# subprocesses: the suite compiles the same tiny programs in dozens of processes, and
# compilation is most of its time. A cached executable is the one XLA would build
# again (same program, same flags), so no result depends on it.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='segqual_jax_cache_')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'

from configs import test as test_config  # noqa: E402
from segqual_jax.core import runtime  # noqa: E402

runtime.configure(test_config.get_config())  # the process-wide settings main.py applies


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(data_dir, quality_models: str | None = None):
  """The test config on the session's data dir (``quality_models``: which g's to train)."""
  cfg = test_config.get_config()
  cfg.data.data_dir = data_dir
  if quality_models is not None:
    cfg.quality.models = quality_models
  return cfg


@pytest.fixture
def config(data_dir):
  return tiny_config(data_dir)
