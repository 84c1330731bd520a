"""What the outside-segmenter scripts share: which images to segment, and the Dice report.

No flags here (``otsu_segmenter.py`` and ``deep_segmenter.py`` define their own).
"""

from __future__ import annotations

import os

import numpy as np


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
