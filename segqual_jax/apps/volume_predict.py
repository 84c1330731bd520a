"""predict for a run trained on an nnU-Net data set: one decision per patient's volume.

``--input`` is an nnU-Net inference folder (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``,
..., the channels the run's ``dataset.json`` names). For each case, every axial slice goes
through the run's f and quality model (the same fused pass as a 2D image, each slice keyed
by its own id ``<case>:zNNN``); the slices' results are gathered back into the volume
(``quality/volume.py``). Outputs in ``--output``:

* ``predictions.csv`` -- one row per case: predicted volume Dice and Jaccard, decision and
  why, the gate's numbers, provenance; a case that cannot be read gets its row with the
  file and the problem, and the other cases go on;
* ``masks/<case>.nii.gz`` (uint8) and ``maps/<case>_uncertainty.nii.gz`` (float32) on the
  input's own grid (its affine and header: they open over the input in any viewer);
* ``pages/<case>.png`` and ``index.html`` -- per case its most uncertain slices (image,
  outline, map) and the uncertainty of every slice;
* ``summary.json``.

**The gate per volume.** Each slice has its conformal p-value against the quality split's
reference slices (whole volumes). A volume is sent to review when at least half of its
slices, or slices holding at least half of f's lesion area (the slices its predicted Dice
rests on), have p <= ``ood_alpha`` / 2. If each slice's p-value is valid -- the new
patient's slices drawn like the reference slices -- the expected share of such slices is
at most ``ood_alpha`` / 2, and by Markov's inequality each of the two shares reaches one
half with probability at most ``ood_alpha``, whatever the correlation between slices: at
most 2 ``ood_alpha`` of volumes like the reference ones go to review. The reference pools
slices of a few volumes, so a patient whose volume is unlike theirs in size or extent is
not covered by that bound (it is reviewed more, or less, often).

**Another model's volumes** (``--segmentations=DIR``, a run trained with
``external.predictions``): DIR is an nnU-Net prediction folder, ``<case>.npz`` (its
``--save_probabilities`` output) or ``<case><ending>`` label maps
(``volumes.read_prediction``). Each volume is checked against its input's grid and cut into
the slices f sees; f runs as the surrogate and the quality model judges the outside
slices, as stage 2 taught it (``assess.make_outside_pass``). ``masks/`` then holds the
outside model's own mask on the input grid and ``maps/`` g's first map channel.

**The batch test per run of volumes** (``predict.on_shift``, ``shift_alpha``,
``shift_min_cases`` counted in volumes): one statistic per volume, the median of its
slices' batch score, against the reference volumes' (``volume_batch_test``).

Not yet for volumes: ``--monitor``.

**The rule per volume** (``volume_rule``). A run trained with ``calibration.fraction`` > 0
holds that share of the quality split's patients out of every quality model, and calibrates
on those whole volumes (``training/train_quality.calibrate``): the Learn-then-Test rule on
the predicted volume Dice, behind the volume gate, and the conformal interval of the
predicted volume Dice (``dice_low``, ``dice_high``; not given to a volume the gate or the
batch test sends to review). A run without calibration volumes (the LGG default: its 19
quality patients are too few to give some up) decides by the fixed rule "predicted volume
Dice >= eval.fail_dice" and says plainly that its failure rate among accepted volumes is not
calibrated; with few calibration volumes the rule may accept nothing, and says so.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import logging
import os
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segqual_jax.core import artifacts, errors, keys, workdir as run_dirs  # noqa: E402
from segqual_jax.data import segmentations as seg_io, volumes  # noqa: E402
from segqual_jax.metrics import overlap  # noqa: E402
from segqual_jax.quality import applicability, interval as intervals, policy, registry, volume  # noqa: E402
from segqual_jax.segmenter import external, judged as judged_cases, runner  # noqa: E402
from segqual_jax.apps import assess, predict as predict_2d, render  # noqa: E402

log = logging.getLogger(__name__)

COLUMNS = ('case', 'status', 'decision', 'reason', 'predicted_dice', 'dice_low', 'dice_high',
           'predicted_jaccard', 'slices',
           'lesion_voxels', 'mean_uncertainty', 'applicability_p_median', 'gate_slices_share',
           'gate_lesion_share',
           'true_dice', 'mask', 'map', 'error', 'run')
NOT_CALIBRATED = ('NOT CALIBRATED PER VOLUME: a volume passes when its predicted Dice is >= {fail} '
                  '(a fixed rule); the share of failures among accepted volumes is not bounded by '
                  'any calibration.')
PAGE_SLICES = 3  # the most uncertain slices shown per case


def judge_volume(config, vol: volumes.Volume, run_pass, score, outside=None) -> dict:
  """f and the quality model on every slice of ``vol``; the volume's numbers and arrays.
  ``outside``: ``(p(lesion) (X, Y, Z), kind)`` of another model's volume under review."""
  size, batch = config.data.image_size, config.seg.eval_batch_size
  images, _ = volumes.slices(vol, size)
  seg_probs = None
  if outside is not None:
    probs, kind = outside
    seg_probs = np.stack([seg_io.to_shape(seg_io.Segmentation(probs[:, :, k], kind), (size, size)).probs
                          for k in range(len(images))])
  ids = [volumes.slice_id(vol.case, k) for k in range(len(images))]
  parts = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    padded = np.zeros((batch, *chunk.shape[1:]), np.uint8)
    padded[:len(chunk)] = chunk
    hashes = np.zeros((batch, keys.HASH_WORDS), np.uint32)
    hashes[:len(chunk)] = keys.case_hashes(ids[start:start + batch])
    chunk_probs = None
    if seg_probs is not None:
      chunk_probs = np.zeros((batch, size, size), np.float32)
      chunk_probs[:len(chunk)] = seg_probs[start:start + batch]
    out = run_pass(padded, hashes, chunk_probs)
    parts.append({k: np.asarray(out[k])[:len(chunk)] for k in ('masks', 'maps', 'features', 'dice')})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if out['maps'].ndim == 4:  # what g sees of an outside segmentation: its first channel is shown
    out['maps'] = out['maps'][..., 0]
  groups = np.zeros(len(images), np.int64)
  dice = float(volume.predicted_dice(out['dice'], out['masks'], groups, 1)[0])
  pvalues = None if score is None else score.pvalues(score.score(out['features']))
  area = out['masks'].reshape(len(images), -1).sum(1)
  flagged, p_median, share, lesion_share = volume.gate(pvalues, config.predict.ood_alpha, area)
  batch_stat = None if score is None else applicability.volume_statistic(score.batch_score(out['features']))
  return {'images': images, 'masks': out['masks'], 'maps': out['maps'], 'dice': dice,
          'flagged': flagged, 'p_median': p_median, 'share': share, 'lesion_share': lesion_share,
          'batch_stat': batch_stat}


def volume_rule(config, model) -> tuple[policy.DecisionRule, dict | None]:
  """The rule a volume is decided by, and the calibration record it comes from (None).

  The rule calibrated on whole calibration volumes (stage 2 with ``calibration.fraction``
  > 0 on an nnU-Net data set: ``calibration.json``'s unit is the volume) at
  ``predict.alpha``, on the predicted volume Dice; else the fixed rule "predicted volume
  Dice >= eval.fail_dice", said plainly to be uncalibrated."""
  as_volumes = dataclasses.replace(model, target='dice')  # the rule is on the predicted volume Dice
  return (policy.decision_rule(config, as_volumes, 'volume'),
          policy.usable_rules(model.rules, config, 'volume'))


def decide(judged: dict, config, rule: policy.DecisionRule) -> tuple[str, str]:
  how = 'fixed rule' if rule.description.startswith('fixed') else 'calibrated rule'
  if judged['flagged']:
    lesion = ('' if judged['lesion_share'] is None
              else f', {100 * judged["lesion_share"]:.0f} % of the reviewed mask\'s lesion')
    return 'review', (f'outside the training distribution: {100 * judged["share"]:.0f} % of its slices{lesion} '
                      f'with applicability p <= {config.predict.ood_alpha / 2:g} (median p '
                      f'{judged["p_median"]:.3g}): not judged')
  if not np.isfinite(rule.threshold):
    return 'review', 'the calibration volumes cannot support accepting any volume at predict.alpha'
  if judged['dice'] >= rule.threshold:
    return 'pass', f'predicted volume Dice {judged["dice"]:.4f} >= {rule.threshold:.4f} ({how})'
  return 'fail', f'predicted volume Dice {judged["dice"]:.4f} < {rule.threshold:.4f} ({how})'


def _display(plane: np.ndarray) -> np.ndarray:
  """An axial plane as stored (first axis down, second across): no reorientation is
  guessed, so the page shows what the file holds, as the slices f saw."""
  return plane


def draw_page(path: str, case: str, judged: dict, vmax: float, whose: str = "f's") -> None:
  """The case's most uncertain slices (image, the reviewed outline, map) and its per-slice
  uncertainty."""
  per_slice = judged['maps'].reshape(len(judged['maps']), -1).mean(1)
  shown = sorted(np.argsort(-per_slice)[:PAGE_SLICES])
  fig, axes = plt.subplots(len(shown) + 1, 2, figsize=(6, 3 * (len(shown) + 1)), squeeze=False)
  for row, k in enumerate(shown):
    image = judged['images'][k]
    drawn = render.outline(image, [(judged['masks'][k].astype(bool), (255, 220, 0))], width=1)
    axes[row, 0].imshow(_display(drawn))
    axes[row, 0].set_title(f'slice {k}: {whose} mask', fontsize=9)
    axes[row, 1].imshow(_display(judged['maps'][k]), cmap='magma', vmin=0, vmax=vmax)
    axes[row, 1].set_title(f'slice {k}: uncertainty (mean {per_slice[k]:.3f})', fontsize=9)
  for ax in axes[:-1].ravel():
    ax.axis('off')
  gs = axes[-1, 0].get_gridspec()
  for ax in axes[-1]:
    ax.remove()
  plot = fig.add_subplot(gs[-1, :])
  plot.bar(np.arange(len(per_slice)), per_slice, color=['C3' if k in shown else 'C0' for k in range(len(per_slice))])
  plot.set_xlabel('slice')
  plot.set_ylabel('mean uncertainty')
  fig.suptitle(f'{case}: predicted volume Dice {judged["dice"]:.3f}', fontsize=10)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=80)
  plt.close(fig)
  artifacts.write_bytes(path, buf.getvalue())


def _true_dice(masks_dir: str | None, vol: volumes.Volume, mask: np.ndarray, spec) -> str:
  if not masks_dir:
    return ''
  path = os.path.join(masks_dir, vol.case + spec.file_ending)
  try:
    label, affine, _ = volumes.load_nifti(path)
  except volumes.VolumeError as e:
    log.warning('true mask of %s not read: %s', vol.case, e)
    return ''
  if label.shape != vol.shape or not np.allclose(affine, vol.affine, atol=1e-3):
    log.warning('%s: true mask on another grid than the image; no true Dice', path)
    return ''
  return f'{volume.dice(mask, label):.5f}'


def write_index(path: str, rows: list[dict], title: str, notes: list[str]) -> None:
  lines = [f'<!doctype html><meta charset="utf-8"><title>{html.escape(title)}</title>',
           f'<h1>{html.escape(title)}</h1>'] + [f'<p><b>{html.escape(n)}</b></p>' for n in notes]
  lines.append('<table border="1" cellpadding="4"><tr><th>case</th><th>decision</th><th>predicted Dice</th>'
               '<th>reason</th><th>page</th></tr>')
  for r in rows:
    page = f'<img src="pages/{html.escape(r["case"])}.png" width="420">' if r['status'] == 'ok' else ''
    lines.append(f'<tr><td>{html.escape(r["case"])}</td><td>{r["decision"]}</td><td>{r["predicted_dice"]}</td>'
                 f'<td>{html.escape(": ".join(t for t in (r["reason"], r["error"]) if t))}</td><td>{page}</td></tr>')
  lines.append('</table>')
  artifacts.write_text(path, '\n'.join(lines) + '\n')


def volume_batch_test(config, score, judged_all: dict, rows: list[dict], notes: list[str]) -> dict | None:
  """The batch test of a run of volumes (``policy.batch_verdict``, one statistic per volume
  against the reference volumes'), applied to ``rows`` in place: ``suspend`` sends every judged
  volume to review, ``review_unusual`` the volumes Benjamini-Hochberg picks from their
  conformal p-values among the reference volumes (every volume when it can pick none: with
  few reference volumes the smallest p-value is large, and a shifted run is not let through
  for that), ``warn`` only says so. Below ``predict.shift_min_cases`` volumes: no test."""
  if score is None or not judged_all:
    return None
  refs = score.volume_references()
  if refs is None:
    notes.append('NO BATCH TEST: this run\'s gate was fitted without its reference volumes; rerun '
                 '--mode=train_quality to refit it (nothing else is retrained).')
    return None
  cases = list(judged_all)
  stats = np.array([judged_all[c]['batch_stat'] for c in cases])
  batch = policy.batch_verdict(stats, refs, config.predict)
  if batch is not None and (powerless := applicability.batch_powerless(len(stats), len(refs),
                                                                       config.predict.shift_alpha)):
    notes.append(powerless)
    log.warning('%s', powerless)
  if batch is None or not batch['rejected']:
    return batch
  batch = {**batch, 'unit': 'volumes', 'reference_volumes': int(len(refs))}
  notes.append(policy.shift_text(batch).replace('cases', 'volumes'))
  reviewed, why = set(), ''
  if batch['action'] == 'suspend':
    reviewed, why = set(cases), 'auto-accept suspended for this run (its volumes unlike the reference volumes)'
  elif batch['action'] == 'review_unusual':
    pvalues = applicability.conformal_pvalues(stats, refs)
    picked = policy.benjamini_hochberg(pvalues, batch['unusual_fdr'])
    if 1.0 / (len(refs) + 1) > batch['unusual_fdr']:
      notes.append(f'{len(refs)} reference volumes cannot single out unusual volumes (smallest p-value '
                   f'1/{len(refs) + 1} > {batch["unusual_fdr"]}): every volume of this shifted run goes '
                   'to review.')
      picked[:] = True
    reviewed = {c for c, p in zip(cases, picked) if p}
    why = ('unusual within a run unlike the reference volumes (Benjamini-Hochberg at '
           f'{batch["unusual_fdr"]}): not judged')
  for row in rows:
    if row['case'] in reviewed and row['status'] == 'ok' and row['decision'] != 'review':
      row.update(decision='review', reason=f'{why}; {row["reason"]}')
  log.warning('%s', notes[-1])
  return batch


def unmatched_predictions(segmentations_dir: str, cases: list[str], spec) -> list[str]:
  """Cases with a prediction in ``segmentations_dir`` but no volume in ``--input``."""
  found = set()
  for name in os.listdir(segmentations_dir):
    for ending in ('.npz', spec.file_ending):
      if name.endswith(ending) and not name.startswith('.'):
        found.add(name[:-len(ending)])
  return sorted(found - set(cases))


def predict(config, workdir: str, input_dir: str, output_dir: str, masks_dir: str | None = None,
            overwrite: bool = False, segmentations_dir: str | None = None) -> dict:
  """Judges every volume of ``input_dir`` (f's segmentations, or with ``segmentations_dir``
  another model's); writes ``output_dir``; returns the summary."""
  if not os.path.isdir(input_dir):
    raise errors.PredictError(f'--input={input_dir}: an nnU-Net inference folder is needed (no such directory)')
  spec = volumes.read_dataset_json(run_dirs.seg_dir(workdir) if os.path.exists(
      os.path.join(run_dirs.seg_dir(workdir), 'dataset.json')) else config.data.root)
  cases = volumes.list_cases(input_dir, spec.file_ending)
  if not cases:
    raise errors.PredictError(f'{input_dir}: no nnU-Net channel files <case>_0000{spec.file_ending}')
  if masks_dir and not os.path.isdir(masks_dir):
    raise errors.PredictError(f'--masks={masks_dir}: no such directory')
  predict_2d.check_segmentations(config, segmentations_dir)
  predict_2d.check_output(output_dir, overwrite)
  name = config.predict.quality_model
  run_dirs.require_seg(workdir)
  run_dirs.require_quality(workdir, name)
  method, f_params = runner.load_f(config, workdir)
  model = registry.load(config, workdir, name)
  score = applicability.load(config, workdir)
  origin = predict_2d.provenance(config, workdir, name)
  rule, usable = volume_rule(config, model)
  calibrated = usable is not None and rule.warning is None  # e.g. no rule at this predict.alpha
  interval, interval_text = intervals.from_calibration(
      usable, config.predict.interval, config.predict.interval_alpha, config.predict.interval_floor,
      config.calibration.fraction, other_gate=bool(model.rules) and usable is None)
  notes = ([rule.warning] if rule.warning else [] if calibrated else
           [NOT_CALIBRATED.format(fail=config.eval.fail_dice)])
  notes += [f'Rule per volume: {rule.description}.', f'Per volume: {interval_text}.']
  if score is not None and (powerless := applicability.powerless_warning(len(score.reference_scores),
                                                                         config.predict.ood_alpha / 2)):
    notes.append(powerless)
  for note in notes:
    log.warning(note)
  predict_2d.prepare_output(output_dir)
  for sub in ('masks', 'maps', 'pages'):
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
  if segmentations_dir:
    run_pass = assess.make_outside_pass(method, f_params, model, external.channel_names(config),
                                        config.uncertainty.score_band_px, runner.cases_key(config))
  else:
    run_pass = assess.make_pass(method, f_params, model, runner.cases_key(config))
  whose, map_text = predict_2d.page_labels(config, segmentations_dir)
  learned = judged_cases.learned_kinds(workdir) if segmentations_dir else None
  t0 = time.time()
  rows, judged_all, vmax = [], {}, None
  for case in cases:
    row = dict.fromkeys(COLUMNS, '')
    row.update(case=case, run=predict_2d.provenance_text(origin))
    try:
      vol = volumes.read_case(input_dir, case, spec)
      outside = None
      if segmentations_dir:
        outside = judged_cases.read_outside_volume(config, segmentations_dir, case, spec, vol.shape,
                                                   vol.affine, learned)
      judged = judge_volume(config, vol, run_pass, score, outside)
      if outside is None:
        mask = volumes.to_volume(judged['masks'], vol.shape, nearest=True).astype(np.uint8)
      else:  # the outside model's own mask, as it wrote it
        mask = (outside[0] > 0.5).astype(np.uint8)
      umap = volumes.to_volume(judged['maps'].astype(np.float32), vol.shape, nearest=False).astype(np.float32)
      volumes.write_like(os.path.join(output_dir, 'masks', f'{case}{spec.file_ending}'), mask, vol)
      volumes.write_like(os.path.join(output_dir, 'maps', f'{case}_uncertainty{spec.file_ending}'), umap, vol)
    except volumes.VolumeError as e:
      row.update(status='unreadable', decision='review', error=str(e),
                 reason='the volume could not be read: not judged')
      rows.append(row)
      log.warning('%s', e)
      continue
    except Exception as e:  # pylint: disable=broad-except  (one case's failure is that case's row)
      log.exception('%s: not judged', case)
      row.update(status='error', decision='review', error=f'{type(e).__name__}: {e}',
                 reason='the volume could not be judged: not judged')
      rows.append(row)
      continue
    decision, reason = decide(judged, config, rule)
    row.update(status='ok', decision=decision, reason=reason, predicted_dice=f'{judged["dice"]:.5f}',
               predicted_jaccard=f'{overlap.jaccard_from_dice(judged["dice"]):.5f}',
               slices=len(judged['masks']), lesion_voxels=int(mask.sum()),
               mean_uncertainty=f'{float(judged["maps"].mean()):.5f}',
               applicability_p_median='' if judged['p_median'] is None else f'{judged["p_median"]:.5f}',
               gate_slices_share='' if judged['share'] is None else f'{judged["share"]:.3f}',
               gate_lesion_share='' if judged['lesion_share'] is None else f'{judged["lesion_share"]:.3f}',
               true_dice=_true_dice(masks_dir, vol, mask, spec),
               mask=f'masks/{case}{spec.file_ending}', map=f'maps/{case}_uncertainty{spec.file_ending}')
    rows.append(row)
    judged_all[case] = judged
    top = float(np.percentile(judged['maps'], 99.5))
    vmax = top if vmax is None else max(vmax, top)
  batch = volume_batch_test(config, score, judged_all, rows, notes)
  if interval is not None and not (batch and batch['rejected']):
    for row in rows:  # the interval holds for volumes like the calibration ones: not the gated ones
      if row['status'] == 'ok' and not judged_all[row['case']]['flagged']:
        low, high = interval.bounds(np.array([judged_all[row['case']]['dice']]))
        row.update(dice_low=f'{float(low[0]):.5f}', dice_high=f'{float(high[0]):.5f}')
  if segmentations_dir:
    for case in unmatched_predictions(segmentations_dir, cases, spec):
      row = dict.fromkeys(COLUMNS, '')
      row.update(case=case, status='error', decision='review', run=predict_2d.provenance_text(origin),
                 reason='a prediction without an input volume of that case: not judged',
                 error=f'{segmentations_dir}: {case} has a prediction but no {case}_0000{spec.file_ending} '
                       f'in {input_dir}')
      rows.append(row)
      log.warning('%s', row['error'])
  for case, judged in judged_all.items():
    draw_page(os.path.join(output_dir, 'pages', f'{case}.png'), case, judged, vmax or 1.0, whose)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, COLUMNS)
  writer.writeheader()
  writer.writerows(rows)
  artifacts.write_text(os.path.join(output_dir, 'predictions.csv'), buf.getvalue())
  title = (f'segqual-jax: {config.method} on the volumes of {os.path.basename(os.path.abspath(input_dir))}'
           + (f', judging {whose} segmentations from {segmentations_dir} (map: {map_text})'
              if segmentations_dir else ''))
  write_index(os.path.join(output_dir, 'index.html'), rows, title, notes)
  decisions = {d: sum(r['decision'] == d for r in rows) for d in ('pass', 'fail', 'review')}
  summary = {'volumes': len(cases), 'read': len(judged_all), 'unreadable': len(cases) - len(judged_all),
             'decisions': decisions, 'rule': rule.description, 'calibrated': calibrated,
             'interval': interval_text, 'notes': notes, 'provenance': origin,
             'segmentations': segmentations_dir or "f's own", 'batch_test': batch,
             'wall_time_s': round(time.time() - t0, 1)}
  with_truth = [r for r in rows if r['true_dice'] != '']
  if with_truth:
    true = np.array([float(r['true_dice']) for r in with_truth])
    accepted = np.array([r['decision'] == 'pass' for r in with_truth])
    summary['against_truth'] = {'volumes': len(with_truth), 'mean_true_dice': float(true.mean()),
                                'accepted': int(accepted.sum()),
                                'accepted_failures': int(np.sum(accepted & (true < config.eval.fail_dice)))}
  artifacts.write_json(os.path.join(output_dir, 'summary.json'), summary)
  log.info('predict: %d volumes, %d read; %s; outputs in %s', len(cases), len(judged_all), decisions, output_dir)
  if not judged_all:
    raise errors.PredictError(f'none of the {len(cases)} volumes in {input_dir} could be read; see '
                              f'{os.path.join(output_dir, "predictions.csv")}')
  return summary
