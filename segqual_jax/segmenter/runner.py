"""Running a trained f over cases: restore its parameters, segment, map, score.

The one module every later stage uses to get f's outputs -- stage 1's
validation, stage 2's training cases, evaluation and predict -- so none of
them imports a trainer. Two rules hold here:

* **A case's key is its own.** Each case's samples use
  ``base_key`` folded with each word of ``case_hash(case_id)`` (128 bits,
  ``core/keys.py``), and f runs
  ``vmap``-ped over the cases of a batch, so a case's MC-dropout, HCNN or
  latent map depends on nothing else in the batch: not on its position in a
  folder, on the batch size, or on unreadable files before it.
* **Parameters only.** ``load_f`` restores f's parameters from the stage-1
  checkpoint without building an optimiser (``Checkpointer.restore_items``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from segqual_jax.core import artifacts, checkpointing, errors, keys, parallel, workdir as run_dirs
from segqual_jax.data import image_statistics, pipeline
from segqual_jax.metrics import overlap
from segqual_jax.segmenter import methods, sampling, scores, unet

log = logging.getLogger(__name__)

_SCORE_PREFIX = 'score/'


@dataclasses.dataclass(frozen=True)
class SegOutputs:
  """f's outputs per case (numpy, in case order).

  ``dice``/``jaccard`` are the true overlaps when the cases have ground truth
  (a split), else None (new images in predict).
  """
  masks: np.ndarray  # (N, H, W) uint8: f's segmentation (argmax of its probabilities)
  maps: np.ndarray  # (N, H, W) float32 uncertainty maps, higher = more uncertain
  # image-level scores (segmenter/scores.py), name -> (N,), higher = better; empty if not computed
  scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  dice: np.ndarray | None = None  # (N,) true Dice against the cases' masks
  jaccard: np.ndarray | None = None  # (N,) true Jaccard
  # (N, D) f's pooled encoder statistics (the applicability score's input), if computed
  features: np.ndarray | None = None
  # (N, H, W) float32 p(lesion): resampled to a true mask's resolution for native-size labels,
  # and the surrogate's probabilities when another model's segmentation is judged
  probs: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.masks)

  def save(self, path: str) -> None:
    """Writes an .npz atomically: a crash never leaves a file that looks complete."""
    arrays = {'masks': self.masks, 'maps': self.maps, 'dice': self.dice, 'jaccard': self.jaccard,
              'features': self.features, 'probs': self.probs}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    arrays.update({_SCORE_PREFIX + k: v for k, v in self.scores.items()})
    artifacts.write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')

  @classmethod
  def load(cls, path: str) -> 'SegOutputs':
    with np.load(path) as f:
      get = lambda k: f[k] if k in f.files else None
      return cls(f['masks'], f['maps'],
                 {k[len(_SCORE_PREFIX):]: f[k] for k in f.files if k.startswith(_SCORE_PREFIX)},
                 get('dice'), get('jaccard'), get('features'), get('probs'))

  def take(self, idx: np.ndarray) -> 'SegOutputs':
    """The cases ``idx``."""
    pick = lambda a: None if a is None else a[idx]
    return SegOutputs(self.masks[idx], self.maps[idx], {k: v[idx] for k, v in self.scores.items()},
                      pick(self.dice), pick(self.jaccard), pick(self.features), pick(self.probs))

  @classmethod
  def concatenate(cls, parts: list['SegOutputs']) -> 'SegOutputs':
    """The cases of ``parts``, in order (fields missing from any part are dropped)."""
    cat = lambda get: (None if any(get(p) is None for p in parts)
                       else np.concatenate([get(p) for p in parts]))
    names = set.intersection(*[set(p.scores) for p in parts])
    return cls(cat(lambda p: p.masks), cat(lambda p: p.maps),
               {n: cat(lambda p, n=n: p.scores[n]) for n in sorted(names)},
               cat(lambda p: p.dice), cat(lambda p: p.jaccard), cat(lambda p: p.features),
               cat(lambda p: p.probs))

  def summary(self, fail_dice: float) -> dict[str, float]:
    """Mean overlaps, the share of failures (Dice < ``fail_dice``) and mean uncertainty."""
    return {
        'num_cases': int(len(self.masks)),
        'mean_dice': float(self.dice.mean()),
        'mean_jaccard': float(self.jaccard.mean()),
        f'fail_rate_dice_{fail_dice}': float(np.mean(self.dice < fail_dice)),
        'mean_uncertainty': float(self.maps.mean()),
    }


def with_truth(outputs: SegOutputs, truth: np.ndarray) -> SegOutputs:
  """``outputs`` with the true Dice and Jaccard against ``truth`` (N, H, W) masks."""
  masks, truth = jnp.asarray(outputs.masks), jnp.asarray(truth)
  return dataclasses.replace(outputs, dice=np.asarray(overlap.dice(masks, truth)),
                             jaccard=np.asarray(overlap.jaccard(masks, truth)))


def feature_levels(seg_config) -> tuple[int, ...]:
  """The blocks of a case's ``'features'``: f's encoder levels, pooled and on a grid
  (``unet.feature_levels``), then each block of the image's own statistics (``image_statistics.BLOCKS``). The gate
  fits one shrunk Gaussian per group of them (``feature_blocks``)."""
  return unet.feature_levels(seg_config) + image_statistics.BLOCKS


def feature_blocks(seg_config, views: str) -> tuple[tuple[int, ...], ...]:
  """The groups of ``feature_levels``' blocks that make up the comma-separated ``views``, one
  group per shrunk Gaussian of the gate: ``encoder`` is one group per level of f (channel
  means and deviations), ``encoder_grid`` one per level that f's features keep on a grid
  (``unet.grid_levels``: channel means per cell); an image
  statistic by name (``colour``, ``texture``, ``layout``, ``tone``: ``image_statistics.NAMES``)
  is a group of one, and ``+`` joins image statistics into one group (``tone+texture``: one
  Gaussian that sees how the two vary together -- a vivid image is ordinary, and so is a
  smooth one, but not always both)."""
  pooled = seg_config.depth + 1
  encoder = len(unet.feature_levels(seg_config))
  index = {name: encoder + i for i, name in enumerate(image_statistics.NAMES)}
  own_groups = {'encoder': range(pooled), 'encoder_grid': range(pooled, encoder)}
  groups = []
  for view in (v.strip() for v in views.split(',') if v.strip()):
    if view in own_groups:
      groups.extend((level,) for level in own_groups[view])
      continue
    names = [n.strip() for n in view.split('+')]
    unknown = [n for n in names if n not in index]
    if unknown:
      raise ValueError(f'unknown applicability view(s) {unknown} in {view!r}; one of '
                       f"{sorted(index) + sorted(own_groups)} (image statistics joined by '+'; "
                       "f's levels are never joined)")
    if len(set(names)) != len(names):
      raise ValueError(f'applicability view {view!r} names a block twice')
    groups.append(tuple(index[n] for n in names))
  used = [b for g in groups for b in g]
  if len(set(used)) != len(used):
    raise ValueError(f'applicability views {views!r} use a block twice')
  return tuple(groups)


def image_statistic_blocks(seg_config) -> dict[int, slice]:
  """``{block index in feature_levels: its columns in image_statistics.statistics}``: the
  blocks that do not depend on f."""
  encoder = len(unet.feature_levels(seg_config))
  bounds = np.cumsum((0,) + image_statistics.BLOCKS)
  return {encoder + i: slice(int(a), int(b)) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}


def image_statistics_of(images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """(N, sum(image_statistics.BLOCKS)) statistics of uint8 images (N, H, W, 3), as
  ``case_fn`` computes them beside f (no pass of f)."""
  fn = jax.jit(lambda batch: jax.vmap(image_statistics.statistics)(pipeline.to_float(batch)))
  out = [np.asarray(fn(jnp.asarray(images[i:i + batch_size]))) for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, sum(image_statistics.BLOCKS)), np.float32)


def case_fn(predict: Callable, score_band_px: int | None = None,
            features: Callable | None = None, with_probs: bool = False) -> Callable:
  """``(params, float images (N,H,W,3), keys (N,)) -> {'masks', 'maps'[, 'scores'][, 'features']
  [, 'probs']}``, traceable.

  Args:
    predict: ``(params, images, key) -> (probabilities, map[, sample labels])``,
      a method's ``predict`` or ``predict_samples``.
    score_band_px: if given, ``predict`` returns sample labels and the
      image-level scores are computed too (on device: the per-sample label
      maps never leave it).
    features: if given, ``(params, images) -> (N, D)`` features (a method's
      ``features``), returned as ``'features'`` with each image's own
      statistics after them (``data/image_statistics.py``): the applicability
      gate's views, blocks of ``feature_levels``.
    with_probs: also return p(lesion) (N, H, W) as ``'probs'`` (what a mask at
      another resolution is resampled from).

  Each case runs alone under ``vmap`` with its own key.
  """
  def one(params, image, key):
    out = predict(params, image[None], key)
    probs, umap = out[0][0], out[1][0]
    samples = out[2][:, 0] if len(out) > 2 and out[2] is not None else None
    feats = (None if features is None else
             jnp.concatenate([features(params, image[None])[0], image_statistics.statistics(image)]))
    return jnp.argmax(probs, -1).astype(jnp.uint8), umap, samples, feats, probs[..., 1]

  def run(params, images, case_keys):
    with sampling.cases_vmapped(images.shape[0]):  # the engine's memory budget covers every case
      masks, maps, samples, feats, lesion = jax.vmap(one, in_axes=(None, 0, 0))(
          params, images, case_keys)
    result = {'masks': masks, 'maps': maps}
    if with_probs:
      result['probs'] = lesion
    if feats is not None:
      result['features'] = feats
    if score_band_px is not None:
      samples = None if samples is None else jnp.swapaxes(samples, 0, 1)  # (T, N, H, W)
      result['scores'] = scores.image_scores(masks, maps, samples, score_band_px)
    return result
  return run


def method_case_fn(method, with_scores: bool, with_features: bool = False,
                   with_probs: bool = False) -> Callable:
  """``case_fn`` of a method's own prediction, with the image-level scores, the
  applicability features and p(lesion) if asked."""
  features = method.features if with_features else None
  if not with_scores:
    return case_fn(method.predict, features=features, with_probs=with_probs)
  return case_fn(lambda p, x, k: method.predict_samples(p, x, k, keep_labels=True),
                 method.config.uncertainty.score_band_px, features, with_probs)


def batch_fn(fn: Callable) -> Callable:
  """Jits ``(params, uint8 images, case hashes, base key) -> outputs`` of a ``case_fn``."""
  @jax.jit
  def run(params, images, hashes, base_key):
    return fn(params, pipeline.to_float(images), keys.case_keys(base_key, hashes))
  return run


def run_cases(run_batch: Callable, params, images: np.ndarray, case_ids, base_key: jax.Array,
              batch_size: int) -> SegOutputs:
  """f over ``images`` (N, S, S, 3) uint8 in padded batches; case i keyed by ``case_ids[i]``."""
  params = parallel.replicate(params)
  hashes = keys.case_hashes(case_ids)
  outs = []
  for batch_images, batch_hashes, valid in pipeline.eval_batches(batch_size, images, hashes):
    sharded = parallel.shard_batch((batch_images, batch_hashes))
    result = parallel.fetch(run_batch(params, *sharded, base_key))
    outs.append(jax.tree.map(lambda r: np.asarray(r)[:valid], result))
  if not outs:
    size = images.shape[1]
    return SegOutputs(np.zeros((0, size, size), np.uint8), np.zeros((0, size, size), np.float32))
  cat = lambda k: np.concatenate([o[k] for o in outs])
  image_scores = {k: np.concatenate([o['scores'][k] for o in outs]) for k in outs[0].get('scores', {})}
  features = cat('features').astype(np.float32) if 'features' in outs[0] else None
  probs = cat('probs').astype(np.float32) if 'probs' in outs[0] else None
  return SegOutputs(cat('masks'), cat('maps').astype(np.float32), image_scores, features=features,
                    probs=probs)


def case_ids(split: pipeline.Split) -> tuple[str, ...]:
  """The ids that key a split's cases (a split without ids: ``<name>-<index>``)."""
  return split.ids if split.ids else tuple(f'{split.name}-{i:05d}' for i in range(len(split)))


def run_split(run_batch: Callable, params, split: pipeline.Split, base_key: jax.Array,
              batch_size: int) -> SegOutputs:
  """``run_cases`` over a split, with the true Dice/Jaccard against its masks."""
  outputs = run_cases(run_batch, params, split.images, case_ids(split), base_key, batch_size)
  return with_truth(outputs, split.masks)


def cases_key(config) -> jax.Array:
  """The base key of every case's test-time samples (evaluate and predict alike)."""
  return keys.purpose_key(config.seed, keys.CASES)


def load_f(config, workdir: str, seg_dir: str | None = None) -> tuple[Any, Any]:
  """Trained f of ``workdir``: ``(method, params)``. Restores parameters only, cast to the
  test-time compute dtype ``config.sampling.dtype`` (``unet.compute_params``).

  Only a *complete* stage 1 counts (its ``metrics.json`` exists): the latest
  checkpoint of an interrupted run is a half-trained f.

  Args:
    seg_dir: f's directory when not ``<workdir>/seg`` (an out-of-fold copy).
  """
  seg_dir = seg_dir or run_dirs.seg_dir(workdir)
  if not os.path.exists(os.path.join(seg_dir, 'metrics.json')):
    raise errors.NotTrained('complete stage 1 (the segmentation network f)', seg_dir, workdir)
  method = methods.create_method(config)
  target = jax.eval_shape(lambda: method.init_params(jax.random.key(0), config.data.image_size))
  checkpointer = checkpointing.Checkpointer(os.path.join(seg_dir, 'checkpoints'), every_steps=1)
  params = checkpointer.restore_items({'params': target})['params']
  checkpointer.close()
  return method, unet.compute_params(params, config.sampling.dtype)


def outputs_of(config, workdir: str, split: pipeline.Split, seg_dir: str | None = None) -> SegOutputs:
  """The trained f's outputs on ``split``, with the image-level scores, the applicability
  features, p(lesion) and the true overlaps (at the model's size)."""
  method, params = load_f(config, workdir, seg_dir)
  run_batch = batch_fn(method_case_fn(method, with_scores=True, with_features=True, with_probs=True))
  return run_split(run_batch, params, split, cases_key(config), config.seg.eval_batch_size)


def cached_outputs(config, workdir: str, split: pipeline.Split) -> SegOutputs:
  """``outputs_of`` the run's f, cached as ``<workdir>/quality/f_outputs/<split>.npz``.

  Stage 2 and the evaluation share one pass of f per split.
  """
  path = os.path.join(run_dirs.f_outputs_dir(workdir), f'{split.name}.npz')
  if os.path.exists(path):
    cached = SegOutputs.load(path)
    if (cached.features is not None and cached.probs is not None
        and cached.features.shape[1] == sum(feature_levels(config.seg))):
      return cached
    log.info('%s predates the applicability features (or their image statistics) or p(lesion); '
             'running f again', path)
  log.info('running f (%s) on the %s split (%d cases)', config.method, split.name, len(split))
  outputs = outputs_of(config, workdir, split)
  os.makedirs(run_dirs.f_outputs_dir(workdir), exist_ok=True)
  outputs.save(path)
  return outputs
