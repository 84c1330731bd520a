"""Judge your own segmentation model: a folder with images/, masks/ and predictions/.

Train the quality models on your model's segmentations of cases with true
masks, then judge its segmentations of new images:

  python main.py --config=configs/external.py --config.data.root=MY_DATA --workdir=runs/mine
  python main.py --config=configs/external.py --config.data.root=MY_DATA --workdir=runs/mine \\
      --mode=predict --input=NEW_IMAGES --segmentations=NEW_PREDICTIONS --output=OUT

MY_DATA holds ``images/<id>.*``, ``masks/<id>.png`` (the truth) and
``predictions/<id>.png`` or ``.npy`` (your model's segmentation: a 0/255 or 0/1
mask, an 8- or 16-bit p(lesion) PNG, or float p(lesion) in [0, 1]). The cases
are split 60-10-15-15 by a seed (or by your lists, ``config.data.splits``):
the project's U-Net f trains on the first part -- it is the *surrogate* whose
map, disagreement with your mask and scores the quality models may see, and
whose features drive the applicability gate -- and the quality models learn
the true Dice of *your* segmentations on the quality part, measured at each
true mask's own resolution. Predictions are needed for the quality and test
parts; cases without one are left out and listed.

``configs/external.py:probabilities``: your model exports p(lesion), and g
sees its own map 1 - max(p, 1 - p) instead of the surrogate's (every
prediction must then be a probability map). The rest is ``configs/clinical.py``
(calibrated auto-accept at alpha 0.1 on 30 % of the quality part, the
applicability gate and the batch check).
"""

from configs import clinical


def get_config(kind: str = 'masks'):
  if kind not in ('masks', 'probabilities'):
    raise ValueError(f'unknown kind {kind!r}; one of masks, probabilities')
  config = clinical.get_config()
  config.data.root = ''  # your folder: --config.data.root=MY_DATA
  config.data.splits = ''  # seeded 60-10-15-15, or your lists
  config.external.predictions = 'predictions'
  config.external.map_channels = 'msp' if kind == 'probabilities' else 'surrogate,disagreement'
  config.quality.models = 'uncertainty,no_uncertainty,cheap_qc'
  return config
