"""Data parallelism: on a 4-device mesh, sampling and training equal one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from segqual_jax.core import errors, parallel
from segqual_jax.segmenter import runner
from segqual_jax.training import train_seg

HERE = os.path.dirname(os.path.abspath(__file__))


def test_four_device_run_equals_one_device_run(config, tmp_path):
  """Fake CPU devices (--xla_force_host_platform_device_count) must be set
  before JAX starts, hence the subprocess."""
  config.method = 'mc_dropout'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             SEGQUAL_DATA_DIR=config.data.data_dir, JAX_PLATFORMS='cpu')
  sharded_dir = str(tmp_path / 'four')
  r = subprocess.run([sys.executable, os.path.join(HERE, 'sharded_check.py'), sharded_dir],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and r.stdout.strip().endswith('OK'), r.stdout + r.stderr
  assert 'mc_dropout: sharded prediction == one-device prediction' in r.stdout
  assert 'hcnn: sharded prediction == one-device prediction' in r.stdout
  assert 'evaluated on the mesh: 1 quality model(s)' in r.stdout

  single_dir = str(tmp_path / 'one')
  assert jax.device_count() == 1
  train_seg.train_and_evaluate(config, single_dir)
  method, four = runner.load_f(config, sharded_dir)
  _, one = runner.load_f(config, single_dir)
  # Compare what f computes, not raw parameters: a conv bias right before a
  # GroupNorm has an analytically zero gradient, so Adam turns its rounding
  # noise into +-lr steps that differ between any two reduction orders,
  # without changing any output.
  images = jax.random.uniform(jax.random.key(9), (8, 32, 32, 3))
  logits = [np.asarray(jax.jit(method.apply)(p, images)['logits']) for p in (one, four)]
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3 * np.abs(logits[0]).max())
  metrics = [json.load(open(os.path.join(d, 'seg', 'metrics.json'))) for d in (single_dir, sharded_dir)]
  assert metrics[0]['mean_dice'] == pytest.approx(metrics[1]['mean_dice'], abs=1e-4)


def test_batch_that_does_not_split_is_a_config_error(monkeypatch):
  monkeypatch.setattr(parallel, 'num_devices', lambda: 4)
  with pytest.raises(errors.ConfigError, match=r'config\.seg\.batch_size=6 does not split over 4 devices'):
    parallel.check_batch_size(6, 'config.seg.batch_size')
  parallel.check_batch_size(8, 'config.seg.batch_size')
