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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_files, when imported by path

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

import segmenter_files  # noqa: E402  (listing the images, the Dice report)

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


def main(argv):
  del argv
  from segqual_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  files = segmenter_files.image_files(_IMAGES.value, _IDS.value)
  os.makedirs(_OUT.value, exist_ok=True)
  written = {}
  for stem, name in sorted(files.items()):
    rgb = image_io.read_display(os.path.join(_IMAGES.value, name), max_side=1 << 14)
    written[stem] = os.path.join(_OUT.value, stem + '.png')
    Image.fromarray(segment(rgb, _SMOOTH.value) * 255).save(written[stem])
  print(f'{len(files)} masks written to {_OUT.value}')
  if _MASKS.value:
    segmenter_files.print_dice(written, _MASKS.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['images', 'out'])
  app.run(main)
