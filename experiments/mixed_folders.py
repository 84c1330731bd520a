"""Mixed folders: what a run does with a folder of clean cases and a share of unlike ones.

  python experiments/mixed_folders.py --workdir=runs/clinical/seed0 --out=experiments/stream/mixed_seed0.json

Needs the run's test shift suite (``experiments/shift.py --suite=test``,
which leaves every case's score, p-value, predicted quality and true
failure in ``<workdir>/shift/test__<set>__cases.npz``). Each folder holds
``--clean`` clean test cases and a share (5, 10, 30 %) of one contaminating
set (another modality, synthetic, noise, a severity-3 corruption), drawn
without replacement, ``--folders`` seeded folders per cell. Two policies on
the same folders, with the run's rule at ``predict.alpha``:

* ``suspend`` (shipped, ``predict.on_shift=suspend``): the per-case gate, and
  when the folder's batch test rejects, every case to review;
* ``bh`` (``predict.on_shift=review_unusual``): instead of suspending,
  Benjamini-Hochberg at level ``predict.ood_alpha`` over the folder's
  applicability p-values sends the rejected cases to review and judges the
  rest as usual (``policy.unusual``).

Reported per cell: the clean cases' automation (and the clean folder alone's),
the share of contaminants auto-accepted, and the failures among all accepted.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.quality import applicability, policy  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run with its test shift suite.')
_OUT = flags.DEFINE_string('out', None, 'JSON result (a .md table is written beside it).')
_CLEAN = flags.DEFINE_integer('clean', 120, 'Clean cases per folder.')
_FOLDERS = flags.DEFINE_integer('folders', 100, 'Seeded folders per cell.')
_MODEL = flags.DEFINE_string('model', 'uncertainty', 'The quality model whose rule decides.')
SETS = ('far__kvasir_seg', 'far__synthetic_generator', 'far__uniform_noise', 'brightness_3', 'contrast_3',
        'jpeg_3', 'blur_3', 'noise_3')
SHARES = (0.05, 0.1, 0.3)


def decide(case: dict, threshold: float, config, reference: np.ndarray, bh: bool) -> np.ndarray:
  """Accepted cases of one folder, as predict decides them with ``on_shift`` suspend or
  review_unusual (``bh``)."""
  settings = config.predict.copy_and_resolve_references()
  settings.on_shift = 'review_unusual' if bh else 'suspend'
  gate = policy.Gate(settings.ood_alpha, policy.batch_verdict(case['batch_scores'], reference, settings))
  if gate.suspended:
    return np.zeros(len(case['pred']), bool)
  accepted = policy.accepted(case['pred'], threshold, case['pvalues'], settings.ood_alpha)
  return accepted & ~policy.unusual(case['pvalues'], gate)


def load(workdir: str, name: str) -> dict:
  with np.load(os.path.join(workdir, 'shift', f'test__{name}__cases.npz')) as f:
    if 'batch_scores' not in f.files:
      raise SystemExit(f'{workdir}: the shift suite predates the batch test\'s own score; rerun '
                       'experiments/shift.py --suite=test')
    return {'scores': f['scores'], 'batch_scores': f['batch_scores'], 'pvalues': f['pvalues'], 'failed': f['failed'],
            'has_truth': bool(f['has_truth']), 'pred': f[f'pred__{_MODEL.value}'],
            'threshold': float(f[f'threshold__{_MODEL.value}'])}


def cell(clean: dict, other: dict, share: float, config, reference: np.ndarray, bh: bool) -> dict:
  rng = np.random.default_rng([7, int(share * 1000), len(other['scores'])])
  n_other = int(round(share * _CLEAN.value / (1 - share)))
  clean_auto, other_accepted, accepted_failures, accepted_total = [], [], 0, 0
  for _ in range(_FOLDERS.value):
    ci = rng.choice(len(clean['scores']), _CLEAN.value, replace=False)
    oi = rng.choice(len(other['scores']), n_other, replace=n_other > len(other['scores']))
    folder = {k: np.concatenate([clean[k][ci], other[k][oi]])
              for k in ('scores', 'batch_scores', 'pvalues', 'pred', 'failed')}
    accepted = decide(folder, clean['threshold'], config, reference, bh)
    clean_auto.append(accepted[:_CLEAN.value].mean())
    other_accepted.append(accepted[_CLEAN.value:].mean() if n_other else 0.0)
    failed = folder['failed'].copy()
    if not other['has_truth']:
      failed[_CLEAN.value:] = True  # no truth (noise): any acceptance is a failure
    accepted_failures += int((accepted & failed).sum())
    accepted_total += int(accepted.sum())
  return {'contaminants': n_other, 'clean_automation': float(np.mean(clean_auto)),
          'contaminants_accepted': float(np.mean(other_accepted)),
          'failures_among_accepted': accepted_failures / accepted_total if accepted_total else None}


def main(argv):
  del argv
  workdir = _WORKDIR.value
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  reference = applicability.load(config, workdir).batch_references  # what the batch test compares
  clean = load(workdir, 'clean')
  alone = cell(clean, {**clean, 'scores': clean['scores'][:0]}, 0.0, config, reference, False)
  result = {'workdir': os.path.realpath(workdir), 'clean_per_folder': _CLEAN.value, 'folders': _FOLDERS.value,
            'model': _MODEL.value, 'alpha': config.predict.alpha, 'clean_alone': alone, 'cells': {}}
  lines = [f'Mixed folders, {workdir} ({_MODEL.value}, rule at alpha {config.predict.alpha}): '
           f'{_CLEAN.value} clean test cases + a share of one set, {_FOLDERS.value} folders per cell. '
           f'Clean folder alone: automation {100 * alone["clean_automation"]:.1f} %, failures among accepted '
           f'{100 * (alone["failures_among_accepted"] or 0):.1f} %.', '',
           '| set | share | policy | clean automation (%) | contaminants accepted (%) | failures among accepted (%) |',
           '|---|---|---|---|---|---|']
  for name in SETS:
    other = load(workdir, name)
    for share in SHARES:
      for bh in (False, True):
        c = cell(clean, other, share, config, reference, bh)
        result['cells'][f'{name}@{share}@{"bh" if bh else "suspend"}'] = c
        f = c['failures_among_accepted']
        lines.append(f'| {name} | {100 * share:g} % | {"bh" if bh else "suspend"} | '
                     f'{100 * c["clean_automation"]:.1f} | {100 * c["contaminants_accepted"]:.1f} | '
                     f'{"n/a" if f is None else f"{100 * f:.1f}"} |')
  artifacts.write_json(_OUT.value, result)
  artifacts.write_text(os.path.splitext(_OUT.value)[0] + '.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
