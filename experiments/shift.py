"""Is the tool fail-safe under shift? A shift suite for one trained, calibrated run.

  python experiments/shift.py --config=configs/isic2017.py:msp --workdir=runs/shift/isic2017/seed0 \
      --config.seed=0 --config.calibration.fraction=0.3 --far_root=../shared/data/kvasir_seg/128 \
      --suite=test --out=experiments/shift/isic2017_seed0.json
  python experiments/shift.py --aggregate experiments/shift/isic2017_seed*.json  # mean over seeds

The suite is built from the run's own cases -- the *test* split
(``--suite=test``: reported numbers) or the calibration cases
(``--suite=dev``: for choosing the applicability score and ``ood_alpha``,
never the test split) -- plus far-out-of-distribution sets:

* each corruption of ``data/corruptions.py`` at severities 1-3 (seeded per case);
* the other shared data set's test list (``--far_root``, same protocol lists);
* the embedded synthetic generator's images;
* uniform noise and flat colour images (no ground truth: every one should
  go to review).

Per set and quality model: n, true failure rate (Dice < eval.fail_dice),
share flagged by the applicability gate, automation rate and failures among
accepted with the run's calibrated rule at ``predict.alpha`` behind the gate
(and without it), AUROC of failure detection, the in-vs-clean AUROC of the
applicability score, and the batch test's verdict on the whole set. With
``--candidates`` the in-vs-clean AUROC of every candidate score is reported
too (fitted here exactly as stage 2 fits the configured one).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.config import stages  # noqa: E402
from segqual_jax.core import artifacts, runtime, workdir as run_dirs  # noqa: E402
from segqual_jax.data import corruptions, loading, pipeline, synthetic  # noqa: E402
from segqual_jax.metrics import quality as quality_metrics  # noqa: E402
from segqual_jax.quality import applicability, policy, registry  # noqa: E402
from segqual_jax.segmenter import runner, unet  # noqa: E402
from segqual_jax.training import quality_cases, train_quality  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config (as trained).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained (and calibrated) run.')
_SUITE = flags.DEFINE_enum('suite', 'test', ['test', 'dev'], 'test: the test split (reported); '
                           'dev: the calibration cases (for choices).')
_FAR_ROOT = flags.DEFINE_string('far_root', '', 'Another data set (images/, masks/, same protocol lists) as far-OOD.')
_FAR_NAME = flags.DEFINE_string('far_name', '', 'Its name in the table (default: the folder above its root).')
_SYNTHETIC = flags.DEFINE_integer('synthetic', 100, 'Synthetic-generator images in the suite (0: none).')
_NOISE = flags.DEFINE_integer('noise', 50, 'Uniform-noise and flat-colour images each (0: none).')
_CANDIDATES = flags.DEFINE_bool('candidates', False, 'Also the in-vs-clean AUROC of every candidate score.')
_OUT = flags.DEFINE_string('out', None, 'JSON result (a .md table is written beside it).')
_AGGREGATE = flags.DEFINE_bool('aggregate', False, 'Average the JSON files given as arguments.')

CANDIDATES = (('mahalanobis', 10), ('knn', 5), ('knn', 10), ('knn', 25))  # (score, k)


def base_split(config, workdir: str) -> pipeline.Split:
  """The clean cases the suite corrupts: the test split, or the calibration cases (dev)."""
  if _SUITE.value == 'test':
    return loading.load_splits(config.data, names=('test',))['test']
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  parts = quality_cases.holdout_parts(config, workdir, quality)
  if parts[1] is None:
    raise app.UsageError('--suite=dev needs a run with calibration.fraction > 0 (its calibration cases)')
  return parts[1][0]


def far_sets(config, size: int) -> list[tuple[str, pipeline.Split, bool]]:
  """``(name, split, has_truth)`` of the far-out-of-distribution sets."""
  out = []
  if _FAR_ROOT.value:
    far_config = config.data.copy_and_resolve_references()
    far_config.name, far_config.root = 'folder', os.path.abspath(_FAR_ROOT.value)
    name = _FAR_NAME.value or os.path.basename(os.path.dirname(far_config.root.rstrip('/')))
    out.append((f'far: {name}', loading.load_splits(far_config, names=('test',))['test'], True))
  if _SYNTHETIC.value:
    examples = [synthetic.generate_example(1234, 'test', i, synthetic.GeneratorConfig(image_size=size))
                for i in range(_SYNTHETIC.value)]
    out.append(('far: synthetic generator', pipeline.Split(
        'synthetic_far', np.stack([e['image'] for e in examples]), np.stack([e['mask'] for e in examples]),
        tuple(f'synthetic-far-{i}' for i in range(len(examples)))), True))
  if _NOISE.value:
    rng = np.random.default_rng(0)
    n = _NOISE.value
    empty = np.zeros((n, size, size), np.uint8)
    noise = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    flat = np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), (n, size, size, 3)).copy()
    out.append(('far: uniform noise', pipeline.Split('noise', noise, empty,
                                                     tuple(f'noise-{i}' for i in range(n))), False))
    out.append(('far: flat colour', pipeline.Split('flat', flat, empty,
                                                   tuple(f'flat-{i}' for i in range(n))), False))
  return out


def corrupted_sets(base: pipeline.Split) -> list[tuple[str, pipeline.Split, bool]]:
  ids = runner.case_ids(base)
  out = []
  for name in corruptions.CORRUPTIONS:
    for severity in corruptions.SEVERITIES:
      images = corruptions.corrupt_all(base.images, ids, name, severity, seed=1)
      out.append((f'{name} {severity}', pipeline.Split(f'{base.name}~{name}{severity}', images, base.masks,
                                                        tuple(corruptions.copy_id(i, name, severity) for i in ids)), True))
  return out


def auroc(in_scores, out_scores) -> float | None:
  if len(in_scores) == 0 or len(out_scores) == 0:
    return None
  labels = np.r_[np.zeros(len(in_scores), bool), np.ones(len(out_scores), bool)]
  values = np.r_[in_scores, out_scores]
  values = np.where(np.isfinite(values), values, np.nanmax(values[np.isfinite(values)], initial=0) * 2 + 1)
  return quality_metrics.auroc(values, labels)


def evaluate_set(config, workdir, name, split, has_truth, run_batch, f_params, models, score,
                 clean_scores, candidates) -> dict:
  """Every number of one set of the suite."""
  slug = ''.join(ch if ch.isalnum() else '_' for ch in name)
  cache = os.path.join(workdir, 'shift', f'{_SUITE.value}__{slug}.npz')
  if os.path.exists(cache):
    outputs = runner.SegOutputs.load(cache)
  if (not os.path.exists(cache) or len(outputs) != len(split)
      or outputs.features is None or outputs.features.shape[1] != sum(runner.feature_levels(config.seg))):
    outputs = runner.run_cases(run_batch, f_params, split.images, runner.case_ids(split),
                               runner.cases_key(config), config.seg.eval_batch_size)
    if has_truth:
      outputs = runner.with_truth(outputs, split.masks)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    outputs.save(cache)
  values = score.score(outputs.features)
  pvalues = score.pvalues(values)
  flagged = policy.flagged(pvalues, config.predict.ood_alpha)
  batch_scores = score.batch_score(outputs.features)  # the batch test's own views (applicability.batch_views)
  batch = applicability.batch_test(batch_scores, score.batch_references)
  failed = outputs.dice < config.eval.fail_dice if has_truth else np.ones(len(split), bool)
  row = {'set': name, 'n': int(len(split)), 'has_truth': has_truth,
         'true_failure_rate': float(failed.mean()) if has_truth else None,
         'flagged': float(flagged.mean()),
         'applicability_auroc_vs_clean': None if clean_scores is None else auroc(clean_scores, values),
         'batch_pvalue': batch['pvalue'], 'batch_rejected': bool(batch['pvalue'] < config.predict.shift_alpha),
         'models': {}}
  for cand, cand_score in candidates.items():
    row.setdefault('candidates', {})[cand] = (None if clean_scores is None else
                                              auroc(cand_score['clean'], cand_score['score'].score(outputs.features)))
  per_case = {'scores': values, 'batch_scores': batch_scores, 'pvalues': pvalues, 'failed': failed,
              'has_truth': np.array(has_truth)}
  for mname, model in models.items():
    pred = registry.predict_cases(model, split.images, outputs, config.quality.eval_batch_size)
    rule = policy.decision_rule(config, model)  # predict's own rule (inf: accept nothing)
    per_case[f'pred__{mname}'], per_case[f'threshold__{mname}'] = pred, np.array(rule.threshold)
    gated = policy.realised(pred, failed, rule.threshold, pvalues, config.predict.ood_alpha)
    bare = policy.realised(pred, failed, rule.threshold)
    suspended = row['batch_rejected']  # the set sent as one run: predict.on_shift=suspend
    row['models'][mname] = {
        'rule': rule.description, 'automation': gated['automation_rate'],
        'automation_as_one_run': 0.0 if suspended else gated['automation_rate'],
        'accepted_failure_rate_as_one_run': None if suspended or not has_truth else gated['accepted_failure_rate'],
        'accepted_failure_rate': gated['accepted_failure_rate'] if has_truth else None,
        'accepted': gated['accepted'],
        'automation_without_gate': bare['automation_rate'],
        'accepted_failure_rate_without_gate': bare['accepted_failure_rate'] if has_truth else None,
        'failure_auroc': (quality_metrics.auroc(pred, ~failed) if has_truth and 0 < failed.sum() < len(failed)
                          else None)}
  if has_truth:
    row['mean_dice'] = float(outputs.dice.mean())
  # every case's numbers, for the stream and mixed-folder scenarios (experiments/mixed_folders.py)
  artifacts.write_atomic(cache[:-len('.npz')] + '__cases.npz',
                         lambda tmp: np.savez(tmp, **per_case), suffix='.tmp.npz')
  return row, values


def run_suite(config, workdir: str) -> dict:
  runtime.configure(config)
  method, f_params = runner.load_f(config, workdir)
  names = stages.quality_model_names(config)
  models = {n: registry.load(config, workdir, n) for n in names}
  run_batch = runner.batch_fn(runner.method_case_fn(method, with_scores=True, with_features=True))
  score = applicability.load(config, workdir)
  if score is None:
    raise app.UsageError('the run has the applicability gate off (predict.ood_alpha=0)')
  candidates = {}
  if _CANDIDATES.value:  # fitted exactly as stage 2 fits the configured score
    quality = loading.load_splits(config.data, names=('quality',))['quality']
    (_, fit_out), _ = quality_cases.holdout_parts(config, workdir, quality)
    a = config.applicability
    fit_idx, ref_idx = applicability.split_indices(len(fit_out), a.reference_fraction, config.data.seed)
    block_fit = train_quality.image_block_fit(config)
    for kind, k in CANDIDATES:
      candidates[f'{kind}' + (f' k={k}' if kind == 'knn' else '')] = {
          'score': applicability.fit(kind, fit_out.features[fit_idx], fit_out.features[ref_idx], k,
                                     runner.feature_levels(config.seg), config.data.seed,
                                     runner.feature_blocks(config.seg, config.applicability.views),
                                     block_fit)}
  base = base_split(config, workdir)
  size = config.data.image_size
  t0 = time.time()
  rows = []
  clean_row, clean_scores = evaluate_set(config, workdir, 'clean', base, True, run_batch, f_params,
                                         models, score, None, {})
  clean_features = runner.SegOutputs.load(os.path.join(workdir, 'shift', f'{_SUITE.value}__clean.npz')).features
  for cand in candidates.values():
    cand['clean'] = cand['score'].score(clean_features)
  if candidates:
    clean_row['candidates'] = {c: None for c in candidates}
  rows.append(clean_row)
  for name, split, has_truth in corrupted_sets(base) + far_sets(config, size):
    row, _ = evaluate_set(config, workdir, name, split, has_truth, run_batch, f_params, models, score,
                          clean_scores, candidates)
    rows.append(row)
    print(f'{name}: n={row["n"]}, flagged {100 * row["flagged"]:.0f} % ({time.time() - t0:.0f} s)', flush=True)
  return {'workdir': os.path.abspath(workdir), 'suite': _SUITE.value, 'method': config.method,
          'seed': config.seed, 'data': config.data.root or config.data.name,
          'applicability': stages.applicability_settings(config), 'ood_alpha': config.predict.ood_alpha,
          'alpha': config.predict.alpha, 'shift_alpha': config.predict.shift_alpha,
          'quality_target': config.quality.target, 'shift_corruptions': config.quality.shift_corruptions,
          'rows': rows}


def _pct(v, digits=1):
  return 'n/a' if v is None else f'{100 * v:.{digits}f}'


def _mean(values):
  values = [v for v in values if v is not None]
  return None if not values else float(np.mean(values))


def markdown(results: list[dict]) -> str:
  """One table per quality model; values are means over the runs given (seeds)."""
  first = results[0]
  lines = [f"Shift suite ({first['suite']}), {len(results)} run(s): seeds "
           f"{', '.join(str(r['seed']) for r in results)}; method {first['method']}; applicability "
           f"{first['applicability']['score']}, review when p < {first['ood_alpha']}; rule at alpha "
           f"{first['alpha']}. Percentages are means over the runs.\n"]
  for mname in first['rows'][0]['models']:
    lines += [f'\n#### Quality model {mname}\n',
              '| set | n | true failures (%) | flagged (%) | automation (%) | failures among accepted (%) | '
              'without gate: automation / failures among accepted (%) | as one run, batch check: '
              'automation / failures among accepted (%) | failure AUROC (%) | '
              'applicability AUROC vs clean (%) | batch test rejects |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for i, row in enumerate(first['rows']):
      per = [r['rows'][i] for r in results]
      m = [p['models'][mname] for p in per]
      lines.append(
          f"| {row['set']} | {row['n']} | {_pct(_mean([p['true_failure_rate'] for p in per]))} | "
          f"{_pct(_mean([p['flagged'] for p in per]))} | {_pct(_mean([x['automation'] for x in m]))} | "
          f"{_pct(_mean([x['accepted_failure_rate'] for x in m]))} | "
          f"{_pct(_mean([x['automation_without_gate'] for x in m]))} / "
          f"{_pct(_mean([x['accepted_failure_rate_without_gate'] for x in m]))} | "
          f"{_pct(_mean([x['automation_as_one_run'] for x in m]))} / "
          f"{_pct(_mean([x['accepted_failure_rate_as_one_run'] for x in m]))} | "
          f"{_pct(_mean([x['failure_auroc'] for x in m]))} | "
          f"{_pct(_mean([p['applicability_auroc_vs_clean'] for p in per]))} | "
          f"{sum(p['batch_rejected'] for p in per)}/{len(per)} |")
  if 'candidates' in first['rows'][0]:
    cands = list(first['rows'][0]['candidates'])
    lines += ['\n#### Candidate applicability scores: AUROC of each set vs the clean cases (%)\n',
              '| set | ' + ' | '.join(cands) + ' |', '|---|' + '---|' * len(cands)]
    for i, row in enumerate(first['rows'][1:], start=1):
      lines.append(f"| {row['set']} | " + ' | '.join(
          _pct(_mean([r['rows'][i]['candidates'][c] for r in results])) for c in cands) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if _AGGREGATE.value:
    results = [json.load(open(p)) for p in argv[1:]]
    print(markdown(results))
    return
  config, workdir = _CONFIG.value, _WORKDIR.value
  result = run_suite(config, workdir)
  text = markdown([result])
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    artifacts.write_json(_OUT.value, result)
    artifacts.write_text(os.path.splitext(_OUT.value)[0] + '.md', text)


if __name__ == '__main__':
  app.run(main)
