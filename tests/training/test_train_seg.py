"""Stage 1 end to end: every method, resume after SIGKILL / SIGINT, non-finite loss."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from segqual_jax.core import checkpointing, errors
from segqual_jax.core.errors import ConfigError
from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.segmenter import runner
from segqual_jax.training import train_seg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('method', sorted(uncertainty.METHODS))
def test_train_seg_end_to_end(config, tmp_path, method):
  config.method = method
  summary = train_seg.train_and_evaluate(config, str(tmp_path))
  seg = tmp_path / 'seg'
  records = [json.loads(l) for l in (seg / 'log.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  assert all(np.isfinite(r['train_loss']) for r in records)
  assert json.loads((seg / 'metrics.json').read_text()) == summary
  assert summary['method'] == method and summary['num_cases'] == config.data.num_validation
  # Every method learns in 6 steps: an all-lesion mask scores Dice 0.28 on these cases
  # (measured: 0.57-0.67 after two epochs, 0.29-0.35 at the paper's learning rate 1e-3).
  assert records[-1]['val_dice'] > 0.5 and summary['mean_dice'] > 0.5, (records, summary)
  assert sorted(os.listdir(seg / 'checkpoints'))[-1] == '6'
  if method == 'lce':
    assert records[-1]['train_lambda'] != pytest.approx(0.1)  # lambda adapted


def test_dice_loss_and_cosine_schedule_train_end_to_end(config, tmp_path):
  """nnU-Net's CE + soft Dice with a cosine-decayed rate, lesion-oversampled batches and its
  augmentation: f still learns in 6 steps, its Dice term falls, and the rate goes from the
  configured one to 0 at the run's last step."""
  config.seg.loss, config.seg.lr_schedule, config.seg.foreground_fraction = 'ce_dice', 'cosine', 0.33
  config.seg.augment = 'nnunet'
  summary = train_seg.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in (tmp_path / 'seg' / 'log.jsonl').read_text().splitlines()]
  assert records[-1]['train_overlap'] < records[0]['train_overlap'] < 1.0
  assert records[-1]['val_dice'] > 0.5 and summary['mean_dice'] > 0.5, (records, summary)
  rate = train_seg.learning_rate(config, 6)
  assert float(rate(0)) == pytest.approx(config.seg.learning_rate)
  assert float(rate(3)) == pytest.approx(config.seg.learning_rate / 2)
  assert float(rate(6)) == 0.0
  config.seg.lr_schedule = 'constant'
  assert train_seg.learning_rate(config, 6) == config.seg.learning_rate


def test_a_foreground_fraction_that_forces_no_place_is_refused(config, tmp_path):
  config.seg.foreground_fraction = 0.5 / config.seg.batch_size - 1e-3  # rounds to 0 places
  with pytest.raises(ConfigError, match='forces no place'):
    train_seg.train_and_evaluate(config, str(tmp_path))


def test_each_ensemble_member_gets_its_own_oversampled_order(config):
  config.method, config.uncertainty.ensemble_members = 'ensemble', 3
  ens = uncertainty.create_method(config)
  foreground = np.arange(50) % 10 == 0
  idx = train_seg.batch_indices(ens, 50, 8, config.seed, 3, foreground, 0.5)
  assert idx.shape == (8, 3) and foreground[idx[4:]].all()
  assert len({tuple(idx[:, m]) for m in range(3)}) == 3


def _run_main(workdir, data_dir, *overrides, interrupt=()):
  script = ['tests/interrupt_main.py', *interrupt] if interrupt else ['main.py']
  cmd = [sys.executable, *script, '--config=configs/test.py', f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', '--config.method=lce',
         '--config.seg.num_epochs=3', *overrides]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _final_state(config, workdir):
  config.method = 'lce'
  config.seg.num_epochs = 3
  method, params = runner.load_f(config, str(workdir))
  return params


@pytest.mark.parametrize('sig,code,schedule', [('SIGKILL', -9, 'cosine'), ('SIGINT', 1, 'constant')])
def test_interrupted_run_resumes_to_identical_parameters(config, data_dir, tmp_path, sig, code, schedule):
  """Kill after step 4 of 9; the rerun of the same command ends where an
  uninterrupted run ends, bit for bit (same keys, same batches, same lambda, and a
  decaying rate that goes on from step 4 instead of starting over)."""
  full, broken = tmp_path / 'full', tmp_path / 'broken'
  r = _run_main(full, data_dir, f'--config.seg.lr_schedule={schedule}')
  assert r.returncode == 0, r.stderr
  r = _run_main(broken, data_dir, f'--config.seg.lr_schedule={schedule}', interrupt=('4', sig))
  assert r.returncode == code, r.stderr
  if sig == 'SIGINT':
    assert 'interrupted after step 4' in r.stderr and 'Rerun the same command' in r.stderr
  assert not (broken / 'seg' / 'metrics.json').exists()
  r = _run_main(broken, data_dir, f'--config.seg.lr_schedule={schedule}')
  assert r.returncode == 0, r.stderr
  assert 'resuming stage 1 from step 4' in r.stderr
  config.seg.lr_schedule = schedule
  a, b = _final_state(config, full), _final_state(config, broken)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  m_full = json.loads((full / 'seg' / 'metrics.json').read_text())
  m_broken = json.loads((broken / 'seg' / 'metrics.json').read_text())
  assert m_full['mean_dice'] == m_broken['mean_dice']


def test_resume_with_a_different_config_is_refused(config, tmp_path):
  config.method = 'msp'
  train_seg.train_and_evaluate(config, str(tmp_path))
  config.seg.learning_rate = 0.5
  with pytest.raises(ConfigError, match=r'config\.seg\.learning_rate: 0\.01 -> 0\.5'):
    train_seg.train_and_evaluate(config, str(tmp_path))


def test_non_finite_loss_stops_naming_the_step(config, tmp_path):
  config.method = 'msp'
  config.seg.learning_rate = 1e30
  with pytest.raises(errors.NonFiniteLoss, match=r'(at step \d+|in steps \d+-\d+|not finite after step \d+)'):
    train_seg.train_and_evaluate(config, str(tmp_path))
  # loss and parameters are checked before every save: no checkpoint holds a diverged state
  saved = tmp_path / 'seg' / 'checkpoints'
  target = uncertainty.create_method(config).init_params(jax.random.key(0), config.data.image_size)
  if saved.exists() and checkpointing.Checkpointer(str(saved), 2).latest_step() is not None:
    params = checkpointing.Checkpointer(str(saved), 2).restore_items({'params': target})['params']
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_restore_without_stage1_is_a_clear_error(config, tmp_path):
  with pytest.raises(errors.NotTrained, match='--mode=all'):
    runner.load_f(config, str(tmp_path))


def test_reuse_from_shares_f_between_methods_that_train_alike(config, tmp_path):
  """TTA reusing MSP's f gets MSP's exact parameters; a method that trains otherwise, or another seed, is refused."""
  config.method = 'msp'
  train_seg.train_and_evaluate(config, str(tmp_path / 'msp'))
  _, msp_params = runner.load_f(config, str(tmp_path / 'msp'))
  config.method = 'tta'
  config.seg.reuse_from = str(tmp_path / 'msp')
  summary = train_seg.train_and_evaluate(config, str(tmp_path / 'tta'))
  assert summary['method'] == 'tta' and summary['steps'] == 6
  _, tta_params = runner.load_f(config, str(tmp_path / 'tta'))
  jax.tree.map(np.testing.assert_array_equal, msp_params, tta_params)
  # Naming the same source by another path, or none, later is the same run (resumes, no refusal).
  config.seg.reuse_from = os.path.relpath(tmp_path / 'msp')
  assert train_seg.train_and_evaluate(config, str(tmp_path / 'tta')) == summary
  config.seg.reuse_from = ''
  assert train_seg.train_and_evaluate(config, str(tmp_path / 'tta')) == summary
  config.seg.reuse_from = str(tmp_path / 'msp')
  config.method = 'lce'
  with pytest.raises(ConfigError, match="trained by 'msp', which does not train like 'lce'"):
    train_seg.train_and_evaluate(config, str(tmp_path / 'lce'))
  config.method, config.seed = 'mc_dropout', 1
  with pytest.raises(ConfigError, match='config.seed: 0 there, 1 here'):
    train_seg.train_and_evaluate(config, str(tmp_path / 'mc'))


def test_the_configured_augmentation_reaches_the_loss(config, monkeypatch):
  """``seg.augment`` picks the augmentation inside the stage-1 loss: the same step key
  gives another loss with nnU-Net's transforms than with the dihedral ones alone, and the
  nnunet loss runs them (a spy on the function the loss calls)."""
  from segqual_jax.data import pipeline
  config.method = 'msp'
  method = uncertainty.create_method(config)
  state, _ = train_seg.create_train_state(method, config, jax.random.key(0), 4)
  rng = np.random.default_rng(0)
  batch = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), (rng.random((4, 32, 32)) > 0.6).astype(np.uint8))
  key = jax.random.key(9)
  losses = {}
  for name in ('dihedral', 'nnunet'):
    loss, _ = train_seg.make_loss_fn(method, name)(state['params'], state['model_state'], batch, key)
    losses[name] = float(loss)
  assert losses['dihedral'] != losses['nnunet']
  calls = []
  real = pipeline.AUGMENTATIONS['nnunet']
  monkeypatch.setitem(pipeline.AUGMENTATIONS, 'nnunet', lambda *a: calls.append(1) or real(*a))
  train_seg.make_loss_fn(method, 'nnunet')(state['params'], state['model_state'], batch, key)
  assert calls
