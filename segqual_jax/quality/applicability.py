"""Is this image one f can be judged on? A score, a conformal p-value and a batch test.

A quality model learns how f fails on images like its training cases; on
another modality, a corrupted scan or a flat grey frame its prediction means
nothing (a portrait photograph got "pass, predicted Dice 0.87"). So every
case gets an *applicability score* -- how far f's pooled encoder features
(``UNet.encoder_features``) lie from those of in-distribution cases f never
trained on -- in one of two forms:

* ``mahalanobis``: the Mahalanobis distance under a Gaussian fitted to the
  standardised features with Ledoit-Wolf shrinkage (Lee et al. 2018; the
  covariance of ~1000 dimensions from a few hundred cases needs shrinking);
* ``knn``: the Euclidean distance to the k-th nearest fitting case (Sun,
  Ming, Zhu & Li 2022), which assumes no shape. In the standardised space,
  *not* L2-normalised as Sun et al. do for a classifier's penultimate layer:
  these features are per-image statistics whose magnitude is the signal (a
  dark image has small channel means; normalising maps it onto a bright
  one).

A distance has no scale a clinician can use, so it becomes a **conformal
p-value** against held-out in-distribution *reference* cases, disjoint from
the fitting ones: ``p = (1 + #{reference scores >= s}) / (M + 1)``. For a new
case exchangeable with the references, ``P(p <= a) <= a`` for every ``a``:
a gate "review when p < ood_alpha" sends at most that share of in-distribution
cases to review, whatever the score, while a case farther out than every
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
import os

import numpy as np
from scipy import stats

from segqual_jax.config import stages
from segqual_jax.core import artifacts, errors, keys, workdir as run_dirs

_STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class Applicability:
  """A fitted applicability score and its reference scores."""
  kind: str  # 'mahalanobis' | 'knn'
  center: np.ndarray  # (D,) mean of the fitting features
  scale: np.ndarray  # (D,) their standard deviation (floored)
  matrix: np.ndarray  # mahalanobis: (D, D) shrunk precision; knn: (F, D) standardised fitting features
  k: int  # knn's neighbour
  reference_scores: np.ndarray  # (M,) scores of the held-out in-distribution cases

  def score(self, features: np.ndarray) -> np.ndarray:
    """(N,) distance of each case from the in-distribution cases (higher = less like them).

    A non-finite feature (an image that broke f's arithmetic) scores +inf.
    """
    z = (np.asarray(features, np.float64) - self.center) / self.scale
    finite = np.isfinite(z).all(1)
    z = np.where(finite[:, None], z, 0.0)
    if self.kind == 'mahalanobis':
      out = np.sqrt(np.maximum(np.einsum('nd,de,ne->n', z, self.matrix, z), 0.0))
    else:
      sq = (z * z).sum(1)[:, None] - 2.0 * z @ self.matrix.T + (self.matrix * self.matrix).sum(1)[None]
      d = np.sqrt(np.maximum(sq, 0.0))
      out = np.sort(d, axis=1)[:, min(self.k, d.shape[1]) - 1]
    return np.where(finite, out, np.inf)

  def pvalues(self, scores: np.ndarray) -> np.ndarray:
    """(N,) conformal p-values: ``(1 + #{reference >= score}) / (M + 1)``."""
    ref = np.sort(self.reference_scores)
    at_least = len(ref) - np.searchsorted(ref, np.asarray(scores, np.float64), side='left')
    return (1.0 + at_least) / (len(ref) + 1.0)

  def save(self, path: str) -> None:
    arrays = {'center': self.center, 'scale': self.scale, 'matrix': self.matrix,
              'reference_scores': self.reference_scores, 'kind': np.array(self.kind),
              'k': np.array(self.k)}
    artifacts.write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')

  @classmethod
  def load(cls, path: str) -> 'Applicability':
    with np.load(path) as f:
      return cls(str(f['kind']), f['center'], f['scale'], f['matrix'], int(f['k']),
                 f['reference_scores'])


def fit(kind: str, fit_features: np.ndarray, reference_features: np.ndarray,
        k: int = 10) -> Applicability:
  """Fits the score on ``fit_features`` (F, D) and scores ``reference_features`` (M, D)."""
  from sklearn import covariance  # imported here: scikit-learn is slow to import

  x = np.asarray(fit_features, np.float64)
  if len(x) < 2 or len(reference_features) < 1:
    raise ValueError(f'the applicability score needs >= 2 fitting and >= 1 reference cases '
                     f'(got {len(x)} and {len(reference_features)})')
  center, scale = x.mean(0), np.maximum(x.std(0), _STD_FLOOR)
  z = (x - center) / scale
  if kind == 'mahalanobis':
    matrix = covariance.LedoitWolf(assume_centered=True).fit(z).precision_
  elif kind == 'knn':
    matrix = z
  else:
    raise ValueError(f'unknown applicability score {kind!r}')
  unscored = Applicability(kind, center, scale, matrix, k, np.zeros(0))
  return dataclasses.replace(unscored, reference_scores=unscored.score(reference_features))


def split_indices(num_cases: int, reference_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(fitting, reference)`` sorted indices: a seeded share of the cases becomes the reference."""
  perm = np.random.default_rng([seed, keys.APPLICABILITY_SPLIT]).permutation(num_cases)
  n_ref = min(max(int(round(reference_fraction * num_cases)), 1), num_cases - 2)
  return np.sort(perm[n_ref:]), np.sort(perm[:n_ref])


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
  if done['settings'] != stages.applicability_settings(config):
    raise errors.ConfigError(
        f'{out_dir} was fitted with applicability settings {done["settings"]}, the config asks for '
        f'{stages.applicability_settings(config)}; run --mode=train_quality to refit it (nothing '
        'else is retrained)')
  return Applicability.load(score_path(out_dir))
