"""Is this image one f can be judged on? A score, a conformal p-value and a batch test.

A quality model learns how f fails on images like its training cases; on
another modality, a corrupted scan or a flat grey frame its prediction means
nothing (a portrait photograph got "pass, predicted Dice 0.87"). So every
case gets an *applicability score* -- how far its features (f's pooled
encoder statistics, ``UNet.encoder_features``, and the image's own,
``data/image_statistics.py``) lie from those of in-distribution cases f
never trained on -- in one of two forms:

* ``mahalanobis``: per encoder level, the Mahalanobis distance under a
  Gaussian fitted to the log features with Ledoit-Wolf shrinkage (Lee et al.
  2018 score each layer; a few hundred cases need the shrinking), and the
  largest of the level distances after standardising each (``Applicability``);
* ``knn``: the Euclidean distance to the k-th nearest fitting case (Sun,
  Ming, Zhu & Li 2022), which assumes no shape. In the standardised space,
  *not* L2-normalised as Sun et al. do for a classifier's penultimate layer:
  these features are per-image statistics whose magnitude is the signal (a
  dark image has small channel means; normalising maps it onto a bright
  one).

The score sees several *views* of a case (``applicability.views``): f's
encoder levels, and statistics of the image itself -- colour histograms,
texture (spectral bands, gradients), layout (colour and busyness on a grid),
tone (saturation x value; ``data/image_statistics.py``). A view is one shrunk
Gaussian: an encoder level, an image statistic, or image statistics joined
(``tone+texture``), which sees how they vary together -- each added view
raises the references' maximum, and a case unusual in two statistics at once
stands out more in one joint distance than in two separate ones. Each view's
distance is standardised in units of its own in-distribution tail and the
score is the largest, so the views are
combined *before* the p-value: one score, one reference set, one exact
p-value (no Bonferroni split of ``ood_alpha`` between views; the stream
monitor watches the same number). The batch test may compare a score of
views of its own (``applicability.batch_views``: f's encoder and the
layout by default), the largest over its groups, fitted beside the gate's. The encoder blocks are
fitted on the quality split's fitting cases; the image blocks, which do not
depend on f, on f's own training images (``block_fit``;
``applicability.image_fit``), which are several times as many.

A distance has no scale a clinician can use, so it becomes a **conformal
p-value** against held-out in-distribution *reference* cases, disjoint from
the fitting ones: ``p = (1 + #{reference scores >= s}) / (M + 1)``. For a new
case exchangeable with the references, ``P(p <= a) <= a`` for every ``a``:
a gate "review when p < ood_alpha" sends at most that share of in-distribution
cases to review, whatever the score (on average over the draw of the
references; one draw of ~100 realises 1-5 % at 0.01), while a case farther out than every
reference gets the smallest p, ``1 / (M + 1)``.

``batch_test`` asks the same of a whole run: do its scores look like the
references'? A one-sided two-sample Kolmogorov-Smirnov test (shifted batches
have *larger* scores). Two-sample, not one-sample KS of the p-values against
uniform: the p-values of a batch share one finite reference set, so a large
batch would detect the reference set's own sampling noise. It checks the
precondition of every calibrated promise -- exchangeability with the
calibration cases -- which a per-case gate cannot: a batch of slightly dark
images passes the gate one by one.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from scipy import stats

from segqual_jax.config import stages
from segqual_jax.core import artifacts, errors, keys, values, workdir as run_dirs
from segqual_jax.segmenter import runner

_STD_FLOOR = 1e-6
_LOG_OFFSET = 1e-3  # features are means and deviations of ReLU outputs (>= 0): log(x + this)
_CROSS_FIT_FOLDS = 5
TAIL_PERCENTILE = 99  # a level's distance is measured in units of its in-distribution tail
SCALE_FLOOR = 0.1  # a feature's deviation is at least this share of its level's 90th-percentile one


def _transform(features: np.ndarray) -> np.ndarray:
  """Log of the (non-negative, right-skewed) feature statistics: closer to Gaussian, so a
  rare but in-distribution image does not stretch the reference tail."""
  return np.log(np.maximum(np.asarray(features, np.float64), 0.0) + _LOG_OFFSET)


@dataclasses.dataclass(frozen=True)
class _Gaussian:
  """A shrunk Gaussian of one block of standardised features."""
  center: np.ndarray
  scale: np.ndarray
  precision: np.ndarray

  @classmethod
  def fit(cls, x: np.ndarray) -> '_Gaussian':
    from sklearn import covariance  # imported here: scikit-learn is slow to import
    std = x.std(0)
    # A channel that never fires on the fitting cases (std ~ 0; a fifth of the bottleneck's
    # on ISIC 2017) must not turn float noise into an astronomic distance, which made the
    # cross-fitted deviation of the deep levels so large that they never counted: floor
    # each deviation at a share of the level's large ones.
    center, scale = x.mean(0), np.maximum(std, max(SCALE_FLOOR * float(np.percentile(std, 90)), _STD_FLOOR))
    z = (x - center) / scale
    return cls(center, scale, covariance.LedoitWolf(assume_centered=True).fit(z).precision_)

  def distance(self, x: np.ndarray) -> np.ndarray:
    z = (x - self.center) / self.scale
    return np.sqrt(np.maximum(np.einsum('nd,de,ne->n', z, self.precision, z), 0.0))


@dataclasses.dataclass(frozen=True)
class Applicability:
  """A fitted applicability score and its reference scores.

  ``mahalanobis``: one shrunk Gaussian per view group (``levels`` gives each
  group's feature count: an encoder level, an image statistic, or several
  joined); a group's distance is standardised by the
  median and the 99th percentile of *out-of-fold* distances of the fitting
  cases (an in-sample distance is too small, the more so the more dimensions
  a level has; and the tail, not the spread, because a level whose
  in-distribution distances are heavy-tailed must not win the max with an
  ordinary case), so 1 is "as far as the 1 % most unusual fitting cases",
  and the score is the largest standardised level distance: a flat
  grey image is extreme at level 0, a lesion-free frame at the bottleneck,
  and one joint Gaussian of ~1000 dimensions drowns either in the chi-square
  noise of the rest. ``knn``: one block (all levels), ``matrix`` holds the
  standardised fitting features.
  """
  kind: str  # 'mahalanobis' | 'knn'
  levels: tuple[int, ...]  # feature count of each encoder level, in order
  gaussians: tuple[_Gaussian, ...]  # mahalanobis: per level; knn: one (for its standardisation)
  level_stats: np.ndarray  # mahalanobis: (L, 2) out-of-fold distance median and (99th percentile - median)
  matrix: np.ndarray  # knn: (F, D) standardised fitting features; mahalanobis: empty
  k: int  # knn's neighbour
  reference_scores: np.ndarray  # (M,) scores of the held-out in-distribution cases
  columns: np.ndarray | None = None  # the feature columns of the views it uses (None: all)
  width: int | None = None  # the feature columns of a case it was fitted on (None: not recorded)
  gate_groups: np.ndarray | None = None  # mahalanobis: the groups ``score`` takes the max of (None: all)
  batch_groups: np.ndarray | None = None  # the groups ``batch_score`` takes the max of (None: ``score``)
  batch_reference_scores: np.ndarray | None = None  # (M,) ``batch_score`` of the reference cases
  reference_groups: np.ndarray | None = None  # (M,) the volume of each reference case (None: 2D cases)

  def score(self, features: np.ndarray) -> np.ndarray:
    """(N,) distance of each case from the in-distribution cases (higher = less like them).

    A non-finite feature (an image that broke f's arithmetic) scores +inf.
    """
    return self._max(features, self.gate_groups)

  def batch_score(self, features: np.ndarray) -> np.ndarray:
    """(N,) the score the batch test compares (``applicability.batch_views``): the largest
    standardised distance over its own groups, or ``score`` when it has none."""
    return self._max(features, self.batch_groups if self.batch_groups is not None else self.gate_groups)

  @property
  def batch_references(self) -> np.ndarray:
    """The reference cases' ``batch_score``."""
    return self.reference_scores if self.batch_reference_scores is None else self.batch_reference_scores

  def volume_references(self) -> np.ndarray | None:
    """(V,) ``volume_statistic`` of each reference volume; None when the score was fitted
    without its reference cases' volumes (2D cases, or a volume run fitted before they were kept)."""
    if self.reference_groups is None:
      return None
    refs, groups = self.batch_references, np.asarray(self.reference_groups)
    return np.array([volume_statistic(refs[groups == g]) for g in np.unique(groups)])

  def _max(self, features: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    features = np.asarray(features)
    if self.width is not None and features.shape[1] != self.width:
      raise errors.ConfigError(
          f'the applicability score was fitted on cases of {self.width} feature columns, these '
          f'have {features.shape[1]}: f\'s features or the image statistics changed since; rerun '
          '--mode=train_quality (it refits the gate, nothing else)')
    if self.columns is not None:
      features = features[:, self.columns]
    x = _transform(features)
    finite = np.isfinite(x).all(1)
    x = np.where(finite[:, None], x, 0.0)
    if self.kind == 'mahalanobis':
      bounds = np.cumsum((0,) + tuple(self.levels))
      chosen = range(len(self.gaussians)) if groups is None else [int(i) for i in groups]
      z = [(self.gaussians[i].distance(x[:, bounds[i]:bounds[i + 1]]) - self.level_stats[i][0])
           / self.level_stats[i][1] for i in chosen]
      out = np.max(z, axis=0)
    else:
      g = self.gaussians[0]
      z = (x - g.center) / g.scale
      sq = (z * z).sum(1)[:, None] - 2.0 * z @ self.matrix.T + (self.matrix * self.matrix).sum(1)[None]
      d = np.sqrt(np.maximum(sq, 0.0))
      out = np.sort(d, axis=1)[:, min(self.k, d.shape[1]) - 1]
    return np.where(finite, out, np.inf)

  def pvalues(self, scores: np.ndarray) -> np.ndarray:
    """(N,) conformal p-values against the reference cases (``conformal_pvalues``)."""
    return conformal_pvalues(scores, self.reference_scores)

  def save(self, path: str) -> None:
    arrays = {'kind': np.array(self.kind), 'levels': np.array(self.levels), 'k': np.array(self.k),
              'level_stats': self.level_stats, 'matrix': self.matrix,
              'reference_scores': self.reference_scores}
    if self.columns is not None:
      arrays['columns'] = self.columns
    if self.width is not None:
      arrays['width'] = np.array(self.width)
    for name in ('gate_groups', 'batch_groups', 'batch_reference_scores', 'reference_groups'):
      if getattr(self, name) is not None:
        arrays[name] = getattr(self, name)
    for i, g in enumerate(self.gaussians):
      arrays.update({f'center_{i}': g.center, f'scale_{i}': g.scale, f'precision_{i}': g.precision})
    artifacts.write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')

  @classmethod
  def load(cls, path: str) -> 'Applicability':
    with np.load(path) as f:
      n = sum(k.startswith('center_') for k in f.files)
      gaussians = tuple(_Gaussian(f[f'center_{i}'], f[f'scale_{i}'], f[f'precision_{i}']) for i in range(n))
      return cls(str(f['kind']), tuple(int(v) for v in f['levels']), gaussians, f['level_stats'],
                 f['matrix'], int(f['k']), f['reference_scores'],
                 f['columns'] if 'columns' in f.files else None,
                 int(f['width']) if 'width' in f.files else None,
                 *(f[name] if name in f.files else None
                   for name in ('gate_groups', 'batch_groups', 'batch_reference_scores',
                                'reference_groups')))


def _as_groups(blocks) -> list[tuple[int, ...]]:
  """Groups of block indices (a bare index is a group of one)."""
  return [(g,) if isinstance(g, (int, np.integer)) else tuple(g) for g in blocks]


def fit(kind: str, fit_features: np.ndarray, reference_features: np.ndarray,
        k: int = 10, levels: tuple[int, ...] | None = None, seed: int = 0,
        blocks: tuple[tuple[int, ...], ...] | None = None,
        block_fit: dict[int, np.ndarray] | None = None,
        batch_blocks: tuple[tuple[int, ...], ...] | None = None) -> Applicability:
  """Fits the score on ``fit_features`` (F, D) and scores ``reference_features`` (M, D).

  Args:
    levels: feature count per block (``runner.feature_levels``: f's encoder levels, then the
      image statistics); None = one block.
    seed: the cross-fitting folds' seed.
    blocks: the groups of blocks of ``levels`` the score uses (its views,
      ``runner.feature_blocks``): each group is one shrunk Gaussian over its blocks' features
      together; None = every block alone.
    block_fit: ``{block index: (F_b, levels[b]) features}``: blocks fitted on cases of their
      own instead of ``fit_features`` (``mahalanobis``; ``knn`` scores all blocks as one and
      ignores it). A block that does not depend on f -- the image statistics -- may be
      fitted on f's own training images, several times the quality split's share; f's
      encoder levels may not (f's features of its training cases are tighter than of any
      new case, which measured a worse gate). A group's blocks are fitted on the same cases
      (all in ``block_fit``, rows the same images, or none). The p-values stay exact: the
      reference cases are in no fitting set, and the score is one fixed function of a case.
    batch_blocks: the groups of the batch test's score (``batch_score``; ``mahalanobis``), fitted
      beside ``blocks``' (a group in both is fitted once); None = the batch test compares
      ``score``.
  """
  block_fit = dict(block_fit or {})
  columns, width = None, int(np.shape(fit_features)[1])
  gate_groups = batch_groups = None
  if batch_blocks is not None:
    if kind != 'mahalanobis':
      raise ValueError('a batch test on views of its own needs the mahalanobis score')
    gate = _as_groups(blocks if blocks is not None else range(len(levels or (0,))))
    batch = _as_groups(batch_blocks)
    blocks = gate + [g for g in batch if g not in gate]
    gate_groups = np.arange(len(gate))
    batch_groups = np.array([blocks.index(g) for g in batch])
  if blocks is not None:
    if not levels:
      raise ValueError('choosing blocks needs the feature levels')
    groups = _as_groups(blocks)
    bounds = np.cumsum((0,) + tuple(levels))
    columns = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for g in groups for b in g])
    fit_features, reference_features = fit_features[:, columns], reference_features[:, columns]
    own = {}
    for i, g in enumerate(groups):
      fitted = [b in block_fit for b in g]
      if any(fitted) and not all(fitted):
        raise ValueError(f'blocks {g} are joined into one Gaussian but only some of them have '
                         'fitting cases of their own')
      if all(fitted):
        if len({len(block_fit[b]) for b in g}) != 1:
          raise ValueError(f'joined blocks {g} have different numbers of fitting cases')
        own[i] = np.concatenate([block_fit[b] for b in g], 1)
    block_fit = own
    levels = tuple(sum(levels[b] for b in g) for g in groups)
  x = _transform(fit_features)
  if len(x) < 2 or len(reference_features) < 1:
    raise ValueError(f'the applicability score needs >= 2 fitting and >= 1 reference cases '
                     f'(got {len(x)} and {len(reference_features)})')
  levels = tuple(levels) if levels else (x.shape[1],)
  if sum(levels) != x.shape[1]:
    raise ValueError(f'feature levels {levels} do not add up to the {x.shape[1]} features')
  if kind == 'mahalanobis':
    bounds = np.cumsum((0,) + levels)
    folds = np.array_split(np.random.default_rng([seed, keys.APPLICABILITY_SPLIT]).permutation(len(x)),
                           min(_CROSS_FIT_FOLDS, len(x)))
    gaussians, stats_ = [], []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      block, block_folds = x[:, a:b], folds
      if i in block_fit:
        block = _transform(block_fit[i])
        if block.shape[1] != b - a or len(block) < 2:
          raise ValueError(f'block {i} has {b - a} features; its own fitting cases are '
                           f'{block.shape} (>= 2 cases needed)')
        block_folds = np.array_split(
            np.random.default_rng([seed, keys.APPLICABILITY_SPLIT, i]).permutation(len(block)),
            min(_CROSS_FIT_FOLDS, len(block)))
      oof = np.zeros(len(block))
      for fold in block_folds:
        keep = np.setdiff1d(np.arange(len(block)), fold)
        oof[fold] = _Gaussian.fit(block[keep]).distance(block[fold])
      gaussians.append(_Gaussian.fit(block))
      median = float(np.median(oof))
      stats_.append((median, max(float(np.percentile(oof, TAIL_PERCENTILE)) - median, _STD_FLOOR)))
    unscored = Applicability(kind, levels, tuple(gaussians), np.asarray(stats_), np.zeros((0, 0)), k,
                             np.zeros(0))
  elif kind == 'knn':
    center, scale = x.mean(0), np.maximum(x.std(0), _STD_FLOOR)
    unscored = Applicability(kind, levels, (_Gaussian(center, scale, np.zeros((0, 0))),),
                             np.zeros((0, 2)), (x - center) / scale, k, np.zeros(0))
  else:
    raise ValueError(f'unknown applicability score {kind!r}')
  unscored = dataclasses.replace(unscored, gate_groups=gate_groups, batch_groups=batch_groups)
  fitted = dataclasses.replace(unscored, reference_scores=unscored.score(reference_features))
  if batch_groups is not None:
    fitted = dataclasses.replace(fitted, batch_reference_scores=fitted.batch_score(reference_features))
  return dataclasses.replace(fitted, columns=columns, width=width)


def split_indices(num_cases: int, reference_fraction: float, seed: int,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(fitting, reference)`` sorted indices: a seeded share of the cases becomes the reference.

  With ``groups`` (a group index per case: the slices of one volume) whole groups go to one
  side: a reference slice whose neighbours fitted the score would look more typical than a
  new patient's slice, and the p-values would flag too few.
  """
  groups = np.arange(num_cases) if groups is None else np.asarray(groups)
  names, members = np.unique(groups, return_inverse=True)
  if len(names) < 2:
    raise errors.ConfigError(f'the applicability gate needs cases of >= 2 volumes in the quality split '
                             f'(it has {len(names)}); add them, or set predict.ood_alpha=0')
  perm = np.random.default_rng([seed, keys.APPLICABILITY_SPLIT]).permutation(len(names))
  n_ref = min(max(int(round(reference_fraction * num_cases)), 1), num_cases - 2)
  sizes = np.bincount(members, minlength=len(names))[perm]
  k = max(int(np.searchsorted(np.cumsum(sizes), n_ref)) + 1, 1)  # groups until n_ref cases
  if np.sum(sizes[k:]) < 2:  # keep >= 2 fitting cases
    k = max(len(names) - 1, 1)
  reference = np.isin(members, perm[:k])
  return np.flatnonzero(~reference), np.flatnonzero(reference)


def powerless_warning(reference_cases: int, ood_alpha: float) -> str | None:
  """The warning when the gate can flag nothing: with M references the smallest p-value is
  ``1 / (M + 1)``, which must be below ``ood_alpha`` for any case to be sent to review."""
  if ood_alpha <= 0 or 1.0 / (reference_cases + 1) < ood_alpha:
    return None
  return (f'APPLICABILITY GATE POWERLESS: {reference_cases} reference cases give a smallest p-value '
          f'of 1/{reference_cases + 1} = {1.0 / (reference_cases + 1):.3g}, not below '
          f'predict.ood_alpha={ood_alpha}: no case, however unlike the training cases, can be sent '
          f'to review. Give the quality split >= {int(np.floor(1.0 / ood_alpha + 1e-9))} '
          'reference cases (more cases or applicability.reference_fraction), or raise predict.ood_alpha.')


def conformal_pvalues(scores: np.ndarray, references: np.ndarray) -> np.ndarray:
  """(N,) conformal p-values: ``(1 + #{reference >= score}) / (M + 1)``."""
  ref = np.sort(np.asarray(references, np.float64))
  at_least = len(ref) - np.searchsorted(ref, np.asarray(scores, np.float64), side='left')
  return (1.0 + at_least) / (len(ref) + 1.0)


def volume_statistic(slice_batch_scores: np.ndarray) -> float:
  """One volume's score for the batch test of a run of volumes: the median of its slices'
  ``batch_score``. A run's volumes, not its slices, are the exchangeable units (a volume's
  slices are alike), so the test compares one number per volume with the reference volumes'
  (non-finite slices count as the largest: the median stays defined)."""
  x = np.asarray(slice_batch_scores, np.float64)
  return float(np.median(np.where(np.isfinite(x), x, np.finfo(np.float64).max)))


def volume_batch_inputs(score: 'Applicability', features: np.ndarray, groups: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray] | None:
  """``(one statistic per volume of ``features``' cases, the reference volumes' own)`` for
  the batch test of volumes (``groups``: each case's volume); None without reference volumes."""
  refs = score.volume_references()
  if refs is None:
    return None
  scores, groups = score.batch_score(features), np.asarray(groups)
  return np.array([volume_statistic(scores[groups == g]) for g in np.unique(groups)]), refs


def batch_powerless(run_units: int, reference_units: int, alpha: float) -> str | None:
  """The note when the batch test cannot reject at ``alpha`` however unlike the run is: the
  one-sided KS p-value of a run wholly above every reference is 1 / C(n + m, m)."""
  smallest = 1.0 / math.comb(run_units + reference_units, reference_units)
  if smallest < alpha:
    return None
  return (f'BATCH TEST POWERLESS: {run_units} run units against {reference_units} reference units '
          f'give a smallest p-value of {smallest:.3g}, not below predict.shift_alpha={alpha}: no run, '
          'however unlike the training cases, is rejected.')


def batch_test(scores: np.ndarray, reference_scores: np.ndarray) -> dict:
  """One-sided two-sample KS: are ``scores`` stochastically larger than the references'?

  Returns ``{'cases', 'statistic', 'pvalue'}``; a small p-value says the
  batch as a whole is unlike the in-distribution cases.
  """
  scores = np.asarray(scores, np.float64)
  finite_max = np.max(np.concatenate([reference_scores, scores[np.isfinite(scores)]]), initial=0.0)
  scores = np.where(np.isfinite(scores), scores, 2.0 * finite_max + 1.0)  # KS needs finite values
  result = stats.ks_2samp(scores, np.asarray(reference_scores, np.float64), alternative='less')
  return {'cases': int(len(scores)), 'statistic': float(result.statistic),
          'pvalue': float(result.pvalue)}


def feature_width(config) -> int:
  """The feature columns of a case today (``runner.feature_levels``): a score fitted on
  another layout must be refitted, never applied."""
  return int(sum(runner.feature_levels(config.seg)))


def score_path(out_dir: str) -> str:
  """The fitted score's file in the run's ``quality/applicability/``."""
  return os.path.join(out_dir, 'score.npz')


def load(config, workdir: str) -> Applicability | None:
  """The run's fitted score; None when the gate is off (``predict.ood_alpha`` 0).

  ``NotTrained`` when the gate is on and the run has no score, or one fitted
  with other settings: a gate that silently does nothing is not fail-safe.
  """
  if config.predict.ood_alpha <= 0:
    return None
  run_dirs.require_applicability(workdir)
  out_dir = run_dirs.applicability_dir(workdir)
  done = artifacts.read_json(os.path.join(out_dir, run_dirs.DONE))
  if done.get('feature_dim') != feature_width(config):
    raise errors.ConfigError(
        f'{out_dir} was fitted on {done.get("feature_dim")} feature columns per case; this code '
        f'computes {feature_width(config)} (f\'s features or the image statistics changed); run '
        '--mode=train_quality to refit it (nothing else is retrained)')
  if not values.same(done['settings'], stages.applicability_settings(config)):
    raise errors.ConfigError(
        f'{out_dir} was fitted with applicability settings {done["settings"]}, the config asks for '
        f'{stages.applicability_settings(config)}; run --mode=train_quality to refit it (nothing '
        'else is retrained)')
  return Applicability.load(score_path(out_dir))
