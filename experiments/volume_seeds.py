"""The LGG tables over seeds: per volume and per slice, each quality model's mean and spread.

  python experiments/volume_seeds.py runs/lgg/seed0 runs/lgg/seed1 runs/lgg/seed2 \
      > experiments/volume_seeds_lgg.md

Reads each run's ``metrics.json`` (written by ``main.py --mode=evaluate``; nothing is
recomputed) and prints, per quality model, mean and standard deviation over the runs of:
per volume AUROC at Dice < 0.8, Spearman, RMSE and AURC; per slice AUROC at Dice < 0.8 and
Spearman; with f's mean volume and slice Dice per run.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _ms(values) -> str:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return 'n/a'
  return f'{v.mean():.3f} ± {v.std(ddof=1):.3f}' if len(v) > 1 else f'{v[0]:.3f}'


def main(runs: list[str]) -> str:
  metrics = []
  for run in runs:
    with open(os.path.join(run, 'metrics.json')) as f:
      metrics.append(json.load(f))
  lines = [f'# LGG over {len(runs)} runs ({", ".join(runs)})', '',
           '| run | f mean volume Dice (own grid) | volumes with Dice < 0.8 | f mean slice Dice |',
           '|---|---|---|---|']
  for run, m in zip(runs, metrics):
    pv = m['per_volume']
    lines.append(f'| {run} | {pv["mean_dice"]:.3f} | {round(pv["fail_rate"] * pv["volumes"])} of '
                 f'{pv["volumes"]} | {m["segmentation"]["mean_dice"]:.3f} |')
  lines += ['', 'Mean ± SD over the runs.', '',
            '| quality model | per volume AUROC | Spearman | RMSE | AURC | per slice AUROC | per slice Spearman |',
            '|---|---|---|---|---|---|---|']
  for name in metrics[0]['per_volume']['quality_models']:
    vol = [m['per_volume']['quality_models'][name] for m in metrics]
    sl = [m['quality_models'][name] for m in metrics]
    lines.append(f'| {name} | {_ms(v["dice<0.8"]["auroc"] for v in vol)} | {_ms(v["spearman"] for v in vol)} | '
                 f'{_ms(v["rmse"] for v in vol)} | {_ms(v["aurc"] for v in vol)} | '
                 f'{_ms(s["dice<0.8"]["auroc"] for s in sl)} | {_ms(s["spearman"] for s in sl)} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(main(sys.argv[1:]))
