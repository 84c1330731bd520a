"""One table from experiments/device_bench.sh's outputs, with the accelerator targets.

  python experiments/device_report.py --dir=runs/device_bench   # writes <dir>/device_bench.md

Reads ``<dir>/peer_b*.json`` (experiments/torch_peer.py) and
``<dir>/bench/bench.json`` (main.py --mode=bench); either may be missing or
partial (a step cut short by its time limit), and the report says so.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app, flags

_DIR = flags.DEFINE_string('dir', 'runs/device_bench', 'device_bench.sh output folder.')


def _load(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def peer_lines(peers: list[dict]) -> tuple[list[str], dict]:
  lines = ['## Engine vs the PyTorch loop (same weights, taking turns)', '',
           '| device | px | batch | T | engine s | PyTorch fp32 loop s | engine speed-up | '
           'PyTorch bf16 loop s | JAX det s | PyTorch det s | logits max diff |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  speedups = {}
  for peer in peers:
    for row in peer['rows']:
      times = row['times_s']
      bf16 = [t for k, t in times.items() if k.startswith('torch loop bf16')]
      speedups[peer['batch'], row['samples']] = row['engine_speedup_vs_peer_loop']
      bf16_text = f'{min(bf16):.4f}' if bf16 else '-'
      lines.append(
          f"| {peer['machine']['jax_device']} | {peer['image_size']} | {peer['batch']} | "
          f"{row['samples']} | {times['engine']:.4f} | {times[row['peer']]:.4f} | "
          f"**{row['engine_speedup_vs_peer_loop']:.2f}x** | {bf16_text} | "
          f"{times['jax det']:.4f} | {times[row['peer_det']]:.4f} | "
          f"{peer['logits_max_abs_diff']:.1e} |")
  return lines, speedups


def bench_lines(bench: dict) -> list[str]:
  lines = ['## JAX sampling bench (main.py --mode=bench, configs/bench_accelerator.py:quick)'
           + ('' if bench.get('complete') else ' -- INCOMPLETE: cut short by its time limit'), '',
           f"Matmul peak {bench['matmul_gflop_per_s']:.0f} GFLOP/s; conv ceiling "
           + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in
                       bench['conv_ceiling_gflop_per_s_by_dtype'].items()), '',
           '| method | px | batch | width | dtype | T | chunk | engine s | JAX loop s | vs loop | '
           'GFLOP/s | of conv ceiling | memory MB | compile s |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in bench['rows']:
    loop = '-' if r['loop_s'] is None else f"{r['loop_s']:.4f}"
    vs = '-' if r['speedup_vs_loop'] is None else f"{r['speedup_vs_loop']:.2f}x"
    lines.append(f"| {r['method']} | {r['image_size']} | {r['batch']} | {r['base_width']} | "
                 f"{r['dtype']} | {r['samples']} | {r['chunk']} | {r['engine_s']:.4f} | {loop} | "
                 f"{vs} | {r['gflop_per_s']:.0f} | {r['fraction_of_conv_ceiling']:.0%} | "
                 f"{r['peak_memory_mb']:.0f} | {r['compile_s']:.1f} |")
  return lines


def targets(speedups: dict, bench: dict | None) -> list[str]:
  out = ['## Targets (224 px, T=20)', '', '| target | measured | met |', '|---|---|---|']

  def add(name, value, met):
    out.append(f"| {name} | {value} | {'-' if met is None else ('yes' if met else 'no')} |")

  for batch, goal in ((8, 3.0), (32, 1.5)):
    value = speedups.get((batch, 20))
    add(f'engine >= {goal}x the PyTorch eager fp32 loop, batch {batch}',
        '-' if value is None else f'{value:.2f}x', None if value is None else value >= goal)
  rows = bench['rows'] if bench else []
  bf16 = [r for r in rows if r['method'] == 'mc_dropout' and r['dtype'] == 'bfloat16'
          and r['samples'] == 20]
  for r in bf16:
    add(f"bf16 engine >= 40 % of the card's bf16 conv throughput (batch {r['batch']})",
        f"{r['fraction_of_conv_ceiling']:.0%}", r['fraction_of_conv_ceiling'] >= 0.4)
  for r20 in [r for r in rows if r['method'] == 'mc_dropout' and r['samples'] == 20]:
    r100 = [r for r in rows if r['method'] == 'mc_dropout' and r['samples'] == 100 and all(
        r[k] == r20[k] for k in ('image_size', 'batch', 'base_width', 'dtype'))]
    if r100:
      growth = r100[0]['peak_memory_mb'] / r20['peak_memory_mb']
      add(f"memory flat T=20 -> 100 (batch {r20['batch']}, {r20['dtype']}; chunks "
          f"{r20['chunk']} / {r100[0]['chunk']})",
          f"{r20['peak_memory_mb']:.0f} -> {r100[0]['peak_memory_mb']:.0f} MB ({growth:.2f}x)",
          growth <= 1.2)
  return out


def main(argv):
  del argv
  peers = [p for p in (_load(f) for f in sorted(glob.glob(os.path.join(_DIR.value, 'peer_b*.json'))))
           if p]
  peers.sort(key=lambda p: p['batch'])
  bench = _load(os.path.join(_DIR.value, 'bench', 'bench.json'))
  lines = ['# Device bench', '']
  speedups = {}
  if peers:
    peer_text, speedups = peer_lines(peers)
    lines += peer_text + ['']
  else:
    lines += ['No PyTorch peer results (torch missing, or the step failed).', '']
  if bench:
    lines += bench_lines(bench) + ['']
  else:
    lines += ['No JAX bench results.', '']
  lines += targets(speedups, bench)
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(_DIR.value, 'device_bench.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
