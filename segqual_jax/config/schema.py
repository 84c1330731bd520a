"""The config schema: every field, its default and a one-line comment.

The single source of the fields every config extends (``configs/default.py``
re-exports it, so ``--config=configs/default.py`` works). Each field's
validity rule sits in ``validation.py`` and the stages that depend on it in
``stages.py``; a test checks that all three name the same fields.

Base run: both stages and evaluation on the embedded synthetic data (MSP).
Expected CPU runtime (2 cores): stage 1 ~5 min (620 steps of 16 images at
64 px), stage 2 ~1-2 min per quality model, evaluation < 1 min.
"""

import ml_collections

# The names the config may use; the registries (segmenter.methods,
# quality.registry) are checked against these by a test, so the lists cannot drift.
METHODS = ('msp', 'mc_dropout', 'hcnn', 'lce', 'ensemble', 'tta', 'hierarchical')
CNN_QUALITY_MODELS = ('uncertainty', 'no_uncertainty', 'qualitynet')  # g's input variants
QUALITY_MODELS = CNN_QUALITY_MODELS + ('cheap_qc', 'rca', 'mean')  # mean: the average of the others
CORRUPTIONS = ('blur', 'noise', 'brightness', 'contrast', 'jpeg')  # data/corruptions.py implements them
APPLICABILITY_SCORES = ('mahalanobis', 'knn')  # quality/applicability.py implements them
APPLICABILITY_VIEWS = ('encoder', 'encoder_grid', 'colour', 'texture', 'layout', 'tone')  # segmenter/runner.feature_blocks names them
# g's map channels for an outside segmentation (segmenter/external.py computes them)
EXTERNAL_MAP_CHANNELS = ('msp', 'entropy', 'surrogate', 'disagreement')
LABEL_RESOLUTIONS = ('native', 'model')


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init, batch order, dropout/noise/hint keys
  config.method = 'msp'  # uncertainty method: msp | mc_dropout | hcnn | lce | ensemble | tta | hierarchical

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'  # data set: synthetic (embedded generator) | folder | isic2017 | nnunet (3D volumes, nnU-Net v2 raw layout)
  config.data.root = ''  # folder: dir with images/ and masks/; isic2017: the official download (manual dir); nnunet: the DatasetXXX_Name folder
  config.data.splits = ''  # split lists 'train=a.txt,validation=b.txt,...' relative to root; '' = official / seeded 60-10-15-15
  config.data.data_dir = ''  # TFDS data dir for prepared data; '' = TFDS default (~/tensorflow_datasets)
  config.data.image_size = 64  # square image side in pixels
  config.data.seed = 0  # synthetic: generator seed (fixed across model seeds); folder: seed of the default split
  config.data.num_train = 1000  # synthetic: images f trains on (real data: the split lists decide)
  config.data.num_validation = 200  # images for f's per-epoch validation
  config.data.num_quality = 500  # held-out images whose predictions train g (stage 2)
  config.data.num_test = 500  # images every reported metric comes from

  config.seg = ml_collections.ConfigDict()
  config.seg.base_width = 16  # channels of the first U-Net level
  config.seg.depth = 4  # down-samplings; image_size must be divisible by 2**depth
  config.seg.dropout_rate = 0.5  # dropout after the central blocks (Bayesian SegNet)
  config.seg.central_levels = 1  # encoder/decoder levels next to the bottleneck with dropout
  config.seg.norm = 'group'  # normalisation: group | none
  config.seg.batch_size = 16  # training batch size (paper: 16)
  config.seg.learning_rate = 1e-3  # Adam learning rate (paper: 1e-3)
  config.seg.lr_schedule = 'constant'  # learning rate over training: constant (the paper's) | cosine (decays towards 0 over the run)
  config.seg.loss = 'ce'  # f's loss: ce (pixel cross-entropy, the paper's) | ce_dice (plus nnU-Net's soft Dice of the lesion classes over the batch)
  config.seg.augment = 'dihedral'  # f's training augmentation: dihedral (random flip + rot90, the paper's) | nnunet (those, then nnU-Net's 2D rotation, zoom, noise, brightness, contrast, gamma)
  config.seg.foreground_fraction = 0.0  # share of each batch forced to hold lesion (nnU-Net: 0.33); 0 = uniform batches, the paper's
  config.seg.num_epochs = 10  # epochs over the train split (paper: 120 at 224 px; 10 fits the CPU budget)
  config.seg.eval_batch_size = 32  # f's batch size for validation and prediction (no effect on results: each case has its own key)
  config.seg.log_every_steps = 50  # progress line (loss, steps/s, ETA) every this many steps
  config.seg.checkpoint_every_steps = 200  # orbax checkpoint interval (and at the end)
  config.seg.reuse_from = ''  # workdir whose complete f this run reuses instead of training (same seed, data and seg settings, a method that trains alike, e.g. msp for mc_dropout or tta)

  config.uncertainty = ml_collections.ConfigDict()
  config.uncertainty.mc_samples = 20  # MC-dropout test-time passes T (paper: 20)
  config.uncertainty.mc_map = 'entropy'  # map of sample-based methods (MC-dropout, ensemble, TTA, hierarchical): entropy (of the mean, paper) | mutual_information
  config.uncertainty.hcnn_train_samples = 100  # HCNN logit-noise samples in the loss (paper: 100)
  config.uncertainty.hcnn_test_samples = 100  # HCNN logit-noise samples at test time; 0 = mean-field closed form
  config.uncertainty.hcnn_map = 'sigma'  # HCNN map: sigma (learned noise scale) | entropy
  config.uncertainty.lce_budget = 0.3  # LCE budget beta for mean(-log c)
  config.uncertainty.lce_lambda_init = 0.1  # LCE initial lambda
  config.uncertainty.ensemble_members = 5  # deep-ensemble size M (members trained in one jitted step, mapped in sampling chunks)
  config.uncertainty.hier_samples = 20  # hierarchical: test-time draws of the skip latents
  config.uncertainty.hier_kl_weight = 0.01  # hierarchical: weight of the skip latents' KL term in the loss
  config.uncertainty.tta_transforms = 8  # TTA: first k of the 8 flips/rot90 (1 = identity only)
  config.uncertainty.score_band_px = 2  # half-width (px) of the boundary band of the map_boundary_mean score

  config.sampling = ml_collections.ConfigDict()
  config.sampling.chunk_size = 'auto'  # samples vmapped together (memory ~ chunk): 'auto' (CPU: 1; GPU/TPU: measured), 'measure' (timed on any backend) or an integer
  config.sampling.auto_accelerator_memory_fraction = 0.25  # measured chunks: the widest candidate's working set may take this share of device memory
  config.sampling.dtype = 'float32'  # f's compute dtype at test time: float32 | bfloat16 (GPU/TPU; maps within a tested tolerance of float32); training is always float32

  config.quality = ml_collections.ConfigDict()
  config.quality.models = 'uncertainty,no_uncertainty,qualitynet'  # quality models: CNN g variants uncertainty | no_uncertainty | qualitynet, and cheap_qc | rca
  config.quality.label_source = 'holdout'  # cases g learns from: holdout (quality split) | train | oof
  config.quality.oof_folds = 5  # folds (extra copies of f) when label_source=oof
  config.quality.error_map = True  # fit the per-pixel error map (quality/error_map.py) on the quality models' cases; predict draws it
  config.quality.target = 'jaccard'  # metric g regresses: jaccard (paper) | dice
  config.quality.label_resolution = 'native'  # where true Dice/Jaccard are measured (labels and every metric): native (each true mask's own file size; the segmentation resampled to it) | model (data.image_size copies)
  config.quality.widths = (16, 32, 64, 128)  # VGG block widths, one 2x down-sampling each
  config.quality.dense = 64  # hidden units of g's head
  config.quality.batch_size = 16  # g's batch size (paper: 16)
  config.quality.learning_rate = 1e-3  # g's Adam learning rate (paper: 1e-3)
  config.quality.num_epochs = 30  # g's epochs (paper: 30)
  config.quality.rank_weight = 0.0  # weight of a pairwise ranking term beside g's squared error (0 = the paper's loss; measured in experiments/regressors.py: it did not help)
  config.quality.eval_batch_size = 32  # g's batch size when predicting (no effect on results)
  config.quality.log_every_steps = 200  # progress line interval for g
  config.quality.checkpoint_every_steps = 300  # g's checkpoint interval (and at the end)

  config.quality.shift_corruptions = ''  # shift-aware training: also learn from corrupted copies of g's cases (blur,noise,brightness,contrast,jpeg; '' = off), labelled by running f on them
  config.quality.shift_severities = (1, 2, 3)  # corruption severities of those copies (1 mild .. 3 strong)
  config.quality.shift_copies = 2  # corrupted copies per case, each with a corruption and severity drawn from the case's own stream

  config.external = ml_collections.ConfigDict()
  config.external.predictions = ''  # folder of another model's segmentations under review (<id>.png|.npy: masks or p(lesion); nnunet data: an nnU-Net prediction folder, <case>.npz or <case>.nii.gz); relative = under data.root; '' = judge f's own
  config.external.map_channels = 'surrogate,disagreement'  # g's map channels for them: msp | entropy (of their own p(lesion)), surrogate (f's map of the image), disagreement (|mask - p_f|)

  config.applicability = ml_collections.ConfigDict()
  config.applicability.score = 'mahalanobis'  # how unlike f's in-distribution cases an image is: mahalanobis | knn (of f's pooled encoder features)
  config.applicability.knn_k = 10  # knn: the k-th nearest reference neighbour's distance is the score
  config.applicability.views = 'tone+texture'  # feature blocks the score uses, comma-separated: encoder (f's levels), encoder_grid (f's levels 1-2 on a 2x2 grid), colour, texture, layout, tone (image statistics; '+' joins them into one Gaussian); chosen on the dev suites (RESULTS, "Streams")
  config.applicability.batch_views = 'encoder,layout'  # views of the batch test's score ('' = the gate's; the knn score always uses its own): f's own encoder (and where the image is bright or coloured), so a run is suspended when f sees it differently (harm), not when it merely looks different; chosen on the dev suites (RESULTS, "Streams")
  config.applicability.image_fit = 'train'  # split whose images fit the image-statistics views (they do not depend on f, so f's training images serve); '' = the quality split's fitting cases
  config.applicability.reference_fraction = 0.3  # share of the quality split's non-calibration cases held out to turn scores into conformal p-values (the rest fits the score)

  config.cheap_qc = ml_collections.ConfigDict()
  config.cheap_qc.regressor = 'gradient_boosting'  # quality model cheap_qc: gradient_boosting | random_forest | lasso

  config.rca = ml_collections.ConfigDict()
  config.rca.references = 20  # quality model rca: reference cases with ground truth (from g's training cases)
  config.rca.steps = 50  # Adam steps of each image's reverse segmenter
  config.rca.learning_rate = 0.01  # the reverse segmenter's Adam learning rate
  config.rca.base_width = 8  # the reverse U-Net's first-level channels
  config.rca.depth = 2  # the reverse U-Net's down-samplings

  config.calibration = ml_collections.ConfigDict()
  config.calibration.fraction = 0.0  # share of the quality split (of its patients, for volumes) held out from g to calibrate auto-accept (0 = no calibration)
  config.calibration.alphas = (0.05, 0.1)  # tolerated accepted-failure rates (failure: Dice < eval.fail_dice)
  config.calibration.delta = 0.1  # tolerated probability that the calibration draw breaks the rate
  config.calibration.starts = 8  # chains of the multi-start fixed-sequence test
  config.calibration.grid_size = 200  # candidate thresholds (quantiles of g's predictions on its training cases; for volumes evenly spaced Dice levels)

  config.predict = ml_collections.ConfigDict()
  config.predict.quality_model = 'uncertainty'  # quality model --mode=predict uses: a quality.models entry
  config.predict.alpha = 0.1  # with a calibration run: the auto-accept rate whose threshold predict applies
  config.predict.interval = 'scaled'  # each case's conformal interval around its predicted Dice (calibration cases behind the gate): scaled (narrower for confident good cases) | constant (one width) | none
  config.predict.interval_alpha = 0.1  # the interval misses a case's true Dice with probability <= this (90 % interval)
  config.predict.interval_floor = 0.05  # scaled interval: each case's errors are scaled by this + (1 - predicted Dice)
  config.predict.maps = 'flagged'  # which cases' maps (image, outline, uncertainty PNGs) predict draws: all | flagged (review and predicted failures: what a person looks at) | none
  config.predict.page_size = 300  # rows per page of the HTML report (index.html is page 1, the most urgent rows)
  config.predict.chunk_cases = 256  # cases judged between two journal writes: a killed predict redoes at most this many
  config.predict.read_threads = 4  # threads that read and decode the next batch while f and g run on this one
  config.predict.ood_alpha = 0.02  # a case whose applicability p-value is below this goes to review, whatever its predicted quality (0 = gate off)
  config.predict.on_shift = 'suspend'  # when a run's cases as a whole look unlike the in-distribution cases: suspend (every case to review) | review_unusual (Benjamini-Hochberg picks the cases to review) | warn
  config.predict.shift_alpha = 0.001  # level of that batch test (one-sided two-sample KS of applicability scores)
  config.predict.unusual_fdr = 0.1  # on_shift=review_unusual: Benjamini-Hochberg's false-discovery rate over a shifted run's p-values
  config.predict.shift_min_cases = 20  # fewer readable cases than this: no batch test, only the per-case gate
  config.predict.monitor_delta = 0.01  # stream monitor (--monitor): chance an exchangeable stream ever alarms; set when a monitor starts

  config.eval = ml_collections.ConfigDict()
  config.eval.fail_dice = 0.8  # a case fails when its true Dice is below this (the user's bar)
  config.eval.fail_jaccard = 0.7  # ... or, second report, its Jaccard below this (the paper's)
  config.eval.num_figure_cases = 3  # best and worst test cases shown in uncertainty_maps.png

  config.bench = ml_collections.ConfigDict()
  config.bench.methods = 'mc_dropout,hcnn'  # sampling methods to time, comma-separated: mc_dropout, hcnn, ensemble (T = its members)
  config.bench.cases = '128x8,64x8,64x32'  # image side x batch size; the first is the default case
  config.bench.samples = (1, 5, 20, 50, 100)  # numbers of samples T (HCNN also gets T=0: closed form)
  config.bench.repeats = 3  # timed runs per measurement after compilation; the median is reported
  config.bench.matmul_size = 2048  # side of the float32 matmul that measures the FLOP/s peak
  config.bench.chunk_sweep = (1, 2, 5, 10, 20)  # fixed chunks timed beside 'auto' (default case, configured T); () = none
  config.bench.base_widths = ()  # U-Net base widths to time; () = seg.base_width
  config.bench.dtypes = ('float32',)  # compute dtypes to time (sampling.dtype values)
  config.bench.ceiling_batch = 0  # images per convolution of the conv ceiling; 0 = the case's batch (accelerators: large, to saturate the card)

  config.runtime = ml_collections.ConfigDict()
  config.runtime.distributed = False  # multi-host: jax.distributed.initialize() first (TPU pods, multi-node GPU)
  config.runtime.coordinator_address = ''  # multi-host: host:port of process 0; '' = auto-detect (TPU, SLURM, Open MPI)
  config.runtime.num_processes = 0  # multi-host: number of processes; 0 = auto-detect
  config.runtime.process_id = -1  # multi-host: this process's index; -1 = auto-detect
  config.runtime.threefry_partitionable = False  # True for sharded multi-device runs; False compiles ~5x faster on CPU
  config.runtime.matmul_precision = 'default'  # default (GPU: TF32, fast; a case's map alone vs in a batch differs ~1e-3) | highest (float32: agrees to ~1e-6, MC-dropout ~3.6x slower on an H200); no effect on CPU

  return config
