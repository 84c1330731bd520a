"""Which regressor of a segmentation's quality ranks and fits best? Side by side on the calibration cases.

  python experiments/regressors.py --workdir=runs/clinical/seed0 \
      --peers=runs/clinical/seed1 --peers=runs/clinical/seed2 --out=experiments/regressors/clinical_seed0.json
  python experiments/regressors.py --aggregate experiments/regressors/clinical_seed{0,1,2}.json

Issue 26, item 1. Every variant learns from the run's quality-model cases (the quality
split without its calibration cases) and is measured on the run's held-out calibration
cases, which no quality model saw; the test list is not looked at. Variants:

* the run's own models: g (with f's map), cheap QC and their mean;
* g with a ranking term (``quality.rank_weight`` 1: RankNet pairs beside the squared error);
* an ensemble of 3 g's (the run's g and 2 more members, ``train_cnn(member)``), and its
  mean with cheap QC;
* g at 128 px: the data's own resolution for the image, f's 64-px mask and map upsampled
  (f itself stays at 64 px);
* agreement features of cheap samples into cheap QC: f's own scores plus the image-level
  scores of TTA and of MC-dropout (T = ``uncertainty.mc_samples``) on the same f, and the
  mean of g with it;
* the baselines the field uses without any learning: the pairwise Dice of TTA samples, of
  MC-dropout samples, and of a deep ensemble -- the run's f and its ``--peers`` (f of the
  other seeds) -- which is the bar the issue sets.

Per variant: AUROC at Dice < ``eval.fail_dice`` with a 95 % bootstrap interval, Spearman of
the predicted against the true Dice, and for the regressors (not the agreement scores,
which are not in Dice units) RMSE of the predicted Dice and of the predicted Jaccard.
Trained members and sampled outputs are cached in ``<workdir>/experiments/regressors/``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts, checkpointing  # noqa: E402
from segqual_jax.data import loading, pipeline  # noqa: E402
from segqual_jax.metrics import overlap, quality as metrics  # noqa: E402
from segqual_jax.quality import auto_accept, cheap_qc, cnn, registry  # noqa: E402
from segqual_jax.segmenter import runner  # noqa: E402
from segqual_jax.training import quality_cases, train_quality  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run trained through stage 2 with calibration cases.')
_PEERS = flags.DEFINE_multi_string('peers', [], 'Runs of the same config with other seeds (deep ensemble).')
_OUT = flags.DEFINE_string('out', None, 'JSON of the measurements.')
_AGGREGATE = flags.DEFINE_multi_string('aggregate', [], 'JSON files of this script to average.')
MEMBERS = 3
BIG = 128


def _g_predictions(config, out_dir: str, name: str, z_scale, images, masks, maps) -> np.ndarray:
  """Predicted quality of the g checkpointed in ``out_dir`` (parameters only)."""
  model = cnn.create_regressor(config.quality)
  target = jax.eval_shape(lambda: cnn.init_params(model, name, jax.random.key(0), config.data.image_size))
  restored = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'), every_steps=1)
  params = restored.restore_items({'params': target})['params']
  restored.close()
  g = jax.jit(lambda i, m, z: cnn.predict_fn(model, name)(params, cnn.model_state(z_scale),
                                                          pipeline.to_float(i), m, z))
  out = []
  for i, m, z, valid in pipeline.eval_batches(config.quality.eval_batch_size, images, masks, maps):
    out.append(np.asarray(g(i, m, z))[:valid])
  return np.concatenate(out)


def _trained_g(config, cache: str, tag: str, split, outputs, targets, z_scale, member=0):
  out_dir = os.path.join(cache, tag)
  if not os.path.exists(os.path.join(out_dir, 'done.json')):
    summary = train_quality.train_cnn(config, 'uncertainty', out_dir, split, outputs, targets, z_scale, member)
    artifacts.write_json(os.path.join(out_dir, 'done.json'), summary)
  return out_dir


def _sampled(config, workdir: str, cache: str, method: str, quality) -> runner.SegOutputs:
  """The run's f under another test-time method (same parameters), on the quality split."""
  path = os.path.join(cache, f'{method}_quality.npz')
  if os.path.exists(path):
    return runner.SegOutputs.load(path)
  variant = copy.deepcopy(config)
  variant.method = method
  outputs = runner.outputs_of(variant, workdir, quality)
  outputs.save(path)
  return outputs


def _upsampled(a: np.ndarray, size: int) -> np.ndarray:
  factor = size // a.shape[1]
  return np.repeat(np.repeat(a, factor, axis=1), factor, axis=2)


def _pairwise_dice(masks: list[np.ndarray]) -> np.ndarray:
  """Mean Dice over all pairs of the members' masks, per case (two empty masks agree: 1)."""
  got = []
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      a, b = masks[i].reshape(len(masks[i]), -1) > 0, masks[j].reshape(len(masks[j]), -1) > 0
      inter, total = (a & b).sum(1), a.sum(1) + b.sum(1)
      got.append(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0))
  return np.mean(got, 0)


def _score(predicted: np.ndarray, dice: np.ndarray, jaccard: np.ndarray, fail_dice: float,
           units: str | None) -> dict:
  """AUROC at Dice < fail_dice, Spearman against the true Dice; RMSEs when ``units`` is a target."""
  passed = dice >= fail_dice
  out = {'auroc': metrics.auroc(predicted, passed), 'auroc_ci95': metrics.auroc_interval(predicted, passed),
         'spearman': metrics.correlations(predicted, dice)['spearman']}
  if units:
    as_dice = np.asarray(overlap.as_dice(np.asarray(predicted, np.float64), units))
    out['rmse_dice'] = metrics.rmse(as_dice, dice)
    out['rmse_jaccard'] = metrics.rmse(overlap.jaccard_from_dice(as_dice), jaccard)
  return out


def measure_run(workdir: str, peers: list[str]) -> dict:
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  if config.data.name == 'nnunet':
    raise SystemExit(f'{workdir}: a volume run; this experiment measures cases of 2D data sets')
  if config.calibration.fraction <= 0 or config.quality.label_source != 'holdout':
    raise SystemExit(f'{workdir}: needs calibration cases held out of the quality split (label_source holdout)')
  cache = os.path.join(workdir, 'experiments', 'regressors')
  os.makedirs(cache, exist_ok=True)
  target = config.quality.target
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  (fit_split, fit_out), (cal_split, cal_out) = quality_cases.holdout_parts(config, workdir, quality)
  cal_idx, fit_idx = auto_accept.calibration_indices(len(quality), config.calibration.fraction, config.data.seed)
  targets = (fit_out.jaccard if target == 'jaccard' else fit_out.dice).astype(np.float32)
  z_scale = cnn.map_scale(fit_out.maps)
  batch = config.quality.eval_batch_size
  predicted, units = {}, {}

  def add(label, values, unit):
    predicted[label], units[label] = np.asarray(values, np.float64), unit

  for name in stages.quality_model_names(config):
    add(f'run: {name}', registry.predict_cases(registry.load(config, workdir, name), cal_split.images,
                                               cal_out, batch), target)
  # g with a ranking term.
  ranked = copy.deepcopy(config)
  ranked.quality.rank_weight = 1.0
  g_rank = _trained_g(ranked, cache, 'g_rank', fit_split, fit_out, targets, z_scale)
  add('g + rank term', _g_predictions(config, g_rank, 'uncertainty', z_scale, cal_split.images,
                                      cal_out.masks, cal_out.maps), target)
  # An ensemble of g's: the run's g is member 0.
  members = [predicted['run: uncertainty']]
  for m in range(1, MEMBERS):
    d = _trained_g(config, cache, f'g_member{m}', fit_split, fit_out, targets, z_scale, member=m)
    members.append(_g_predictions(config, d, 'uncertainty', z_scale, cal_split.images, cal_out.masks,
                                  cal_out.maps))
  add(f'g x{MEMBERS}', np.mean(members, 0), target)
  add(f'mean(g x{MEMBERS}, cheap QC)', (predicted[f'g x{MEMBERS}'] + predicted['run: cheap_qc']) / 2, target)
  # g at the data's own resolution.
  big = copy.deepcopy(config)
  big.data.image_size = BIG
  big_quality = loading.load_splits(big.data, names=('quality',))['quality']
  if runner.case_ids(big_quality) != runner.case_ids(quality):
    raise SystemExit('the 128-px quality split holds other cases than the run\'s')
  big_fit = big_quality.take(fit_idx, 'quality_fit')
  up = lambda o: dataclasses.replace(o, masks=_upsampled(o.masks, BIG), maps=_upsampled(o.maps, BIG))
  g_big = _trained_g(big, cache, 'g_128px', big_fit, up(fit_out), targets, z_scale)
  add('g at 128 px', _g_predictions(big, g_big, 'uncertainty', z_scale, big_quality.images[cal_idx],
                                    up(cal_out).masks, up(cal_out).maps), target)
  # Agreement of cheap samples, alone and as cheap QC features.
  sampled = {m: _sampled(config, workdir, cache, m, quality) for m in ('tta', 'mc_dropout')}
  for m, out in sampled.items():
    add(f'{m} pairwise Dice', out.scores['pairwise_dice'][cal_idx], None)
  scores = dict(fit_out.scores)
  cal_scores = dict(cal_out.scores)
  for m, out in sampled.items():
    scores.update({f'{m}:{k}': v[fit_idx] for k, v in out.scores.items()})
    cal_scores.update({f'{m}:{k}': v[cal_idx] for k, v in out.scores.items()})
  x_fit, names = cheap_qc.feature_matrix(fit_out.masks, scores)
  x_cal, _ = cheap_qc.feature_matrix(cal_out.masks, cal_scores, names)
  regressor = cheap_qc.make_regressor(config.cheap_qc.regressor, config.seed).fit(x_fit, targets)
  add('cheap QC + TTA/MC agreement', np.clip(regressor.predict(x_cal), 0, 1), target)
  add('mean(g, cheap QC + TTA/MC agreement)',
      (predicted['run: uncertainty'] + predicted['cheap QC + TTA/MC agreement']) / 2, target)
  # The bar: a deep ensemble's pairwise Dice (the run's f and its peers').
  if peers:
    masks = [cal_out.masks]
    for peer in peers:
      peer_config, _ = stages.for_run(peer, schema.get_config(), from_file=False, overridden=set())
      masks.append(runner.cached_outputs(peer_config, peer, quality).masks[cal_idx])
    add(f'deep ensemble (M={len(masks)}) pairwise Dice', _pairwise_dice(masks), None)
  fail = config.eval.fail_dice
  return {'workdir': workdir, 'seed': config.seed, 'peers': peers, 'fail_dice': fail,
          'fit_cases': len(fit_split), 'calibration_cases': len(cal_split),
          'failures': int(np.sum(cal_out.dice < fail)),
          'variants': {k: _score(v, cal_out.dice, cal_out.jaccard, fail, units[k]) for k, v in predicted.items()}}


def aggregate(paths: list[str]) -> str:
  runs = [json.load(open(p)) for p in paths]
  fmt = lambda vals, scale, d: (f'{scale * np.mean(vals):.{d}f} (' + ', '.join(f'{scale * v:.{d}f}' for v in vals) + ')'
                                if all(v is not None for v in vals) else 'n/a')
  lines = [f'Means over {len(runs)} seed(s) ({", ".join(str(r["seed"]) for r in runs)}), per seed in brackets; '
           f'{np.mean([r["calibration_cases"] for r in runs]):.0f} calibration cases per seed '
           f'({", ".join(str(r["failures"]) for r in runs)} with Dice < {runs[0]["fail_dice"]}), '
           f'learned variants fitted on {np.mean([r["fit_cases"] for r in runs]):.0f}.', '',
           '| variant | AUROC at Dice < 0.8 (%) | Spearman (Dice) | RMSE of Dice | RMSE of Jaccard |',
           '|---|---|---|---|---|']
  for name in runs[0]['variants']:
    got = [r['variants'][name] for r in runs if name in r['variants']]
    if len(got) < len(runs):
      continue
    rmse = lambda k: fmt([g[k] for g in got], 1, 3) if k in got[0] else 'n/a (not in Dice units)'
    lines.append(f"| {name} | {fmt([g['auroc'] for g in got], 100, 1)} | {fmt([g['spearman'] for g in got], 1, 3)} | "
                 f"{rmse('rmse_dice')} | {rmse('rmse_jaccard')} |")
  return '\n'.join(lines) + '\n'


def main(argv):
  if _AGGREGATE.value:  # --aggregate a.json b.json ...: the files after the first are arguments
    print(aggregate(_AGGREGATE.value + list(argv[1:])))
    return
  result = measure_run(_WORKDIR.value, _PEERS.value)
  artifacts.write_json(_OUT.value, result)
  print(aggregate([_OUT.value]))


if __name__ == '__main__':
  app.run(main)
