"""Lower-grade glioma MRI volumes (nnU-Net v2 raw layout), f on axial slices, judged per patient.

  python main.py --config=configs/lgg.py --workdir=runs/lgg                 # train, calibrate, evaluate
  python main.py --config=configs/lgg.py:mc_dropout --workdir=runs/lgg_mc  # METHOD: msp | mc_dropout | ensemble | tta
  python main.py --workdir=runs/lgg --mode=predict --input=NNUNET_INFERENCE_FOLDER --output=OUT
  python main.py --config=configs/lgg.py --workdir=runs/lgg_nnunet --config.external.predictions=NNUNET_PREDS  # judge your nnU-Net's volumes
  python main.py --workdir=runs/lgg_nnunet --mode=predict --input=NNUNET_INFERENCE_FOLDER --segmentations=ITS_PREDS --output=OUT

Data: ../shared/data/lgg_mri/Dataset501_LGG (95 patients, three sequences
each: pre-contrast, FLAIR, post-contrast as the three input channels; FLAIR
abnormality labels), split by patient with the shared protocol lists: f
trains on the slices of 57 patients, the quality models on f's slices of 19
others, every metric comes from the 19 test patients. f's per-epoch
validation log uses the quality patients (nothing is selected on it).
Slices are 128 x 128 in the files, 64 px here (CPU scale).

Why 2D slices: the volumes have 20-88 slices 1-3 mm apart, too few for a 3D
U-Net to learn from 57 patients at this scale; each slice is one example and
every uncertainty method of the 2D tool runs unchanged through the sampling
engine. A patient's result is its slices' results gathered back
(``quality/volume.py``): the volume's Dice over all its voxels, and the quality
models' slice predictions aggregated into a predicted volume Dice.

f's loss: the paper's cross-entropy at a constant rate, which every LGG
table of RESULTS.md rests on. nnU-Net's recipe (``--config.seg.loss=ce_dice
--config.seg.lr_schedule=cosine``) balances f's missed and false lesion
voxels; its measurements are in RESULTS.md ("f's loss, its resolution, and g
on a Dice-trained f"). With it, 60 epochs (``--config.seg.num_epochs=60``, 45
min of stage 1 on 2 cores) add about 0.03 (three seeds); foreground
oversampling, test-time augmentation and nnU-Net's training augmentation
(``--config.seg.augment=nnunet``) add nothing measurable on the quality
patients (RESULTS.md, "Longer training, ..." and "60 epochs over three
seeds, ..."). None reaches the volume-Dice bar of 0.80.

No calibration fraction: 19 quality patients are too few to hold out a
calibration set of volumes and still fit g (a rule needs dozens of accepted
calibration volumes); predict then applies the fixed Dice 0.8 rule and says
it is not calibrated per volume. A data set with more patients can set
``--config.calibration.fraction``: whole patients are then held out and the
rule and interval are calibrated per volume.
"""

import os

from configs import isic2017

SHARED = isic2017.SHARED
PROTOCOL = isic2017.PROTOCOL


def get_config(method: str = 'msp'):
  config = isic2017.real_data_config('isic2017', method)
  config.data.name = 'nnunet'
  config.data.root = os.path.join(SHARED, 'lgg_mri', 'Dataset501_LGG')
  config.data.splits = PROTOCOL
  config.quality.models = 'uncertainty,cheap_qc,mean' if method == 'msp' else 'uncertainty,cheap_qc'
  config.quality.label_resolution = 'model'  # slices at 64 px; volumes are also judged on their own grid
  config.seg.num_epochs = 20  # 1875 training slices: 20 epochs are 2340 steps of 16
  config.calibration.fraction = 0.0
  return config
