"""``--mode=predict``: the clinical job -- f and g on images nobody delineated.

For every image file of ``--input`` (one file, or a folder and its
subfolders, by extension) it writes one row of ``predictions.csv``: the
predicted Dice and Jaccard of f's segmentation, the decision (``pass`` /
``fail``) and the rule that made it, the mean uncertainty, and a status that
is ``ok`` or names what was wrong with the file. A bad file never stops the
others; the run fails only when no file could be read. Beside the CSV:
``maps/`` (image, f's outline, uncertainty map per case) and ``index.html``,
worst predicted quality first. With ``--masks``, true Dice/Jaccard join the
CSV and the paper's metrics are printed and saved to ``summary.json``.

The path from ``main`` to a CSV row: ``predict`` checks everything (input,
output, the trained run and that the config agrees with it) before it
creates ``--output``; ``assess.assess`` reads each batch and runs f and g in
one pass; ``decision_rule`` decides; ``render`` draws; ``write_csv`` writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import time

import numpy as np

from segqual_jax.apps import assess, render
from segqual_jax.config import stages
from segqual_jax.core import artifacts, parallel, workdir as run_dirs
from segqual_jax.core.errors import PredictError  # noqa: F401  (raised here; tests match it)
from segqual_jax.data import images as image_io
from segqual_jax.evaluation import report
from segqual_jax.metrics import overlap
from segqual_jax.metrics import quality as quality_metrics
from segqual_jax.quality import registry
from segqual_jax.segmenter import runner

log = logging.getLogger(__name__)

COLUMNS = ('file', 'predicted_dice', 'predicted_jaccard', 'decision', 'decision_rule',
           'mean_uncertainty', 'status')
TRUE_COLUMNS = ('true_dice', 'true_jaccard')
OWN_FILES = ('predictions.csv', 'index.html', 'summary.json', render.MAPS_DIR)


@dataclasses.dataclass(frozen=True)
class DecisionRule:
  """Pass when the quality model's output (in ``quality.target`` units) is >= ``threshold``.

  ``warning`` is set when the run promised more than this rule keeps (a
  calibrated run without a usable rule); predict says it in the log, the
  summary and the HTML.
  """
  threshold: float
  description: str
  warning: str | None = None

  def decide(self, quality: float) -> str:
    return 'pass' if quality >= self.threshold else 'fail'


def decision_rule(config, model: registry.QualityModel) -> DecisionRule:
  """The calibrated auto-accept rule of ``model`` at ``predict.alpha`` when the run has one,
  else the fixed rule "predicted Dice >= eval.fail_dice" (loudly, if calibration was configured)."""
  fail_dice, alpha = config.eval.fail_dice, config.predict.alpha
  fixed_threshold = overlap.jaccard_from_dice(fail_dice) if model.target == 'jaccard' else fail_dice
  fixed = f'fixed: pass if predicted Dice >= {fail_dice}'
  entry = model.rules
  rule = entry['rules'].get(str(alpha)) if entry and entry['fail_dice'] == fail_dice else None
  if rule is None:
    if config.calibration.fraction <= 0:
      return DecisionRule(fixed_threshold, fixed)
    warning = (f'NOT CALIBRATED: this run is configured for calibration (calibration.fraction='
               f'{config.calibration.fraction}) but has no calibrated rule for quality model '
               f'{model.name!r} at predict.alpha={alpha}, eval.fail_dice={fail_dice} '
               f'(the run\'s quality/calibration.json is missing or made for other settings). '
               'The fixed rule decides instead; its failure rate among accepted cases is not bounded. '
               'Rerun --mode=train_quality to calibrate.')
    return DecisionRule(fixed_threshold, fixed, warning)
  promise = (f'calibrated: accepted-failure rate (Dice < {fail_dice}) <= {alpha} '
             f'with {100 * (1 - entry["delta"]):g} % confidence; ')
  if rule['threshold'] is None:
    return DecisionRule(math.inf, promise + 'the calibration cases cannot support accepting '
                        'any case, so every case goes to review')
  return DecisionRule(rule['threshold'], promise + f'pass if predicted {model.target} >= '
                      f'{rule["threshold"]:.4f}')


def resolve_inputs(input_path: str) -> tuple[str, list[str]]:
  """``(root, image paths relative to it)`` of ``--input``: one image file, or a folder
  searched with its subfolders."""
  if os.path.isfile(input_path):
    if not image_io.is_image_name(os.path.basename(input_path)):
      raise PredictError(f'--input={input_path}: not an image file ({", ".join(image_io.IMAGE_EXTENSIONS)})')
    return os.path.dirname(input_path) or '.', [os.path.basename(input_path)]
  if not os.path.isdir(input_path):
    raise PredictError(f'--input={input_path}: no such file or directory')
  files = image_io.list_images_recursive(input_path)
  if not files:
    raise PredictError(f'{input_path}: no image files ({", ".join(image_io.IMAGE_EXTENSIONS)}), '
                       'in it or its subfolders')
  return input_path, files


def check_output(output_dir: str, overwrite: bool) -> None:
  """Refuses a non-empty ``output_dir`` unless ``overwrite`` (creates nothing)."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise PredictError(f'--output={output_dir} is a file, not a folder')
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
    raise PredictError(f'{output_dir} is not empty (another run\'s output?); choose a new '
                       f'--output or pass --overwrite')


def prepare_output(output_dir: str) -> None:
  """Removes this tool's own files from an earlier run (and nothing else), then creates the folders."""
  for name in OWN_FILES:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  os.makedirs(os.path.join(output_dir, render.MAPS_DIR), exist_ok=True)


def mask_index(masks_dir: str) -> dict[str, str]:
  """``{stem: path}`` of the mask folder (with subfolders); ``<stem>_segmentation`` also matches (ISIC)."""
  out = {}
  for rel in image_io.list_images_recursive(masks_dir):
    stem = os.path.splitext(os.path.basename(rel))[0]
    path = os.path.join(masks_dir, rel)
    out.setdefault(stem, path)
    if stem.endswith('_segmentation'):
      out.setdefault(stem[:-len('_segmentation')], path)
  return out


def _truth_reader(masks_dir: str | None, size: int):
  """``case -> true mask or None``; a missing or unusable mask only loses that case's truth."""
  masks = mask_index(masks_dir) if masks_dir else {}

  def truth(case):
    if not masks_dir:
      return None
    if case.stem not in masks:
      log.warning('%s: no mask named %s.* in %s', case.file, case.stem, masks_dir)
      return None
    try:
      return image_io.read_mask(masks[case.stem], size)
    except image_io.ImageError as e:
      log.warning('mask of %s unusable: %s', case.file, e)
      return None
  return truth


def _fmt(value, digits=4) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def write_csv(path: str, cases, decisions: dict[str, str], rule: DecisionRule, with_truth: bool) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(COLUMNS + (TRUE_COLUMNS if with_truth else ()))
  for c in cases:
    line = [c.file, _fmt(c.predicted_dice), _fmt(c.predicted_jaccard), decisions.get(c.file, ''),
            rule.description if c.ok else '', _fmt(c.mean_uncertainty), c.status]
    if with_truth:
      line += [_fmt(c.true_dice), _fmt(c.true_jaccard)]
    writer.writerow(line)
  artifacts.write_text(path, buf.getvalue())


def predict(config, workdir: str, input_path: str, output_dir: str,
            masks_dir: str | None = None, overwrite: bool = False) -> dict:
  """Assesses every image of ``input_path``; writes ``output_dir``. Returns the summary.

  Every check runs before ``output_dir`` is touched, so a refused run leaves
  nothing behind to refuse the retry.
  """
  root, files = resolve_inputs(input_path)
  if masks_dir and not os.path.isdir(masks_dir):
    raise PredictError(f'--masks={masks_dir}: no such directory')
  check_output(output_dir, overwrite)
  parallel.check_batch_size(config.seg.eval_batch_size, 'config.seg.eval_batch_size')
  name = config.predict.quality_model
  run_dirs.require_seg(workdir)
  run_dirs.require_quality(workdir, name)
  stages.check_matches_run(run_dirs.seg_dir(workdir), config, 'seg')
  stages.check_matches_run(run_dirs.quality_dir(workdir, name), config, stages.quality_stage(name))
  method, f_params = runner.load_f(config, workdir)
  model = registry.load(config, workdir, name)
  rule = decision_rule(config, model)
  if rule.warning:
    log.warning(rule.warning)
  log.info('decision rule: %s', rule.description)
  prepare_output(output_dir)

  t0 = time.time()
  size = config.data.image_size
  cases = assess.assess(files, root, size, config.seg.eval_batch_size,
                        assess.make_pass(method, f_params, model), runner.cases_key(config),
                        model.target, _truth_reader(masks_dir, size))
  own_units = lambda c: c.predicted_jaccard if model.target == 'jaccard' else c.predicted_dice
  decisions = {c.file: rule.decide(own_units(c)) for c in cases if c.ok}
  names = render.write_maps(output_dir, cases, render.map_scale([c.map for c in cases if c.ok]))
  with_truth = bool(masks_dir)
  write_csv(os.path.join(output_dir, 'predictions.csv'), cases, decisions, rule, with_truth)
  title = f'segqual-jax: {config.method} on {os.path.basename(os.path.abspath(input_path))}'
  render.write_html(os.path.join(output_dir, 'index.html'), cases, decisions, names, title,
                    rule.description, [rule.warning] if rule.warning else [], with_truth)
  summary = summarise(config, cases, decisions, rule, name, time.time() - t0)
  artifacts.write_json(os.path.join(output_dir, 'summary.json'), summary)
  log.info('predict: %d files, %d read, %d unreadable, %d predicted to fail (%s); '
           'outputs in %s', summary['files'], summary['read'], summary['unreadable'],
           summary['predicted_fail'], rule.description, output_dir)
  if 'metrics' in summary:  # the paper's metrics of the predicted quality, against the masks
    row = report.row_name(config.method, name)
    for key in (f'dice<{config.eval.fail_dice}', f'jaccard<{config.eval.fail_jaccard}'):
      print(f'\n{summary["cases_with_truth"]} cases with a mask; failure = {report.threshold_title(key)}:\n\n'
            + report.table_markdown({row: [summary['metrics']]}, key))
  if summary['read'] == 0:
    raise PredictError(f'none of the {len(files)} files in {input_path} could be read; see '
                       f'{os.path.join(output_dir, "predictions.csv")}')
  return summary


def summarise(config, cases, decisions: dict[str, str], rule: DecisionRule, name: str,
              wall_time_s: float) -> dict:
  """``summary.json``: counts, the rule (and its warning), and with masks the paper's metrics."""
  n_ok = sum(c.ok for c in cases)
  summary = {'files': len(cases), 'read': n_ok, 'unreadable': len(cases) - n_ok,
             'predicted_fail': sum(d == 'fail' for d in decisions.values()),
             'threshold_dice': config.eval.fail_dice, 'decision_rule': rule.description,
             'quality_model': name, 'warnings': [rule.warning] if rule.warning else [],
             'wall_time_s': round(wall_time_s, 1)}
  truth = [c for c in cases if c.true_dice is not None]
  if truth:
    pred = np.array([c.predicted_jaccard if config.quality.target == 'jaccard' else c.predicted_dice
                     for c in truth])
    summary['metrics'] = quality_metrics.all_metrics(
        pred, np.array([c.true_dice for c in truth]), np.array([c.true_jaccard for c in truth]),
        config.quality.target, config.eval.fail_dice, config.eval.fail_jaccard)
    summary['cases_with_truth'] = len(truth)
  return summary
