"""Does the calibrated auto-accept rule hold on each part of the test split?

  python experiments/accept_by_origin.py --metadata=../shared/data/isic2017/metadata.csv \
      --column=split --workdir=runs/isic2017_wider/msp_seed0 [--workdir=...]

Learn then Test promises accepted-failure rate <= alpha for cases
*exchangeable* with the calibration cases. ISIC 2017's protocol `test` list
mixes 200 cases from the official train set, where the calibration cases
also come from, with 150 from the official validation set. This splits each
run's test cases by a metadata column and applies each calibrated rule
(thresholds from ``metrics.json``'s ``auto_accept``, predicted quality and true Dice from
``predictions.csv``) to every part: if the rule holds on the part drawn like
its calibration cases and not on the other, a violation is the shift's, not
the rule's. It also prints the failure rate of the calibration cases
themselves (the same ``data.seed`` draw for every model seed): a draw easier
than the cases the rule meets later is the other way to miss alpha. The
per-run total is checked against ``metrics.json``.
"""

from __future__ import annotations

import csv
import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.evaluation import report  # noqa: E402
from segqual_jax.quality import auto_accept, policy  # noqa: E402

_WORKDIRS = flags.DEFINE_multi_string('workdir', [], 'Evaluated calibrated runs (metrics.json with auto_accept, predictions.csv).')
_METADATA = flags.DEFINE_string('metadata', None, 'CSV with an `id` column and --column.')
_COLUMN = flags.DEFINE_string('column', 'split', 'Metadata column to split the test cases by.')
flags.mark_flag_as_required('metadata')


def read_csv(path: str) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def main(argv):
  del argv
  origin = {r['id']: r[_COLUMN.value] for r in read_csv(_METADATA.value)}
  rules: dict[tuple[str, str], list[dict]] = {}  # (row, alpha) -> per run and part: realised
  base: dict[str, list[float]] = {}
  for workdir in _WORKDIRS.value:
    config = artifacts.read_json(os.path.join(workdir, 'seg', 'config.json'))
    dice = np.load(os.path.join(workdir, 'quality', 'f_outputs', 'quality.npz'))['dice']
    cal, rest = auto_accept.calibration_indices(len(dice), config['calibration']['fraction'],
                                                config['data']['seed'])
    base.setdefault('calibration cases', []).append(float((dice[cal] < 0.8).mean()))
    base.setdefault('quality-fit cases', []).append(float((dice[rest] < 0.8).mean()))
    cases = read_csv(os.path.join(workdir, 'predictions.csv'))
    missing = [c['id'] for c in cases if c['id'] not in origin]
    if missing:
      raise ValueError(f'{_METADATA.value}: no row for test ids {missing[:5]} of {workdir}')
    part = np.array([origin[c['id']] for c in cases])
    failed = np.array([float(c['true_dice']) for c in cases]) < 0.8
    for name in sorted(set(part)):
      base.setdefault(f'test {_COLUMN.value}={name}', []).append(float(failed[part == name].mean()))
    for entry in artifacts.read_json(os.path.join(workdir, 'metrics.json'))['auto_accept'].values():
      if entry['fail_dice'] != 0.8:
        raise ValueError(f'{workdir}: the rules use Dice < {entry["fail_dice"]}, not 0.8')
      scores = np.array([float(c[f'predicted[{entry["row"]}]']) for c in cases])
      for alpha, rule in entry['rules'].items():
        whole = policy.realised(scores, failed, rule['threshold'])
        if whole['accepted'] != rule['test']['accepted']:  # the CSV rounds scores to 5 digits
          raise ValueError(f'{workdir}: {entry["row"]} at alpha {alpha} accepts {whole["accepted"]} '
                           f'test cases from predictions.csv, {rule["test"]["accepted"]} in metrics.json')
        for name in sorted(set(part)):
          rules.setdefault((f'{entry["row"]} [{_COLUMN.value}={name}]', alpha), []).append(
              {'test': policy.realised(scores[part == name], failed[part == name],
                                            rule['threshold'])})
  print('Share of cases with Dice < 0.8 (mean over the runs):',
        ', '.join(f'{name} {100 * np.mean(v):.1f} % ({len(v)} runs)' for name, v in base.items()))
  print()
  print(report.auto_accept_seeds_markdown(dict(sorted(rules.items()))))


if __name__ == '__main__':
  app.run(main)
