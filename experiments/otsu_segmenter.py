"""A classical, unsupervised dermoscopy segmenter, written to files as any outside model would be.

Issue 16's external segmenter (a): a model with a failure profile unlike f's.
Per image: the blue channel (where pigmented lesions are darkest against
skin), Gaussian-smoothed; Otsu's threshold of its histogram; the darker side
as lesion; morphological opening and closing, holes filled, and the largest
connected component kept (the lesion is one blob). Writes
``<out>/<stem>.png`` (0/255, the image's own size), the format
``data/segmentations.py`` reads, and with ``--masks`` prints its Dice at the
true masks' resolution.

  python experiments/otsu_segmenter.py --images=../shared/data/isic2017/128/images \\
      --ids=../shared/data/isic2017/protocol/test.txt --out=runs/otsu/predictions \\
      --masks=../shared/data/isic2017/128/masks

Expected runtime: ~1 s per 100 images of 128 px.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

_IMAGES = flags.DEFINE_string('images', None, 'Folder of images.')
_IDS = flags.DEFINE_string('ids', '', 'Optional file of image stems, one a line (else every image).')
_OUT = flags.DEFINE_string('out', None, 'Folder for <stem>.png masks.')
_MASKS = flags.DEFINE_string('masks', '', 'Optional true masks (<stem>.png or '
                             '<stem>_segmentation.png): print the Dice distribution.')
_SMOOTH = flags.DEFINE_float('smooth', 0.01, 'Gaussian sigma as a share of the shorter side.')


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
  """Otsu's threshold: the cut that maximises the between-class variance of ``values``."""
  hist, edges = np.histogram(values, bins=bins)
  centres = (edges[:-1] + edges[1:]) / 2
  weight = np.cumsum(hist)
  total = weight[-1]
  mean = np.cumsum(hist * centres)
  between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1)
  return float(centres[int(np.argmax(between[:-1]))])


def segment(rgb: np.ndarray, smooth: float = 0.01) -> np.ndarray:
  """uint8 (H, W) lesion mask of an RGB dermoscopy image (0/1)."""
  side = min(rgb.shape[:2])
  blue = ndimage.gaussian_filter(rgb[..., 2].astype(np.float64), max(smooth * side, 0.5))
  mask = blue < otsu_threshold(blue)
  radius = max(1, round(0.01 * side))
  structure = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
  mask = ndimage.binary_closing(ndimage.binary_opening(mask, structure), structure)
  mask = ndimage.binary_fill_holes(mask)
  labels, count = ndimage.label(mask)
  if count == 0:
    return np.zeros(mask.shape, np.uint8)
  sizes = ndimage.sum(mask, labels, range(1, count + 1))
  return (labels == 1 + int(np.argmax(sizes))).astype(np.uint8)


def true_mask_path(masks_dir: str, stem: str) -> str | None:
  """``<stem>.png`` or ``<stem>_segmentation.png`` (ISIC) in ``masks_dir``, if either exists."""
  return next((os.path.join(masks_dir, stem + suffix + '.png') for suffix in ('', '_segmentation')
               if os.path.exists(os.path.join(masks_dir, stem + suffix + '.png'))), None)


def print_dice(written: dict[str, str], masks_dir: str) -> None:
  """The Dice distribution of the written segmentations (``{stem: path}``) at the true masks' resolution."""
  from segqual_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  from segqual_jax.data import segmentations  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter import external  # pylint: disable=g-import-not-at-top
  dice = [external.native_overlaps(segmentations.read(path), image_io.read_mask(truth))[0]
          for stem, path in sorted(written.items()) if (truth := true_mask_path(masks_dir, stem))]
  if dice:
    d = np.asarray(dice)
    print(f'Dice against {len(d)} true masks (their resolution): mean {d.mean():.3f}, median '
          f'{np.median(d):.3f}, {100 * (d < 0.8).mean():.1f} % below 0.8')


def image_files(images_dir: str, ids_file: str) -> dict[str, str]:
  """``{stem: file name}`` of the images in ``images_dir``, only the ids of ``ids_file`` if given."""
  from segqual_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  files = {os.path.splitext(f)[0]: f for f in image_io.list_images(images_dir)}
  if ids_file:
    with open(ids_file) as f:
      wanted = [line.strip() for line in f if line.strip()]
    files = {s: files[s] for s in wanted if s in files}
  return files


def main(argv):
  del argv
  from segqual_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  files = image_files(_IMAGES.value, _IDS.value)
  os.makedirs(_OUT.value, exist_ok=True)
  written = {}
  for stem, name in sorted(files.items()):
    rgb = image_io.read_display(os.path.join(_IMAGES.value, name), max_side=1 << 14)
    written[stem] = os.path.join(_OUT.value, stem + '.png')
    Image.fromarray(segment(rgb, _SMOOTH.value) * 255).save(written[stem])
  print(f'{len(files)} masks written to {_OUT.value}')
  if _MASKS.value:
    print_dice(written, _MASKS.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['images', 'out'])
  app.run(main)
