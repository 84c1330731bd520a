"""A deep segmenter that is not f, exported as probability maps as any outside model would be.

Issue 16's external segmenter (b): the project's U-Net trained separately (its
own seed, 128 px, base width 32 -- f is 64 px, base 16), run here on images
and written as ``<out>/<stem>.png``: 16-bit grayscale p(lesion) (v / 65535)
at each image's own size (bilinear from the model's size), the format
``data/segmentations.py`` reads. segqual-jax then judges these files exactly
as it would a stranger's. Train it with stage 1 alone, then export:

  python main.py --config=configs/isic2017.py:msp --workdir=runs/ext/deep_unet128 \\
      --config.data.image_size=128 --config.seg.base_width=32 --config.seg.num_epochs=6 \\
      --config.seed=7 --config.seg.eval_batch_size=16 --mode=train_seg
  python experiments/deep_segmenter.py --workdir=runs/ext/deep_unet128 \\
      --images=../shared/data/isic2017/128/images --ids=IDS.txt --out=runs/ext/deep/predictions \\
      --masks=../shared/data/isic2017/128/masks

The model's config is the one its run recorded (``seg/config.json``).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_files, when imported by path

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

import segmenter_files  # noqa: E402  (the same file listing and Dice report as the Otsu script)

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run whose trained f (stage 1) segments.')
_IMAGES = flags.DEFINE_string('images', None, 'Folder of images.')
_IDS = flags.DEFINE_string('ids', '', 'Optional file of image stems, one a line (else every image).')
_OUT = flags.DEFINE_string('out', None, 'Folder for <stem>.png probability maps.')
_MASKS = flags.DEFINE_string('masks', '', 'Optional true masks: print the Dice distribution.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Images per pass.')


def main(argv):
  del argv
  from segqual_jax.core import runtime  # pylint: disable=g-import-not-at-top
  from segqual_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  from segqual_jax.data import segmentations  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter import runner  # pylint: disable=g-import-not-at-top
  with open(os.path.join(_WORKDIR.value, 'seg', 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  runtime.configure(config)
  method, params = runner.load_f(config, _WORKDIR.value)
  run_batch = runner.batch_fn(runner.method_case_fn(method, with_scores=False, with_probs=True))
  files = segmenter_files.image_files(_IMAGES.value, _IDS.value)
  size = config.data.image_size
  stems = sorted(files)
  images = np.stack([image_io.read_image(os.path.join(_IMAGES.value, files[s]), size) for s in stems])
  outputs = runner.run_cases(run_batch, params, images, stems, runner.cases_key(config), _BATCH.value)
  os.makedirs(_OUT.value, exist_ok=True)
  written = {}
  for stem, probs in zip(stems, outputs.probs):
    width, height = image_io.native_size(os.path.join(_IMAGES.value, files[stem]))
    native = segmentations.to_shape(segmentations.Segmentation(probs, 'probabilities'), (height, width))
    written[stem] = os.path.join(_OUT.value, stem + '.png')
    Image.fromarray(np.round(native.probs * 65535).astype(np.uint16)).save(written[stem])
  print(f'{len(written)} probability maps written to {_OUT.value}')
  if _MASKS.value:
    segmenter_files.print_dice(written, _MASKS.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'images', 'out'])
  app.run(main)
