"""experiments/device_bench.sh's CPU path at toy sizes: the accelerator script must work the
first time it meets a GPU, so everything but the device runs here."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_device_bench_script_runs_end_to_end_on_cpu(tmp_path):
  env = dict(os.environ, DEVICE_BENCH_TINY='1', PYTHON=sys.executable, JAX_PLATFORMS='cpu')
  r = subprocess.run(['bash', 'experiments/device_bench.sh', str(tmp_path)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  bench = json.load(open(tmp_path / 'bench' / 'bench.json'))
  assert bench['complete']
  assert {(row['method'], row['dtype']) for row in bench['rows']} == {
      (m, d) for m in ('mc_dropout', 'ensemble') for d in ('float32', 'bfloat16')}
  assert set(bench['conv_ceiling_gflop_per_s_by_dtype']) == {'float32', 'bfloat16'}
  report = (tmp_path / 'device_bench.md').read_text()
  assert '## JAX sampling bench' in report and '## Targets' in report
  if importlib.util.find_spec('torch') is None:
    assert 'PyTorch is not installed' in r.stdout
  else:  # the peer: logits checked before any timing, then engine vs loop
    peer = json.load(open(tmp_path / 'peer_b2.json'))
    assert peer['logits_max_abs_diff'] <= 1e-4
    row = peer['rows'][0]
    assert row['samples'] == 3 and row['peer'].startswith('torch loop (')
    assert '| cpu' in report and 'engine speed-up' in report
