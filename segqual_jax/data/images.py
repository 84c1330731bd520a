"""Reading real images and masks from disk, with errors that name the file and the problem.

Every real-data path (the folder and ISIC 2017 builders, ``--mode=predict``)
goes through ``read_image`` / ``read_mask``, so each odd file is handled once:

* empty, truncated or non-image files, and images too small to segment,
  raise ``ImageError`` with the path and the reason;
* grayscale, palette, RGBA and 16-bit images become 8-bit RGB (16-bit values
  are scaled, not clipped; transparency is dropped);
* huge images are reduced while decoding where the format allows it (JPEG
  draft mode) and refused past ``MAX_PIXELS``, so a single file can never
  exhaust memory;
* the EXIF orientation tag is applied, so a rotated phone or dermatoscope
  JPEG is judged upright (as every viewer shows it);
* images are resized bilinearly to the model's square size, masks with
  nearest neighbour; any mask value > 0 is foreground.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
MAX_PIXELS = 100_000_000  # 10,000 x 10,000; larger files are refused before decoding
MIN_SIDE = 8  # smaller images carry no usable lesion


class ImageError(ValueError):
  """A file that cannot be used as an image; the message names it and says why."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = path, reason


def is_image_name(name: str) -> bool:
  """Whether a file name has an image extension (case-insensitive) and is not hidden."""
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def list_images(directory: str) -> list[str]:
  """Image files of ``directory`` (by extension, case-insensitive), sorted by name."""
  return sorted(f for f in os.listdir(directory) if is_image_name(f))


def list_images_recursive(directory: str) -> list[str]:
  """Image files under ``directory`` and its subfolders, as sorted relative paths
  (``/``-separated); hidden folders are skipped."""
  out = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    rel = os.path.relpath(root, directory)
    out += [f if rel == '.' else f'{rel}/{f}'.replace(os.sep, '/') for f in files if is_image_name(f)]
  return sorted(out)


def open_image(path: str, size: int) -> Image.Image:
  """The decoded image, reduced early where the format allows it (JPEG: to ~2x ``size``);
  raises ``ImageError``."""
  try:
    if os.path.getsize(path) == 0:
      raise ImageError(path, 'empty file')
  except OSError as e:
    raise ImageError(path, f'cannot read ({e.strerror})') from e
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(path)
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise ImageError(path, f'image too large ({width}x{height} pixels; the limit is '
                               f'{MAX_PIXELS:,} pixels)')
      if min(width, height) < MIN_SIDE:
        raise ImageError(path, f'image too small ({width}x{height}; at least {MIN_SIDE} px a side)')
      if image.format == 'JPEG':
        image.draft('RGB', (2 * size, 2 * size))  # decode at a reduced scale: memory ~ size^2
      image.load()
      image = ImageOps.exif_transpose(image)  # no-op without an orientation tag
  except ImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(path, f'image too large ({e})') from e
  except Image.UnidentifiedImageError as e:
    raise ImageError(path, 'not an image (unrecognised format)') from e
  except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
    raise ImageError(path, f'corrupt or truncated image ({e})') from e
  return image


def _to_uint8(image: Image.Image) -> np.ndarray:
  """8-bit array of any PIL mode: 16-bit and float data are scaled to 0..255."""
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    a = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith('I;16') or a.max() > 255 else 255.0
    return np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
  if image.mode == 'F':
    a = np.asarray(image, dtype=np.float64)
    top = 1.0 if a.max() <= 1.0 else a.max()
    return np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
  return np.asarray(image)


def _rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB of any mode (16-bit and float gray scaled, transparency dropped)."""
  if image.mode in ('RGB',):
    return image
  if image.mode in ('L', 'P', 'RGBA', 'LA', 'CMYK', 'YCbCr', '1', 'PA', 'RGBX'):
    return image.convert('RGB')
  gray = _to_uint8(image)  # 16-bit or float single channel
  return Image.fromarray(gray if gray.ndim == 2 else gray[..., 0], 'L').convert('RGB')


def read_image(path: str, size: int) -> np.ndarray:
  """RGB uint8 (size, size, 3), resized bilinearly; raises ``ImageError``."""
  rgb = _rgb(open_image(path, size))
  return np.asarray(rgb.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def read_display(path: str, max_side: int) -> np.ndarray:
  """RGB uint8 (H, W, 3) at the image's own aspect ratio, as shown (EXIF orientation applied),
  reduced so its longer side is at most ``max_side``; raises ``ImageError``."""
  image = _rgb(open_image(path, max_side))
  scale = min(1.0, max_side / max(image.size))
  if scale < 1.0:
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def read_mask(path: str, size: int | None = None) -> np.ndarray:
  """Binary uint8 (size, size) mask (1 = foreground: any value > 0), nearest-neighbour
  resized; ``size=None`` keeps the file's own size. Raises ``ImageError``."""
  image = open_image(path, size or 1024)
  if image.mode not in ('L', '1', 'P', 'I', 'I;16', 'I;16B', 'I;16L', 'F'):
    image = image.convert('L')  # RGB(A) masks: any non-black pixel is foreground
  mask = (np.asarray(image) > 0).astype(np.uint8)
  if mask.ndim == 3:
    mask = mask.max(-1)
  if size is not None and mask.shape != (size, size):
    mask = np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.NEAREST)) > 0
  return mask.astype(np.uint8)


def native_size(path: str) -> tuple[int, int]:
  """``(width, height)`` as the image is shown -- its header's size, swapped when an EXIF
  orientation tag turns it by 90 degrees (``read_image`` applies the tag); raises ``ImageError``."""
  try:
    with Image.open(path) as image:
      width, height = image.size
      orientation = image.getexif().get(0x0112, 1)
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(path, f'not a readable image ({e})') from e
  return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_size(path: str) -> tuple[int, int]:
  """``(width, height)`` from the header alone; raises ``ImageError``."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(path, f'not a readable image ({e})') from e
