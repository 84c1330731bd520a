"""Evaluation: every quality model of a run on the test split, and its outputs.

Writes to ``<workdir>/``:
* ``metrics.json`` -- stable schema (``schema_version`` 1): run identity, f's
  test-split segmentation summary, and per quality model (named by its Table 1
  row) every metric of ``quality_metrics.all_metrics``;
* ``table.md`` -- Table 1 layout, for Dice < 0.8 and for Jaccard < 0.7;
* ``predictions.csv`` -- per test case: true Dice/Jaccard and each model's prediction;
* ``scatter.png``, ``uncertainty_maps.png``, ``risk_coverage.png``.
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import os

import jax
import numpy as np

from segqual_jax import artifacts, parallel, runtime
from segqual_jax.data import pipeline
from segqual_jax.evaluation import figures, quality_metrics, report
from segqual_jax.quality import auto_accept, train_quality
from segqual_jax.quality import labels as quality_labels
from segqual_jax.training import loop

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CALIBRATION_FILE = 'auto_accept.json'  # the calibrated thresholds --mode=predict applies


def predict_quality(config, workdir: str, variant: str, split: pipeline.Split, labels) -> np.ndarray:
  """Predicted quality of each case of ``split`` by the trained quality model ``variant``."""
  predictor = train_quality.load_predictor(config, workdir, variant)
  names = sorted(labels.scores)
  out = []
  for images, preds, umaps, *score_columns, valid in pipeline.eval_batches(
      config.seg.eval_batch_size, split.images, labels.predictions, labels.uncertainty,
      *[labels.scores[n] for n in names]):
    batch_scores = dict(zip(names, score_columns))
    out.append(np.asarray(predictor(images, preds, umaps, batch_scores))[:valid])
  return np.concatenate(out) if out else np.zeros(0)


def score_metrics(config, labels) -> dict[str, dict]:
  """Every image-level score used directly as the quality score (no g): its metrics.

  RMSE is left out (None): a score is not an estimate of Dice or Jaccard,
  only an ordering, which every other metric judges.
  """
  out = {}
  for name, values in sorted(labels.scores.items()):
    metrics = quality_metrics.all_metrics(values, labels.dice, labels.jaccard, config.quality.target,
                                          config.eval.fail_dice, config.eval.fail_jaccard)
    metrics['rmse'] = None
    out[report.score_row_name(config.method, name)] = metrics
  return out


def calibrate_auto_accept(config, workdir: str, predicted_test: dict[str, np.ndarray],
                          test_labels) -> dict:
  """The auto-accept threshold of every quality model, calibrated and then applied to the test split.

  Per model and alpha: the LTT threshold from the calibration cases (grid:
  quantiles of the model's predictions on its own training cases), and the
  test split's automation rate and accepted-failure rate under it.
  """
  quality = pipeline.load_splits(config.data, names=('quality',))['quality']
  (fit_split, fit_labels), (cal_split, cal_labels) = quality_labels.holdout_parts(config, workdir, quality)
  cal = config.calibration
  out = {}
  for variant in train_quality.variants(config):
    name = report.row_name(config.method, variant)
    grid = auto_accept.threshold_grid(predict_quality(config, workdir, variant, fit_split, fit_labels),
                                      cal.grid_size)
    cal_pred = predict_quality(config, workdir, variant, cal_split, cal_labels)
    per_alpha = {}
    for alpha in cal.alphas:
      rule = auto_accept.calibrate(cal_pred, cal_labels.dice < config.eval.fail_dice, grid, alpha,
                                   cal.delta, cal.starts)
      rule['test'] = auto_accept.realised(predicted_test[name], test_labels.dice < config.eval.fail_dice,
                                          rule['threshold'])
      per_alpha[str(alpha)] = rule
    out[variant] = {'row': name, 'delta': cal.delta, 'fail_dice': config.eval.fail_dice,
                    'rules': per_alpha}
  return out


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
  runtime.configure(config)
  metrics_path = os.path.join(workdir, 'metrics.json')
  wanted = {report.row_name(config.method, v) for v in train_quality.variants(config)}
  if (done := loop.completed(metrics_path, 'evaluation',
                             lambda metrics: wanted <= set(metrics['quality_models']))) is not None:
    return done
  test = pipeline.load_splits(config.data, names=('test',))['test']
  labels = quality_labels.split_labels(config, workdir, test)
  predicted = {}
  for variant in train_quality.variants(config):
    predicted[report.row_name(config.method, variant)] = predict_quality(config, workdir, variant, test, labels)

  fail_d, fail_j = config.eval.fail_dice, config.eval.fail_jaccard
  models = {name: quality_metrics.all_metrics(pred, labels.dice, labels.jaccard,
                                              config.quality.target, fail_d, fail_j)
            for name, pred in predicted.items()}
  scores = score_metrics(config, labels)
  calibration = (calibrate_auto_accept(config, workdir, predicted, labels)
                 if config.calibration.fraction > 0 else None)
  seg = labels.summary(fail_d)
  seg[f'fail_rate_jaccard_{fail_j}'] = float(np.mean(labels.jaccard < fail_j))
  result = {
      'schema_version': SCHEMA_VERSION,
      'method': config.method, 'seed': config.seed,
      'data': {'name': config.data.name, 'seed': config.data.seed,
               'image_size': config.data.image_size, 'split': 'test'},
      'quality_target': config.quality.target,
      'label_source': config.quality.label_source,
      'segmentation': seg,
      'quality_models': models,
      'scores': scores,  # image-level scores used directly as quality scores (no g)
  }
  if calibration is not None:
    result['auto_accept'] = calibration
    artifacts.write_json(os.path.join(workdir, CALIBRATION_FILE), calibration)

  keys = [f'dice<{fail_d}', f'jaccard<{fail_j}']
  table = ''.join(f'\n### Failure = {report.threshold_title(k)} (fail rate {100 * models[next(iter(models))][k]["fail_rate"]:.1f} %)\n\n'
                  + report.table_markdown({n: [m] for n, m in models.items()}, k) for k in keys)
  if scores:
    table += (f'\n### Image-level scores as quality scores (no g), failure = {report.threshold_title(keys[0])}\n\n'
              + report.table_markdown({n: [m] for n, m in scores.items()}, keys[0]))
  if calibration is not None:
    table += '\n' + report.auto_accept_markdown(calibration)
  header = (f'# {config.method}, seed {config.seed}: quality prediction on the test split '
            f'({len(test)} cases, {config.data.name} data)\n\n'
            f'f: mean Dice {seg["mean_dice"]:.3f}, mean Jaccard {seg["mean_jaccard"]:.3f}; '
            f'g predicts {config.quality.target}, trained on {config.quality.label_source} labels.\n')
  artifacts.write_text(os.path.join(workdir, 'table.md'), header + table)

  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['case', 'id', 'true_dice', 'true_jaccard', *[f'predicted[{n}]' for n in predicted]])
  for i in range(len(test)):
    case_id = test.ids[i] if test.ids else str(i)
    writer.writerow([i, case_id, f'{labels.dice[i]:.5f}', f'{labels.jaccard[i]:.5f}',
                     *[f'{p[i]:.5f}' for p in predicted.values()]])
  artifacts.write_text(os.path.join(workdir, 'predictions.csv'), buf.getvalue())

  true_target = labels.jaccard if config.quality.target == 'jaccard' else labels.dice
  equivalent = fail_d / (2 - fail_d) if config.quality.target == 'jaccard' else fail_d
  thresholds = [(f'Dice {fail_d}', equivalent)]
  if config.quality.target == 'jaccard':
    thresholds.append((f'Jaccard {fail_j}', fail_j))
  figures.scatter(os.path.join(workdir, 'scatter.png'), true_target, predicted,
                  config.quality.target, thresholds)
  figures.uncertainty_maps(os.path.join(workdir, 'uncertainty_maps.png'), test.images, test.masks,
                           labels.predictions, labels.uncertainty, labels.dice,
                           config.eval.num_figure_cases)
  figures.risk_coverage(os.path.join(workdir, 'risk_coverage.png'), predicted, 1.0 - labels.dice)
  artifacts.write_json(metrics_path, result)  # last: its presence marks the stage complete
  log.info('evaluation written to %s\n%s', workdir, header + table)
  return result
