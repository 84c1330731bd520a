"""Cheap QC, RCA, score rows and the calibrated auto-accept rule through main.py (issue 6, items 4-7)."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segqual_jax.quality import cheap_qc, rca

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_shape_features_of_known_masks():
  masks = np.zeros((3, 10, 10), np.uint8)
  masks[0, 2:6, 2:6] = 1  # one 4x4 square
  masks[1, 0:2, 0:2] = 1  # a 2x2 square in the corner ...
  masks[1, 7:9, 7:9] = 1  # ... and another: two components
  f = cheap_qc.shape_features(masks)
  assert f['area_fraction'][0] == pytest.approx(0.16)
  assert f['components'].tolist() == [1, 2, 0]
  assert f['largest_component_share'][1] == pytest.approx(0.5)
  assert f['boundary_per_area'][0] == pytest.approx(12 / 4)  # 12 boundary pixels, sqrt(16)
  assert f['border_share'][0] == 0 and f['border_share'][1] == pytest.approx(3 / 8)
  assert all(v[2] == 0 for v in f.values())  # empty mask: zeros
  x, names = cheap_qc.feature_matrix(masks, {'map_mean': np.array([-0.1, -0.2, -0.3])})
  assert x.shape == (3, 7) and names[0] == 'score:map_mean'
  with pytest.raises(ValueError, match='score:pairwise_dice'):
    cheap_qc.feature_matrix(masks, {}, ['score:pairwise_dice'])


@pytest.mark.parametrize('kind', ['gradient_boosting', 'random_forest', 'lasso'])
def test_cheap_qc_regressors_learn_a_quality_signal(kind):
  rng = np.random.default_rng(0)
  quality = rng.random(120)
  x = np.stack([quality + 0.05 * rng.normal(size=120), rng.normal(size=120)], 1)
  model = cheap_qc.make_regressor(kind, 0).fit(x[:80], quality[:80])
  corr = np.corrcoef(model.predict(x[80:]), quality[80:])[0, 1]
  assert corr > 0.9


def test_rca_scores_a_right_mask_above_a_wrong_one():
  """A reverse segmenter trained on the true mask segments the references; one trained on a wrong mask does not."""
  size = 16
  yy, xx = np.mgrid[:size, :size]
  def disk(cy, cx, r):
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    image = np.stack([np.where(mask, 220, 40)] * 3, -1).astype(np.uint8)
    return image, mask
  refs = [disk(8, 8, 4), disk(6, 9, 5), disk(9, 7, 3)]
  image, mask = disk(7, 8, 4)
  wrong = np.zeros_like(mask)
  wrong[:, :size // 2] = 1  # half the image, unrelated to the lesion
  cfg = ml_collections.ConfigDict({'references': 3, 'steps': 60, 'learning_rate': 0.01,
                                   'base_width': 4, 'depth': 2})
  model = rca.reverse_model(cfg)
  init = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']
  scorer = rca.make_scorer(model, cfg)
  dice = scorer(init, jnp.asarray(np.stack([image, image]), jnp.float32) / 255.0,
                jnp.asarray(np.stack([mask, wrong])),
                jnp.asarray(np.stack([r[0] for r in refs]), jnp.float32) / 255.0,
                jnp.asarray(np.stack([r[1] for r in refs])))
  assert float(dice[0]) > 0.8 and float(dice[1]) < 0.6


@pytest.fixture(scope='module')
def calibrated_run(tmp_path_factory):
  """One tiny run with every new quality model and a calibration split (through main.py)."""
  root = tmp_path_factory.mktemp('calibrated')
  workdir, data_dir = str(root / 'run'), str(root / 'tfds')
  flags = ['--config=configs/test.py', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
           '--config.method=mc_dropout', '--config.quality.models=uncertainty,cheap_qc,rca,mean',
           '--config.calibration.fraction=0.5', '--config.data.num_quality=16', '--config.rca.steps=5']
  done = subprocess.run([sys.executable, 'main.py', *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, flags


def test_run_with_new_quality_models_and_calibration(calibrated_run):
  workdir, _ = calibrated_run
  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert set(metrics['quality_models']) == {'MC-dropout', 'Cheap QC (MC-dropout)', 'RCA',
                                            'Mean of the quality models (MC-dropout)'}
  with open(os.path.join(workdir, 'predictions.csv')) as f:  # mean = the average of g and cheap QC
    rows = list(csv.DictReader(f))
  for r in rows:
    members = (float(r['predicted[MC-dropout]']) + float(r['predicted[Cheap QC (MC-dropout)]'])) / 2
    assert abs(float(r['predicted[Mean of the quality models (MC-dropout)]']) - members) < 2e-5
  assert json.load(open(os.path.join(workdir, 'quality', 'mean', 'done.json')))['members'] == ['uncertainty', 'cheap_qc']
  scores = metrics['scores']
  assert 'MC-dropout: pairwise Dice' in scores and 'MC-dropout: map boundary mean' in scores
  assert all(m['rmse'] is None and m['aurc'] is not None for m in scores.values())
  # g and cheap QC trained on the 8 non-calibration quality cases; RCA's references come from them.
  for variant in ('uncertainty', 'cheap_qc'):
    done = json.load(open(os.path.join(workdir, 'quality', variant, 'done.json')))
    assert done['num_cases'] == 8, variant
  features = json.load(open(os.path.join(workdir, 'quality', 'cheap_qc', 'done.json')))['features']
  assert 'score:pairwise_dice' in features and 'shape:components' in features
  assert json.load(open(os.path.join(workdir, 'quality', 'rca', 'done.json')))['references'] == 8
  # stage 2 calibrated the rules; the evaluation applied them to the test split
  stored = json.load(open(os.path.join(workdir, 'quality', 'calibration.json')))
  assert set(stored['models']) == {'uncertainty', 'cheap_qc', 'rca', 'mean'}
  assert stored['settings']['alphas'] == [0.05, 0.1] and stored['settings']['fraction'] == 0.5
  rules = metrics['auto_accept']
  assert set(rules) == {'uncertainty', 'cheap_qc', 'rca', 'mean'}
  for name, entry in rules.items():
    assert set(entry['rules']) == {'0.05', '0.1'}
    for alpha, rule in entry['rules'].items():
      assert rule['calibration_cases'] == 8 and rule['test']['cases'] == 8
    # a smaller tolerated failure rate never accepts more: a stricter (or no) threshold
    strict, lenient = entry['rules']['0.05'], entry['rules']['0.1']
    if strict['threshold'] is not None:
      assert lenient['threshold'] is not None and strict['threshold'] >= lenient['threshold']
    assert strict['test']['accepted'] <= lenient['test']['accepted']
  assert '### Calibrated auto-accept' in open(os.path.join(workdir, 'table.md')).read()


def test_predict_with_cheap_qc_uses_the_calibrated_rule(calibrated_run, tmp_path):
  from PIL import Image
  workdir, flags = calibrated_run
  inp = tmp_path / 'in'
  inp.mkdir()
  for i in range(2):
    Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(inp / f'x{i}.png')
  out = tmp_path / 'out'
  # The run was trained with overrides (calibration.fraction=0.5, ...): predict needs the
  # workdir alone, and an override only of what it may change (issue 23).
  done = subprocess.run([sys.executable, 'main.py', f'--workdir={workdir}', '--mode=predict',
                         f'--input={inp}', f'--output={out}', '--config.predict.quality_model=cheap_qc'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = list(csv.DictReader(open(out / 'predictions.csv')))
  rule = json.load(open(os.path.join(workdir, 'quality', 'calibration.json')))['models']['cheap_qc']['rules']['0.1']
  assert len(rows) == 2
  for r in rows:
    assert r['decision_rule'].startswith('calibrated: accepted-failure rate (Dice < 0.8) <= 0.1')
    value = float(r['predicted_jaccard'])  # rounded to 4 decimals: undecidable within 5e-5 of the bar
    if rule['threshold'] is None or abs(value - rule['threshold']) > 5e-5:
      passed = rule['threshold'] is not None and value >= rule['threshold']
      assert r['decision'] == ('pass' if passed else 'fail')
  assert json.load(open(out / 'summary.json'))['provenance']['quality_model'] == 'cheap_qc'
  # An override of a field that shaped the run's models is refused by name, before any work.
  refused = subprocess.run([sys.executable, 'main.py', f'--workdir={workdir}', '--mode=predict',
                            f'--input={inp}', f'--output={tmp_path / "refused"}',
                            '--config.calibration.fraction=0.0'],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0
  assert '--config.calibration.fraction=0.0, the run has 0.5' in refused.stderr, refused.stderr[-2000:]
  assert not (tmp_path / 'refused').exists()


def test_predict_without_a_rule_for_its_alpha_says_so_everywhere(calibrated_run, tmp_path):
  """A calibrated run asked for an alpha it has no rule for must not fall back silently."""
  from PIL import Image
  workdir, flags = calibrated_run
  inp = tmp_path / 'in'
  inp.mkdir()
  Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(inp / 'x.png')
  out = tmp_path / 'out'
  done = subprocess.run([sys.executable, 'main.py', *flags, '--mode=predict', f'--input={inp}',
                         f'--output={out}', '--config.predict.alpha=0.2'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'NOT CALIBRATED' in done.stderr
  summary = json.load(open(out / 'summary.json'))
  not_calibrated = [w for w in summary['warnings'] if w.startswith('NOT CALIBRATED')]
  assert len(not_calibrated) == 1 and 'predict.alpha=0.2' in not_calibrated[0]
  assert 'NOT CALIBRATED' in (out / 'index.html').read_text()
  assert list(csv.DictReader(open(out / 'predictions.csv')))[0]['decision_rule'].startswith('fixed')


def test_mean_averages_the_members_it_was_trained_with(calibrated_run):
  """A later config listing other models does not change which models the calibrated mean
  averages (its members are read from its done.json), and blanks around names are ignored."""
  from segqual_jax.config import schema, stages
  from segqual_jax.quality import registry
  workdir, _ = calibrated_run
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  config.quality.models = 'uncertainty, mean'
  assert registry.mean_members(config) == ['uncertainty']
  members = json.load(open(os.path.join(workdir, 'quality', 'mean', 'done.json')))['members']
  assert members == ['uncertainty', 'cheap_qc']
  model = registry.load(config, workdir, 'mean')
  assert model.needs_scores  # cheap QC is still a member: it needs f's image-level scores


def test_map_scale_brings_sparse_maps_to_order_one():
  """A spread-out map keeps its 99th percentile as scale; a map whose uncertainty sits on
  0.5 % or 0.01 % of the pixels (a Dice-trained f) gets a tenth of its largest value, not
  the near-0 99th percentile."""
  from segqual_jax.quality import cnn
  rng = np.random.default_rng(0)
  spread = rng.uniform(0, 0.7, (20, 16, 16))
  assert cnn.map_scale(spread) == pytest.approx(np.percentile(spread, 99))
  sparse = np.full((20, 16, 16), 1e-5)
  sparse.reshape(-1)[rng.choice(sparse.size, sparse.size // 200, replace=False)] = 0.5
  scale = cnn.map_scale(sparse)
  assert np.percentile(sparse, 99) < 1e-4 and scale == pytest.approx(0.5 / cnn.TAIL_SPAN)
  assert (sparse / scale).max() == pytest.approx(cnn.TAIL_SPAN)
  both = cnn.map_scale(np.stack([spread, sparse], -1))
  assert both == pytest.approx([np.percentile(spread, 99), 0.5 / cnn.TAIL_SPAN])
  sparser = np.full((100, 16, 16), 1e-5)
  sparser.reshape(-1)[:3] = [0.5, 0.2, 0.1]  # uncertainty on 3 of 25600 pixels
  assert cnn.map_scale(sparser) == pytest.approx(0.5 / cnn.TAIL_SPAN)
