"""Assess image files: read them, run f and the quality model, one batch at a time.

The numbers half of ``--mode=predict`` (``render.py`` draws, ``predict.py``
orchestrates and writes, ``quality/policy.py`` decides), and the records
they share: a ``Case`` per file (what was assessed of it and its decision)
and one frozen ``PredictRun`` (what is the same for every case of a run). For the CNN quality models f and g run as **one jitted
pass** per batch: the images are normalised once, f's mask and map go
straight into g on the device, and only the results come back. Cheap QC and
RCA take f's outputs on the host. Each case is keyed by its file stem
(``core/keys.py``): an image gets the same map and the same predicted
quality alone, in any folder, at any position, and as in the evaluation of
a split whose case has that id.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import time
from typing import Callable, Iterator

import jax
import numpy as np

from segqual_jax.core import keys, parallel, runtime
from segqual_jax.data import images as image_io
from segqual_jax.data import pipeline, segmentations
from segqual_jax.metrics import overlap
from segqual_jax.quality import error_map, interval as intervals, policy, registry
from segqual_jax.segmenter import external, runner

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0  # the progress line's interval (an archive's 3,000 batches would be 3,000 lines)


@dataclasses.dataclass(slots=True)
class Case:
  """One input file and what was assessed of it (numbers in both units, maps at model size).

  The arrays live only while the case's chunk is judged (``predict``); what is
  decided and reported afterwards are the numbers and strings, which a journal
  line keeps (``progress.py``): 100,000 cases are decided without their images."""
  file: str  # path relative to --input ('/'-separated)
  status: str = 'ok'  # 'ok' or 'error: <what is wrong with the file>'
  image: np.ndarray | None = None  # (S, S, 3) uint8: what f saw
  native_size: tuple[int, int] | None = None  # (width, height) of the file as shown
  mask: np.ndarray | None = None  # (S, S) uint8: f's segmentation
  probs: np.ndarray | None = None  # (S, S) float32: f's p(lesion), resampled for other sizes
  map: np.ndarray | None = None  # (S, S) float32: f's uncertainty map
  error_map: np.ndarray | None = None  # (S, S) float32: P(pixel of the reviewed mask wrong), if fitted
  predicted_dice: float | None = None
  predicted_jaccard: float | None = None
  true_dice: float | None = None
  true_jaccard: float | None = None
  dice_low: float | None = None  # the conformal interval of the predicted Dice (None: not given)
  dice_high: float | None = None
  features: np.ndarray | None = None  # (D,) f's pooled encoder statistics (applicability)
  applicability: float | None = None  # the applicability score (higher = less like f's cases)
  applicability_p: float | None = None  # its conformal p-value against the reference cases
  batch_score: float | None = None  # the batch test's score of it (applicability.batch_views)
  stream_p: float | None = None  # the stream monitor's online p-value of it (--monitor)
  # another model's segmentation under review, at the image's size (None: f's own is judged)
  segmentation: segmentations.Segmentation | None = None
  decision: policy.Decision | None = None  # set by predict once the run's gate has been applied
  name: str | None = None  # the stem of its output files (maps/, masks/), unique in the run
  mean_uncertainty: float | None = None  # the map's mean
  notes: list[str] = dataclasses.field(default_factory=list)  # what was done to the segmentation under review
  content: str | None = None  # digest of the pixels f saw (the stream monitor feeds an image once)
  chunk: str | None = None  # the saved chunk that holds its map (predict's journal, progress.py)

  @property
  def ok(self) -> bool:
    return self.status == 'ok'

  @property
  def stem(self) -> str:
    """The case id: the file's name without folder or extension."""
    return os.path.splitext(os.path.basename(self.file))[0]

  def predicted(self, target: str) -> float | None:
    """The predicted quality in ``target`` units (what the rule's threshold is in)."""
    return self.predicted_jaccard if target == 'jaccard' else self.predicted_dice

  def drop_arrays(self) -> None:
    """Forgets the images, maps and features (kept: every number, the decision's inputs)."""
    self.image = self.mask = self.probs = self.map = self.features = self.segmentation = None
    self.error_map = None

  @property
  def reviewed(self) -> segmentations.Segmentation:
    """The segmentation under review: the outside model's at the image's size, or f's
    p(lesion) at the model's size."""
    if self.segmentation is not None:
      return self.segmentation
    return segmentations.Segmentation(self.probs, 'probabilities')

  def mask_at(self, shape: tuple[int, int]) -> np.ndarray:
    """The segmentation under review at ``shape`` (H, W): f's p(lesion) upsampled bilinearly,
    then > 0.5 -- the mask of the image at its own resolution, not an enlarged 64-px copy."""
    return segmentations.to_shape(self.reviewed, shape).mask

  @property
  def native_mask(self) -> np.ndarray:
    """The segmentation under review at the input file's own size."""
    width, height = self.native_size
    return self.mask_at((height, width))


@dataclasses.dataclass(frozen=True)
class PredictRun:
  """What is the same for every case of one predict run: how it was decided, by what, and
  how it is shown. Built once by predict; the CSV, the HTML and the summary read it."""
  title: str  # the page's title
  rule: policy.DecisionRule  # the auto-accept rule that decided
  gate: policy.Gate  # the applicability gate and the batch test's verdict
  provenance: dict  # what judged the cases (predict.provenance)
  provenance_text: str  # the same in one line (every CSV row, the page)
  warnings: tuple[str, ...]  # shown above everything: suspension, no calibration, synthetic data
  quality_model: str  # the quality model's name
  target: str  # the quality model's units (dice | jaccard): the rule's threshold is in them
  vmax: float  # the top of the run's one colour scale for the maps
  whose: str  # whose segmentations were judged ("f's", "the outside model's")
  map_label: str  # which map is shown
  with_truth: bool  # true masks were given (--masks)
  with_error_map: bool = False  # the run has an error map: a fourth picture per case
  interval: intervals.Interval | None = None  # the conformal interval of the predicted Dice
  interval_text: str = ''  # what the interval promises, or why there is none


@dataclasses.dataclass(frozen=True)
class Reader:
  """How predict reads its files: from where, at which model size, in which batches, and
  with which true masks and outside segmentations."""
  root: str  # the folder the file paths are relative to
  size: int  # the model's image side
  batch_size: int  # cases per pass (padded; any size gives the same numbers)
  # case -> its true mask at the mask file's own size, or None (--masks): the true
  # Dice/Jaccard compare the judged mask resampled to it
  truth: Callable[[Case], np.ndarray | None] = lambda case: None
  # with another model's segmentations, case -> its segmentation at the image's size;
  # a SegmentationError makes the case a row naming the problem
  outside: Callable[[Case], segmentations.Segmentation] | None = None


def _with_units(out: dict, target: str) -> dict:
  """The pass's outputs with the predicted quality in both units (``dice``, ``jaccard``)."""
  quality = np.asarray(out['quality'], np.float64)
  dice = np.asarray(overlap.as_dice(quality, target))
  jaccard = quality if target == 'jaccard' else np.asarray(overlap.jaccard_from_dice(quality))
  return {**out, 'dice': dice, 'jaccard': jaccard}


def make_pass(method, f_params, model: registry.QualityModel, base_key: jax.Array) -> Callable:
  """``(uint8 images, case hashes, None) -> {'masks', 'maps', 'features', 'dice', 'jaccard', ...}``
  (numpy) for one padded batch, each case keyed from ``base_key`` by its hash: f and a CNN g
  fused in one jit, or f jitted and then the host quality model."""
  f_fn = runner.method_case_fn(method, with_scores=model.needs_scores, with_features=True,
                               with_probs=True)
  f_params = parallel.replicate(f_params)
  if model.device_fn is not None:
    g_params = parallel.replicate(model.device_params)

    @jax.jit
    def fused(f_p, g_p, images, hashes, base_key):
      x = pipeline.to_float(images)
      out = f_fn(f_p, x, keys.case_keys(base_key, hashes))
      return {**out, 'quality': model.device_fn(g_p, x, out['masks'], out['maps'])}

    def run(images, hashes, seg_probs=None):
      del seg_probs  # f's own segmentation is judged
      out = parallel.fetch(fused(f_params, g_params, *parallel.shard_batch((images, hashes)), base_key))
      return _with_units(out, model.target)
    return run

  f_batch = runner.batch_fn(f_fn)

  def run_host(images, hashes, seg_probs=None):
    del seg_probs
    out = parallel.fetch(f_batch(f_params, *parallel.shard_batch((images, hashes)), base_key))
    return _with_units({**out, 'quality': model.predict(images, out)}, model.target)
  return run_host


def with_error_map(run_pass: Callable, model) -> Callable:
  """``run_pass`` whose outputs also hold ``'errors'``: the error map (``quality/error_map.py``)
  of each case's reviewed mask -- f's or the outside model's, whichever the pass judged --
  computed on the host from the pass's own masks, p(lesion) and maps."""
  if model is None:
    return run_pass

  def run(images, hashes, seg_probs=None):
    out = run_pass(images, hashes, seg_probs)
    features = error_map.pixel_features(images, out['masks'], out['probs'], out['maps'])
    return {**out, 'errors': model.predict(features)}
  return run


def make_outside_pass(method, f_params, model: registry.QualityModel, channels: tuple[str, ...],
                      band_px: int, base_key: jax.Array) -> Callable:
  """``(uint8 images, case hashes, seg_probs (B, S, S)) -> {...}`` for another model's
  segmentations: f (the surrogate) jitted, then what the quality model sees of each
  segmentation (``external.judge``, as in stage 2), then the quality model."""
  f_batch = runner.batch_fn(runner.method_case_fn(method, with_scores=True, with_features=True,
                                                  with_probs=True))
  f_params = parallel.replicate(f_params)

  def run(images, hashes, seg_probs):
    out = parallel.fetch(f_batch(f_params, *parallel.shard_batch((images, hashes)), base_key))
    out = jax.tree.map(np.asarray, out)
    seen = external.judge(channels, band_px, seg_probs, out['probs'], out['maps'], out['scores'])
    return _with_units({**out, **seen, 'quality': model.predict(images, seen)}, model.target)
  return run


@dataclasses.dataclass
class Timing:
  """Where a predict's time went: reading and decoding files (in threads), waiting for
  them, and the passes of f and g. ``wait_share`` is the share of the pass loop spent
  waiting for decoded images -- the device idle because PIL is slower."""
  read_s: float = 0.0  # summed over the reading threads
  wait_s: float = 0.0  # the loop blocked on a batch still being read
  compute_s: float = 0.0  # f and g, results fetched

  @property
  def wait_share(self) -> float:
    return self.wait_s / max(self.wait_s + self.compute_s, 1e-9)

  def as_dict(self) -> dict:
    return {'read_s': round(self.read_s, 2), 'wait_s': round(self.wait_s, 2),
            'compute_s': round(self.compute_s, 2), 'wait_share': round(self.wait_share, 4)}


def _load(case: Case, reader: Reader) -> float:
  """Reads one case's image (and outside segmentation) in place; an unreadable file sets
  its status. Returns the seconds it took (run in a reading thread)."""
  t0 = time.perf_counter()
  try:
    path = os.path.join(reader.root, case.file)
    case.image = image_io.read_image(path, reader.size)
    case.native_size = image_io.native_size(path)
    if reader.outside is not None:
      case.segmentation = reader.outside(case)
      case.notes = list(case.segmentation.notes)
  except image_io.ImageError as e:
    case.image, case.status = None, f'error: {e.reason}'
    log.warning('skipping %s', e)
  except segmentations.SegmentationError as e:
    case.image, case.status = None, f'error: segmentation {e}'
    log.warning('skipping %s: segmentation %s', case.file, e)
  return time.perf_counter() - t0


def assess_batches(files: list[str], reader: Reader, run_pass: Callable, threads: int = 4,
                   timing: Timing | None = None) -> Iterator[list[Case]]:
  """The cases of ``files``, judged one batch at a time and yielded batch by batch, in order;
  an unreadable file becomes a case with its reason.

  While f and g run on one batch, ``threads`` threads read and decode the
  next (PIL releases the GIL while it decodes): the device does not wait for
  the disk unless decoding is slower than the pass (``timing`` measures it).
  Memory holds two batches' images, however many files there are.

  Args:
    files: paths relative to ``reader.root`` (or ``[basename]`` for one file).
    reader: where and how the files, true masks and outside segmentations are read.
    run_pass: from ``make_pass`` (or ``make_outside_pass`` with ``reader.outside``).
  """
  timing = timing if timing is not None else Timing()
  size, batch_size = reader.size, reader.batch_size
  starts = list(range(0, len(files), batch_size))
  t0, done, logged = time.time(), 0, time.time()
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    def submit(start):
      chunk = [Case(file=f) for f in files[start:start + batch_size]]
      return chunk, [pool.submit(_load, c, reader) for c in chunk]
    pending = submit(starts[0]) if starts else None
    for k in range(len(starts)):
      chunk, futures = pending
      t_wait = time.perf_counter()
      timing.read_s += sum(f.result() for f in futures)
      timing.wait_s += time.perf_counter() - t_wait
      pending = submit(starts[k + 1]) if k + 1 < len(starts) else None
      loaded = [c for c in chunk if c.ok]
      if loaded:
        t_pass = time.perf_counter()
        images = np.zeros((batch_size, size, size, 3), np.uint8)
        images[:len(loaded)] = np.stack([c.image for c in loaded])
        hashes = np.zeros((batch_size, keys.HASH_WORDS), np.uint32)
        hashes[:len(loaded)] = keys.case_hashes([c.stem for c in loaded])
        seg_probs = None
        if reader.outside is not None:
          seg_probs = np.zeros((batch_size, size, size), np.float32)
          seg_probs[:len(loaded)] = [segmentations.to_shape(c.segmentation, (size, size)).probs
                                     for c in loaded]
        out = run_pass(images, hashes, seg_probs)
        timing.compute_s += time.perf_counter() - t_pass
        for i, case in enumerate(loaded):
          maps = np.asarray(out['maps'][i], np.float32)
          case.mask, case.map = np.asarray(out['masks'][i]), maps if maps.ndim == 2 else maps[..., 0]
          case.mean_uncertainty = float(case.map.mean())
          case.probs = np.asarray(out['probs'][i], np.float32)
          case.error_map = np.asarray(out['errors'][i], np.float32) if 'errors' in out else None
          case.features = np.asarray(out['features'][i], np.float32)
          case.predicted_dice, case.predicted_jaccard = float(out['dice'][i]), float(out['jaccard'][i])
          case.content = hashlib.sha256(case.image.tobytes()).hexdigest()[:24]
          true_mask = reader.truth(case)
          if true_mask is not None:  # at the truth's resolution: the user's bar is Dice of their masks
            case.true_dice, case.true_jaccard = external.native_overlaps(case.reviewed, true_mask)
      done += len(chunk)
      if done == len(files) or time.time() - logged >= LOG_EVERY_S:
        logged, rate = time.time(), done / max(time.time() - t0, 1e-9)
        log.info('predict %d/%d files | %.1f files/s | ETA %s', done, len(files), rate,
                 runtime.format_duration((len(files) - done) / rate))
      yield chunk


def assess(files: list[str], reader: Reader, run_pass: Callable) -> list[Case]:
  """Every file assessed, in order, arrays kept (``assess_batches`` gathered)."""
  return [case for batch in assess_batches(files, reader, run_pass) for case in batch]
