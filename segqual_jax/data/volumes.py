"""3D volumes in nnU-Net v2's raw layout, read case by case, and their 2D slices.

nnU-Net v2 (``documentation/dataset_format.md``) keeps a data set in a folder
``DatasetXXX_Name/`` with ``dataset.json`` (``channel_names`` ``{"0": ...}``,
``labels`` ``{"background": 0, ...}`` with consecutive integers, ``file_ending``),
``imagesTr/<case>_XXXX<ending>`` (one file per channel, four digits) and
``labelsTr/<case><ending>``. An inference folder holds the ``imagesTs``-style
channel files alone; nnU-Net writes its predictions as ``<case><ending>`` on the
input's grid (and with ``--save_probabilities`` a ``<case>.npz`` beside it).

Why a module of its own: a volume is judged as one case (a radiologist accepts a
patient, not a slice), so the reader checks each volume whole -- every channel
present, channels and label on one grid (shape and affine), label values from
``dataset.json``, finite intensities, a readable file -- and a bad volume raises
``VolumeError`` naming the case and the problem; callers give that case a row of
its own and lose nothing else. f works on axial slices (``slices``), each with the
id ``<case>:zNNN`` so that slice-level results group back into volumes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import zipfile
import zlib

import numpy as np
from PIL import Image

from segqual_jax.core import errors

SLICE_SEPARATOR = ':z'
_CHANNEL = re.compile(r'^(?P<case>.+)_(?P<channel>\d{4})$')


class VolumeError(errors.DataError):
  """One volume cannot be read or judged; the message names its file and the problem."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What ``dataset.json`` says about the files."""
  channels: tuple[str, ...]  # channel names in channel order (_0000, _0001, ...)
  labels: dict  # name -> integer value (or list of values for nnU-Net regions)
  file_ending: str = '.nii.gz'

  @property
  def label_values(self) -> set[int]:
    values = set()
    for v in self.labels.values():
      values.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return values


@dataclasses.dataclass
class Volume:
  """One case: its channels (X, Y, Z, C) float32, its label (X, Y, Z) uint8 or None, its grid."""
  case: str
  image: np.ndarray
  label: np.ndarray | None
  affine: np.ndarray
  header: object = None  # the first channel's NIfTI header: outputs are written on its grid

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.image.shape[:3])


def read_dataset_json(root: str) -> DatasetSpec:
  """The data set's ``dataset.json``; a clear error when it is missing or lacks a field."""
  path = os.path.join(root, 'dataset.json')
  try:
    with open(path) as f:
      spec = json.load(f)
  except OSError as e:
    raise errors.DataError(f'{path}: cannot read nnU-Net dataset.json ({e.strerror})') from e
  except json.JSONDecodeError as e:
    raise errors.DataError(f'{path}: not valid JSON ({e})') from e
  missing = [k for k in ('channel_names', 'labels') if k not in spec]
  if missing:
    raise errors.DataError(f'{path}: lacks {", ".join(missing)} (nnU-Net v2 dataset.json)')
  names = spec['channel_names']
  if not all(str(k).isdigit() for k in names):
    raise errors.DataError(f'{path}: channel_names keys must be 0, 1, ... (got {sorted(names)})')
  order = sorted(names, key=int)
  if [int(k) for k in order] != list(range(len(order))):
    raise errors.DataError(f'{path}: channel_names keys must be 0, 1, ... (got {order})')
  return DatasetSpec(tuple(names[k] for k in order), dict(spec['labels']),
                     spec.get('file_ending', '.nii.gz'))


def channel_file(folder: str, case: str, channel: int, ending: str) -> str:
  return os.path.join(folder, f'{case}_{channel:04d}{ending}')


def list_cases(folder: str, ending: str = '.nii.gz') -> list[str]:
  """Case names with at least one channel file ``<case>_XXXX<ending>`` in ``folder``, sorted.

  A case missing a channel is still listed: reading it raises its own ``VolumeError``.
  """
  if not os.path.isdir(folder):
    raise errors.DataError(f'{folder}: no such directory')
  cases = set()
  for name in os.listdir(folder):
    if name.endswith(ending) and (m := _CHANNEL.match(name[:-len(ending)])):
      cases.add(m.group('case'))
  return sorted(cases)


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray, object]:
  """``(data, affine, header)`` of a 3D NIfTI file, data as stored (a trailing axis of
  length 1 dropped); ``VolumeError`` naming the file for anything unreadable."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top  (only volume users need it)
  if not os.path.exists(path):
    raise VolumeError(f'{path}: missing')
  try:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise VolumeError(f'{path}: truncated or corrupt compressed file ({e})') from e
  except nib.filebasedimages.ImageFileError as e:
    raise VolumeError(f'{path}: not a NIfTI image ({e})') from e
  except (OSError, ValueError) as e:
    raise VolumeError(f'{path}: unreadable ({e})') from e
  if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool) \
      or np.iscomplexobj(data):
    raise VolumeError(f'{path}: voxels of type {data.dtype}; expected real numbers (one channel per file)')
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise VolumeError(f'{path}: a {data.ndim}D image of shape {data.shape}; expected a 3D volume')
  return data, np.asarray(image.affine, np.float64), image.header


def _same_grid(a: np.ndarray, b: np.ndarray) -> bool:
  return np.allclose(a, b, atol=1e-3)


def read_case(images_dir: str, case: str, spec: DatasetSpec, labels_dir: str | None = None) -> Volume:
  """One case's channels (and label, from ``labels_dir``), checked as one volume."""
  arrays, affine, header = [], None, None
  first = channel_file(images_dir, case, 0, spec.file_ending)
  for c in range(len(spec.channels)):
    path = channel_file(images_dir, case, c, spec.file_ending)
    if not os.path.exists(path):
      raise VolumeError(f'{case}: channel {c} ({spec.channels[c]}) missing: {path}')
    data, aff, hdr = load_nifti(path)
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
      raise VolumeError(f'{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite')
    if arrays and data.shape != arrays[0].shape:
      raise VolumeError(f'{case}: channel {c} has shape {data.shape}, channel 0 {arrays[0].shape} ({path})')
    if affine is not None and not _same_grid(aff, affine):
      raise VolumeError(f'{case}: channel {c} has another affine than channel 0 ({path})')
    arrays.append(data)
    affine, header = (aff, hdr) if affine is None else (affine, header)
  extra = channel_file(images_dir, case, len(spec.channels), spec.file_ending)
  if os.path.exists(extra):
    raise VolumeError(f'{case}: channel {len(spec.channels)} present ({extra}) but dataset.json '
                      f'names {len(spec.channels)} channel(s)')
  label = None
  if labels_dir is not None:
    path = os.path.join(labels_dir, case + spec.file_ending)
    data, aff, _ = load_nifti(path)
    if data.shape != arrays[0].shape:
      raise VolumeError(f'{path}: label of shape {data.shape}, image {arrays[0].shape} ({first})')
    if not _same_grid(aff, affine):
      raise VolumeError(f'{path}: label on another grid (affine) than its image ({first})')
    if not np.isfinite(data).all() or np.any(data != np.round(data)):
      raise VolumeError(f'{path}: label values are not integers')
    values = set(np.unique(data).astype(int).tolist())
    if (unknown := values - spec.label_values):
      raise VolumeError(f'{path}: label values {sorted(unknown)} not in dataset.json labels '
                        f'{sorted(spec.label_values)}')
    label = (data > 0).astype(np.uint8)  # the lesion: every foreground label
  return Volume(case, np.stack(arrays, -1), label, affine, header)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """(X, Y, Z, C) intensities -> uint8, per channel from its 0.5th to 99.5th percentile over
  the volume's non-zero voxels: MRI has no fixed scale, so each volume is normalised alone."""
  out = np.zeros(image.shape, np.uint8)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    body = channel[channel != 0]
    if body.size == 0:
      continue
    lo, hi = np.percentile(body, [0.5, 99.5])
    out[..., c] = np.round(255 * np.clip((channel - lo) / max(hi - lo, 1e-6), 0, 1))
  return out


def as_rgb(channels: np.ndarray) -> np.ndarray:
  """(..., C) uint8 -> (..., 3): the first three channels; one channel repeated, two with a zero third."""
  c = channels.shape[-1]
  if c >= 3:
    return channels[..., :3]
  if c == 1:
    return np.repeat(channels, 3, -1)
  return np.concatenate([channels, np.zeros_like(channels[..., :1])], -1)


def _resize(plane: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
  """One (H, W[, C]) plane resized to ``shape`` (rows, columns)."""
  if plane.shape[:2] == tuple(shape):
    return plane
  method = Image.NEAREST if nearest else Image.BILINEAR
  if plane.ndim == 3:
    return np.stack([_resize(plane[..., c], shape, nearest) for c in range(plane.shape[-1])], -1)
  mode_array = plane.astype(np.float32)
  resized = Image.fromarray(mode_array, mode='F').resize((shape[1], shape[0]), method)
  return np.asarray(resized, np.float32).astype(plane.dtype) if nearest else np.asarray(resized, np.float32)


def slices(volume: Volume, size: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Axial slices at ``size`` px: images (Z, size, size, 3) uint8 and masks (Z, size, size) uint8."""
  rgb = as_rgb(to_uint8(volume.image))
  z = volume.shape[2]
  images = np.stack([np.clip(np.round(_resize(rgb[:, :, k].astype(np.float32), (size, size), False)), 0, 255)
                     .astype(np.uint8) for k in range(z)])
  masks = None
  if volume.label is not None:
    masks = np.stack([_resize(volume.label[:, :, k], (size, size), True) for k in range(z)]).astype(np.uint8)
  return images, masks


def to_volume(planes: np.ndarray, shape: tuple[int, int, int], nearest: bool) -> np.ndarray:
  """Slices (Z, s, s) back onto a volume's grid (X, Y, Z): the inverse of ``slices``' resize."""
  return np.stack([_resize(p, shape[:2], nearest) for p in planes], -1)


def slice_id(case: str, k: int) -> str:
  return f'{case}{SLICE_SEPARATOR}{k:03d}'


def case_of(sid: str) -> str:
  """The case of a slice id (the id itself for a 2D case)."""
  return sid.rsplit(SLICE_SEPARATOR, 1)[0]


def write_like(path: str, array: np.ndarray, volume: Volume) -> None:
  """``array`` (X, Y, Z) as NIfTI on ``volume``'s grid: its affine and header (the data type
  follows ``array``), so it opens over the input in any viewer; written atomically."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  header = volume.header.copy() if volume.header is not None else None
  image = nib.Nifti1Image(array, volume.affine, header)
  image.set_data_dtype(array.dtype)
  tmp = path + '.tmp' + ('.nii.gz' if path.endswith('.gz') else '.nii')
  nib.save(image, tmp)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# An nnU-Net model's own predictions: the segmentations under review (``--segmentations``).

PROBABILITIES_KEY = 'probabilities'
SUM_TOLERANCE = 1e-2  # softmax channels must sum to 1 within this


def slice_index(sid: str) -> int:
  """The axial index of a slice id ``<case>:zNNN``."""
  return int(sid.rsplit(SLICE_SEPARATOR, 1)[1])


def grid_of(path: str) -> tuple[tuple[int, int, int], np.ndarray]:
  """``(shape, affine)`` of a NIfTI file from its header alone (no voxels read)."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise VolumeError(f'{path}: missing')
  try:
    image = nib.load(path)
  except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as e:
    raise VolumeError(f'{path}: not a readable NIfTI image ({e})') from e
  shape = tuple(int(s) for s in image.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  return shape, np.asarray(image.affine, np.float64)


def prediction_file(folder: str, case: str, spec: DatasetSpec) -> str | None:
  """The file of ``case`` in an nnU-Net prediction folder: ``<case>.npz`` (its probabilities,
  written with ``--save_probabilities``) before ``<case><ending>`` (its label map); None if neither."""
  for name in (case + '.npz', case + spec.file_ending):
    if os.path.exists(path := os.path.join(folder, name)):
      return path
  return None


def is_region(value) -> bool:
  """nnU-Net's rule: a label is a region when its value lists more than one label."""
  return isinstance(value, (list, tuple)) and len(value) > 1


def _lesion_from_npz(path: str, spec: DatasetSpec, shape: tuple[int, int, int]) -> np.ndarray:
  """p(lesion) (X, Y, Z) from nnU-Net's ``.npz``: ``probabilities`` (C, z, y, x) on the input's
  grid in SimpleITK's axis order (nnU-Net's readers, its NibabelIO included, turn nibabel's
  (x, y, z) into (z, y, x)), so it is transposed back to the NIfTI file's order. Softmax
  channels (one per label but ``ignore``): p(lesion) = the sum of the foreground channels (the
  union of every foreground label, as ``read_case`` makes the lesion of a label), held at 0.5
  where background is still the largest channel (two or more lesion labels share the rest)
  and just above it where a lesion label wins (channels that sum to a little under 1), so
  that p(lesion) > 0.5 is nnU-Net's own argmax mask, the one it wrote and the user ships (up
  to the rounding of float16 files, where nnU-Net's argmax saw float32); voxels where every
  channel is 0 -- outside the crop box in early nnU-Net v2 exports -- are background.
  Region channels (sigmoid outputs, one per region, no background): p(lesion) = the largest
  region's probability, whose > 0.5 is nnU-Net's own foreground."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      if PROBABILITIES_KEY not in npz.files:
        raise VolumeError(f'{path}: no array {PROBABILITIES_KEY!r} (has {", ".join(npz.files) or "none"}); '
                          'expected nnU-Net\'s --save_probabilities output')
      probs = np.asarray(npz[PROBABILITIES_KEY])
  except VolumeError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise VolumeError(f'{path}: truncated or unreadable .npz ({e})') from e
  if probs.ndim != 4 or not np.issubdtype(probs.dtype, np.floating):
    raise VolumeError(f'{path}: {PROBABILITIES_KEY} of shape {probs.shape} and type {probs.dtype}; '
                      'expected float (C, z, y, x)')
  probs = probs.transpose(0, 3, 2, 1).astype(np.float32)
  if probs.shape[1:] != tuple(shape):
    raise VolumeError(f'{path}: probabilities of shape {probs.shape[1:]} (x, y, z), the image '
                      f'{tuple(shape)}: not a prediction of this volume (or written reoriented)')
  if not np.isfinite(probs).all() or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
    raise VolumeError(f'{path}: probabilities outside [0, 1] or not finite; save probabilities, '
                      'not logits')
  labels = {k: v for k, v in spec.labels.items() if k != 'ignore'}
  if any(is_region(v) for v in labels.values()):
    regions = len(labels) - 1  # every label but background
    if probs.shape[0] != regions:
      raise VolumeError(f'{path}: {probs.shape[0]} probability channels, dataset.json has {regions} regions')
    return np.clip(probs.max(0), 0.0, 1.0)
  if probs.shape[0] != len(labels):
    raise VolumeError(f'{path}: {probs.shape[0]} probability channels, dataset.json has '
                      f'{len(labels)} labels')
  total = probs.sum(0)
  bad = (np.abs(total - 1) > SUM_TOLERANCE) & (total > SUM_TOLERANCE)
  if bad.any():
    raise VolumeError(f'{path}: channels sum to {total.min():.3f}..{total.max():.3f}, not 1 '
                      '(softmax probabilities expected for labels without regions)')
  lesion = np.clip(probs[1:].sum(0), 0.0, 1.0)
  background_wins = probs[0] >= probs[1:].max(0)  # nnU-Net's argmax: ties go to the first channel
  above_half = np.nextafter(np.float32(0.5), np.float32(1.0))
  return np.where(background_wins, np.minimum(lesion, 0.5), np.maximum(lesion, above_half))


def _reoriented(folder: str) -> bool:
  """Whether nnU-Net wrote ``folder``'s probabilities in a reoriented frame: its ``plans.json``
  names ``NibabelIOWithReorient``, which saves the ``.npz`` in RAS, not on the input's grid."""
  try:
    with open(os.path.join(folder, 'plans.json')) as f:
      return 'Reorient' in str(json.load(f).get('image_reader_writer', ''))
  except (OSError, ValueError):
    return False


def read_prediction(folder: str, case: str, spec: DatasetSpec, shape: tuple[int, int, int],
                    affine: np.ndarray) -> tuple[np.ndarray, str, str]:
  """``(p(lesion) (X, Y, Z) float32, 'probabilities' | 'mask', path)`` of ``case`` in an
  nnU-Net prediction folder, checked against its image's grid (``shape``, ``affine``);
  ``VolumeError`` naming the file and the problem. A label map's lesion is every foreground
  label (values from ``dataset.json``); a float NIfTI with values in [0, 1] that are not all
  0/1 is read as p(lesion)."""
  path = prediction_file(folder, case, spec)
  if path is None:
    raise VolumeError(f'{case}: no prediction {case}.npz or {case}{spec.file_ending} in {folder}')
  label_path = os.path.join(folder, case + spec.file_ending)
  if path.endswith('.npz'):
    if _reoriented(folder):
      if not os.path.exists(label_path):
        raise VolumeError(f'{path}: written by NibabelIOWithReorient (plans.json), in a reoriented '
                          'frame, not on the input\'s grid; give the label maps (.nii.gz) instead')
      path = label_path  # the label map is on the input's grid
    else:
      probs = _lesion_from_npz(path, spec, shape)
      if os.path.exists(label_path):  # nnU-Net's own label map beside: the same prediction?
        labels, _ = _prediction_labels(label_path, spec, shape, affine)
        differ = int(np.sum((probs > 0.5) != (labels > 0)))
        if differ > 0.01 * max(1, int(np.sum(labels > 0))):
          raise VolumeError(f'{path}: its lesion differs from {label_path} on {differ} voxels: not the '
                            'same prediction, or written in another frame')
      return probs, 'probabilities', path
  data, kind = _prediction_labels(path, spec, shape, affine)
  return data, kind, path


def _prediction_labels(path: str, spec: DatasetSpec, shape, affine) -> tuple[np.ndarray, str]:
  """``(p(lesion), kind)`` of a NIfTI prediction (``read_prediction``)."""
  data, aff, _ = load_nifti(path)
  if data.shape != tuple(shape):
    raise VolumeError(f'{path}: prediction of shape {data.shape}, the image {tuple(shape)}')
  if not _same_grid(aff, affine):
    raise VolumeError(f'{path}: prediction on another grid (affine) than its image')
  data = np.asarray(data, np.float64)
  if not np.isfinite(data).all():
    raise VolumeError(f'{path}: NaN or infinite values')
  if np.all(data == np.round(data)):
    values = set(np.unique(data).astype(int).tolist())
    if (unknown := values - spec.label_values):
      raise VolumeError(f'{path}: label values {sorted(unknown)} not in dataset.json labels '
                        f'{sorted(spec.label_values)}')
    return (data > 0).astype(np.float32), 'mask'
  if data.min() < 0 or data.max() > 1:
    raise VolumeError(f'{path}: values {data.min():.4g}..{data.max():.4g} are neither labels nor '
                      'probabilities in [0, 1]')
  return data.astype(np.float32), 'probabilities'
