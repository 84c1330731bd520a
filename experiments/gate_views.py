"""Which views should the applicability gate and its batch test use? Measured on the dev suite.

  python experiments/gate_views.py --workdir=runs/clinical/seed0 --out=experiments/shift/gate_views_dev_seed0.md

Reads the run's dev shift suite (``experiments/shift.py --suite=dev``: the
calibration cases, their corruptions, the far sets -- never the test split),
fits the gate exactly as stage 2 does (same fitting and reference cases) on
each candidate set of feature blocks (``runner.feature_blocks``; the image statistics on
``applicability.image_fit``'s images, as stage 2), and prints
the share of each set sent to review at ``predict.ood_alpha``; then, for the batch test,
the share of simulated runs of each set the KS test rejects beside each set's true failure
rate (a batch test should stop the runs that raise f's failures, not the ones that merely
look different).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.quality import applicability, auto_accept  # noqa: E402
from segqual_jax.segmenter import runner  # noqa: E402
from segqual_jax.training import train_quality  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run with its dev shift suite.')
_OUT = flags.DEFINE_string('out', None, 'Markdown table.')
_RUN_CASES = flags.DEFINE_integer('run_cases', 40, 'Cases per simulated run of the batch-test table.')
_RUNS = flags.DEFINE_integer('runs', 200, 'Simulated runs per set of the batch-test table.')
SETS = ('clean', 'blur_3', 'noise_1', 'noise_3', 'brightness_1', 'contrast_3', 'jpeg_3',
        'far__kvasir_seg', 'far__synthetic_generator', 'far__uniform_noise', 'far__flat_colour')
VIEWS = ('encoder', 'encoder,texture', 'encoder,layout', 'encoder,texture,layout', 'encoder,colour,texture,layout',
         'encoder,tone', 'encoder,texture,tone', 'encoder,texture,layout,tone', 'encoder,tone+texture',
         'encoder,tone+texture,layout', 'encoder,encoder_grid', 'encoder,encoder_grid,texture,layout',
         'encoder,encoder_grid,tone+texture', 'encoder,encoder_grid,tone+texture,layout',
         'encoder_grid', 'colour', 'texture', 'layout', 'tone', 'tone+texture', 'tone+texture,layout',
         'tone+texture,encoder_grid', 'tone+texture,layout,encoder_grid', 'tone+texture+layout')
BATCH_VIEWS = ('encoder,texture,layout', 'encoder,tone+texture,layout', 'encoder', 'encoder,encoder_grid',
               'encoder,layout')  # the batch test's


def main(argv):
  del argv
  workdir = _WORKDIR.value
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  if config.data.name == 'nnunet':
    raise SystemExit(f'{workdir}: a volume run; this experiment measures cases of 2D data sets')
  quality = np.load(os.path.join(workdir, 'quality', 'f_outputs', 'quality.npz'))['features']
  _, rest = auto_accept.calibration_indices(len(quality), config.calibration.fraction, config.data.seed)
  features = quality[rest]  # stage 2's non-calibration cases, split as it splits them
  a = config.applicability
  fit_idx, ref_idx = applicability.split_indices(len(features), a.reference_fraction, config.data.seed)
  block_fit = train_quality.image_block_fit(config)
  loaded = {n: np.load(os.path.join(workdir, 'shift', f'dev__{n}.npz')) for n in SETS}
  sets = {n: z['features'] for n, z in loaded.items()}
  failures = {n: 100 * np.mean(z['dice'] < config.eval.fail_dice) if 'dice' in z.files and z['dice'].size else None
              for n, z in loaded.items()}
  width = sum(runner.feature_levels(config.seg))
  if any(x.shape[1] != width for x in (quality, *sets.values())):
    raise SystemExit(f'{workdir}: cached features predate these image statistics ({width} columns '
                     'now): run --mode=train_quality and experiments/shift.py --suite=dev first')
  lines = [f'Gate views on the dev suite of {workdir}: % sent to review at p < {config.predict.ood_alpha} '
           f'({len(fit_idx)} fitting, {len(ref_idx)} reference cases).', '',
           '| views | ' + ' | '.join(SETS) + ' |', '|---|' + '---|' * len(SETS)]
  for views in VIEWS:
    score = applicability.fit(a.score, features[fit_idx], features[ref_idx], a.knn_k,
                              runner.feature_levels(config.seg), config.data.seed,
                              runner.feature_blocks(config.seg, views), block_fit)
    shares = [100 * np.mean(score.pvalues(score.score(sets[n])) < config.predict.ood_alpha) for n in SETS]
    lines.append(f'| {views} | ' + ' | '.join(f'{s:.1f}' for s in shares) + ' |')
  lines += ['', f'Batch test (one-sided two-sample KS at p < {config.predict.shift_alpha}) on runs of '
            f'{_RUN_CASES.value} cases drawn from each set ({_RUNS.value} seeded runs per set): % of runs '
            'rejected. A shift that does not raise f\'s failures (first row) should pass, one that does '
            'should not.', '',
            '| views | ' + ' | '.join(SETS) + ' |', '|---|' + '---|' * len(SETS),
            '| true failures (%) | ' + ' | '.join('n/a' if failures[n] is None else f'{failures[n]:.1f}'
                                              for n in SETS) + ' |']
  rng = np.random.default_rng([config.data.seed, 24])
  for views in BATCH_VIEWS:
    score = applicability.fit(a.score, features[fit_idx], features[ref_idx], a.knn_k,
                              runner.feature_levels(config.seg), config.data.seed,
                              runner.feature_blocks(config.seg, views), block_fit)
    shares = []
    for n in SETS:
      values = score.score(sets[n])
      runs = [values[rng.choice(len(values), min(_RUN_CASES.value, len(values)), replace=False)]
              for _ in range(_RUNS.value)]
      shares.append(100 * np.mean([applicability.batch_test(r, score.reference_scores)['pvalue']
                                   < config.predict.shift_alpha for r in runs]))
    lines.append(f'| {views} | ' + ' | '.join(f'{s:.0f}' for s in shares) + ' |')
  text = '\n'.join(lines) + '\n'
  artifacts.write_text(_OUT.value, text)
  print(text)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
