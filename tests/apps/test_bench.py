"""--mode=bench end to end on a tiny grid: every row, ratio and target is written."""

import json
import os
import subprocess
import sys

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
      assert abs(row['speedup_vs_loop'] - row['loop_s'] / row['engine_s']) < 1e-9
  # MC-dropout FLOPs grow with T (the rest of the U-Net runs per sample), HCNN's barely
  assert rows['mc_dropout', 3]['engine_gflop'] > 2 * rows['mc_dropout', 1]['engine_gflop']
  assert rows['hcnn', 3]['engine_gflop'] < 1.5 * rows['hcnn', 1]['engine_gflop']
  assert result['matmul_gflop_per_s'] > 0 and result['conv_ceiling_gflop_per_s'] > 0
  assert set(result['targets']) == {'hcnn_T0_cost_vs_det_pass'}  # no T=20 or 100 in this grid
  table = (tmp_path / 'bench.md').read_text()
  assert table.count('| mc_dropout |') == 2 and table.count('| hcnn |') == 3
  assert 'Targets at the default case' in table
  assert result['chunk_sweep'] == []  # the quick variant sweeps no chunks
