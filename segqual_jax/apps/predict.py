"""``--mode=predict``: the clinical job -- f and g on images nobody delineated.

For every image file of ``--input`` (one file, or a folder and its
subfolders, by extension) it writes one row of ``predictions.csv``: the
predicted Dice and Jaccard of f's segmentation, the decision and why, the
rule that made it, the mean uncertainty, the applicability score and its
p-value, the run that judged it, and a status that is ``ok`` or names what
was wrong with the file.

Three decisions (``quality/policy.decide``, the policy calibration and the
evaluation apply too), in this order:

* ``review`` -- the case is outside what the run can judge: its applicability
  p-value is below ``predict.ood_alpha`` (another modality, a corrupted or odd
  image), or the batch test found the run's cases as a whole unlike the
  in-distribution cases and ``predict.on_shift`` is ``suspend`` (with
  ``review_unusual`` only the run's cases Benjamini-Hochberg picks), or the
  stream monitor (``--monitor``) has alarmed. Never
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
creates ``--output``; then two passes, so that memory does not grow with the
folder:

1. **judge** (``judge``): ``assess.assess_batches`` reads each batch in
   threads and runs f and g in one pass; each chunk of
   ``predict.chunk_cases`` cases gets its applicability score and p-value,
   its masks (``masks/``), its maps saved for drawing, and one journal line
   per case (``progress.py``) -- then its arrays are dropped. A run killed
   at any point and started again with the same command continues after the
   last complete chunk; another run or config is refused.
2. **decide and report**: from the journal's numbers alone, the batch test,
   the stream monitor and ``policy`` decide each case; one frozen
   ``assess.PredictRun`` (rule, gate, provenance, warnings, units, colour
   scale, labels) is what ``render`` draws (``predict.maps``: every case,
   the flagged ones, or none) and ``write_csv``, ``write_report`` and
   ``summarise`` write.

With ``config.runtime.distributed`` each process judges every P-th file on
its own devices (no collectives: a case's numbers are its own) and writes
its own journal; after a barrier process 0 decides and reports them all.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from typing import Iterator

import numpy as np

from segqual_jax.apps import assess, progress, render
from segqual_jax.config import stages
from segqual_jax.core import artifacts, parallel, workdir as run_dirs
from segqual_jax.core.errors import PredictError  # noqa: F401  (raised here; tests match it)
from segqual_jax.data import images as image_io
from segqual_jax.data import segmentations as seg_io
from segqual_jax.evaluation import report
from segqual_jax.metrics import overlap, quality as quality_metrics
from segqual_jax.quality import applicability, error_map, interval as intervals, monitor, policy, registry
from segqual_jax.segmenter import external, runner

log = logging.getLogger(__name__)

COLUMNS = ('file', 'predicted_dice', 'predicted_jaccard', 'dice_low', 'dice_high', 'jaccard_low',
           'jaccard_high', 'decision', 'reason', 'decision_rule',
           'mean_uncertainty', 'applicability_score', 'applicability_p', 'stream_p', 'status', 'notes',
           'run')
TRUE_COLUMNS = ('true_dice', 'true_jaccard')
OWN_FILES = ('predictions.csv', 'index.html', 'summary.json', render.MAPS_DIR, render.MASKS_DIR,
             render.PAGES_DIR, progress.DIR)


def score_cases(score: applicability.Applicability | None, cases) -> None:
  """Each readable case's applicability score and p-value (``case.applicability``,
  ``case.applicability_p``) and the batch test's score of it (``case.batch_score``), from its
  features: a case's own numbers, chunk by chunk."""
  ok = [c for c in cases if c.ok]
  if score is None or not ok:
    return
  features = np.stack([c.features for c in ok])
  values = score.score(features)
  for case, value, p, batch in zip(ok, values, score.pvalues(values), score.batch_score(features)):
    case.applicability, case.applicability_p, case.batch_score = float(value), float(p), float(batch)


def apply_gate(config, score: applicability.Applicability | None, cases) -> policy.Gate:
  """The run's gate with the batch test's verdict (``policy.batch_verdict``) over the
  readable cases' scores (``score_cases`` first, for cases not scored yet)."""
  if score is None:
    return policy.Gate(0.0)
  score_cases(score, [c for c in cases if c.ok and c.applicability is None])
  values = np.array([c.batch_score for c in cases if c.ok], np.float64)
  return policy.Gate(config.predict.ood_alpha,
                     policy.batch_verdict(values, score.batch_references, config.predict))


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
  """Refuses a non-empty ``output_dir`` unless ``overwrite`` or it holds an unfinished run
  to resume (``progress.py``; whether it is *this* run is checked next). Creates nothing."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise PredictError(f'--output={output_dir} is a file, not a folder')
  unfinished = os.path.isdir(os.path.join(output_dir, progress.DIR))
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite and not unfinished:
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
  if os.path.isdir(output_dir):  # temporary files of a write killed midway (artifacts.write_atomic)
    for name in os.listdir(output_dir):
      if any(name.startswith(own + '.') and '.tmp' in name for own in OWN_FILES):
        os.remove(os.path.join(output_dir, name))
  os.makedirs(output_dir, exist_ok=True)


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


def _jaccard(dice: float | None) -> float | None:
  return None if dice is None else float(overlap.jaccard_from_dice(dice))


def give_intervals(interval: intervals.Interval | None, judged, gate: policy.Gate) -> None:
  """Each decided case's interval of its predicted Dice (``case.dice_low``, ``dice_high``),
  behind the gate as the rules are: none for a case sent to review, and none in a run the
  batch test rejects or after a stream-monitor alarm -- the interval holds for cases like
  the calibration cases, and there the run says they are not."""
  if interval is None or (gate.batch and gate.batch['rejected']) or gate.monitor_alarm:
    return
  decided = [c for c in judged if c.decision.decision in ('pass', 'fail')]
  low, high = interval.bounds(np.array([c.predicted_dice for c in decided], np.float64))
  for case, lo, hi in zip(decided, low, high):
    if np.isfinite(lo):
      case.dice_low, case.dice_high = float(lo), float(hi)


def write_csv(path: str, cases, run: assess.PredictRun) -> None:
  """``predictions.csv``: a row per file (``COLUMNS``, and the true overlaps with --masks),
  streamed to a temporary file and renamed (no copy of 100,000 rows in memory)."""
  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(COLUMNS + (TRUE_COLUMNS if run.with_truth else ()))
      for c in cases:
        d = c.decision
        line = [c.file, _fmt(c.predicted_dice), _fmt(c.predicted_jaccard), _fmt(c.dice_low),
                _fmt(c.dice_high), _fmt(_jaccard(c.dice_low)), _fmt(_jaccard(c.dice_high)),
                d.decision if d else '',
                d.reason if d else '', run.rule.description if c.ok else '', _fmt(c.mean_uncertainty),
                _fmt(c.applicability), _fmt(c.applicability_p), _fmt(c.stream_p), c.status,
                '; '.join(c.notes), run.provenance_text]
        if run.with_truth:
          line += [_fmt(c.true_dice), _fmt(c.true_jaccard)]
        writer.writerow(line)
  artifacts.write_atomic(path, write, suffix='.tmp.csv')


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


def open_monitor(path: str, score: applicability.Applicability | None) -> monitor.Monitor:
  """The stream monitor's state in ``path``, checked to watch this run's gate (``PredictError``
  naming the file otherwise: a missing or broken state never restarts silently)."""
  if score is None:
    raise PredictError(f'--monitor={path}: the stream monitor tests the applicability scores, and '
                       'this run has the gate off (predict.ood_alpha=0)')
  try:
    return monitor.Monitor.load(path, score.reference_scores)
  except monitor.MonitorError as e:
    raise PredictError(f'--monitor={e}') from None


def watch(path: str, score: applicability.Applicability, cases, gate: policy.Gate) -> policy.Gate:
  """Feeds every readable case, in order, to the stream monitor (``case.stream_p``; an image
  already in the stream is not fed again) under the state's lock -- read, update, write --
  and returns the gate with the monitor's verdict: once it has alarmed, in an earlier call
  or in this one, no case of this call is auto-accepted."""
  with monitor.locked(path):
    state = open_monitor(path, score)  # again, under the lock: another predict may have added cases
    for case in cases:
      if case.ok:
        case.stream_p = state.update(score.reference_scores, case.applicability, case.stem, case.content)
    state.save(path)
  return dataclasses.replace(gate, monitor=state.status_text(), monitor_alarm=state.alarmed)


# Settings that do not change any case's numbers: a resumed run may change them (a smaller
# chunk or batch after running out of memory, another page size or drawing choice).
RESUMABLE_WITH_OTHER = ('predict.chunk_cases', 'predict.read_threads', 'predict.maps', 'predict.page_size',
                        'seg.eval_batch_size', 'runtime.distributed', 'runtime.coordinator_address',
                        'runtime.num_processes', 'runtime.process_id', 'logging.')


def run_identity(config, workdir: str, root: str, files: list[str], masks_dir, segmentations_dir,
                 origin: dict) -> dict:
  """What makes an output folder this run's (``progress.Journal``): the trained run (its
  provenance, which names its checkpoints' steps and config digest), every setting of the
  config but those in ``RESUMABLE_WITH_OTHER`` (``runtime.matmul_precision`` counts: on a
  GPU it moves a map by ~1e-3), the input folder and its file list, the masks and
  segmentations given. Any difference on a rerun is refused by name."""
  settings = {k: v for k, v in stages.flatten(config).items()
              if not any(k == r or (r.endswith('.') and k.startswith(r)) for r in RESUMABLE_WITH_OTHER)}
  return {'run': origin, 'input': os.path.realpath(root), 'files': len(files),
          'files_digest': progress.files_digest(files),
          'masks': os.path.realpath(masks_dir) if masks_dir else None,
          'segmentations': os.path.realpath(segmentations_dir) if segmentations_dir else None,
          'config_digest': hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:16]}


def record_of(case: assess.Case) -> dict:
  """A case's journal line: its numbers and strings (``progress.FIELDS``)."""
  return {f: getattr(case, f) for f in progress.FIELDS}


def case_of(record: dict) -> assess.Case:
  """The case a journal line describes (no arrays: they stay in the chunk files)."""
  fields = {f: record[f] for f in progress.FIELDS}
  if fields['native_size'] is not None:
    fields['native_size'] = tuple(fields['native_size'])
  return assess.Case(**fields)


def judge(config, files: list[str], reader: assess.Reader, run_pass, score, journal: progress.Journal,
          output_dir: str, names: dict[str, str]) -> assess.Timing:
  """Pass 1: every file of this process's share not yet in its journal, judged in chunks of
  ``predict.chunk_cases``; each chunk's masks, maps and journal lines are written before
  the next is read, and its arrays dropped (``progress.py``)."""
  done = {r['file'] for r in journal.records()}  # any process's: a rerun may split the files otherwise
  todo = [f for f in files if f not in done]
  if done:
    log.info('%d of %d files already judged; %d to go', len(files) - len(todo), len(files), len(todo))
  timing, pending, chunk = assess.Timing(), [], journal.next_chunk()

  def flush():
    nonlocal chunk
    if not pending:
      return
    for case in pending:
      case.name, case.chunk = names[case.file], journal.chunk_id(chunk) if case.ok else None
    score_cases(score, pending)
    render.write_masks(output_dir, pending)
    ok = [c for c in pending if c.ok]
    if ok:
      errors = [c.error_map for c in ok]
      journal.save_chunk(chunk, [c.name for c in ok], np.stack([c.map for c in ok]),
                         np.stack([c.probs for c in ok]),
                         None if any(e is None for e in errors) else np.stack(errors))
    journal.append([record_of(c) for c in pending])
    for case in pending:
      case.drop_arrays()
    pending.clear()
    chunk += 1

  for batch in assess.assess_batches(todo, reader, run_pass, config.predict.read_threads, timing):
    pending.extend(batch)
    if len(pending) >= config.predict.chunk_cases:
      flush()
  flush()
  log.info('judged %d files: reading %.1f s (in %d threads), passes %.1f s, the passes waited %.1f s '
           'for decoding (%.1f %%)', len(todo), timing.read_s, config.predict.read_threads,
           timing.compute_s, timing.wait_s, 100 * timing.wait_share)
  return timing


def _chunks(journal: progress.Journal, cases) -> Iterator[tuple[list, np.ndarray, np.ndarray, list]]:
  """``(cases, their maps, their p(lesion), their error maps or Nones)`` of each saved chunk,
  with only the entries whose journal line names that chunk (``cases``: their ``chunk`` per name)."""
  home = {c.name: c.chunk for c in cases}
  for chunk, path in journal.chunk_files():
    names, maps, probs, errors = progress.load_chunk(path)
    keep = [i for i, n in enumerate(names) if home.get(n) == chunk]
    if keep:
      yield ([names[i] for i in keep], maps[keep], probs[keep],
             [None if errors is None else errors[i] for i in keep])


def colour_scale(journal: progress.Journal, cases) -> float:
  """The run's map colour-scale top (``render.MapScale``) of the readable ``cases``, read
  chunk by chunk."""
  scale = render.MapScale()
  for _, maps, _, _ in _chunks(journal, cases):
    scale.add(maps)
  return scale.top()


def draw(output_dir: str, journal: progress.Journal, cases: dict, vmax: float, reader: assess.Reader,
         truth) -> set[str]:
  """Pass 2's drawing: the maps of ``cases`` (by name), from the chunk files, and the colour
  bar. Returns the names drawn (a file gone or broken since it was judged is not)."""
  render.write_scale(output_dir)
  drawn = set()
  for names, maps, probs, errors in _chunks(journal, cases.values()):
    for name, umap, p, error in zip(names, maps, probs, errors):
      case = cases.get(name)
      if case is None:
        continue
      case.map, case.probs, case.error_map = umap, p, error
      try:
        if reader.outside is not None:
          case.segmentation = reader.outside(case)
        if render.draw_case(output_dir, case, vmax, reader.root, truth):
          drawn.add(name)
      except (seg_io.SegmentationError, image_io.ImageError) as e:
        log.warning('%s: not drawn (%s)', case.file, e)
      case.drop_arrays()
  return drawn


def predict(config, workdir: str, input_path: str, output_dir: str,
            masks_dir: str | None = None, overwrite: bool = False,
            segmentations_dir: str | None = None, monitor_path: str | None = None) -> dict:
  """Assesses every image of ``input_path``; writes ``output_dir``. Returns the summary.

  With ``segmentations_dir``, the segmentations judged are another model's
  (``<stem>.png|.npy`` beside each image's stem); f is the surrogate. With
  ``monitor_path``, the cases also feed the stream monitor kept there
  (``quality/monitor.py``). Every check runs before ``output_dir`` is
  touched, so a refused run leaves nothing behind to refuse the retry.
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
  errors_model = error_map.for_run(config, workdir)
  score = applicability.load(config, workdir)
  rule = policy.decision_rule(config, model)
  origin = provenance(config, workdir, name)
  if monitor_path:
    open_monitor(monitor_path, score)  # refused before --output is touched
  powerless = None if score is None else applicability.powerless_warning(
      len(score.reference_scores), config.predict.ood_alpha)
  warnings = [w for w in (rule.warning, powerless, synthetic_warning(config)) if w]
  for w in warnings:
    log.warning(w)
  log.info('decision rule: %s; judged by %s', rule.description, provenance_text(origin))
  process, processes = parallel.process_share()
  journal = progress.Journal(output_dir, run_identity(config, workdir, root, files, masks_dir,
                                                      segmentations_dir, origin), process)
  resumed = None
  if process == 0:  # alone, before any process writes: the others' writes are never swept away
    if overwrite and not journal.is_this_run():  # the same command with --overwrite resumes too
      prepare_output(output_dir)
    resumed = journal.start_or_resume()
    if resumed:
      swept = progress.remove_temporaries(output_dir, (render.MASKS_DIR, render.MAPS_DIR, progress.DIR))
      log.info('%s: resuming an unfinished run of this command (%d files judged; %d temporary files '
               'of interrupted writes removed)', output_dir, sum(1 for _ in journal.records()), swept)
  parallel.barrier('predict: output prepared')
  if resumed is None:
    resumed = journal.start_or_resume()

  t0 = time.time()
  reader = assess.Reader(root, config.data.image_size, config.seg.eval_batch_size,
                         truth=_truth_reader(masks_dir),
                         outside=outside_reader(config, segmentations_dir) if segmentations_dir else None)
  names = render.case_names(files)
  with parallel.independent(processes > 1):  # a process's share is its own: no collectives
    base_key = runner.cases_key(config)
    if segmentations_dir:
      run_pass = assess.make_outside_pass(method, f_params, model, external.channel_names(config),
                                          config.uncertainty.score_band_px, base_key)
    else:
      run_pass = assess.make_pass(method, f_params, model, base_key)
    run_pass = assess.with_error_map(run_pass, errors_model)
    timing = judge(config, files[process::processes], reader, run_pass, score, journal, output_dir, names)
  parallel.barrier('predict: every share judged')
  if process != 0:
    return {'process': process, 'judged': sum(1 for _ in journal.records(process)),
            'timing': timing.as_dict()}

  by_file = {r['file']: case_of(r) for r in journal.records()}
  missing = [f for f in files if f not in by_file]
  if missing:
    raise PredictError(f'{len(missing)} file(s) have no judgement in {journal.dir} (first: {missing[0]}); '
                       'with several processes --output must be one folder every host writes to')
  cases = [by_file.pop(f) for f in files]  # the input's order, whichever process judged it
  if segmentations_dir:
    cases += extra_segmentations(segmentations_dir, cases)
  gate = apply_gate(config, score, cases)
  if gate.batch and gate.batch['rejected']:
    warnings.insert(0, policy.shift_text(gate.batch))
    log.warning(warnings[0])
  if monitor_path:
    gate = watch(monitor_path, score, cases, gate)
    if gate.monitor_alarm:
      warnings.insert(0, gate.monitor)
    (log.warning if gate.monitor_alarm else log.info)(gate.monitor)
  judged = [c for c in cases if c.ok]
  picked = policy.unusual(np.array([c.applicability_p if c.applicability_p is not None else 1.0
                                    for c in judged]), gate)
  for case, is_unusual in zip(judged, picked):
    case.decision = policy.decide(case.predicted(model.target), case.applicability_p, rule, gate,
                                  bool(is_unusual))
  usable = policy.usable_rules(model.rules, config)
  interval, interval_text = intervals.from_calibration(
      usable, config.predict.interval, config.predict.interval_alpha, config.predict.interval_floor,
      config.calibration.fraction, other_gate=bool(model.rules) and usable is None)
  give_intervals(interval, judged, gate)
  whose, map_label = page_labels(config, segmentations_dir)
  to_draw = {c.name for c in judged if config.predict.maps == 'all'
             or (config.predict.maps == 'flagged' and c.decision.decision != 'pass')}
  run = assess.PredictRun(
      title=f'segqual-jax: {config.method} on {os.path.basename(os.path.abspath(input_path))}',
      rule=rule, gate=gate, provenance=origin, provenance_text=provenance_text(origin),
      warnings=tuple(warnings), quality_model=name, target=model.target,
      vmax=colour_scale(journal, judged), whose=whose, map_label=map_label,
      with_truth=bool(masks_dir), interval=interval, interval_text=interval_text,
      with_error_map=errors_model is not None)
  to_draw = draw(output_dir, journal, {c.name: c for c in judged if c.name in to_draw}, run.vmax, reader,
                 _truth_reader(masks_dir, warn=False))
  write_csv(os.path.join(output_dir, 'predictions.csv'), cases, run)
  pages = render.write_report(output_dir, cases, run, config.predict.page_size, to_draw)
  summary = summarise(config, cases, run, time.time() - t0)
  summary.update({'report_pages': pages, 'maps_drawn': len(to_draw), 'maps': config.predict.maps,
                  'resumed': resumed, 'processes': processes, 'timing': timing.as_dict()})
  artifacts.write_json(os.path.join(output_dir, 'summary.json'), summary)
  journal.remove()
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


def interval_summary(run: assess.PredictRun, decided) -> dict:
  """The interval's settings and promise, how many cases got one, and with masks how many
  of those it covered and its mean width."""
  given = [c for c in decided if c.dice_low is not None]
  out = {'text': run.interval_text, 'cases_with_interval': len(given)}
  if run.interval is not None:
    out.update(run.interval.to_json())
  truth = [c for c in given if c.true_dice is not None]
  if truth:
    inside = [c.dice_low <= c.true_dice <= c.dice_high for c in truth]
    out.update({'cases_with_truth': len(truth), 'coverage': float(np.mean(inside)),
                'mean_width': float(np.mean([c.dice_high - c.dice_low for c in truth]))})
  return out


def summarise(config, cases, run: assess.PredictRun, wall_time_s: float) -> dict:
  """``summary.json``: counts per decision, the rule, the gate and the batch test, the run's
  provenance, every warning, and with masks the paper's metrics."""
  n_ok = sum(c.ok for c in cases)
  decided = [c for c in cases if c.ok]
  counts = {d: sum(c.decision.decision == d for c in decided) for d in policy.DECISIONS}
  summary = {'files': len(cases), 'read': n_ok, 'unreadable': len(cases) - n_ok,
             'decisions': counts, 'predicted_fail': counts['fail'],
             'threshold_dice': config.eval.fail_dice, 'decision_rule': run.rule.description,
             'quality_model': run.quality_model, 'warnings': list(run.warnings),
             'applicability': {'ood_alpha': run.gate.ood_alpha, 'score': config.applicability.score,
                               'flagged': sum(c.decision.flagged for c in decided),
                               'batch_test': run.gate.batch},
             'monitor': run.gate.monitor,
             'interval': interval_summary(run, decided),
             'provenance': run.provenance, 'wall_time_s': round(wall_time_s, 1)}
  truth = [c for c in decided if c.true_dice is not None]
  if truth:
    pred = np.array([c.predicted(run.target) for c in truth])
    true_dice = np.array([c.true_dice for c in truth])
    summary['metrics'] = quality_metrics.all_metrics(
        pred, true_dice, np.array([c.true_jaccard for c in truth]),
        run.target, config.eval.fail_dice, config.eval.fail_jaccard)
    summary['cases_with_truth'] = len(truth)
    accepted = np.array([c.decision.decision == 'pass' for c in truth])
    failed = true_dice < config.eval.fail_dice
    summary['decisions_against_truth'] = {
        'true_fail_rate': float(failed.mean()), 'automation_rate': float(accepted.mean()),
        'accepted': int(accepted.sum()), 'accepted_failures': int((accepted & failed).sum()),
        'accepted_failure_rate': float((accepted & failed).sum() / accepted.sum()) if accepted.any() else None}
  return summary
