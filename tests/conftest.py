"""Shared fixtures: the tiny test config and one prepared data dir per session."""

import os

import pytest

# Tests run on CPU; keep XLA to the host even where a GPU build is installed.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from configs import test as test_config  # noqa: E402
from segqual_jax.core import runtime  # noqa: E402

runtime.configure(test_config.get_config())  # the process-wide settings main.py applies


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def config(data_dir):
  cfg = test_config.get_config()
  cfg.data.data_dir = data_dir
  return cfg
