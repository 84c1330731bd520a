"""The cases every quality model judges: the segmentation under review, what g sees, the truth.

Stage 2, the evaluation and the experiments get a split's cases here, never
from f's cache directly, so one rule holds everywhere:

* **Which segmentation.** f's own (``runner.cached_outputs``), or with
  ``external.predictions`` another model's, read from that folder
  (``<id>.png|.npy``, ``data/segmentations.py``) at its image's size; for an
  nnU-Net data set, an nnU-Net prediction folder of volumes cut into the
  slices f sees (``read_outside_volumes``). f still
  runs on every case: it is the surrogate whose map, disagreement and scores
  g and cheap QC may see (``external.judge``), and its encoder features feed
  the applicability gate. A case without a readable segmentation is dropped
  and named (the log, ``Judged.dropped``, ``left_out_file``): a training
  folder where some images lack a prediction trains on the rest.
* **Which truth.** With ``quality.label_resolution=native`` (default) the true
  Dice/Jaccard are measured at each true mask file's own size -- the
  segmentation resampled to it (``external.native_overlaps``) -- because the
  user's bar is Dice > 0.8 of their masks, not of ``data.image_size`` copies.
  Synthetic cases exist only at the model's size.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from segqual_jax.core import artifacts, workdir as run_dirs
from segqual_jax.core.errors import DataError
from segqual_jax.data import images as image_io
from segqual_jax.data import loading, pipeline, segmentations, volumes
from segqual_jax.segmenter import external, runner

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Judged:
  """A split's judged cases: ``split`` and ``outputs`` in the same order, and the cases left out."""
  split: pipeline.Split
  outputs: runner.SegOutputs
  dropped: dict[str, str]  # case id -> why it has no segmentation to judge


def predictions_dir(config) -> str:
  """The outside model's folder (``external.predictions``; a relative path is under ``data.root``)."""
  path = os.path.expanduser(config.external.predictions.strip())
  return path if os.path.isabs(path) else os.path.join(os.path.expanduser(config.data.root), path)


def left_out_file(workdir: str, split_name: str) -> str:
  """Where the ids of a split's cases without a usable segmentation are listed, with why."""
  return os.path.join(run_dirs.f_outputs_dir(workdir), f'{split_name}_left_out.json')


def kinds_file(workdir: str, split_name: str) -> str:
  """Where the kinds of outside segmentation (mask, probabilities) a split held are listed."""
  return os.path.join(run_dirs.f_outputs_dir(workdir), f'{split_name}_outside_kinds.json')


def learned_kinds(workdir: str) -> set[str] | None:
  """The kinds of outside segmentation the quality models learned from (their training split:
  quality or train); None when the run did not record them."""
  for split_name in ('quality', 'train'):
    if os.path.exists(path := kinds_file(workdir, split_name)):
      return set(artifacts.read_json(path)['kinds'])
  return None


def read_outside(config, ids, image_paths: dict[str, str], folder: str):
  """``(kept indices, segmentations at their images' sizes, {id: why dropped})`` of ``ids``."""
  listing = segmentations.index(folder)
  size = config.data.image_size
  kept, segs, dropped = [], [], {}
  for i, case_id in enumerate(ids):
    try:
      path = segmentations.path_of(listing, folder, case_id)
      if path is None:
        dropped[case_id] = f'no segmentation {case_id}.png or .npy in {folder}'
        continue
      image_wh = image_io.native_size(image_paths[case_id]) if case_id in image_paths else (size, size)
      seg = external.read(config, path, image_wh)
    except (segmentations.SegmentationError, image_io.ImageError) as e:
      dropped[case_id] = str(e)
      continue
    kept.append(i)
    segs.append(seg)
  return np.asarray(kept, np.int64), segs, dropped


def read_outside_volume(config, folder: str, case: str, spec, shape, affine,
                        learned: set[str] | None = None) -> tuple[np.ndarray, str]:
  """``(p(lesion) (X, Y, Z), kind)`` of ``case``'s prediction in an nnU-Net prediction folder
  (``volumes.read_prediction``), checked, as ``external.read`` checks a 2D one, against what g's
  channels need, and against the kinds the quality models ``learned`` from (None: any);
  ``VolumeError`` naming the file and the problem. Stage 2 and predict read through here."""
  probs, kind, path = volumes.read_prediction(folder, case, spec, shape, affine)
  if kind == 'mask' and external.needs_probabilities(config):
    raise volumes.VolumeError(f'{path}: a label map, but external.map_channels='
                              f'{config.external.map_channels!r} needs the model\'s own '
                              'probabilities (nnU-Net --save_probabilities)')
  if learned is not None and kind not in learned:
    raise volumes.VolumeError(f'{path}: {"a label map" if kind == "mask" else "probabilities"}, but '
                              f'this run\'s quality models learned from {" and ".join(sorted(learned))} '
                              'only (their scores of the other kind mean something else)')
  return probs, kind


def read_outside_volumes(config, slice_ids, folder: str):
  """``read_outside`` for the slices of volumes (``<case>:zNNN``): each case's prediction in an
  nnU-Net prediction folder (``<case>.npz`` probabilities or ``<case><ending>`` labels,
  ``volumes.read_prediction``) is read once, checked against the case's image grid
  (``imagesTr/<case>_0000``), and cut into its axial planes at the volume's own in-plane size.
  A volume whose prediction cannot be used drops all its slices, each naming why."""
  root = os.path.abspath(os.path.expanduser(config.data.root))
  spec = volumes.read_dataset_json(root)
  by_case: dict[str, list[int]] = {}
  for i, sid in enumerate(slice_ids):
    by_case.setdefault(volumes.case_of(sid), []).append(i)
  found, dropped = {}, {}
  for case, rows in by_case.items():
    try:
      shape, affine = volumes.grid_of(volumes.channel_file(os.path.join(root, 'imagesTr'), case, 0,
                                                           spec.file_ending))
      probs, kind = read_outside_volume(config, folder, case, spec, shape, affine)
    except volumes.VolumeError as e:
      dropped.update({slice_ids[i]: str(e) for i in rows})
      continue
    for i in rows:
      found[i] = segmentations.Segmentation(probs[:, :, volumes.slice_index(slice_ids[i])], kind)
  kept = sorted(found)
  return np.asarray(kept, np.int64), [found[i] for i in kept], dropped


def judged(config, workdir: str, split: pipeline.Split) -> Judged:
  """The judged cases of ``split`` (module doc); f's pass over it is cached by the runner."""
  f_out = runner.cached_outputs(config, workdir, split)
  files = truth_files(config)
  ids = runner.case_ids(split)
  size = config.data.image_size
  if not external.active(config):
    segs = [segmentations.Segmentation(p, 'probabilities') for p in f_out.probs]
    kept, dropped, outputs = np.arange(len(split)), {}, f_out
  else:
    folder = predictions_dir(config)
    if not os.path.isdir(folder):
      raise DataError(f'config.external.predictions: {folder} is not a folder')
    if config.data.name == 'nnunet':
      kept, segs, dropped = read_outside_volumes(config, ids, folder)
    else:
      image_paths = {k: v[0] for k, v in (files or loading.case_files(config.data)).items()}
      kept, segs, dropped = read_outside(config, ids, image_paths, folder)
    if dropped:
      artifacts.write_json(left_out_file(workdir, split.name), dropped)
      log.warning('%s split: %d of %d cases have no usable segmentation in %s and are left out '
                  '(every id and why: %s): %s', split.name, len(dropped), len(ids), folder,
                  left_out_file(workdir, split.name),
                  '; '.join(f'{k} ({v})' for k, v in list(dropped.items())[:5])
                  + (f' (+{len(dropped) - 5} more)' if len(dropped) > 5 else ''))
    if not len(kept):
      raise DataError(f'{split.name} split: none of its {len(ids)} cases has a usable segmentation '
                      f'in {folder} (e.g. {next(iter(dropped.values()))})')
    artifacts.write_json(kinds_file(workdir, split.name), {'kinds': sorted({seg.kind for seg in segs})})
    sub = f_out.take(kept)
    at_model = np.stack([segmentations.to_shape(s, (size, size)).probs for s in segs])
    seen = external.judge(external.channel_names(config), config.uncertainty.score_band_px, at_model,
                          sub.probs, sub.maps, sub.scores)
    outputs = runner.SegOutputs(seen['masks'], seen['maps'], seen['scores'], features=sub.features,
                                probs=at_model)
    split = split.take(kept, split.name)
  return Judged(split, labelled(outputs, segs, split, files, runner.case_ids(split)), dropped)


def truth_files(config) -> dict[str, tuple[str, str]]:
  """``loading.case_files`` when labels are measured at native resolution, else ``{}``."""
  return loading.case_files(config.data) if config.quality.label_resolution == 'native' else {}


def labelled(outputs: runner.SegOutputs, segs, split: pipeline.Split,
             files: dict[str, tuple[str, str]], truth_ids) -> runner.SegOutputs:
  """``outputs`` with the true Dice/Jaccard of ``segs``: at the size of case ``truth_ids[i]``'s
  true mask file when ``files`` has it, else against the split's model-size masks."""
  dice, jaccard = np.zeros(len(segs), np.float32), np.zeros(len(segs), np.float32)
  for i, (seg, case_id) in enumerate(zip(segs, truth_ids)):
    truth = image_io.read_mask(files[case_id][1]) if case_id in files else split.masks[i]
    dice[i], jaccard[i] = external.native_overlaps(seg, truth)
  return dataclasses.replace(outputs, dice=dice, jaccard=jaccard)


def with_labels(config, outputs: runner.SegOutputs, split: pipeline.Split,
                truth_ids=None) -> runner.SegOutputs:
  """f's own ``outputs`` on ``split`` with true overlaps at the configured resolution (out-of-fold
  outputs, corrupted copies: ``truth_ids`` name the case whose truth each one has)."""
  segs = [segmentations.Segmentation(p, 'probabilities') for p in outputs.probs]
  return labelled(outputs, segs, split, truth_files(config), truth_ids or runner.case_ids(split))
