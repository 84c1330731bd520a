"""--mode=bench end to end on a tiny grid: every row, ratio and target is written."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from segqual_jax.apps import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_mode_writes_json_and_table(tmp_path):
  r = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/bench.py:quick', f'--workdir={tmp_path}',
       '--mode=bench', '--config.bench.cases=16x2', '--config.bench.samples=(1,3)',
       '--config.bench.repeats=1', '--config.seg.base_width=4', '--config.seg.depth=2',
       '--config.bench.matmul_size=64'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.load(open(tmp_path / 'bench.json'))
  rows = {(row['method'], row['samples']): row for row in result['rows']}
  assert set(rows) == {('mc_dropout', 1), ('mc_dropout', 3), ('hcnn', 1), ('hcnn', 3), ('hcnn', 0)}
  for (method, t), row in rows.items():
    assert row['image_size'] == 16 and row['batch'] == 2
    assert row['engine_s'] > 0 and row['det_s'] > 0 and row['gflop_per_s'] > 0
    assert row['peak_memory_mb'] > 0 and row['compile_s'] > 0
    if t == 0:  # the closed form has no loop
      assert row['loop_s'] is None and row['chunk'] == 0
    else:
      assert row['loop_s'] > 0 and 1 <= row['chunk'] <= t
  # MC-dropout FLOPs grow with T (the rest of the U-Net runs per sample), HCNN's barely
  assert rows['mc_dropout', 3]['engine_gflop'] > 2 * rows['mc_dropout', 1]['engine_gflop']
  assert rows['hcnn', 3]['engine_gflop'] < 1.5 * rows['hcnn', 1]['engine_gflop']
  assert result['matmul_gflop_per_s'] > 0 and result['conv_ceiling_gflop_per_s'] > 0
  assert set(result['targets']) == {'hcnn_T0_cost_vs_det_pass'}  # no T=20 or 100 in this grid
  table = (tmp_path / 'bench.md').read_text()
  assert table.count('| mc_dropout |') == 2 and table.count('| hcnn |') == 3
  assert 'Targets at the default case' in table
  assert result['chunk_sweep'] == []  # the quick variant sweeps no chunks


def test_flops_are_counted_from_the_program():
  """A convolution and a matmul inside a scan, counted by hand: 2 x outputs x products each."""
  x, w = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 5))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert bench.program_flops(conv, x, w) == 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)
  a = jnp.zeros((4, 6))
  looped = lambda a: jax.lax.scan(lambda c, _: (c @ jnp.zeros((6, 6)), None), a, None, length=7)[0]
  assert bench.program_flops(looped, a) == 7 * 2 * (4 * 6) * 6


def test_a_backend_without_memory_analysis_still_gets_its_table():
  """memory_analysis() None: memory is unknown ('-'), not 0, and no ratio divides by it."""
  assert bench.Compiled(None, 0.0, None).memory_mb is None
  base = {'image_size': 16, 'batch': 2, 'base_width': 4, 'dtype': 'float32', 'chunk': 1,
          'engine_s': 1.0, 'loop_s': 2.0, 'speedup_vs_loop': 2.0, 'cost_vs_det_pass': 3.0,
          'rng_only_vs_det_pass': None, 'images_per_s': 2.0, 'samples_per_s': 40.0,
          'gflop_per_s': 1.0, 'fraction_of_matmul_peak': 0.5, 'fraction_of_conv_ceiling': 0.5,
          'compile_s': 1.0, 'peak_memory_mb': None}
  rows = [{**base, 'method': 'mc_dropout', 'samples': t} for t in (20, 100)]
  targets = bench.targets(rows, (16, 2))
  assert 'mc_dropout_memory_T100_over_T20' not in targets
  assert targets['mc_dropout_T20_speedup_vs_loop']['met']
  result = {'machine': {'backend': 'cpu', 'devices': 1, 'processor': 'x', 'jax': jax.__version__},
            'matmul_gflop_per_s': 1.0, 'conv_ceiling_gflop_per_s_by_dtype': {'float32': 2.0},
            'default_case': (16, 2), 'rows': rows, 'chunk_sweep': [], 'targets': targets}
  assert bench.markdown(result).count('| 1.0 | - |') == 2  # compile s, then memory unknown
  rows[0]['peak_memory_mb'], rows[1]['peak_memory_mb'] = 100.0, 110.0
  assert bench.targets(rows, (16, 2))['mc_dropout_memory_T100_over_T20']['value'] == 1.1
