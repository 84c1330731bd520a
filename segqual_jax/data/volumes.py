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
