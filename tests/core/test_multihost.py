"""A two-process job (2 fake CPU devices each, gloo collectives) equals one process.

This is what a TPU pod or multi-node GPU run does: the same command on every
host with --config.runtime.distributed=True; here both hosts are local processes.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from segqual_jax.segmenter import runner
from segqual_jax.training import train_seg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_process_job_equals_one_process(config, tmp_path):
  config.method = 'mc_dropout'
  single_dir = str(tmp_path / 'one')
  train_seg.train_and_evaluate(config, single_dir)  # also prepares the data for the job

  job_dir = str(tmp_path / 'job')
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/test.py', f'--workdir={job_dir}',
       '--mode=all', '--config.method=mc_dropout', '--config.quality.models=uncertainty',
       f'--config.data.data_dir={config.data.data_dir}', '--config.runtime.distributed=True',
       f'--config.runtime.coordinator_address=localhost:{port}',
       '--config.runtime.num_processes=2', f'--config.runtime.process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]

  # one writer: every epoch logged once, every output there
  log_lines = open(os.path.join(job_dir, 'seg', 'log.jsonl')).read().splitlines()
  assert len(log_lines) == config.seg.num_epochs
  for name in ('metrics.json', 'table.md', 'predictions.csv'):
    assert os.path.exists(os.path.join(job_dir, name)), name
  # the same f as one process (outputs, not raw parameters: see test_sharding)
  method, job = runner.load_f(config, job_dir)
  _, one = runner.load_f(config, single_dir)
  images = jax.random.uniform(jax.random.key(9), (8, 32, 32, 3))
  logits = [np.asarray(jax.jit(method.apply)(p, images)['logits']) for p in (one, job)]
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3 * np.abs(logits[0]).max())
