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

``--runs`` replaces the six rows by any set of runs, ``METHOD=MODEL+MODEL,...``
(quality models of ``quality.models``), and ``--reuse_dir`` lets each run
reuse a trained f from an earlier table (``config.seg.reuse_from``: its own
method's, or the one it trains like, e.g. MSP's for TTA; it may be the table's
own --workdir, so MC-dropout and TTA reuse the MSP run of the same table). The issue-6 table
on ISIC 2017, every quality model fitted on the same cases and calibrated on
held-out ones:

  python experiments/table1.py --config_base=configs/isic2017.py --seeds=0,1,2 \
      --workdir=runs/isic2017_wider --reuse_dir=runs/isic2017_wider --runs=WIDER \
      --override=--config.calibration.fraction=0.3 --out=experiments/wider_isic2017.md \
      --record=experiments/wider_isic2017.json

``--record`` keeps each finished run's results in a JSON beside the table, so
a table whose runs span sessions (run directories do not outlive one here)
can be completed and rebuilt later without redoing them.

Besides Table 1, the output has the image-level scores used directly as
quality scores and, with a calibration split, the auto-accept rules.
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
# --runs=WIDER: the methods of issue 6 beside the MSP f they compare with (MC-dropout and
# TTA reuse it), every quality model, the sample-based scores. HCNN and LCE train their own
# f and add no sample-based score; their Table-1 rows come from the six-row table.
WIDER = 'msp=uncertainty+no_uncertainty+qualitynet+cheap_qc+rca,' + ','.join(
    f'{m}=uncertainty+cheap_qc' for m in ('mc_dropout', 'tta', 'hierarchical', 'ensemble'))
ROW_ORDER = ('RCA', 'QualityNet', 'No uncertainty', 'Max probability', 'MC-dropout', 'HCNN', 'LCE',
             'TTA', 'Deep ensemble', 'Hierarchical')

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Model seeds (the data set is fixed).')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/table1', 'Parent directory of the runs.')
_OUT = flags.DEFINE_string('out', 'experiments/table1_synthetic.md', 'Markdown output.')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'Extra --config.x=y for every run.')
_CONFIG_DIR = flags.DEFINE_string('config_dir', 'configs', 'Directory of the method configs.')
_RUNS = flags.DEFINE_string('runs', '', 'METHOD=MODEL+MODEL,... (or WIDER); empty: the six rows of Table 1.')
_REUSE_DIR = flags.DEFINE_string('reuse_dir', '', 'Parent dir of earlier runs whose trained f to reuse.')
_RECORD = flags.DEFINE_string('record', '', 'JSON of finished runs\' results kept beside --out: a run '
                              'whose directory is gone is taken from it (same config, seed, '
                              'models, overrides); every run ends up in it.')
_CONFIG_BASE = flags.DEFINE_string('config_base', None,
                                   'One config file taking the method as its argument '
                                   '(e.g. configs/isic2017.py -> configs/isic2017.py:lce); '
                                   'replaces --config_dir.')


def parse_runs(spec: str) -> tuple[tuple[str, str], ...]:
  """``'msp=uncertainty+cheap_qc,tta=uncertainty'`` -> ``(('msp', 'uncertainty,cheap_qc'), ...)``."""
  if not spec:
    return RUNS
  spec = WIDER if spec == 'WIDER' else spec
  return tuple((m.strip(), models.replace('+', ',')) for m, _, models in
               (item.partition('=') for item in spec.split(',') if item.strip()))


def reuse_source(method: str, seed: int) -> str | None:
  """The earlier run whose f ``method`` can reuse: its own method's, else the one it trains like."""
  if not _REUSE_DIR.value:
    return None
  from segqual_jax.segmenter import methods as uncertainty
  own = os.path.normpath(os.path.join(_WORKDIR.value, f'{method}_seed{seed}'))
  for name in (method, uncertainty.training_family(method)):
    path = os.path.join(_REUSE_DIR.value, f'{name}_seed{seed}')
    if os.path.normpath(path) != own and os.path.exists(os.path.join(REPO, path, 'seg', 'metrics.json')):
      return path
  return None


def run_one(method: str, models: str, seed: int, record: dict) -> tuple[dict, dict, float]:
  """Runs (or resumes, or skips) one method and seed; returns (metrics, stage-1 metrics, seconds).

  A run whose directory does not exist is taken from ``--record`` when the
  record holds it with the same identity; every finished run is stored there.
  """
  workdir = os.path.join(_WORKDIR.value, f'{method}_seed{seed}')
  config = (f'{_CONFIG_BASE.value}:{method}' if _CONFIG_BASE.value
            else f'{_CONFIG_DIR.value}/{method}.py')
  # What decides the result; the workdir and a reused f (checked to be the same) do not.
  identity = {'config': config, 'seed': seed, 'models': models, 'overrides': _OVERRIDES.value}
  key = f'{method}_seed{seed}'
  stored = report.recorded_result(record, key, identity)
  if stored is not None and not os.path.exists(os.path.join(REPO, workdir)):
    print(f'{key}: from the record {_RECORD.value} (no run directory {workdir})', flush=True)
    return stored['metrics'], stored['seg'], 0.0
  source = reuse_source(method, seed)
  reuse = [f'--config.seg.reuse_from={source}'] if source else []
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}',
         f'--config.seed={seed}', f'--config.quality.models={models}', *reuse, *_OVERRIDES.value]
  print(' '.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  def read(*parts):
    with open(os.path.join(REPO, workdir, *parts)) as f:
      return json.load(f)
  metrics, seg = read('metrics.json'), read('seg', 'metrics.json')
  if _RECORD.value:
    report.store_result(os.path.join(REPO, _RECORD.value), record, key, identity,
                        {'metrics': metrics, 'seg': seg})
  return metrics, seg, time.time() - start


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value]
  rows: dict[str, list[dict]] = {}
  seg: dict[str, list[dict]] = {}
  stage1: dict[str, list[dict]] = {}
  scores: dict[str, list[dict]] = {}
  accept: dict[tuple[str, str], list[dict]] = {}
  wall = 0.0
  record = report.load_record(os.path.join(REPO, _RECORD.value) if _RECORD.value else '')
  for seed in seeds:
    for method, models in parse_runs(_RUNS.value):
      result, val, seconds = run_one(method, models, seed, record)
      wall += seconds
      seg.setdefault(method, []).append(result['segmentation'])
      stage1.setdefault(method, []).append(val)
      for name, metrics in result['quality_models'].items():
        rows.setdefault(name, []).append(metrics)
      for name, metrics in result.get('scores', {}).items():
        scores.setdefault(name, []).append(metrics)
      for entry in result.get('auto_accept', {}).values():
        for alpha, rule in entry['rules'].items():
          accept.setdefault((entry['row'], alpha), []).append(rule)
  order = lambda name: (ROW_ORDER.index(name) if name in ROW_ORDER else len(ROW_ORDER), name)
  # A row that not every seed produced (its model ran for some seeds only) says so.
  label = lambda name, rs: name if len(rs) == len(seeds) else f'{name} ({len(rs)} of {len(seeds)} seeds)'
  rows = {label(name, rows[name]): rows[name] for name in sorted(rows, key=order)}
  scores = {label(name, rs): rs for name, rs in scores.items()}
  keys = [k for k in next(iter(rows.values()))[0] if '<' in k]  # the failure definitions
  lines = [f'Seeds {seeds}; wall time of the runs in this invocation: {wall / 60:.1f} min '
           '(complete stages found on disk, and runs taken from the record, cost ~0).\n',
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
  if scores:
    lines.append(f'\nImage-level scores used directly as quality scores (no g; RMSE does not apply), '
                 f'failure = {report.threshold_title(keys[0])}:\n\n')
    lines.append(report.table_markdown(scores, keys[0]))
  if accept:
    lines.append('\n' + report.auto_accept_seeds_markdown(accept))
  text = ''.join(lines)
  with open(os.path.join(REPO, _OUT.value), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
