"""Leave one institution out: train f and the quality models on two sites, judge the third's patients.

  python experiments/loio.py --workdir=runs/loio --sites=CS,DU,HT --seed=0 \
      --out=experiments/loio/lgg_seed0.md

Issue 25, item 6. A clinic that adopts a model trained elsewhere meets exactly this shift:
other scanners, other protocols, other patients. For each held-out site S of the LGG data
(``metadata.csv``: CS 16, DU 45, HT 34 patients) the other sites' patients are split by
patient, seeded, into f's training patients (3/4) and the quality patients (1/4; also f's
validation log, as in the shared protocol); every patient of S is test. Each split runs the
product unchanged (``configs/lgg.py``, ``main.py`` all stages) in ``<workdir>/<S>/``, and
the table gathers the per-volume evaluation of each run: f's volume Dice on S, and per
volume AUROC at Dice < 0.8, Spearman and RMSE of each quality model, with the gate's flag
rate on S (the share of S's slices the applicability gate would send to review).

Nothing is tuned here: each run's config is configs/lgg.py with its split lists and seed.
A run that finished is not run again (main.py skips stages whose outputs exist).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, '..', 'shared', 'data', 'lgg_mri')

_WORKDIR = flags.DEFINE_string('workdir', 'runs/loio', 'Folder of the runs, one per held-out site.')
_SITES = flags.DEFINE_list('sites', ['CS', 'DU', 'HT'], 'Sites to hold out, one run each.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the patient split and of the runs.')
_OUT = flags.DEFINE_string('out', None, 'Markdown table of the results.')
_METADATA = flags.DEFINE_string('metadata', os.path.join(DATA, 'metadata.csv'),
                                'case,site,... per patient.')
QUALITY_SHARE = 0.25


def split_by_site(metadata: str, held_out: str, seed: int) -> dict[str, list[str]]:
  """Patients of ``held_out`` are test; the others go 3/4 to f, 1/4 to the quality models."""
  with open(metadata) as f:
    rows = list(csv.DictReader(f))
  sites = {r['site'] for r in rows}
  if held_out not in sites:
    raise ValueError(f'{metadata}: no site {held_out!r}; sites are {sorted(sites)}')
  test = sorted(r['case'] for r in rows if r['site'] == held_out)
  rest = sorted(r['case'] for r in rows if r['site'] != held_out)
  order = np.random.default_rng(seed).permutation(len(rest))
  n_quality = max(2, int(round(QUALITY_SHARE * len(rest))))
  quality = sorted(rest[i] for i in order[:n_quality])
  train = sorted(rest[i] for i in order[n_quality:])
  return {'train': train, 'quality': quality, 'test': test}


def _write_lists(folder: str, split: dict[str, list[str]]) -> str:
  """Split lists in ``folder`` and the ``data.splits`` spec that names them."""
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for name, ids in split.items():
    paths[name] = os.path.join(folder, f'{name}.txt')
    with open(paths[name], 'w') as f:
      f.write('\n'.join(ids) + '\n')
  return (f'train={paths["train"]},validation={paths["quality"]},'
          f'quality={paths["quality"]},test={paths["test"]}')


def run_site(site: str) -> dict:
  """Trains and evaluates the run that holds ``site`` out; returns its metrics.json."""
  workdir = os.path.abspath(os.path.join(_WORKDIR.value, site))
  split = split_by_site(_METADATA.value, site, _SEED.value)
  spec = _write_lists(os.path.join(workdir, 'lists'), split)
  metrics_path = os.path.join(workdir, 'metrics.json')
  if not os.path.exists(metrics_path):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'run.log'), 'a') as log:
      subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/lgg.py',
                      f'--workdir={workdir}', f'--config.seed={_SEED.value}',
                      f'--config.data.splits={spec}'], cwd=ROOT, stdout=log, stderr=log, check=True)
  with open(metrics_path) as f:
    metrics = json.load(f)
  metrics['_split'] = {k: len(v) for k, v in split.items()}
  return metrics


def table(results: dict[str, dict]) -> str:
  """One block per held-out site: f's volume Dice and each quality model per volume."""
  lines = [f'# Leave one institution out, LGG, seed {_SEED.value} (configs/lgg.py)', '',
           'Per volume on the held-out site; AUROC at volume Dice < 0.8 with its 95 % bootstrap '
           'interval. Gate: share of the site\'s slices flagged at ood_alpha.', '']
  for site, m in results.items():
    pv, n = m['per_volume'], m['_split']
    gate = m.get('applicability', {})
    flagged = gate.get('test_flagged_share')
    lines += [f'## Held out: {site} ({n["test"]} patients; f on {n["train"]}, quality models on '
              f'{n["quality"]})', '',
              f'f: mean volume Dice {pv["mean_dice"]:.3f}; {100 * pv["fail_rate"]:.1f} % of volumes '
              f'with Dice < 0.8.' + (f' The gate flags {100 * flagged:.1f} % of its slices'
                                     f' (batch test p = {gate["batch_test"]["pvalue"]:.3g}).'
                                     if isinstance(flagged, (int, float)) else ''), '',
              '| Quality model | AUROC (%) | Spearman | RMSE | failures |', '|---|---|---|---|---|']
    for name, q in pv['quality_models'].items():
      d = q['dice<0.8']
      auroc = d.get('auroc')
      ci = d.get('auroc_ci95') or [float('nan')] * 2
      auroc_text = ('n/a (one class)' if auroc is None else
                    f'{100 * auroc:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]')
      lines.append(f'| {name} | {auroc_text} | {q["spearman"]:.3f} | {q["rmse"]:.3f} | '
                   f'{d["failures"]} of {pv["volumes"]} |')
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  del argv
  results = {site: run_site(site) for site in _SITES.value}
  text = table(results)
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
    with open(_OUT.value, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)
