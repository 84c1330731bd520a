"""``--mode=predict``: the clinical job -- f and g on images nobody delineated.

For every image file of ``--input`` (one file, or a folder and its
subfolders, by extension) it writes one row of ``predictions.csv``: the
predicted Dice and Jaccard of f's segmentation, the decision and why, the
rule that made it, the mean uncertainty, the applicability score and its
p-value, the run that judged it, and a status that is ``ok`` or names what
was wrong with the file.

Three decisions (``decide``), in this order:

* ``review`` -- the case is outside what the run can judge: its applicability
  p-value is below ``predict.ood_alpha`` (another modality, a corrupted or odd
  image), or the batch test found the run's cases as a whole unlike the
  in-distribution cases and ``predict.on_shift`` is ``suspend``. Never
  auto-accepted, whatever its predicted quality.
* ``pass`` -- predicted quality at or above the rule's threshold: auto-accept.
* ``fail`` -- predicted quality below it: a predicted failure, to a human.
 A bad file never stops the
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
import hashlib
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
from segqual_jax.data import segmentations as seg_io
from segqual_jax.evaluation import report
from segqual_jax.metrics import overlap
from segqual_jax.metrics import quality as quality_metrics
from segqual_jax.quality import applicability, registry
from segqual_jax.segmenter import external, runner

log = logging.getLogger(__name__)

COLUMNS = ('file', 'predicted_dice', 'predicted_jaccard', 'decision', 'reason', 'decision_rule',
           'mean_uncertainty', 'applicability_score', 'applicability_p', 'status', 'notes', 'run')
DECISIONS = ('pass', 'fail', 'review')
TRUE_COLUMNS = ('true_dice', 'true_jaccard')
OWN_FILES = ('predictions.csv', 'index.html', 'summary.json', render.MAPS_DIR, render.MASKS_DIR)


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


@dataclasses.dataclass(frozen=True)
class Decision:
  """One case's decision (``pass`` | ``fail`` | ``review``) and why, in words."""
  decision: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Gate:
  """The applicability gate of a run: the per-case rule and the batch test's verdict."""
  ood_alpha: float  # review a case whose p-value is below this (0: gate off)
  batch: dict | None  # batch_test's result with 'rejected' and 'action', or None (not run)

  @property
  def suspended(self) -> bool:
    return bool(self.batch and self.batch['action'] == 'suspend')


def apply_gate(config, score: applicability.Applicability | None, cases) -> Gate:
  """Scores every readable case (``case.applicability``, ``case.applicability_p``) and runs
  the batch test when there are at least ``predict.shift_min_cases`` of them."""
  if score is None:
    return Gate(0.0, None)
  ok = [c for c in cases if c.ok]
  values = score.score(np.stack([c.features for c in ok])) if ok else np.zeros(0)
  for case, value, p in zip(ok, values, score.pvalues(values)):
    case.applicability, case.applicability_p = float(value), float(p)
  p = config.predict
  if len(ok) < p.shift_min_cases:
    return Gate(p.ood_alpha, None)
  batch = applicability.batch_test(values, score.reference_scores)
  batch['rejected'] = batch['pvalue'] < p.shift_alpha
  batch['alpha'] = p.shift_alpha
  batch['action'] = p.on_shift if batch['rejected'] else 'none'
  return Gate(p.ood_alpha, batch)


def shift_text(batch: dict) -> str:
  """The batch test's verdict in words."""
  what = (f'the {batch["cases"]} cases of this run as a whole look unlike the cases the run was '
          f'calibrated and fitted on (one-sided two-sample KS of their applicability scores: '
          f'D = {batch["statistic"]:.3f}, p = {batch["pvalue"]:.2g} < {batch["alpha"]})')
  if batch['action'] == 'suspend':
    return (f'AUTO-ACCEPT SUSPENDED: {what}, so no promise about them holds; every case goes '
            'to review (predict.on_shift=suspend).')
  return (f'SHIFT WARNING: {what}; the decisions below were made anyway (predict.on_shift=warn) '
          'and the calibrated failure rate does not hold for them.')


def decide(case, rule: DecisionRule, gate: Gate, target: str) -> Decision:
  """A readable case's decision: review (outside what the run can judge), pass or fail."""
  if gate.ood_alpha > 0 and case.applicability_p is not None and case.applicability_p < gate.ood_alpha:
    return Decision('review', f'outside the training distribution (applicability p = '
                              f'{case.applicability_p:.3g} < {gate.ood_alpha}): not judged')
  if gate.suspended:
    return Decision('review', 'auto-accept suspended for this run (batch unlike the calibration cases)')
  quality = case.predicted_jaccard if target == 'jaccard' else case.predicted_dice
  if rule.decide(quality) == 'pass':
    return Decision('pass', 'predicted quality at or above the rule\'s threshold')
  return Decision('fail', 'predicted failure: predicted quality below the rule\'s threshold')


def provenance(config, workdir: str, quality_model: str) -> dict:
  """What judged these cases: the training data, method, image size, checkpoints, config.

  A run trained on the synthetic set and pointed at photographs must say so;
  these fields go into every CSV row (``run``), the summary and the HTML.
  """
  seg = artifacts.read_json(run_dirs.seg_done(workdir))
  g = artifacts.read_json(run_dirs.quality_done(workdir, quality_model))
  with open(os.path.join(run_dirs.seg_dir(workdir), 'config.json'), 'rb') as f:
    config_sha = hashlib.sha256(f.read()).hexdigest()[:12]
  data = config.data.name if config.data.name == 'synthetic' else f'{config.data.name}:{os.path.realpath(config.data.root)}'
  return {'workdir': os.path.realpath(workdir), 'training_data': data,
          'data_splits': config.data.splits, 'method': config.method, 'seed': config.seed,
          'image_size': config.data.image_size, 'f_steps': seg.get('steps'),
          'quality_model': quality_model, 'quality_model_steps': g.get('steps'),
          'trained_config_sha256': config_sha}


def provenance_text(p: dict) -> str:
  return (f"method={p['method']}; trained on {p['training_data']} at {p['image_size']} px; seed {p['seed']}; "
          f"f steps {p['f_steps']}; {p['quality_model']} steps {p['quality_model_steps']}; "
          f"config {p['trained_config_sha256']}; run {p['workdir']}")


def synthetic_warning(config) -> str | None:
  if config.data.name != 'synthetic':
    return None
  return ('TRAINED ON SYNTHETIC DATA: this run learnt from the embedded synthetic generator, not '
          'from real images; its predicted quality of real images is not validated (the '
          'applicability gate sends images unlike the synthetic ones to review).')


def decision_rule(config, model: registry.QualityModel) -> DecisionRule:
  """The calibrated auto-accept rule of ``model`` at ``predict.alpha`` when the run has one,
  else the fixed rule "predicted Dice >= eval.fail_dice" (loudly, if calibration was configured)."""
  fail_dice, alpha = config.eval.fail_dice, config.predict.alpha
  fixed_threshold = overlap.jaccard_from_dice(fail_dice) if model.target == 'jaccard' else fail_dice
  fixed = f'fixed: pass if predicted Dice >= {fail_dice}'
  entry = model.rules
  usable = (entry and entry['fail_dice'] == fail_dice
            and entry.get('ood_alpha', 0.0) == config.predict.ood_alpha)
  rule = entry['rules'].get(str(alpha)) if usable else None
  if rule is None:
    if config.calibration.fraction <= 0:
      return DecisionRule(fixed_threshold, fixed)
    warning = (f'NOT CALIBRATED: this run is configured for calibration (calibration.fraction='
               f'{config.calibration.fraction}) but has no calibrated rule for quality model '
               f'{model.name!r} at predict.alpha={alpha}, eval.fail_dice={fail_dice}, '
               f'predict.ood_alpha={config.predict.ood_alpha} '
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


def _truth_reader(masks_dir: str | None, warn: bool = True):
  """``case -> true mask at its file's own size, or None``; a missing or unusable mask only
  loses that case's truth (said once: ``warn=False`` for a second reading)."""
  masks = mask_index(masks_dir) if masks_dir else {}

  def truth(case):
    if not masks_dir:
      return None
    if case.stem not in masks:
      if warn:
        log.warning('%s: no mask named %s.* in %s', case.file, case.stem, masks_dir)
      return None
    try:
      return image_io.read_mask(masks[case.stem])
    except image_io.ImageError as e:
      if warn:
        log.warning('mask of %s unusable: %s', case.file, e)
      return None
  return truth


def _fmt(value, digits=4) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def write_csv(path: str, cases, decisions: dict[str, Decision], rule: DecisionRule, with_truth: bool,
              run: str) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(COLUMNS + (TRUE_COLUMNS if with_truth else ()))
  for c in cases:
    d = decisions.get(c.file)
    line = [c.file, _fmt(c.predicted_dice), _fmt(c.predicted_jaccard), d.decision if d else '',
            d.reason if d else '', rule.description if c.ok else '', _fmt(c.mean_uncertainty),
            _fmt(c.applicability), _fmt(c.applicability_p), c.status, '; '.join(c.notes), run]
    if with_truth:
      line += [_fmt(c.true_dice), _fmt(c.true_jaccard)]
    writer.writerow(line)
  artifacts.write_text(path, buf.getvalue())


def check_segmentations(config, segmentations_dir: str | None) -> None:
  """Refuses ``--segmentations`` for a run whose quality models learned f's own segmentations,
  and its absence for a run that learned another model's: g judges what it was trained on."""
  if segmentations_dir and not external.active(config):
    raise PredictError(f'--segmentations={segmentations_dir}: this run\'s quality models learned to '
                       'judge f\'s own segmentations; to judge another model\'s, train a run on its '
                       'segmentations first (config.external.predictions, README "Your own model")')
  if external.active(config) and not segmentations_dir:
    raise PredictError('this run judges another model\'s segmentations (config.external.predictions='
                       f'{config.external.predictions!r}); give that model\'s segmentations of the '
                       'input images with --segmentations=DIR')
  if segmentations_dir and not os.path.isdir(segmentations_dir):
    raise PredictError(f'--segmentations={segmentations_dir}: no such directory')


def page_labels(config, segmentations_dir: str | None) -> tuple[str, str]:
  """Whose segmentations the page shows, and which map (the HTML's wording)."""
  if not segmentations_dir:
    return "f's", "f's pixels"
  first = external.channel_names(config)[0]
  return ("the outside model's", {'msp': "the outside model's own 1 - max(p, 1 - p)",
                                  'entropy': "the outside model's own entropy",
                                  'surrogate': "the surrogate f's map of the image",
                                  'disagreement': "|outside mask - surrogate f's p(lesion)|"}[first])


def outside_reader(config, segmentations_dir: str):
  """``case -> the outside model's segmentation at the image's size`` (``<stem>.png|.npy`` in
  ``segmentations_dir``); raises ``SegmentationError`` naming the file and the problem."""
  listing = seg_io.index(segmentations_dir)

  def read(case) -> seg_io.Segmentation:
    path = seg_io.path_of(listing, segmentations_dir, case.stem)
    if path is None:
      raise seg_io.SegmentationError(os.path.join(segmentations_dir, case.stem + '.png'),
                                     'missing: no segmentation <stem>.png or .npy for this image')
    seg = external.read(config, path, case.native_size)
    for note in seg.notes:
      log.warning('%s: %s', path, note)
    return seg
  return read


def extra_segmentations(segmentations_dir: str, cases) -> list:
  """A row per segmentation file whose stem no input image has (its status says so)."""
  stems = {c.stem for c in cases}
  extra = [assess.Case(file=os.path.join(segmentations_dir, os.path.basename(path)),
                       status='error: segmentation without an image of that name in --input')
           for stem, paths in sorted(seg_io.index(segmentations_dir).items()) if stem not in stems
           for path in paths]
  if extra:
    log.warning('%d segmentation(s) in %s have no image in --input: %s', len(extra), segmentations_dir,
                ', '.join(c.file for c in extra[:5]) + (' ...' if len(extra) > 5 else ''))
  return extra


def predict(config, workdir: str, input_path: str, output_dir: str,
            masks_dir: str | None = None, overwrite: bool = False,
            segmentations_dir: str | None = None) -> dict:
  """Assesses every image of ``input_path``; writes ``output_dir``. Returns the summary.

  With ``segmentations_dir``, the segmentations judged are another model's
  (``<stem>.png|.npy`` beside each image's stem); f is the surrogate. Every
  check runs before ``output_dir`` is touched, so a refused run leaves
  nothing behind to refuse the retry.
  """
  root, files = resolve_inputs(input_path)
  if masks_dir and not os.path.isdir(masks_dir):
    raise PredictError(f'--masks={masks_dir}: no such directory')
  check_segmentations(config, segmentations_dir)
  check_output(output_dir, overwrite)
  parallel.check_batch_size(config.seg.eval_batch_size, 'config.seg.eval_batch_size')
  name = config.predict.quality_model
  run_dirs.require_seg(workdir)
  run_dirs.require_quality(workdir, name)
  stages.check_matches_run(run_dirs.seg_dir(workdir), config, 'seg')
  stages.check_matches_run(run_dirs.quality_dir(workdir, name), config, stages.quality_stage(name))
  method, f_params = runner.load_f(config, workdir)
  model = registry.load(config, workdir, name)
  score = applicability.load(config, workdir)
  rule = decision_rule(config, model)
  origin = provenance(config, workdir, name)
  powerless = None if score is None else applicability.powerless_warning(
      len(score.reference_scores), config.predict.ood_alpha)
  warnings = [w for w in (rule.warning, powerless, synthetic_warning(config)) if w]
  for w in warnings:
    log.warning(w)
  log.info('decision rule: %s; judged by %s', rule.description, provenance_text(origin))
  prepare_output(output_dir)

  t0 = time.time()
  size = config.data.image_size
  if segmentations_dir:
    run_pass = assess.make_outside_pass(method, f_params, model, external.channel_names(config),
                                        config.uncertainty.score_band_px)
  else:
    run_pass = assess.make_pass(method, f_params, model)
  cases = assess.assess(files, root, size, config.seg.eval_batch_size, run_pass,
                        runner.cases_key(config), model.target, _truth_reader(masks_dir),
                        outside_reader(config, segmentations_dir) if segmentations_dir else None)
  if segmentations_dir:
    cases += extra_segmentations(segmentations_dir, cases)
  gate = apply_gate(config, score, cases)
  if gate.batch and gate.batch['rejected']:
    warnings.insert(0, shift_text(gate.batch))
    log.warning(warnings[0])
  decisions = {c.file: decide(c, rule, gate, model.target) for c in cases if c.ok}
  vmax = render.map_scale([c.map for c in cases if c.ok])
  truth = _truth_reader(masks_dir, warn=False) if masks_dir else None
  names = render.write_maps(output_dir, cases, vmax, root, truth)
  render.write_masks(output_dir, cases, names)
  with_truth = bool(masks_dir)
  write_csv(os.path.join(output_dir, 'predictions.csv'), cases, decisions, rule, with_truth,
            provenance_text(origin))
  title = f'segqual-jax: {config.method} on {os.path.basename(os.path.abspath(input_path))}'
  render.write_html(os.path.join(output_dir, 'index.html'), cases, decisions, names, title,
                    rule.description, warnings, with_truth, gate_text(gate), provenance_text(origin),
                    rule.threshold, model.target, vmax, *page_labels(config, segmentations_dir))
  summary = summarise(config, cases, decisions, rule, name, time.time() - t0, gate, origin, warnings)
  artifacts.write_json(os.path.join(output_dir, 'summary.json'), summary)
  log.info('predict: %d files, %d read, %d unreadable; %d pass, %d predicted to fail, %d to review '
           '(%s); outputs in %s', summary['files'], summary['read'], summary['unreadable'],
           summary['decisions']['pass'], summary['decisions']['fail'], summary['decisions']['review'],
           rule.description, output_dir)
  if 'metrics' in summary:  # the paper's metrics of the predicted quality, against the masks
    row = report.model_row(config, name)
    for key in (f'dice<{config.eval.fail_dice}', f'jaccard<{config.eval.fail_jaccard}'):
      print(f'\n{summary["cases_with_truth"]} cases with a mask; failure = {report.threshold_title(key)}:\n\n'
            + report.table_markdown({row: [summary['metrics']]}, key))
    d = summary['decisions_against_truth']
    rate = 'n/a' if d['accepted_failure_rate'] is None else f"{100 * d['accepted_failure_rate']:.1f} %"
    print(f"The decisions against the masks: {d['accepted']} of {summary['cases_with_truth']} cases "
          f"auto-accepted ({100 * d['automation_rate']:.1f} %), {d['accepted_failures']} of them true "
          f"failures ({rate}); true failure rate {100 * d['true_fail_rate']:.1f} %.")
  if summary['read'] == 0:
    raise PredictError(f'none of the {len(files)} files in {input_path} could be read; see '
                       f'{os.path.join(output_dir, "predictions.csv")}')
  return summary


def gate_text(gate: Gate) -> str:
  """The gate's settings and the batch test's verdict, in words (HTML)."""
  if gate.ood_alpha <= 0:
    return 'Applicability gate off (predict.ood_alpha=0): every case is judged, however unlike the training cases.'
  text = (f'Applicability gate: a case whose applicability p-value is below {gate.ood_alpha} is '
          'unlike the cases the run can judge and goes to review, whatever its predicted quality.')
  if gate.batch is None:
    return text + ' Too few cases for the batch test; only the per-case gate applied.'
  b = gate.batch
  return text + (f' Batch test (one-sided two-sample KS of the applicability scores, {b["cases"]} cases): '
                 f'D = {b["statistic"]:.3f}, p = {b["pvalue"]:.2g}: '
                 + ('the run looks unlike the calibration cases.' if b['rejected']
                    else 'no evidence that the run differs from the calibration cases.'))


def summarise(config, cases, decisions: dict[str, Decision], rule: DecisionRule, name: str,
              wall_time_s: float, gate: Gate, origin: dict, warnings: list[str]) -> dict:
  """``summary.json``: counts per decision, the rule, the gate and the batch test, the run's
  provenance, every warning, and with masks the paper's metrics."""
  n_ok = sum(c.ok for c in cases)
  counts = {d: sum(x.decision == d for x in decisions.values()) for d in DECISIONS}
  summary = {'files': len(cases), 'read': n_ok, 'unreadable': len(cases) - n_ok,
             'decisions': counts, 'predicted_fail': counts['fail'],
             'threshold_dice': config.eval.fail_dice, 'decision_rule': rule.description,
             'quality_model': name, 'warnings': warnings,
             'applicability': {'ood_alpha': gate.ood_alpha, 'score': config.applicability.score,
                               'flagged': sum(d.reason.startswith('outside') for d in decisions.values()),
                               'batch_test': gate.batch},
             'provenance': origin, 'wall_time_s': round(wall_time_s, 1)}
  truth = [c for c in cases if c.true_dice is not None]
  if truth:
    pred = np.array([c.predicted_jaccard if config.quality.target == 'jaccard' else c.predicted_dice
                     for c in truth])
    true_dice = np.array([c.true_dice for c in truth])
    summary['metrics'] = quality_metrics.all_metrics(
        pred, true_dice, np.array([c.true_jaccard for c in truth]),
        config.quality.target, config.eval.fail_dice, config.eval.fail_jaccard)
    summary['cases_with_truth'] = len(truth)
    accepted = np.array([decisions[c.file].decision == 'pass' for c in truth])
    failed = true_dice < config.eval.fail_dice
    summary['decisions_against_truth'] = {
        'true_fail_rate': float(failed.mean()), 'automation_rate': float(accepted.mean()),
        'accepted': int(accepted.sum()), 'accepted_failures': int((accepted & failed).sum()),
        'accepted_failure_rate': float((accepted & failed).sum() / accepted.sum()) if accepted.any() else None}
  return summary
