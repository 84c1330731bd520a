"""Tables in the layout of the paper's Table 1, for one run or many seeds.

One formatter serves both: each row holds a list of per-seed metric dicts;
one seed prints the value, several print mean +- std (sample std, ddof=1).
The run record (``load_record`` ...) keeps those dicts of finished runs, so a
multi-seed table can be rebuilt after its run directories are gone.
"""

from __future__ import annotations

import os

import numpy as np

from segqual_jax.core import artifacts
from segqual_jax.metrics.quality import MIN_CLASS_CASES

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
BASELINE_NAMES = {'no_uncertainty': 'No uncertainty', 'qualitynet': 'QualityNet', 'rca': 'RCA'}
METHOD_NAMES = {method: name for (method, _), name in ROW_NAMES.items()}
SCORE_NAMES = {'pairwise_dice': 'pairwise Dice', 'samples_iou': 'IoU over samples',
               'area_cv': 'area CoV', 'map_mean': 'map mean', 'map_fg_mean': 'map foreground mean',
               'map_boundary_mean': 'map boundary mean', 'map_p95': 'map 95th percentile',
               'dice_with_f': 'Dice with the surrogate f', 'disagreement_mean': 'mean |mask - p_f|',
               'disagreement_fg_mean': 'mean |mask - p_f| over the mask'}
SCORE_NAMES.update({f'surrogate_{k}': f'surrogate {v}' for k, v in list(SCORE_NAMES.items())})
SCORE_NAMES.update({f'own_{k}': f'own {v}' for k, v in list(SCORE_NAMES.items()) if k.startswith('map')})


def segmenter_text(config) -> str:
  """Whose segmentations a run judges, in words (tables, metrics.json)."""
  if not config.external.predictions.strip():
    return f'f ({METHOD_NAMES[config.method]})'
  return (f'an outside model\'s, from {config.external.predictions} (surrogate f: '
          f'{METHOD_NAMES[config.method]}; g\'s map channels: {config.external.map_channels})')


def model_row(config, variant: str) -> str:
  """A run's table row of quality model ``variant``: ``row_name``, or for an outside model's
  segmentations a row that says what g saw (its map channels, not f's method)."""
  if not config.external.predictions.strip():
    return row_name(config.method, variant)
  surrogate = METHOD_NAMES[config.method]
  if variant == 'uncertainty':
    return f'Outside model, g with maps [{config.external.map_channels}] (surrogate {surrogate})'
  if variant == 'cheap_qc':
    return f'Outside model, cheap QC (surrogate {surrogate})'
  if variant == 'mean':
    return f'Outside model, mean of the quality models (surrogate {surrogate})'
  return f'Outside model, {BASELINE_NAMES[variant]}'


def score_row(config, score: str) -> str:
  """A run's table row of an image-level score used directly (``score_row_name``)."""
  if not config.external.predictions.strip():
    return score_row_name(config.method, score)
  return f'Outside model: {SCORE_NAMES.get(score, score)}'


def row_name(method: str, variant: str) -> str:
  """The table row of a quality model: its uncertainty method, the baseline, or cheap QC on the method's scores."""
  if variant == 'cheap_qc':
    return f'Cheap QC ({METHOD_NAMES[method]})'
  if variant == 'mean':
    return f'Mean of the quality models ({METHOD_NAMES[method]})'
  return ROW_NAMES.get((method, variant)) or BASELINE_NAMES[variant]


def score_row_name(method: str, score: str) -> str:
  """The row of an image-level score used directly: ``'MC-dropout: pairwise Dice'``."""
  return f'{METHOD_NAMES[method]}: {SCORE_NAMES.get(score, score)}'


def _accepted_text(test: dict) -> str:
  rate = test['accepted_failure_rate']
  return ('n/a (none accepted)' if rate is None else
          f"{100 * rate:.1f} % ({test['accepted_failures']}/{test['accepted']})")


def _unit(entries: dict) -> str:
  """The heading's note when the rules judge volumes (their cases are then whole volumes)."""
  if any(e.get('unit') == 'volume' for e in entries.values()):
    return '; per volume: calibration and test cases are whole volumes'
  return ''


def auto_accept_markdown(calibration: dict) -> str:
  """The calibrated auto-accept rules of one run and what they do on the test split
  (behind the applicability gate, and without it when the run has one)."""
  unit = _unit(calibration)
  lines = [f'### Calibrated auto-accept (test split, behind the applicability gate{unit})\n',
           '| Quality model | alpha | delta | threshold | calibration cases | test automation rate | '
           'test accepted-failure rate | without the gate: automation, accepted failures |',
           '|---|---|---|---|---|---|---|---|']
  for entry in calibration.values():
    for alpha, rule in entry['rules'].items():
      test, bare = rule['test'], rule.get('test_without_gate')
      threshold = 'none: review all' if rule['threshold'] is None else f"{rule['threshold']:.3f}"
      lines.append(f"| {entry['row']} | {alpha} | {entry['delta']} | {threshold} | "
                   f"{rule['calibration_cases']} | {100 * test['automation_rate']:.1f} % | "
                   f"{_accepted_text(test)} | "
                   + ('n/a' if bare is None else
                      f"{100 * bare['automation_rate']:.1f} %, {_accepted_text(bare)}") + ' |')
  return '\n'.join(lines) + '\n'


def intervals_markdown(intervals: dict) -> str:
  """Each model's conformal interval of the predicted Dice on the test split (behind the gate)."""
  ci = lambda v: '' if not v else f' [{100 * v[0]:.1f}, {100 * v[1]:.1f}]'
  wci = lambda v: '' if not v else f' [{v[0]:.3f}, {v[1]:.3f}]'
  lines = [f'### Interval of the predicted Dice (test split, behind the applicability gate{_unit(intervals)})\n',
           '| Quality model | interval | nominal | calibration cases | test cases | coverage (%) | mean width |',
           '|---|---|---|---|---|---|---|']
  for entry in intervals.values():
    for kind, k in entry['kinds'].items():
      cov = 'n/a' if k['coverage'] is None else f"{100 * k['coverage']:.1f}{ci(k['coverage_ci'])}"
      width = 'n/a' if k['mean_width'] is None else f"{k['mean_width']:.3f}{wci(k['mean_width_ci'])}"
      lines.append(f"| {entry['row']} | {kind} | {100 * (1 - entry['alpha']):g} % | {k['cases']} | "
                   f"{k['test_cases']} | {cov} | {width} |")
  return '\n'.join(lines) + '\n'


def applicability_markdown(gate: dict) -> str:
  """The applicability gate on the test split, in words."""
  batch = gate['batch_test']
  fail = lambda r: 'n/a' if r is None else f'{100 * r:.1f} %'
  return (f"### Applicability gate ({gate['score']}, review when p < {gate['ood_alpha']})\n\n"
          f"- test cases sent to review as unlike f's in-distribution cases: {gate['test_flagged']} "
          f"({100 * gate['test_flagged_share']:.1f} %); their failure rate {fail(gate['fail_rate_flagged'])}, "
          f"the others' {fail(gate['fail_rate_not_flagged'])}\n"
          f"- batch test of the whole test split against the "
          + (f"{batch['reference_volumes']} reference volumes (one statistic per volume, {batch['cases']} "
             "test volumes" if batch.get('unit') == 'volumes' else f"{gate['reference_cases']} reference cases (")
          + f"one-sided two-sample KS): D = {batch['statistic']:.3f}, p = {batch['pvalue']:.3g}\n")


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


def _interval_text(per_seed: list[dict], key: str, threshold_key: str, scale: float, digits: int) -> str:
  """`` [lo, hi]``: a one-seed row's 95 % bootstrap interval, if it has one."""
  if len(per_seed) != 1:
    return ''
  block = per_seed[0][threshold_key] if f'{key}_ci95' in per_seed[0][threshold_key] else per_seed[0]
  ci = block.get(f'{key}_ci95')
  return '' if not ci else f' [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]'


def small_sample_note(rows: dict[str, list[dict]], threshold_key: str) -> str:
  """A warning line when a row rests on fewer than ``MIN_CLASS_CASES`` failures or passes."""
  small = {name: m[threshold_key] for name, per_seed in rows.items() for m in per_seed
           if m[threshold_key].get('small_sample')}
  if not small:
    return ''
  block = next(iter(small.values()))
  return (f'\n**Small sample:** {block.get("failures")} failures ({threshold_title(threshold_key)}) '
          f'among the cases: fewer than {MIN_CLASS_CASES} failures or passes, so AUROC, AUPR and '
          'detection error rest on a handful of cases; read the intervals, not the point values.\n')


def table_markdown(rows: dict[str, list[dict]], threshold_key: str) -> str:
  """Markdown table: one row per quality model, columns as in Table 1 plus AURC.

  A one-seed row shows AUROC and AURC with their 95 % bootstrap interval; a
  table resting on few failures ends with a warning.

  Args:
    rows: ``{row name: [metrics of seed 1, seed 2, ...]}`` (``quality_metrics.all_metrics`` dicts).
    threshold_key: which failure definition, e.g. ``'dice<0.8'``.
  """
  lines = ['| Method | ' + ' | '.join(c[0] for c in COLUMNS) + ' |',
           '|---|' + '---|' * len(COLUMNS)]
  for name, per_seed in rows.items():
    cells = []
    for _, key, scale, _ in COLUMNS:
      digits = 3 if scale == 1 else 1
      cells.append(_cell([_value(m, key, threshold_key) for m in per_seed], scale, digits)
                   + _interval_text(per_seed, key, threshold_key, scale, digits))
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n' + small_sample_note(rows, threshold_key)


def auto_accept_seeds_markdown(rules: dict[tuple[str, str], list[dict]]) -> str:
  """Calibrated auto-accept over seeds: ``{(row, alpha): [rule of seed 1, ...]}`` -> a table.

  Test automation rate and accepted-failure rate as mean +- std over the
  seeds, and how many seeds broke the promise on the test split (a realised
  rate above alpha; the guarantee is on the population rate, so a finite
  test split can do that with no fault in the rule).
  """
  lines = ['Calibrated auto-accept on the test split (thresholds chosen on the calibration cases):\n',
           '| Quality model | alpha | seeds accepting anything | test automation rate (%) | '
           'test accepted-failure rate (%) | seeds with realised rate > alpha |',
           '|---|---|---|---|---|---|']
  for (row, alpha), per_seed in rules.items():
    tests = [r['test'] for r in per_seed]
    rates = [t['accepted_failure_rate'] for t in tests]
    over = sum(r is not None and r > float(alpha) for r in rates)
    lines.append(f'| {row} | {alpha} | {sum(t["accepted"] > 0 for t in tests)}/{len(tests)} | '
                 f'{_cell([t["automation_rate"] for t in tests], 100, 1)} | {_cell(rates, 100, 1)} | '
                 f'{over}/{len(tests)} |')
  return '\n'.join(lines) + '\n'


def load_record(path: str) -> dict:
  """The run record at ``path`` (``{}`` if there is none yet); see ``recorded_result``."""
  return artifacts.read_json(path) if path and os.path.exists(path) else {}


def recorded_result(record: dict, key: str, identity: dict) -> dict | None:
  """The stored result of run ``key`` produced by the same ``identity``, else None.

  Why a record: a multi-seed table on real data takes longer than one
  session here, and run directories do not outlive a session. The record,
  a small JSON of each finished run's metrics kept in the repository next
  to the table, lets a later invocation rebuild the table without redoing
  the runs. ``identity`` (config, seed, quality models, overrides) must match
  exactly, so a changed command never reuses a stale result; one run key may
  hold several identities (e.g. the MSP run with and without RCA).
  """
  for entry in record.get(key, []):
    if entry['identity'] == identity:
      return entry['result']
  return None


def store_result(path: str, record: dict, key: str, identity: dict, result: dict) -> None:
  """Stores run ``key``'s result under its identity and rewrites the file at once (a later crash loses no run)."""
  others = [e for e in record.get(key, []) if e['identity'] != identity]
  record[key] = others + [{'identity': identity, 'result': result}]
  artifacts.write_json(path, dict(sorted(record.items())))
