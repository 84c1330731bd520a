"""Tables in the layout of the paper's Table 1, for one run or many seeds.

One formatter serves both: each row holds a list of per-seed metric dicts;
one seed prints the value, several print mean +- std (sample std, ddof=1).
"""

from __future__ import annotations

import numpy as np

# (header, key inside the threshold block or top level, scale to %, lower is better)
COLUMNS = (
    ('RMSE', 'rmse', 1, True),
    ('Det. err (%)', 'detection_error', 100, True),
    ('AUROC (%)', 'auroc', 100, False),
    ('AUPR-Pass (%)', 'aupr_pass', 100, False),
    ('AUPR-Fail (%)', 'aupr_fail', 100, False),
    ('AURC', 'aurc', 1, True),
    ('E-AURC', 'e_aurc', 1, True),
    ('Spearman', 'spearman', 1, False),
)

ROW_NAMES = {
    ('msp', 'uncertainty'): 'Max probability',
    ('mc_dropout', 'uncertainty'): 'MC-dropout',
    ('hcnn', 'uncertainty'): 'HCNN',
    ('lce', 'uncertainty'): 'LCE',
    ('ensemble', 'uncertainty'): 'Deep ensemble',
    ('tta', 'uncertainty'): 'TTA',
    ('hierarchical', 'uncertainty'): 'Hierarchical',
}
BASELINE_NAMES = {'no_uncertainty': 'No uncertainty', 'qualitynet': 'QualityNet'}


def row_name(method: str, variant: str) -> str:
  """The Table 1 row of a quality model: its uncertainty method, or the baseline."""
  return ROW_NAMES.get((method, variant)) or BASELINE_NAMES[variant]


def threshold_title(key: str) -> str:
  """``'dice<0.8'`` -> ``'Dice < 0.8'``."""
  metric, threshold = key.split('<')
  return f'{metric.capitalize()} < {threshold}'


def _value(metrics: dict, key: str, threshold_key: str):
  return metrics[threshold_key][key] if key in metrics[threshold_key] else metrics[key]


def _cell(values: list, scale: float, digits: int) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return 'n/a'
  arr = np.asarray(values, float) * scale
  if len(arr) == 1:
    return f'{arr[0]:.{digits}f}'
  return f'{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}'


def table_markdown(rows: dict[str, list[dict]], threshold_key: str) -> str:
  """Markdown table: one row per quality model, columns as in Table 1 plus AURC.

  Args:
    rows: ``{row name: [metrics of seed 1, seed 2, ...]}`` (``quality_metrics.all_metrics`` dicts).
    threshold_key: which failure definition, e.g. ``'dice<0.8'``.
  """
  lines = ['| Method | ' + ' | '.join(c[0] for c in COLUMNS) + ' |',
           '|---|' + '---|' * len(COLUMNS)]
  for name, per_seed in rows.items():
    cells = [_cell([_value(m, key, threshold_key) for m in per_seed], scale, 3 if scale == 1 else 1)
             for _, key, scale, _ in COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
