"""The evaluation per patient of a volume data set: the user's unit beside the slice-level table.

The test slices' results are gathered back into their volumes (``quality/volume.py``). The
true volume Dice is measured on the volume's own grid: f's slice masks are resized back
onto it and compared with the label file itself, so the 64-px slices do not flatter (or
punish) f. Every quality model's slice predictions give a predicted volume Dice; the same
metrics as the slice table (AUROC at Dice < ``eval.fail_dice``, Spearman, RMSE, AURC, with
95 % bootstrap intervals over volumes) are computed over the volumes.
"""

from __future__ import annotations

import numpy as np

from segqual_jax.metrics import overlap, quality as quality_metrics
from segqual_jax.quality import volume


def on_test(config, vols: volume.Volumes, outputs, true_masks: np.ndarray) -> dict:
  """``{'volumes', 'mean_dice', 'mean_dice_model_grid', 'quality_models', 'rows'}`` of the test
  split, from its slices gathered into volumes (``volume.as_volumes``)."""
  cases, groups, true = vols.cases, vols.groups, vols.true
  n = len(cases)
  model_grid = volume.true_dice(outputs.masks, true_masks, groups, n)
  fail_d, fail_j = config.eval.fail_dice, config.eval.fail_jaccard
  models, rows = {}, {c: {'case': c, 'slices': int(np.sum(groups == g)), 'true_dice': round(float(true[g]), 5),
                          'true_dice_model_grid': round(float(model_grid[g]), 5)} for g, c in enumerate(cases)}
  for name, vol in vols.predicted.items():
    models[name] = quality_metrics.all_metrics(vol, true, overlap.jaccard_from_dice(true), 'dice', fail_d, fail_j)
    for g, c in enumerate(cases):
      rows[c][f'predicted[{name}]'] = round(float(vol[g]), 5)
  return {'volumes': n, 'mean_dice': float(true.mean()), 'mean_dice_model_grid': float(model_grid.mean()),
          'fail_rate': float(np.mean(true < fail_d)), 'quality_models': models, 'rows': list(rows.values())}


def markdown(result: dict, fail_dice: float, table_markdown) -> str:
  """The per-volume section of ``table.md`` (``table_markdown``: the slice table's renderer)."""
  key = f'dice<{fail_dice}'
  return (f'\n## Per patient ({result["volumes"]} test volumes; the user\'s unit)\n\n'
          f'Mean volume Dice {result["mean_dice"]:.3f} on the volumes\' own grid '
          f'({result["mean_dice_model_grid"]:.3f} on the slices at the model\'s size); '
          f'{100 * result["fail_rate"]:.1f} % of volumes with Dice < {fail_dice}. '
          'Predicted volume Dice: the slices\' predictions weighted by f\'s lesion area, with the '
          'lesion f probably missed on its empty slices (quality/volume.py).\n\n'
          + table_markdown({n: [m] for n, m in result['quality_models'].items()}, key)
          + '\n## Per slice\n')
