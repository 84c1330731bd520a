"""How honest and how narrow is the interval around a predicted Dice? Chosen on calibration cases, measured on the test list.

  python experiments/intervals.py --workdir=runs/clinical/seed0 --out=experiments/intervals/clinical_seed0.json \
      [--metadata=../shared/data/isic2017/metadata.csv]
  python experiments/intervals.py --aggregate experiments/intervals/clinical_seed{0,1,2}.json

Per quality model of a calibrated run (``--mode=train_quality`` stores each
model's calibration cases behind the gate, ``quality/interval.py``):

1. **The floor, chosen on the calibration cases only.** The scaled
   interval divides each case's errors by ``floor + (1 - predicted Dice)``;
   for each candidate floor, 200 seeded halvings of the calibration cases
   fit on one half and measure coverage and mean width on the other. The
   narrowest floor whose mean coverage is at least nominal is reported (and
   is the one to set as ``predict.interval_floor``); the test list is not
   looked at.
2. **The test list**, behind the gate as predict gives it
   (``evaluation/evaluate.intervals_on_test``): coverage of the true Dice and
   mean width with 95 % bootstrap intervals, for the scaled interval at the
   run's ``predict.interval_floor`` and for the constant-width interval from
   the same calibration cases.

With ``--metadata`` (a CSV with ``id`` and ``--column``), the test coverage
is also given per part of the test list: ISIC 2017's protocol test list mixes
cases of the official train set (where the calibration cases come from) with
the official validation set, and the interval promises coverage only for
cases exchangeable with its calibration cases.

``--aggregate`` prints the mean over seeds as a markdown table.
"""

from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.data import loading  # noqa: E402
from segqual_jax.evaluation import evaluate, report  # noqa: E402
from segqual_jax.metrics import overlap  # noqa: E402
from segqual_jax.quality import applicability, interval, policy, registry  # noqa: E402
from segqual_jax.segmenter import judged, runner  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A calibrated, evaluated run.')
_OUT = flags.DEFINE_string('out', None, 'JSON of the measurements.')
_AGGREGATE = flags.DEFINE_multi_string('aggregate', [], 'JSON files of this script to average.')
_METADATA = flags.DEFINE_string('metadata', '', 'CSV with an id column and --column: coverage per part.')
_COLUMN = flags.DEFINE_string('column', 'split', 'Metadata column that splits the test cases.')
FLOORS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
HALVINGS = 200


def choose_floor(cases: dict, alpha: float) -> dict:
  """Mean coverage and width of the scaled interval per floor over seeded halvings of the
  calibration cases, and the constant interval's; the narrowest floor with coverage >= nominal."""
  predicted, true = np.asarray(cases['predicted_dice']), np.asarray(cases['true_dice'])
  rng = np.random.default_rng(26)
  halves = [rng.permutation(len(predicted)) for _ in range(HALVINGS)]
  def measure(kind, floor):
    got = []
    for perm in halves:
      a, b = perm[:len(perm) // 2], perm[len(perm) // 2:]
      fitted = interval.fit(predicted[a], true[a], alpha, kind, floor)
      got.append(interval.coverage(fitted, predicted[b], true[b]))
    return {'coverage': float(np.mean([g['coverage'] for g in got])),
            'mean_width': float(np.mean([g['mean_width'] for g in got]))}
  per_floor = {str(f): measure('scaled', f) for f in FLOORS}
  valid = [f for f in FLOORS if per_floor[str(f)]['coverage'] >= 1 - alpha]
  best = min(valid, key=lambda f: per_floor[str(f)]['mean_width']) if valid else None
  return {'floors': per_floor, 'constant': measure('constant', 0.05), 'chosen_floor': best}


def measure_run(workdir: str) -> dict:
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  if config.data.name == 'nnunet':
    raise SystemExit(f'{workdir}: a volume run; this experiment measures cases of 2D data sets')
  stored = evaluate.stored_rules(config, workdir)
  names = stages.quality_model_names(config)
  test = judged.judged(config, workdir, loading.load_splits(config.data, names=('test',))['test'])
  score = applicability.load(config, workdir)
  pvalues = None if score is None else score.pvalues(score.score(test.outputs.features))
  predicted = {report.model_row(config, n): registry.predict_cases(
      registry.load(config, workdir, n), test.split.images, test.outputs, config.quality.eval_batch_size)
      for n in names}
  on_test = evaluate.intervals_on_test(config, stored, predicted, test.outputs.dice, pvalues)
  out = {'workdir': workdir, 'seed': config.seed, 'alpha': config.predict.interval_alpha,
         'floor': config.predict.interval_floor, 'models': {}}
  parts = {}
  if _METADATA.value:
    with open(_METADATA.value) as f:
      origin = {r['id']: r[_COLUMN.value] for r in csv.DictReader(f)}
    ids = runner.case_ids(test.split)
    keep = policy.let_through(pvalues, config.predict.ood_alpha, len(ids))
    for part in sorted({origin.get(i, '?') for i in ids}):
      parts[part] = np.array([origin.get(i, '?') == part for i in ids]) & keep
  for name in names:
    entry = stored['models'][name]
    if 'interval_cases' not in entry:
      raise SystemExit(f'{workdir}: calibration.json predates the intervals; run --mode=train_quality')
    out['models'][name] = {'row': on_test[name]['row'],
                           'calibration': choose_floor(entry['interval_cases'], config.predict.interval_alpha),
                           'test': on_test[name]['kinds'], 'test_parts': {}}
    dice = np.asarray(overlap.as_dice(np.asarray(predicted[on_test[name]['row']], np.float64),
                                      config.quality.target))
    for kind in interval.KINDS:
      fitted, _ = interval.from_calibration(entry, kind, config.predict.interval_alpha,
                                            config.predict.interval_floor, config.calibration.fraction)
      for part, mask in parts.items():
        got = interval.coverage(fitted, dice[mask], test.outputs.dice[mask])
        out['models'][name]['test_parts'].setdefault(part, {})[kind] = got
  return out


def aggregate(paths: list[str]) -> str:
  runs = [json.load(open(p)) for p in paths]
  lines = [f'Means over {len(runs)} seed(s) ({", ".join(str(r["seed"]) for r in runs)}); nominal '
           f'{100 * (1 - runs[0]["alpha"]):g} %, scaled floor {runs[0]["floor"]}.', '',
           '| quality model | interval | calibration cases | test cases | test coverage (%) | test mean width | '
           'floor chosen on calibration cases (per seed) | test coverage per part |',
           '|---|---|---|---|---|---|---|---|']
  for name in runs[0]['models']:
    for kind in interval.KINDS:
      got = [r['models'][name]['test'][kind] for r in runs]
      coverages = ', '.join(f"{100 * g['coverage']:.1f}" for g in got)
      widths = ', '.join(f"{g['mean_width']:.3f}" for g in got)
      floors = ', '.join(str(r['models'][name]['calibration']['chosen_floor']) for r in runs)
      parts = sorted(runs[0]['models'][name].get('test_parts', {}))
      by_part = '; '.join(
          f"{p}: {100 * np.mean([r['models'][name]['test_parts'][p][kind]['coverage'] for r in runs]):.1f} % "
          f"of {runs[0]['models'][name]['test_parts'][p][kind]['cases']}" for p in parts)
      lines.append(f"| {runs[0]['models'][name]['row']} | {kind} | {np.mean([g['cases'] for g in got]):.0f} | "
                   f"{np.mean([g['test_cases'] for g in got]):.0f} | "
                   f"{100 * np.mean([g['coverage'] for g in got]):.1f} ({coverages}) | "
                   f"{np.mean([g['mean_width'] for g in got]):.3f} ({widths}) | "
                   f"{floors if kind == 'scaled' else ''} | {by_part or 'n/a'} |")
  return '\n'.join(lines) + '\n'


def main(argv):
  if _AGGREGATE.value:  # --aggregate a.json b.json ...: the files after the first are arguments
    print(aggregate(_AGGREGATE.value + list(argv[1:])))
    return
  result = measure_run(_WORKDIR.value)
  artifacts.write_json(_OUT.value, result)
  print(json.dumps({n: {'test': m['test'], 'chosen_floor': m['calibration']['chosen_floor']}
                    for n, m in result['models'].items()}, indent=1))


if __name__ == '__main__':
  app.run(main)
