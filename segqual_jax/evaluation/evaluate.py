"""Evaluation: every quality model of a run on the test split, and its outputs.

Writes to ``<workdir>/``:
* ``metrics.json`` -- stable schema (``schema_version`` 1): run identity, f's
  test-split segmentation summary, and per quality model (named by its Table 1
  row) every metric of ``metrics.quality.all_metrics`` (AUROC and AURC with
  95 % bootstrap intervals); the applicability gate on the test split (the
  share it sends to review, the batch test); with a calibrated run, what
  stage 2's auto-accept rules do on the test split behind the gate and
  without it;
* ``table.md`` -- Table 1 layout, for Dice < 0.8 and for Jaccard < 0.7;
* ``predictions.csv`` -- per test case: true Dice/Jaccard and each model's prediction;
* ``scatter.png``, ``uncertainty_maps.png``, ``risk_coverage.png``.
Every file is written atomically. Each quality model is loaded (through
``quality.registry``, not its trainer) and compiled once.
"""

from __future__ import annotations

import csv
import io
import logging
import os

import numpy as np

from segqual_jax.config import stages
from segqual_jax.core import artifacts, errors, parallel, values, workdir as run_dirs
from segqual_jax.data import loading
from segqual_jax.evaluation import figures, report, volume_table
from segqual_jax.metrics import overlap
from segqual_jax.metrics import quality as quality_metrics
from segqual_jax.quality import applicability, error_map, interval as intervals, policy, registry, volume
from segqual_jax.segmenter import judged, runner

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def score_metrics(config, outputs) -> dict[str, dict]:
  """Every image-level score used directly as the quality score (no g): its metrics.

  RMSE is left out (None): a score is not an estimate of Dice or Jaccard,
  only an ordering, which every other metric judges.
  """
  out = {}
  for name, values in sorted(outputs.scores.items()):
    metrics = quality_metrics.all_metrics(values, outputs.dice, outputs.jaccard, config.quality.target,
                                          config.eval.fail_dice, config.eval.fail_jaccard)
    metrics['rmse'] = None
    out[report.score_row(config, name)] = metrics
  return out


def stored_rules(config, workdir: str) -> dict:
  """Stage 2's calibrated rules, made with the configured settings.

  Raises ``ConfigError`` when the run is configured for calibration but has no
  rules (or rules made with other settings): a calibrated promise must never be
  replaced silently.
  """
  path = run_dirs.calibration_file(workdir)
  stored = artifacts.read_json(path) if os.path.exists(path) else None
  if (stored is None or not values.same(stored['settings'], stages.calibration_settings(config))
      or not set(stages.quality_model_names(config)) <= set(stored['models'])):
    raise errors.ConfigError(f'{path}: no auto-accept rules for the configured quality models and '
                             'calibration settings; '
                             'run --mode=train_quality (it calibrates without retraining)')
  return stored


def auto_accept_on_test(config, stored: dict, predicted_test: dict[str, np.ndarray],
                        true_dice: np.ndarray, pvalues: np.ndarray | None = None) -> dict:
  """What each model's calibrated rules (``stored_rules``) do on the test split, behind the
  applicability gate as predict applies them (``test``), and without it (``test_without_gate``).
  The cases are the rules' unit: test cases, or test volumes (``quality/volume.as_volumes``)."""
  failed = np.asarray(true_dice) < config.eval.fail_dice
  out = {}
  for name in stages.quality_model_names(config):
    entry = stored['models'][name]
    row = report.model_row(config, name)
    rules = {alpha: {**rule, 'test': policy.realised(predicted_test[row], failed, rule['threshold'],
                                                     pvalues, config.predict.ood_alpha),
                     'test_without_gate': policy.realised(predicted_test[row], failed,
                                                          rule['threshold'])}
             for alpha, rule in entry['rules'].items()}
    out[name] = {'row': row, 'delta': entry['delta'], 'fail_dice': entry['fail_dice'], 'rules': rules,
                 'unit': stored.get('unit', 'case')}
  return out


def intervals_on_test(config, stored: dict, predicted_test: dict[str, np.ndarray], true_dice: np.ndarray,
                      pvalues: np.ndarray | None = None, target: str | None = None) -> dict:
  """Each model's conformal interval of the predicted Dice (``quality/interval.py``, fitted on
  its stored calibration cases at ``predict.interval_alpha``) on the test cases the gate lets
  through, as predict gives it: coverage of the true Dice and mean width, with 95 % bootstrap
  intervals, for the scaled interval and the constant-width one of the same cases."""
  keep = policy.let_through(pvalues, config.predict.ood_alpha, len(true_dice))
  out = {}
  for name in stages.quality_model_names(config):
    entry, row = stored['models'][name], report.model_row(config, name)
    dice = np.asarray(overlap.as_dice(np.asarray(predicted_test[row], np.float64), target or config.quality.target))
    true = np.asarray(true_dice, np.float64)
    kinds = {}
    for kind in intervals.KINDS:
      fitted, _ = intervals.from_calibration(entry, kind, config.predict.interval_alpha,
                                             config.predict.interval_floor, config.calibration.fraction)
      if fitted is None:
        continue
      low, high = fitted.bounds(dice[keep])
      inside = ((true[keep] >= low) & (true[keep] <= high)).astype(float)
      width = high - low
      kinds[kind] = {**fitted.to_json(), 'test_cases': int(keep.sum()),
                     'coverage': float(inside.mean()) if keep.any() else None,
                     'coverage_ci': quality_metrics.mean_interval(inside),
                     'mean_width': float(width.mean()) if keep.any() else None,
                     'mean_width_ci': quality_metrics.mean_interval(width)}
    out[name] = {'row': row, 'alpha': config.predict.interval_alpha, 'kinds': kinds,
                 'unit': stored.get('unit', 'case')}
  return out


def error_map_on_test(config, workdir: str, test, outputs) -> dict | None:
  """The run's error map on the test split: pixel AUROC for the pixels where the segmentation
  under review is wrong, beside the uncertainty map's (None without an error map)."""
  fitted = error_map.for_run(config, workdir)
  if fitted is None:
    return None
  errors = error_map.errors_of(outputs.masks, test.masks)
  predicted = fitted.predict(error_map.pixel_features(test.images, outputs.masks, outputs.probs, outputs.maps))
  return {'error_pixels': float(errors.mean()),
          'error_map_auroc': error_map.pixel_auroc(predicted, errors),
          'uncertainty_map_auroc': error_map.pixel_auroc(error_map.uncertainty_of(outputs.maps), errors)}


def applicability_on_test(config, score: applicability.Applicability, outputs,
                          ids=None) -> tuple[dict, np.ndarray]:
  """The gate on the (in-distribution) test split: ``(summary, p-values)``; the summary holds
  the share it sends to review, those cases' failure rate and the batch test (of the test
  volumes, one statistic each, when ``ids`` are slices of volumes whose reference is known)."""
  batch = None
  if ids is not None and config.data.name == 'nnunet':
    if (inputs := applicability.volume_batch_inputs(score, outputs.features, volume.groups_of(ids)[1])):
      batch = {**applicability.batch_test(*inputs), 'unit': 'volumes', 'reference_volumes': len(inputs[1])}
  if batch is None:
    batch = applicability.batch_test(score.batch_score(outputs.features), score.batch_references)
  scores = score.score(outputs.features)
  pvalues = score.pvalues(scores)
  flagged = policy.flagged(pvalues, config.predict.ood_alpha)
  failed = outputs.dice < config.eval.fail_dice
  return {'score': config.applicability.score, 'ood_alpha': config.predict.ood_alpha,
          'reference_cases': int(len(score.reference_scores)),
          'test_flagged': int(flagged.sum()), 'test_flagged_share': float(flagged.mean()),
          'fail_rate_flagged': float(failed[flagged].mean()) if flagged.any() else None,
          'fail_rate_not_flagged': float(failed[~flagged].mean()) if (~flagged).any() else None,
          'batch_test': batch}, pvalues


def evaluate(config, workdir: str) -> dict:
  """Evaluates every configured quality model on the test split; returns metrics.json's content.

  Skipped when ``metrics.json`` exists and has every configured quality
  model (delete it to evaluate again). A configured model missing from it
  makes the run evaluate again, so adding a model to a finished run (e.g.
  RCA beside the g's already trained) reaches its metrics instead of being
  silently skipped; the trained models are not retrained. Rows of models no
  longer configured are kept until then: dropping a model from the list
  does not throw away its (possibly costly) results.
  """
  metrics_path = run_dirs.metrics_file(workdir)
  names = stages.quality_model_names(config)
  wanted = {report.model_row(config, v) for v in names}
  if (done := run_dirs.completed(metrics_path, 'evaluation',
                                 lambda metrics: wanted <= set(metrics['quality_models']))) is not None:
    return done
  run_dirs.require_seg(workdir)
  parallel.check_batch_size(config.seg.eval_batch_size, 'config.seg.eval_batch_size')
  parallel.check_batch_size(config.quality.eval_batch_size, 'config.quality.eval_batch_size')
  stages.check_matches_run(run_dirs.seg_dir(workdir), config, 'seg')
  models_by_row = {}
  for name in names:  # every check before the (slow) pass of f over the test split
    stages.check_matches_run(run_dirs.quality_dir(workdir, name), config, stages.quality_stage(name))
    models_by_row[report.model_row(config, name)] = registry.load(config, workdir, name)
  rules = stored_rules(config, workdir) if config.calibration.fraction > 0 else None
  score = applicability.load(config, workdir)
  judged_test = judged.judged(config, workdir, loading.load_splits(config.data, names=('test',))['test'])
  test, outputs = judged_test.split, judged_test.outputs
  gate, pvalues = (applicability_on_test(config, score, outputs, runner.case_ids(test)) if score is not None
                   else (None, None))
  predicted = {row: registry.predict_cases(model, test.images, outputs, config.quality.eval_batch_size)
               for row, model in models_by_row.items()}

  fail_d, fail_j = config.eval.fail_dice, config.eval.fail_jaccard
  models = {name: quality_metrics.all_metrics(pred, outputs.dice, outputs.jaccard,
                                              config.quality.target, fail_d, fail_j)
            for name, pred in predicted.items()}
  scores = score_metrics(config, outputs)
  # Volumes: the test slices gathered once (their own-grid truth read once) for the table
  # per patient and for rules calibrated on volumes.
  vols = (volume.as_volumes(config, runner.case_ids(test), outputs.masks, predicted, config.quality.target,
                            pvalues) if config.data.name == 'nnunet' else None)
  calibration = interval_result = None
  if rules:
    on = (predicted, outputs.dice, pvalues, config.quality.target)
    if rules.get('unit') == 'volume':  # the rules judge volumes: so are they tested
      on = (vols.predicted, vols.true, vols.pvalues, 'dice')
    calibration = auto_accept_on_test(config, rules, *on[:3])
    interval_result = intervals_on_test(config, rules, *on)
  errors_on_test = error_map_on_test(config, workdir, test, outputs)
  per_volume = volume_table.on_test(config, vols, outputs, test.masks) if vols is not None else None
  seg = outputs.summary(fail_d)
  seg[f'fail_rate_jaccard_{fail_j}'] = float(np.mean(outputs.jaccard < fail_j))
  result = {
      'schema_version': SCHEMA_VERSION,
      'method': config.method, 'seed': config.seed,
      'data': {'name': config.data.name, 'seed': config.data.seed,
               'image_size': config.data.image_size, 'split': 'test'},
      'segmenter': report.segmenter_text(config),
      'label_resolution': config.quality.label_resolution,
      'quality_target': config.quality.target,
      'label_source': config.quality.label_source,
      'segmentation': seg,
      'quality_models': models,
      'scores': scores,  # image-level scores used directly as quality scores (no g)
  }
  if judged_test.dropped:  # test cases without a usable segmentation under review
    result['dropped_cases'] = judged_test.dropped
  if gate is not None:
    result['applicability'] = gate
  if calibration is not None:
    result['auto_accept'] = calibration
  if interval_result is not None:
    result['intervals'] = interval_result
  if errors_on_test is not None:
    result['error_map'] = errors_on_test
  if per_volume is not None:
    result['per_volume'] = per_volume

  text = write_table(config, workdir, result, len(test))
  write_predictions_csv(workdir, test, outputs, predicted)
  write_figures(config, workdir, test, outputs, predicted)
  artifacts.write_json(metrics_path, result)  # last: its presence marks the stage complete
  log.info('evaluation written to %s\n%s', workdir, text)
  return result


def write_table(config, workdir: str, result: dict, num_cases: int) -> str:
  """``table.md``: Table 1 for both failure definitions, the score rows and the rules; returns it."""
  models, scores, seg = result['quality_models'], result['scores'], result['segmentation']
  keys = [f'dice<{config.eval.fail_dice}', f'jaccard<{config.eval.fail_jaccard}']
  table = (volume_table.markdown(result['per_volume'], config.eval.fail_dice, report.table_markdown)
           if 'per_volume' in result else '')
  table += ''.join(f'\n### Failure = {report.threshold_title(k)} (fail rate {100 * models[next(iter(models))][k]["fail_rate"]:.1f} %)\n\n'
                  + report.table_markdown({n: [m] for n, m in models.items()}, k) for k in keys)
  if scores:
    table += (f'\n### Image-level scores as quality scores (no g), failure = {report.threshold_title(keys[0])}\n\n'
              + report.table_markdown({n: [m] for n, m in scores.items()}, keys[0]))
  if 'applicability' in result:
    table += '\n' + report.applicability_markdown(result['applicability'])
  if 'auto_accept' in result:
    table += '\n' + report.auto_accept_markdown(result['auto_accept'])
  if 'intervals' in result:
    table += '\n' + report.intervals_markdown(result['intervals'])
  if 'error_map' in result:
    e = result['error_map']
    table += ('\n### Error map (pixels where the segmentation under review is wrong, test split)\n\n'
              f"Pixel AUROC pooled over the test pixels ({100 * e['error_pixels']:.1f} % wrong): "
              f"error map {100 * e['error_map_auroc']:.1f} %, uncertainty map {100 * e['uncertainty_map_auroc']:.1f} %.\n")
  dropped = result.get('dropped_cases', {})
  header = (f'# {config.method}, seed {config.seed}: quality prediction on the test split '
            f'({num_cases} cases, {config.data.name} data)\n\n'
            f'Segmentations judged: {result["segmenter"]}'
            + (f' ({len(dropped)} test cases without one left out, listed in metrics.json)' if dropped else '')
            + f'; true overlaps at the {config.quality.label_resolution} resolution.\n'
            f'Mean Dice {seg["mean_dice"]:.3f}, mean Jaccard {seg["mean_jaccard"]:.3f}; '
            f'g predicts {config.quality.target}, trained on {config.quality.label_source} cases.\n')
  artifacts.write_text(os.path.join(workdir, 'table.md'), header + table)
  return header + table


def write_predictions_csv(workdir: str, test, outputs, predicted: dict[str, np.ndarray]) -> None:
  """``predictions.csv``: per test case its id, true Dice/Jaccard and every model's prediction."""
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['case', 'id', 'true_dice', 'true_jaccard', *[f'predicted[{n}]' for n in predicted]])
  for i, case_id in enumerate(runner.case_ids(test)):
    writer.writerow([i, case_id, f'{outputs.dice[i]:.5f}', f'{outputs.jaccard[i]:.5f}',
                     *[f'{p[i]:.5f}' for p in predicted.values()]])
  artifacts.write_text(os.path.join(workdir, 'predictions.csv'), buf.getvalue())


def write_figures(config, workdir: str, test, outputs, predicted: dict[str, np.ndarray]) -> None:
  """``scatter.png``, ``uncertainty_maps.png`` and ``risk_coverage.png``."""
  fail_d, fail_j = config.eval.fail_dice, config.eval.fail_jaccard
  true_target = outputs.jaccard if config.quality.target == 'jaccard' else outputs.dice
  equivalent = overlap.jaccard_from_dice(fail_d) if config.quality.target == 'jaccard' else fail_d
  thresholds = [(f'Dice {fail_d}', equivalent)]
  if config.quality.target == 'jaccard':
    thresholds.append((f'Jaccard {fail_j}', fail_j))
  figures.scatter(os.path.join(workdir, 'scatter.png'), true_target, predicted,
                  config.quality.target, thresholds)
  figures.uncertainty_maps(os.path.join(workdir, 'uncertainty_maps.png'), test.images, test.masks,
                           outputs.masks, outputs.maps if outputs.maps.ndim == 3 else outputs.maps[..., 0],
                           outputs.dice,
                           config.eval.num_figure_cases, fail_d)
  figures.risk_coverage(os.path.join(workdir, 'risk_coverage.png'), predicted, 1.0 - outputs.dice)
