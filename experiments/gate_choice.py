"""How the applicability gate's settings were chosen: on the DEV suites only.

  python experiments/gate_choice.py --workdirs=runs/shift/isic2017/seed0,runs/shift/isic2017/seed1,runs/shift/isic2017/seed2

Needs each run's dev suite (``experiments/shift.py --suite=dev``: corrupted
copies of the run's calibration cases, the synthetic generator's images,
uniform noise and flat colour; f's outputs cached in ``<run>/shift/dev__*``)
and its quality split's f outputs. Refits the per-level score on the run's
fitting cases with two ways of standardising a level's distance -- by the
mean and deviation of the out-of-fold distances, or by their median and 99th
percentile (``applicability.TAIL_PERCENTILE``) -- and reports, per
``ood_alpha``, the share of each dev set the gate flags (mean over runs, and
the lowest run in brackets). Nothing here reads a test split.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.core import keys  # noqa: E402
from segqual_jax.quality import applicability as ap, auto_accept  # noqa: E402

_WORKDIRS = flags.DEFINE_list('workdirs', [], 'Runs with a dev suite (ISIC 2017 msp, calibration 0.3).')
_LEVELS = flags.DEFINE_list('levels', ['32', '64', '128', '256', '512'], 'Feature count per encoder level.')
SETS = ('clean', 'noise_3', 'brightness_1', 'brightness_2', 'contrast_3', 'jpeg_3',
        'far__synthetic_generator', 'far__uniform_noise', 'far__flat_colour')


def fit_variant(fit_features, ref_features, levels, mode):
  """``(score, pvalues)`` of the per-level score with ``mode`` standardisation."""
  x = ap._transform(fit_features)  # pylint: disable=protected-access
  bounds = np.cumsum((0,) + levels)
  folds = np.array_split(np.random.default_rng([0, keys.APPLICABILITY_SPLIT]).permutation(len(x)), 5)
  gaussians, stats = [], []
  for a, b in zip(bounds[:-1], bounds[1:]):
    oof = np.zeros(len(x))
    for fold in folds:
      keep = np.setdiff1d(np.arange(len(x)), fold)
      oof[fold] = ap._Gaussian.fit(x[keep, a:b]).distance(x[fold, a:b])  # pylint: disable=protected-access
    gaussians.append(ap._Gaussian.fit(x[:, a:b]))  # pylint: disable=protected-access
    median = np.median(oof)
    stats.append((oof.mean(), oof.std()) if mode == 'mean/deviation' else
                 (median, np.percentile(oof, 99) - median))

  def score(features):
    xx = ap._transform(features)  # pylint: disable=protected-access
    return np.max([(g.distance(xx[:, a:b]) - m) / s for g, a, b, (m, s)
                   in zip(gaussians, bounds[:-1], bounds[1:], stats)], axis=0)
  refs = np.sort(score(ref_features))
  return score, lambda s: (1 + len(refs) - np.searchsorted(refs, s, side='left')) / (len(refs) + 1)


def main(argv):
  del argv
  levels = tuple(int(v) for v in _LEVELS.value)
  flagged = {}
  for workdir in _WORKDIRS.value:
    quality = np.load(os.path.join(workdir, 'quality', 'f_outputs', 'quality.npz'))['features']
    _, rest = auto_accept.calibration_indices(len(quality), 0.3, 0)
    fit_i, ref_i = ap.split_indices(len(rest), 0.3, 0)
    sets = {n: np.load(os.path.join(workdir, 'shift', f'dev__{n}.npz'))['features'] for n in SETS}
    for mode in ('mean/deviation', 'median/99th percentile'):
      score, pvalues = fit_variant(quality[rest][fit_i], quality[rest][ref_i], levels, mode)
      for alpha in (0.01, 0.02, 0.03):
        flagged.setdefault((mode, alpha), []).append([np.mean(pvalues(score(sets[n])) < alpha) for n in SETS])
  print(f'Share of each dev set the gate flags (%), mean over {len(_WORKDIRS.value)} runs (lowest run in brackets)\n')
  print('| standardisation | ood_alpha | ' + ' | '.join(SETS) + ' |')
  print('|---|---|' + '---|' * len(SETS))
  for (mode, alpha), rows in flagged.items():
    v = 100 * np.asarray(rows)
    print(f'| {mode} | {alpha} | ' + ' | '.join(f'{m:.1f} ({w:.0f})' for m, w in zip(v.mean(0), v.min(0))) + ' |')


if __name__ == '__main__':
  app.run(main)
