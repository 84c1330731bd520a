"""Table 1 over several seeds: every method, mean +- std, one Markdown file.

  python experiments/table1.py --seeds=0,1,2 --workdir=runs/table1 --out=experiments/table1_synthetic.md

Each run is ``main.py --config=configs/<method>.py --workdir=<workdir>/<method>_seed<s>
--config.seed=<s>`` in a subprocess, so an interrupted table resumes where it
stopped (complete stages are skipped). The MSP run trains three g on one f and
gives three rows (Max probability, No uncertainty, QualityNet); MC-dropout,
HCNN and LCE train only their uncertainty-based g. ``--override`` passes extra
``--config.x=y`` flags to every run (e.g. a data dir). ``--config_base`` takes
one config file with the method as argument, e.g. the real data sets:

  python experiments/table1.py --config_base=configs/isic2017.py --seeds=0,1,2 \
      --workdir=runs/isic2017 --out=experiments/table1_isic2017.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.evaluation import report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = (('msp', 'uncertainty,no_uncertainty,qualitynet'), ('mc_dropout', 'uncertainty'),
        ('hcnn', 'uncertainty'), ('lce', 'uncertainty'))
ROW_ORDER = ('QualityNet', 'No uncertainty', 'Max probability', 'MC-dropout', 'HCNN', 'LCE')

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Model seeds (the data set is fixed).')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/table1', 'Parent directory of the runs.')
_OUT = flags.DEFINE_string('out', 'experiments/table1_synthetic.md', 'Markdown output.')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'Extra --config.x=y for every run.')
_CONFIG_DIR = flags.DEFINE_string('config_dir', 'configs', 'Directory of the method configs.')
_CONFIG_BASE = flags.DEFINE_string('config_base', None,
                                   'One config file taking the method as its argument '
                                   '(e.g. configs/isic2017.py -> configs/isic2017.py:lce); '
                                   'replaces --config_dir.')


def run_one(method: str, models: str, seed: int) -> tuple[dict, dict, float]:
  """Runs (or resumes, or skips) one method and seed; returns (metrics, stage-1 metrics, seconds)."""
  workdir = os.path.join(_WORKDIR.value, f'{method}_seed{seed}')
  config = (f'{_CONFIG_BASE.value}:{method}' if _CONFIG_BASE.value
            else f'{_CONFIG_DIR.value}/{method}.py')
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}',
         f'--config.seed={seed}', f'--config.quality.models={models}', *_OVERRIDES.value]
  print(' '.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  def read(*parts):
    with open(os.path.join(REPO, workdir, *parts)) as f:
      return json.load(f)
  return read('metrics.json'), read('seg', 'metrics.json'), time.time() - start


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value]
  rows: dict[str, list[dict]] = {}
  seg: dict[str, list[dict]] = {}
  stage1: dict[str, list[dict]] = {}
  wall = 0.0
  for seed in seeds:
    for method, models in RUNS:
      result, val, seconds = run_one(method, models, seed)
      wall += seconds
      seg.setdefault(method, []).append(result['segmentation'])
      stage1.setdefault(method, []).append(val)
      for name, metrics in result['quality_models'].items():
        rows.setdefault(name, []).append(metrics)
  rows = {name: rows[name] for name in ROW_ORDER if name in rows}
  keys = [k for k in next(iter(rows.values()))[0] if '<' in k]  # the failure definitions
  lines = [f'Seeds {seeds}; wall time of the runs in this invocation: {wall / 60:.1f} min '
           '(complete stages found on disk are skipped and cost ~0).\n',
           '\nSegmentation network f on the test split (mean over seeds):\n',
           '\n| f trained with | mean Dice | mean Jaccard | share Dice < 0.8 |\n|---|---|---|---|\n']
  mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
  for method, rs in seg.items():
    lines.append(f'| {method} | {mean(rs, "mean_dice"):.3f} | {mean(rs, "mean_jaccard"):.3f} | '
                 f'{100 * mean(rs, "fail_rate_dice_0.8"):.1f} % |\n')
  lines.append('\nStage 1 on the validation split (each method\'s own prediction; mean over seeds) '
               'and the wall time of stage 1 per run, as recorded when it ran:\n'
               '\n| method | val Dice | val Jaccard | share Dice < 0.8 | stage-1 wall time per seed (s) |\n'
               '|---|---|---|---|---|\n')
  for method, rs in stage1.items():
    times = ', '.join(f'{r["wall_time_s"]:.0f}' for r in rs)
    lines.append(f'| {method} | {mean(rs, "mean_dice"):.3f} | {mean(rs, "mean_jaccard"):.3f} | '
                 f'{100 * mean(rs, "fail_rate_dice_0.8"):.1f} % | {times} |\n')
  for key in keys:
    lines.append(f'\nFailure = {report.threshold_title(key)}:\n\n')
    lines.append(report.table_markdown(rows, key))
  text = ''.join(lines)
  with open(os.path.join(REPO, _OUT.value), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
