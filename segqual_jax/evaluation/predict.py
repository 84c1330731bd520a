"""``--mode=predict``: the clinical job -- f and g on a folder of images nobody delineated.

For every file of ``--input`` (by image extension) it writes one row of
``predictions.csv``: the predicted Dice and Jaccard of f's segmentation, the
pass/fail decision at ``config.eval.fail_dice``, the mean uncertainty, and a
status that is ``ok`` or names what was wrong with the file (empty,
truncated, not an image, too small, too large). A bad file never stops the
others; the run fails only when no file could be read. Beside the CSV:
``maps/<stem>_image.png``, ``_overlay.png`` (f's mask outlined on the image)
and ``_uncertainty.png``, and ``index.html``, one scrollable page sorted
worst predicted quality first (unreadable files at the top). With
``--masks``, true Dice/Jaccard join the CSV and the paper's metrics are
printed and saved to ``summary.json``.

g predicts ``config.quality.target``; Dice and Jaccard of one segmentation
determine each other (D = 2J / (1 + J)), so both columns come from it.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import logging
import math
import os
import time

import jax
import matplotlib
import numpy as np
from PIL import Image

from segqual_jax import artifacts, parallel, runtime
from segqual_jax.data import images as image_io
from segqual_jax.data import pipeline
from segqual_jax.evaluation import inference, quality_metrics, report, segmentation
from segqual_jax.quality import train_quality
from segqual_jax.training import train_seg

matplotlib.use('Agg')
from matplotlib import colormaps  # noqa: E402

log = logging.getLogger(__name__)

COLUMNS = ('file', 'predicted_dice', 'predicted_jaccard', 'decision', 'decision_rule',
           'mean_uncertainty', 'status')
TRUE_COLUMNS = ('true_dice', 'true_jaccard')
OWN_FILES = ('predictions.csv', 'index.html', 'summary.json', 'maps')


class PredictError(RuntimeError):
  """The run as a whole cannot go on (bad output directory, no readable image)."""


@dataclasses.dataclass
class Row:
  file: str
  status: str = 'ok'
  stem: str = ''
  predicted_dice: float | None = None
  predicted_jaccard: float | None = None
  decision: str = ''
  decision_rule: str = ''
  mean_uncertainty: float | None = None
  true_dice: float | None = None
  true_jaccard: float | None = None

  @property
  def ok(self) -> bool:
    return self.status == 'ok'


def dice_from_jaccard(j):
  return 2.0 * j / (1.0 + j)


def jaccard_from_dice(d):
  return d / (2.0 - d)


@dataclasses.dataclass(frozen=True)
class DecisionRule:
  """Pass when the quality model's output (in ``quality.target`` units) is >= ``threshold``."""
  threshold: float
  description: str

  def decide(self, quality: float) -> str:
    return 'pass' if quality >= self.threshold else 'fail'


def decision_rule(config, workdir: str, variant: str) -> DecisionRule:
  """The calibrated auto-accept rule of ``variant`` at ``predict.alpha`` if the run has one,
  else the fixed rule "predicted Dice >= eval.fail_dice"."""
  target, fail_dice = config.quality.target, config.eval.fail_dice
  path = os.path.join(workdir, 'auto_accept.json')
  if os.path.exists(path):
    entry = artifacts.read_json(path).get(variant, {})
    rule = entry.get('rules', {}).get(str(config.predict.alpha))
    if rule is not None:
      promise = (f'calibrated: accepted-failure rate (Dice < {fail_dice}) <= {config.predict.alpha} '
                 f'with {100 * (1 - entry["delta"]):g} % confidence; ')
      if rule['threshold'] is None:
        return DecisionRule(math.inf, promise + 'the calibration cases cannot support accepting '
                            'any case, so every case goes to review')
      return DecisionRule(rule['threshold'], promise + f'pass if predicted {target} >= '
                          f'{rule["threshold"]:.4f}')
    log.warning('%s has no rule for quality model %s at predict.alpha=%s; using the fixed rule',
                path, variant, config.predict.alpha)
  threshold = jaccard_from_dice(fail_dice) if target == 'jaccard' else fail_dice
  return DecisionRule(threshold, f'fixed: pass if predicted Dice >= {fail_dice}')


def prepare_output(output_dir: str, overwrite: bool) -> None:
  """Refuses a non-empty ``output_dir`` unless ``overwrite``; then clears our own files."""
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    if not overwrite:
      raise PredictError(f'{output_dir} is not empty (another run\'s output?); choose a new '
                         f'--output or pass --overwrite')
  os.makedirs(os.path.join(output_dir, 'maps'), exist_ok=True)


def _mask_index(masks_dir: str) -> dict[str, str]:
  """``{stem: path}`` of the mask folder; ``<stem>_segmentation`` also matches (ISIC)."""
  out = {}
  for name in image_io.list_images(masks_dir):
    stem = os.path.splitext(name)[0]
    out.setdefault(stem, os.path.join(masks_dir, name))
    if stem.endswith('_segmentation'):
      out.setdefault(stem[:-len('_segmentation')], os.path.join(masks_dir, name))
  return out


def _stems(files: list[str]) -> dict[str, str]:
  """Map-file stem per input; ``a.png`` and ``a.jpg`` become ``a_png`` and ``a_jpg``."""
  bare = [os.path.splitext(f)[0] for f in files]
  return {f: (s if bare.count(s) == 1 else f.replace('.', '_')) for f, s in zip(files, bare)}


def _save_png(path: str, array: np.ndarray) -> None:
  artifacts.write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format='PNG'),
                         suffix='.tmp.png')


def _outline(image: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
  """The image enlarged ``scale`` times with the mask's boundary drawn in yellow."""
  big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
  m = np.kron(mask.astype(np.uint8), np.ones((scale, scale), np.uint8)).astype(bool)
  inner = m.copy()
  for axis in (0, 1):
    for shift in (1, -1):
      inner &= np.roll(m, shift, axis)
  edge = m & ~inner
  out = big.copy()
  out[edge] = (255, 230, 0)
  return out


def _heat(umap: np.ndarray, vmax: float, scale: int) -> np.ndarray:
  rgb = colormaps['magma'](np.clip(umap / max(vmax, 1e-6), 0.0, 1.0))[..., :3]
  return np.kron((rgb * 255).astype(np.uint8), np.ones((scale, scale, 1), np.uint8))


def _fmt(value, digits=4) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def write_csv(path: str, rows: list[Row], with_truth: bool) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(COLUMNS + (TRUE_COLUMNS if with_truth else ()))
  for r in rows:
    line = [r.file, _fmt(r.predicted_dice), _fmt(r.predicted_jaccard), r.decision, r.decision_rule,
            _fmt(r.mean_uncertainty), r.status]
    if with_truth:
      line += [_fmt(r.true_dice), _fmt(r.true_jaccard)]
    writer.writerow(line)
  artifacts.write_text(path, buf.getvalue())


def write_html(path: str, rows: list[Row], title: str, rule_text: str, with_truth: bool) -> None:
  """One page, worst predicted quality first; unreadable files at the top."""
  ordered = sorted(rows, key=lambda r: (r.ok, r.predicted_dice if r.ok else 0.0))
  head = ('<th>file</th><th>image</th><th>f\'s segmentation</th><th>uncertainty</th>'
          '<th>predicted Dice</th><th>predicted Jaccard</th><th>decision</th>'
          '<th>mean uncertainty</th>' + ('<th>true Dice</th><th>true Jaccard</th>' if with_truth else '')
          + '<th>status</th>')
  body = []
  for r in ordered:
    e = html.escape
    if r.ok:
      cells = ''.join(f'<td><img src="maps/{e(r.stem)}_{kind}.png" loading="lazy"></td>'
                      for kind in ('image', 'overlay', 'uncertainty'))
      colour = '#c62828' if r.decision == 'fail' else '#2e7d32'
      numbers = (f'<td>{_fmt(r.predicted_dice, 3)}</td><td>{_fmt(r.predicted_jaccard, 3)}</td>'
                 f'<td style="color:{colour};font-weight:bold">{r.decision}</td>'
                 f'<td>{_fmt(r.mean_uncertainty, 4)}</td>')
    else:
      cells = '<td colspan="3">—</td>'
      numbers = '<td></td><td></td><td style="color:#c62828">unreadable</td><td></td>'
    truth = f'<td>{_fmt(r.true_dice, 3)}</td><td>{_fmt(r.true_jaccard, 3)}</td>' if with_truth else ''
    body.append(f'<tr><td>{e(r.file)}</td>{cells}{numbers}{truth}<td>{e(r.status)}</td></tr>')
  n_ok = sum(r.ok for r in rows)
  n_fail = sum(r.decision == 'fail' for r in rows)
  page = f'''<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}} img{{width:160px;height:160px;image-rendering:pixelated}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} files: {n_ok} read, {len(rows) - n_ok} unreadable; {n_fail} predicted to fail
(decision rule: {html.escape(rule_text)}) and worth a human look. Sorted worst predicted quality first.
Overlay: f's mask outlined in yellow. Uncertainty: brighter = less certain.</p>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table></body></html>
'''
  artifacts.write_text(path, page)


def predict_folder(config, workdir: str, input_dir: str, output_dir: str,
                   masks_dir: str | None = None, overwrite: bool = False) -> dict:
  """Runs f and g on every image of ``input_dir``; writes ``output_dir``. Returns a summary."""
  runtime.configure(config)
  if not os.path.isdir(input_dir):
    raise PredictError(f'--input={input_dir}: no such directory')
  if masks_dir and not os.path.isdir(masks_dir):
    raise PredictError(f'--masks={masks_dir}: no such directory')
  files = image_io.list_images(input_dir)
  if not files:
    raise PredictError(f'{input_dir}: no image files ({", ".join(image_io.IMAGE_EXTENSIONS)})')
  prepare_output(output_dir, overwrite)

  variant = config.predict.quality_model
  method, f_params = train_seg.restore_params(config, workdir)
  quality_model = train_quality.load_predictor(config, workdir, variant)
  rule = decision_rule(config, workdir, variant)
  log.info('decision rule: %s', rule.description)
  f_batch = inference.method_predictor(method, with_scores=variant == 'cheap_qc')
  f_params = parallel.replicate(f_params)
  size, batch_size = config.data.image_size, config.seg.eval_batch_size
  threshold = config.eval.fail_dice
  masks = _mask_index(masks_dir) if masks_dir else {}
  stems = _stems(files)
  rows = {f: Row(file=f, stem=stems[f]) for f in files}
  key = jax.random.fold_in(jax.random.key(config.seed), 4)
  scale = max(1, 192 // size)
  umap_max = None

  t0, done = time.time(), 0
  for start in range(0, len(files), batch_size):
    chunk = files[start:start + batch_size]
    loaded = []
    for name in chunk:
      try:
        loaded.append((name, image_io.read_image(os.path.join(input_dir, name), size)))
      except image_io.ImageError as e:
        rows[name].status = f'error: {e.reason}'
        log.warning('skipping %s', e)
    if loaded:
      names = [n for n, _ in loaded]
      batch = np.zeros((batch_size, size, size, 3), np.uint8)
      batch[:len(loaded)] = np.stack([a for _, a in loaded])
      zeros = np.zeros((batch_size, size, size), np.uint8)
      sharded_images, sharded_zeros = parallel.shard_batch((batch, zeros))
      f_out = f_batch(f_params, sharded_images, sharded_zeros, jax.random.fold_in(key, start // batch_size))
      labels, umaps, image_scores = parallel.fetch((f_out[0], f_out[1], f_out[4] if len(f_out) > 4 else {}))
      quality = quality_model(batch, labels, umaps, image_scores)
      if umap_max is None:  # one colour scale for the whole run: maps are comparable
        umap_max = float(np.percentile(umaps[:len(loaded)], 99.5)) or 1.0
      for i, name in enumerate(names):
        r = rows[name]
        q = float(quality[i])
        if config.quality.target == 'jaccard':
          r.predicted_jaccard, r.predicted_dice = q, dice_from_jaccard(q)
        else:
          r.predicted_dice, r.predicted_jaccard = q, jaccard_from_dice(q)
        r.decision, r.decision_rule = rule.decide(q), rule.description
        r.mean_uncertainty = float(umaps[i].mean())
        maps_dir = os.path.join(output_dir, 'maps')
        _save_png(os.path.join(maps_dir, f'{r.stem}_image.png'),
                  np.kron(batch[i], np.ones((scale, scale, 1), np.uint8)))
        _save_png(os.path.join(maps_dir, f'{r.stem}_overlay.png'), _outline(batch[i], labels[i], scale))
        _save_png(os.path.join(maps_dir, f'{r.stem}_uncertainty.png'), _heat(umaps[i], umap_max, scale))
        stem = os.path.splitext(name)[0]
        if masks_dir:
          if stem not in masks:  # the prediction stands; only its truth is missing
            log.warning('%s: no mask named %s.* in %s', name, stem, masks_dir)
            continue
          try:
            truth = image_io.read_mask(masks[stem], size)
          except image_io.ImageError as e:
            log.warning('mask of %s unusable: %s', name, e)
            continue
          r.true_dice = float(segmentation.dice(labels[i][None], truth[None])[0])
          r.true_jaccard = float(segmentation.jaccard(labels[i][None], truth[None])[0])
    done += len(chunk)
    rate = done / max(time.time() - t0, 1e-9)
    log.info('predict %d/%d files | %.1f files/s | ETA %s', done, len(files), rate,
             _duration((len(files) - done) / rate))

  ordered = [rows[f] for f in files]
  n_ok = sum(r.ok for r in ordered)
  with_truth = bool(masks_dir)
  write_csv(os.path.join(output_dir, 'predictions.csv'), ordered, with_truth)
  write_html(os.path.join(output_dir, 'index.html'), ordered,
             f'segqual-jax: {config.method} on {os.path.basename(os.path.abspath(input_dir))}',
             rule.description, with_truth)
  summary = {'files': len(files), 'read': n_ok, 'unreadable': len(files) - n_ok,
             'predicted_fail': sum(r.decision == 'fail' for r in ordered),
             'threshold_dice': threshold, 'decision_rule': rule.description, 'quality_model': variant,
             'wall_time_s': round(time.time() - t0, 1)}
  truth_rows = [r for r in ordered if r.true_dice is not None]
  if truth_rows:
    pred = np.array([r.predicted_jaccard if config.quality.target == 'jaccard' else r.predicted_dice
                     for r in truth_rows])
    summary['metrics'] = quality_metrics.all_metrics(
        pred, np.array([r.true_dice for r in truth_rows]),
        np.array([r.true_jaccard for r in truth_rows]), config.quality.target,
        config.eval.fail_dice, config.eval.fail_jaccard)
    summary['cases_with_truth'] = len(truth_rows)
  artifacts.write_json(os.path.join(output_dir, 'summary.json'), summary)
  log.info('predict: %d files, %d read, %d unreadable, %d predicted to fail (%s); '
           'outputs in %s', summary['files'], summary['read'], summary['unreadable'],
           summary['predicted_fail'], rule.description, output_dir)
  if 'metrics' in summary:  # the paper's metrics of the predicted quality, against the masks
    name = report.row_name(config.method, variant)
    for key in (f'dice<{config.eval.fail_dice}', f'jaccard<{config.eval.fail_jaccard}'):
      print(f'\n{len(truth_rows)} cases with a mask; failure = {report.threshold_title(key)}:\n\n'
            + report.table_markdown({name: [summary['metrics']]}, key))
  if n_ok == 0:
    raise PredictError(f'none of the {len(files)} files in {input_dir} could be read; see '
                       f'{os.path.join(output_dir, "predictions.csv")}')
  return summary


def _duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 60}m{seconds % 60:02d}s'
