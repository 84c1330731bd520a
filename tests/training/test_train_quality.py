"""Stage 2 and evaluation end to end on the tiny config, plus its failure modes."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.core import checkpointing, workdir as run_dirs
from segqual_jax.data import loading
from segqual_jax.evaluation import evaluate
from segqual_jax.quality import cnn, registry
from segqual_jax.segmenter import runner
from segqual_jax.training import quality_cases, train_quality, train_seg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('variant,channels', [('uncertainty', 5), ('no_uncertainty', 4), ('qualitynet', 3)])
def test_inputs_and_regressor_shapes(variant, channels):
  images = jnp.ones((2, 16, 16, 3)) * 0.5
  preds = jnp.zeros((2, 16, 16), jnp.uint8).at[:, 4:8, 4:8].set(1)
  umaps = jnp.full((2, 16, 16), 0.3)
  x = cnn.make_inputs(variant, images, preds, umaps)
  assert x.shape == (2, 16, 16, channels)
  if variant == 'qualitynet':
    assert float(x[0, 0, 0, 0]) == 0.0 and float(x[0, 5, 5, 0]) == 0.5  # image masked by y_hat
  model = cnn.VGGRegressor(widths=(4, 8), dense=8)
  params = model.init(jax.random.key(0), x)
  assert model.apply(params, x).shape == (2,)
  # What g sees: the map enters its input only for the variant that has a map channel.
  other = cnn.make_inputs(variant, images, preds, jnp.full((2, 16, 16), 0.9))
  assert bool(jnp.any(other != x)) == (variant == 'uncertainty')


def _run_all(config, workdir):
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  return evaluate.evaluate(config, workdir)


def test_both_stages_and_evaluation_write_every_output(config, tmp_path):
  config.method = 'mc_dropout'
  result = _run_all(config, str(tmp_path))
  names = ['MC-dropout', 'No uncertainty', 'QualityNet']
  assert list(result['quality_models']) == names
  on_disk = json.loads((tmp_path / 'metrics.json').read_text())
  assert on_disk['schema_version'] == 1 and on_disk['data']['split'] == 'test'
  # Golden numbers of configs/test.py with MC-dropout (measured at the commit that added
  # them): a silent numerical change of f, the engine, the keys or g fails here. A change
  # that means to move them states why and pins the new values.
  golden = {'mean_dice': 0.61736, 'mean_jaccard': 0.51727, 'mean_uncertainty': 0.58636}
  for key, value in golden.items():
    assert on_disk['segmentation'][key] == pytest.approx(value, abs=1e-3), key
  golden_g = {'MC-dropout': (0.31306, 0.34791), 'No uncertainty': (0.31197, 0.37176),
              'QualityNet': (0.31307, 0.25117)}  # (RMSE, Pearson) of the predicted Jaccard
  for row, (rmse, pearson) in golden_g.items():
    m = on_disk['quality_models'][row]
    assert (m['rmse'], m['pearson']) == (pytest.approx(rmse, abs=2e-3), pytest.approx(pearson, abs=2e-3)), row
  seg = on_disk['segmentation']
  assert seg['num_cases'] == config.data.num_test
  assert {'mean_dice', 'mean_jaccard', 'fail_rate_dice_0.8', 'fail_rate_jaccard_0.7'} <= set(seg)
  for m in on_disk['quality_models'].values():
    assert {'rmse', 'aurc', 'e_aurc', 'pearson', 'spearman', 'dice<0.8', 'jaccard<0.7'} <= set(m)
    assert 0 <= m['rmse'] <= 1
  table = (tmp_path / 'table.md').read_text()
  assert all(f'| {n} |' in table for n in names) and 'Dice < 0.8' in table and 'Jaccard < 0.7' in table
  rows = list(csv.reader((tmp_path / 'predictions.csv').open()))
  assert len(rows) == 1 + config.data.num_test and len(rows[0]) == 4 + len(names)
  assert rows[0][:4] == ['case', 'id', 'true_dice', 'true_jaccard'] and rows[1][1] == 'synthetic-test-00000'
  for png in ('scatter.png', 'uncertainty_maps.png', 'risk_coverage.png'):
    assert (tmp_path / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The true Dice in f's cached outputs is 2|A n B| / (|A| + |B|) of its masks and the truth
  # (1 where both are empty), counted here by hand.
  outputs = np.load(tmp_path / 'quality' / 'f_outputs' / 'test.npz')
  test = loading.load_splits(config.data, names=('test',))['test']
  a, b = outputs['masks'].astype(bool), test.masks.astype(bool)
  inter, total = (a & b).sum((1, 2)), a.sum((1, 2)) + b.sum((1, 2))
  by_hand = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
  np.testing.assert_allclose(outputs['dice'], by_hand, rtol=1e-6)
  assert seg['mean_dice'] == pytest.approx(by_hand.mean(), rel=1e-6)
  # Rerunning skips every complete stage: nothing is retrained.
  stamp = os.path.getmtime(tmp_path / 'quality' / 'uncertainty' / 'done.json')
  assert _run_all(config, str(tmp_path)) == on_disk
  assert os.path.getmtime(tmp_path / 'quality' / 'uncertainty' / 'done.json') == stamp
  # A model added to the finished run is fitted and evaluated; the others are not retrained.
  config.quality.models += ',cheap_qc'
  added = _run_all(config, str(tmp_path))
  assert list(added['quality_models']) == names + ['Cheap QC (MC-dropout)']
  assert all(added['quality_models'][n] == on_disk['quality_models'][n] for n in names)
  assert os.path.getmtime(tmp_path / 'quality' / 'uncertainty' / 'done.json') == stamp
  # Dropping it again keeps the stored rows: nothing is evaluated anew.
  config.quality.models = config.quality.models.replace(',cheap_qc', '')
  assert _run_all(config, str(tmp_path)) == added


@pytest.mark.parametrize('source', ['train', 'oof'])
def test_label_sources(config, tmp_path, source):
  config.method = 'msp'
  config.quality.label_source = source
  config.quality.models = 'no_uncertainty'
  train_seg.train_and_evaluate(config, str(tmp_path))
  results = train_quality.train_quality(config, str(tmp_path))
  assert results['no_uncertainty']['num_cases'] == config.data.num_train
  name = 'train_oof.npz' if source == 'oof' else 'train.npz'
  outputs = np.load(tmp_path / 'quality' / 'f_outputs' / name)
  assert outputs['dice'].shape == (config.data.num_train,)
  if source == 'oof':
    assert sorted(os.listdir(tmp_path / 'seg_oof')) == ['fold0', 'fold1']
    # Out-of-fold labels differ from f's own (in-sample) predictions on train.
    train = loading.load_splits(config.data, names=('train',))['train']
    own = runner.cached_outputs(config, str(tmp_path), train)
    assert not np.array_equal(own.masks, outputs['masks'])


def test_shift_aware_quality_models_learn_from_corrupted_copies_labelled_by_f(config, tmp_path):
  config.quality.models = 'cheap_qc'  # seconds to fit; every quality model gets the same cases
  config.quality.shift_corruptions = 'brightness,noise'
  config.quality.shift_severities = (3,)
  config.quality.shift_copies = 2
  workdir = str(tmp_path)
  train_seg.train_and_evaluate(config, workdir)
  results = train_quality.train_quality(config, workdir)
  n = config.data.num_quality
  assert results['cheap_qc']['num_cases'] == 3 * n  # the cases and two copies of each
  copies = sorted(f for f in os.listdir(tmp_path / 'quality' / 'f_outputs') if '~copy' in f)
  assert len(copies) == 2
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  clean = runner.cached_outputs(config, workdir, quality)
  for name in copies:  # f ran on the corrupted images: its own outputs label them
    copy = runner.SegOutputs.load(str(tmp_path / 'quality' / 'f_outputs' / name))
    assert copy.dice.shape == (n,) and not np.array_equal(copy.features, clean.features)
  # the copies are drawn per case (from its id), so a rerun reuses the same cached copies
  again = train_quality.train_quality(config, workdir)
  assert again['cheap_qc']['num_cases'] == 3 * n
  assert sorted(f for f in os.listdir(tmp_path / 'quality' / 'f_outputs') if '~copy' in f) == copies


def _main(workdir, data_dir, *args, interrupt=()):
  script = ['tests/interrupt_main.py', *interrupt] if interrupt else ['main.py']
  return subprocess.run([sys.executable, *script, '--config=configs/test.py', f'--workdir={workdir}',
                         f'--config.data.data_dir={data_dir}', '--config.quality.models=uncertainty',
                         *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_train_quality_without_stage1_names_the_command(tmp_path, data_dir):
  r = _main(tmp_path, data_dir, '--mode=train_quality')
  assert r.returncode != 0
  assert 'no complete stage 1' in r.stderr
  # the exact command that trains this run, with its own config arguments
  assert (f'python main.py --config=configs/test.py --config.data.data_dir={data_dir} '
          f'--config.quality.models=uncertainty --workdir={tmp_path} --mode=all') in r.stderr, r.stderr


def test_train_quality_resumes_after_sigkill(config, tmp_path, data_dir):
  full, broken = tmp_path / 'full', tmp_path / 'broken'
  for w in (full, broken):
    assert _main(w, data_dir, '--mode=train_seg').returncode == 0
  assert _main(full, data_dir, '--mode=train_quality').returncode == 0
  r = _main(broken, data_dir, '--mode=train_quality', interrupt=('2', 'SIGKILL'))
  assert r.returncode == -9
  assert not (broken / 'quality' / 'uncertainty' / 'done.json').exists()
  r = _main(broken, data_dir, '--mode=train_quality')
  assert r.returncode == 0 and 'resuming quality model uncertainty from step 2' in r.stderr
  config.quality.models = 'uncertainty'
  a = registry.load_cnn_params(config, str(full), 'uncertainty')[1]
  b = registry.load_cnn_params(config, str(broken), 'uncertainty')[1]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_rank_loss_by_hand():
  pred = jnp.array([0.9, 0.5, 0.7])
  targets = jnp.array([0.8, 0.2, 0.2])  # pairs with different truth: (0, 1) and (0, 2)
  t = train_quality.RANK_TEMPERATURE
  by_hand = (np.log1p(np.exp(-(0.9 - 0.5) / t)) + np.log1p(np.exp(-(0.9 - 0.7) / t))) / 2
  assert float(train_quality.rank_loss(pred, targets)) == pytest.approx(by_hand, rel=1e-5)
  # Ordered wrongly, the same pairs cost far more; no pair with different truth costs nothing.
  assert float(train_quality.rank_loss(pred[::-1], targets)) > 10 * by_hand
  assert float(train_quality.rank_loss(pred, jnp.full(3, 0.5))) == 0.0


def test_rank_weight_adds_the_ranking_term_to_the_squared_error():
  model = cnn.VGGRegressor(widths=(4,), dense=4)
  params = cnn.init_params(model, 'no_uncertainty', jax.random.key(0), 8)
  images = jnp.full((4, 8, 8, 3), 128, jnp.uint8)
  masks = jnp.zeros((4, 8, 8), jnp.uint8).at[:2, 2:5, 2:5].set(1)
  batch = (images, masks, jnp.zeros((4, 8, 8)), jnp.array([0.9, 0.1, 0.5, 0.3]))
  state = cnn.model_state(1.0)
  key = jax.random.key(1)
  plain, (m0, _) = train_quality.make_loss_fn(model, 'no_uncertainty')(params, state, batch, key)
  ranked, (m1, _) = train_quality.make_loss_fn(model, 'no_uncertainty', 2.0)(params, state, batch, key)
  assert 'rank' not in m0 and float(m1['rank']) > 0
  assert float(ranked) == pytest.approx(float(plain) + 2.0 * float(m1['rank']), rel=1e-5)


def test_ensemble_members_train_other_g(config, tmp_path):
  """A member > 0 is another g (its own init and batch order); member 0 is the run's g."""
  config.quality.models = 'no_uncertainty'
  config.quality.num_epochs = 1
  workdir = str(tmp_path)
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  splits = loading.load_splits(config.data, names=('quality',))
  split, outputs = quality_cases.training_cases(config, workdir, splits)
  targets = outputs.jaccard.astype(np.float32)
  z_scale = cnn.map_scale(outputs.maps)
  for member in (0, 1):
    train_quality.train_cnn(config, 'no_uncertainty', str(tmp_path / f'member{member}'), split, outputs,
                            targets, z_scale, member)
  model = cnn.create_regressor(config.quality)
  target = jax.eval_shape(lambda: cnn.init_params(model, 'no_uncertainty', jax.random.key(0),
                                                  config.data.image_size))

  def weights(out_dir):
    restored = checkpointing.Checkpointer(os.path.join(out_dir, 'checkpoints'), every_steps=1)
    params = restored.restore_items({'params': target})['params']
    restored.close()
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  run_g = weights(run_dirs.quality_dir(workdir, 'no_uncertainty'))
  np.testing.assert_allclose(weights(str(tmp_path / 'member0')), run_g, atol=1e-6)
  assert not np.allclose(weights(str(tmp_path / 'member1')), run_g, atol=1e-3)


def test_a_resumed_g_keeps_the_map_scale_it_began_with(config, tmp_path, monkeypatch):
  """g stopped after step 2 and resumed with another scale on offer (the scale rule changed
  between the two runs) trains on with, and records, the scale in its checkpoint: the scale
  predict reads from done.json is the one g learned with."""
  from segqual_jax.training import loop
  config.quality.models, config.quality.num_epochs = 'uncertainty', 1
  workdir = str(tmp_path)
  train_seg.train_and_evaluate(config, workdir)
  splits = loading.load_splits(config.data, names=('quality',))
  split, outputs = quality_cases.training_cases(config, workdir, splits)
  targets = outputs.jaccard.astype(np.float32)
  out_dir = str(tmp_path / 'g')

  class Stop(Exception):
    pass

  def stop_after_2(name, step):
    if step == 2:
      raise Stop
  monkeypatch.setattr(loop, 'STEP_HOOKS', [stop_after_2])
  with pytest.raises(Stop):
    train_quality.train_cnn(config, 'uncertainty', out_dir, split, outputs, targets, 0.25)
  monkeypatch.setattr(loop, 'STEP_HOOKS', [])
  done = train_quality.train_cnn(config, 'uncertainty', out_dir, split, outputs, targets, 0.5)
  assert done['z_scale'] == pytest.approx(0.25)
