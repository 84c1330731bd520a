"""Where f's volume Dice is lost, on the quality patients (never the test list).

  python experiments/volume_anatomy.py --workdir=runs/lgg/seed0 --config=configs/lgg.py

Per quality-split patient, at the model's slice size: the volume Dice of f's slice masks,
its false-positive voxels (and those on slices without lesion), its false negatives (and
those on slices where f found nothing), and the Dice if only f's largest 3D connected
component were kept (nnU-Net's usual post-processing), to tell whether a post-processing
step or f itself is what stands between f and the bar.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.core import workdir as run_dirs  # noqa: E402
from segqual_jax.data import loading  # noqa: E402
from segqual_jax.quality import volume  # noqa: E402
from segqual_jax.segmenter import runner  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config (configs/lgg.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A volume run trained through stage 2.')


def largest_component(mask: np.ndarray) -> np.ndarray:
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask
  sizes = ndimage.sum(mask, labels, range(1, n + 1))
  return labels == 1 + int(np.argmax(sizes))


def main(argv):
  del argv
  quality = loading.load_splits(_CONFIG.value.data, names=('quality',))['quality']
  with np.load(os.path.join(run_dirs.f_outputs_dir(_WORKDIR.value), 'quality.npz')) as f:
    predicted = f['masks'].astype(bool)
  truth = quality.masks.astype(bool)
  cases, groups = volume.groups_of(runner.case_ids(quality))
  print('| patient | Dice | Dice, largest component | FP (on lesion-free slices) | FN (on slices f left empty) |')
  print('|---|---|---|---|---|')
  dice, dice_cc, fp_all, fn_all = [], [], 0, 0
  for g, case in enumerate(cases):
    p, t = predicted[groups == g], truth[groups == g]
    free, empty = ~t.reshape(len(t), -1).any(1), ~p.reshape(len(p), -1).any(1)
    fp, fn = p & ~t, ~p & t
    dice.append(volume.dice(p, t))
    dice_cc.append(volume.dice(largest_component(p), t))
    fp_all, fn_all = fp_all + fp.sum(), fn_all + fn.sum()
    print(f'| {case} | {dice[-1]:.3f} | {dice_cc[-1]:.3f} | {fp.sum()} ({fp[free].sum()}) | '
          f'{fn.sum()} ({fn[empty].sum()}) |')
  print(f'\nMean volume Dice {np.mean(dice):.3f}; keeping the largest component {np.mean(dice_cc):.3f}; '
        f'false-positive voxels {fp_all}, false-negative {fn_all}; volumes with Dice < 0.1: '
        f'{int(np.sum(np.asarray(dice) < 0.1))} of {len(cases)}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
