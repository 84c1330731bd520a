"""Reading the segmentation under review: another model's mask or probability map.

segqual-jax judges segmentations that any model made (issue 16): per image,
``<stem>.png`` or ``<stem>.npy`` in a predictions folder. Every path that reads
one goes through ``read``, so each format and each odd file is
handled once, with a ``SegmentationError`` (a ``ValueError``) that names the
file and the problem, or a warning that says what was done:

* **Binary masks**: a PNG with at most two distinct values (0/255, 0/1, or any
  value > 0 is foreground -- as ``images.read_mask``), a bool ``.npy``, or an
  integer ``.npy`` of two values.
* **Probability maps**: an 8- or 16-bit grayscale PNG with more than two
  values, scaled to [0, 1] (v / 255, v / 65535), or a floating ``.npy`` in
  [0, 1]. A float map outside [0, 1] (or with NaN) is an error, not clipped:
  logits or percentages saved by mistake must not pass as probabilities.
* **Channels**: an RGB(A) PNG whose colour channels are identical (a gray
  mask saved as colour) is read as one channel, with a warning; differing
  channels are an error, as is any other multi-channel array.
* **Size**: a segmentation of another size than its image is resized to it
  (nearest for masks, bilinear for probabilities) with a warning when the
  aspect ratios agree within ``ASPECT_TOLERANCE``; otherwise an error.
* **Empty**: an all-zero mask or map is a valid prediction of no lesion
  (a warning, not an error).

Values are returned at the file's (or the image's) own resolution: Dice is
computed at the ground truth's resolution (``to_shape``), the user's bar.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from segqual_jax.data import images

EXTENSIONS = ('.png', '.npy')
ASPECT_TOLERANCE = 0.01  # relative difference of width/height ratios still called "the same"
KINDS = ('mask', 'probabilities')


class SegmentationError(ValueError):
  """A file that cannot be used as a segmentation; the message names it and says why."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = path, reason


@dataclasses.dataclass
class Segmentation:
  """A segmentation under review.

  Attributes:
    probs: float32 (H, W) in [0, 1]: p(lesion), or a mask's 0/1.
    kind: 'mask' (the model gave labels only) or 'probabilities'.
    notes: what was done to the file on the way (resizing, channels, empty).
  """
  probs: np.ndarray
  kind: str
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def mask(self) -> np.ndarray:
    """uint8 (H, W) labels: p > 0.5 (a mask's own 0/1)."""
    return (self.probs > 0.5).astype(np.uint8)


def index(directory: str) -> dict[str, list[str]]:
  """``{stem: its segmentation files}`` of ``directory`` (not recursive; extensions
  case-insensitive), listed once: a folder of thousands is read once, not once per image."""
  if not os.path.isdir(directory):
    return {}
  out: dict[str, list[str]] = {}
  for name in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in EXTENSIONS and not name.startswith('.'):
      out.setdefault(stem, []).append(os.path.join(directory, name))
  return out


def path_of(listing: dict[str, list[str]], directory: str, stem: str) -> str | None:
  """The one segmentation of ``stem`` in an ``index`` of ``directory``; None if it has none.

  Raises ``SegmentationError`` when it has two (``.png`` and ``.npy``): which one is the
  model's is not ours to guess.
  """
  found = listing.get(stem, [])
  if len(found) > 1:
    raise SegmentationError(os.path.join(directory, stem + '.*'),
                            f'more than one segmentation for this image ({", ".join(found)})')
  return found[0] if found else None


def _from_png(path: str) -> tuple[np.ndarray, list[str]]:
  """The PNG's single channel as float64 in its own units, and the top of its range."""
  image = images.open_image(path, size=4096)
  notes = []
  if image.mode in ('RGB', 'RGBA', 'LA', 'P', 'CMYK', 'YCbCr', 'RGBX', 'PA'):
    rgb = np.asarray(image.convert('RGB'), dtype=np.float64)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
      raise SegmentationError(path, f'multi-channel segmentation (mode {image.mode}, colour '
                                    'channels differ); expected one channel: a mask or p(lesion)')
    notes.append(f'stored as {image.mode} with identical channels: read as grayscale')
    return rgb[..., 0] / 255.0, notes
  if image.mode == '1':
    return np.asarray(image, dtype=np.float64), notes
  if image.mode == 'L':
    return np.asarray(image, dtype=np.float64) / 255.0, notes
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    values = np.asarray(image, dtype=np.float64)
    if values.min() < 0 or values.max() > 65535:
      raise SegmentationError(path, f'values {values.min():g}..{values.max():g} are outside a '
                                    '16-bit PNG\'s 0..65535')
    return values / 65535.0, notes
  if image.mode == 'F':
    return np.asarray(image, dtype=np.float64), notes
  raise SegmentationError(path, f'unsupported PNG mode {image.mode}')


def _from_npy(path: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise SegmentationError(path, f'not a readable .npy array ({e})') from e
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise SegmentationError(path, f'array of shape {array.shape}; expected (H, W) -- one channel: '
                                  'a mask or p(lesion)')
  if min(array.shape) < images.MIN_SIDE:
    raise SegmentationError(path, f'segmentation too small ({array.shape[1]}x{array.shape[0]})')
  if array.dtype == bool:
    return array.astype(np.float64)
  if np.issubdtype(array.dtype, np.integer):
    values = np.unique(array)
    if len(values) > 2 or values.min() < 0:
      raise SegmentationError(path, f'integer array with values {values[:5].tolist()}...; '
                                    'expected a 0/1 (or 0/any) mask or float p(lesion) in [0, 1]')
    return (array > 0).astype(np.float64)
  if not np.issubdtype(array.dtype, np.floating):
    raise SegmentationError(path, f'array of dtype {array.dtype}; expected float32 p(lesion) or a mask')
  return array.astype(np.float64)


def read(path: str, image_size: tuple[int, int] | None = None) -> Segmentation:
  """The segmentation in ``path`` (see the module doc); raises ``SegmentationError``.

  Args:
    image_size: ``(width, height)`` of the image it segments: a segmentation of
      another size is resized to it or refused (module doc). None: as stored.
  """
  ext = os.path.splitext(path)[1].lower()
  notes = []
  try:
    if ext == '.png':
      values, notes = _from_png(path)
    elif ext == '.npy':
      values = _from_npy(path)
    else:
      raise SegmentationError(path, f'unsupported segmentation file type {ext!r} '
                                    f'(expected {", ".join(EXTENSIONS)})')
  except images.ImageError as e:
    raise SegmentationError(path, e.reason) from e
  if not np.all(np.isfinite(values)):
    raise SegmentationError(path, 'probability map with NaN or infinite values')
  distinct = np.unique(values)
  if set(distinct.tolist()) <= {0.0, 1.0} or (ext == '.png' and len(distinct) <= 2):
    kind, probs = 'mask', (values > 0).astype(np.float32)  # labels: any value > 0 is lesion
  else:
    if values.min() < 0.0 or values.max() > 1.0:
      raise SegmentationError(path, f'probability map outside [0, 1] (values {values.min():.4g} to '
                                    f'{values.max():.4g}); save p(lesion), not logits or percent')
    kind, probs = 'probabilities', values.astype(np.float32)
  if not probs.any():
    notes.append('empty prediction (no foreground): judged as a valid "no lesion"')
  seg = Segmentation(probs, kind, notes)
  if image_size is not None:
    seg = fit_to_image(seg, path, image_size)
  return seg


def fit_to_image(seg: Segmentation, path: str, image_size: tuple[int, int]) -> Segmentation:
  """``seg`` at ``image_size`` (width, height): resized when only the scale differs."""
  height, width = seg.probs.shape
  if (width, height) == tuple(image_size):
    return seg
  target_w, target_h = image_size
  if abs((width / height) / (target_w / target_h) - 1.0) > ASPECT_TOLERANCE:
    raise SegmentationError(path, f'size {width}x{height} does not match its image '
                                  f'({target_w}x{target_h}) and the aspect ratio differs')
  resized = to_shape(seg, (target_h, target_w))
  return Segmentation(resized.probs, seg.kind, seg.notes + [
      f'resized from {width}x{height} to its image\'s {target_w}x{target_h}'])


def to_shape(seg: Segmentation, shape: tuple[int, int]) -> Segmentation:
  """``seg`` resized to ``shape`` (H, W): nearest neighbour for a mask, bilinear for
  probabilities (threshold afterwards: ``.mask``)."""
  if seg.probs.shape == tuple(shape):
    return seg
  height, width = shape
  if seg.kind == 'mask':
    image = Image.fromarray((seg.probs > 0.5).astype(np.uint8) * 255)
    probs = (np.asarray(image.resize((width, height), Image.NEAREST)) > 0).astype(np.float32)
  else:
    image = Image.fromarray(seg.probs.astype(np.float32), mode='F')
    probs = np.clip(np.asarray(image.resize((width, height), Image.BILINEAR)), 0.0, 1.0)
  return Segmentation(probs.astype(np.float32), seg.kind, list(seg.notes))
