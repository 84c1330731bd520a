"""--mode=predict end to end on a folder with every kind of bad file."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segqual_jax.apps import predict, render
from segqual_jax.core import errors
from segqual_jax.quality import policy
from segqual_jax.training import train_quality, train_seg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def trained_once(tmp_path_factory, data_dir):
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = data_dir
  config.method = 'mc_dropout'
  config.quality.models = 'uncertainty'
  workdir = str(tmp_path_factory.mktemp('run'))
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  return config, workdir


@pytest.fixture
def trained(trained_once):
  """The module's run with a config of its own: a test may change it, the next gets the original."""
  config, workdir = trained_once
  return config.copy_and_resolve_references(), workdir


def _inputs(folder, masks_folder=None):
  """Three good images and one file of every bad kind; returns {file: expected status start}."""
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  expected = {}
  for i, ext in enumerate(('.png', '.jpg', '.bmp')):
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(os.path.join(folder, f'good{i}{ext}'))
    expected[f'good{i}{ext}'] = 'ok'
    if masks_folder:
      os.makedirs(masks_folder, exist_ok=True)
      Image.fromarray((rng.random((48, 40)) > 0.5).astype(np.uint8) * 255).save(
          os.path.join(masks_folder, f'good{i}.png'))
  Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(os.path.join(folder, 'deep16.png'))
  expected['deep16.png'] = 'ok'  # 16-bit is scaled to 8 bits, not an error
  Image.new('RGB', (8000, 8000), (120, 80, 60)).save(os.path.join(folder, 'huge.jpg'))
  expected['huge.jpg'] = 'ok'  # decoded at a reduced scale
  open(os.path.join(folder, 'empty.png'), 'wb').close()
  expected['empty.png'] = 'error: empty file'
  good = open(os.path.join(folder, 'good0.png'), 'rb').read()
  open(os.path.join(folder, 'cut.png'), 'wb').write(good[:len(good) // 2])
  expected['cut.png'] = 'error: corrupt or truncated'
  good_jpg = open(os.path.join(folder, 'good1.jpg'), 'rb').read()
  open(os.path.join(folder, 'cut.jpg'), 'wb').write(good_jpg[:len(good_jpg) // 3])
  expected['cut.jpg'] = 'error: corrupt or truncated'
  open(os.path.join(folder, 'notes.png'), 'w').write('not an image')
  expected['notes.png'] = 'error: not an image'
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(os.path.join(folder, 'dot.png'))
  expected['dot.png'] = 'error: image too small'
  open(os.path.join(folder, 'readme.txt'), 'w').write('ignored: not an image extension')
  return expected


def _rows(path):
  with open(path) as f:
    return {r['file']: r for r in csv.DictReader(f)}


def test_predict_folder_every_row_and_page(trained, tmp_path, capsys, monkeypatch):
  real_write_csv = predict.write_csv
  config, workdir = trained
  config.predict.maps = 'all'  # every case drawn (the default draws the ones a person looks at)
  expected = _inputs(str(tmp_path / 'in'), str(tmp_path / 'masks'))
  out = str(tmp_path / 'out')
  written = []  # the cases as decided, with their unrounded numbers
  monkeypatch.setattr(predict, 'write_csv', lambda path, cases, run: (
      written.extend(cases), real_write_csv(path, cases, run))[1])
  summary = predict.predict(config, workdir, str(tmp_path / 'in'), out,
                                   masks_dir=str(tmp_path / 'masks'))
  rows = _rows(os.path.join(out, 'predictions.csv'))
  judged = [c for c in written if c.ok]
  assert len(judged) == 5
  for case in judged:  # the fixed rule on the unrounded prediction (the CSV's 4 decimals can flip it)
    assert case.decision.decision == ('pass' if case.predicted_dice >= config.eval.fail_dice else 'fail')
    assert rows[case.file]['decision'] == case.decision.decision
  assert set(rows) == set(expected)  # one row per image file, readme.txt ignored
  for name, status in expected.items():
    r = rows[name]
    assert r['status'].startswith(status), (name, r['status'])
    if status == 'ok':
      d, j = float(r['predicted_dice']), float(r['predicted_jaccard'])
      assert abs(d - 2 * j / (1 + j)) < 1e-3  # one prediction in both units
      assert r['decision_rule'] == 'fixed: pass if predicted Dice >= 0.8'
      assert float(r['mean_uncertainty']) >= 0
      stem = os.path.splitext(name)[0]
      for kind in ('image', 'overlay', 'uncertainty', 'error'):  # the run fitted an error map
        assert os.path.getsize(os.path.join(out, render.map_file(stem, kind))) > 0
      shown = Image.open(os.path.join(out, render.map_file(stem, 'image'))).size
      assert Image.open(os.path.join(out, render.map_file(stem, 'error'))).size == shown
    else:
      assert r['predicted_dice'] == '' and r['decision'] == ''
  for i in range(3):  # masks given for the good images only
    assert 0 <= float(rows[f'good{i}' + ('.png', '.jpg', '.bmp')[i]]['true_dice']) <= 1
  assert rows['deep16.png']['true_dice'] == ''
  assert summary['read'] == 5 and summary['unreadable'] == 5 and summary['cases_with_truth'] == 3
  printed = capsys.readouterr().out  # with masks, the paper's metrics are printed
  assert '3 cases with a mask; failure = Dice < 0.8' in printed and '| MC-dropout |' in printed
  page = open(os.path.join(out, 'index.html')).read()
  positions = {name: page.index(f'<td>{name}</td>') for name in expected}
  ok = sorted((n for n in expected if expected[n] == 'ok'), key=lambda n: float(rows[n]['predicted_dice']))
  bad = [n for n in expected if expected[n] != 'ok']
  assert max(positions[n] for n in bad) < min(positions[n] for n in ok)  # unreadable first
  assert [positions[n] for n in ok] == sorted(positions[n] for n in ok)  # then worst quality first
  assert render.map_file('good0', 'overlay') in page and 'predicted to fail' in page
  assert render.map_file('good0', 'error') in page and 'probably wrong (error map' in page
  # a second run into the same folder refuses, unless told to overwrite
  with pytest.raises(predict.PredictError, match='not empty'):
    predict.predict(config, workdir, str(tmp_path / 'in'), out)
  open(os.path.join(out, 'notes.txt'), 'w').write('the user\'s own file')
  open(os.path.join(out, 'predictions.csv.k3j9x.tmp'), 'w').write('a write killed midway')
  for name in os.listdir(tmp_path / 'in'):  # fewer inputs: stale maps of the first run must go
    if name != 'good0.png':
      os.remove(tmp_path / 'in' / name)
  predict.predict(config, workdir, str(tmp_path / 'in'), out, overwrite=True)
  assert 'true_dice' not in open(os.path.join(out, 'predictions.csv')).readline()
  drawn = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(os.path.join(out, 'maps'))
                 for f in fs)
  assert drawn == sorted(['maps/colour_scale.png'] + [render.map_file('good0', k)
                                                      for k in ('image', 'overlay', 'uncertainty', 'error')])
  assert os.listdir(os.path.join(out, 'masks')) == ['good0.png']
  assert open(os.path.join(out, 'notes.txt')).read() == 'the user\'s own file'  # not ours: kept
  assert not os.path.exists(os.path.join(out, 'predictions.csv.k3j9x.tmp'))  # ours: gone


def test_predict_cli_fails_only_when_nothing_is_readable(trained, tmp_path):
  config, workdir = trained
  os.makedirs(tmp_path / 'bad')
  open(tmp_path / 'bad' / 'empty.png', 'wb').close()
  open(tmp_path / 'bad' / 'fake.jpg', 'w').write('nope')
  r = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/test.py', f'--workdir={workdir}', '--mode=predict',
       '--config.method=mc_dropout', '--config.quality.models=uncertainty',
       f'--config.data.data_dir={config.data.data_dir}',
       f'--input={tmp_path / "bad"}', f'--output={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode != 0 and 'none of the 2 files' in r.stderr, r.stderr[-2000:]
  rows = _rows(tmp_path / 'out' / 'predictions.csv')  # the CSV still says why, per file
  assert rows['empty.png']['status'] == 'error: empty file'
  assert rows['fake.jpg']['status'].startswith('error: not an image')


def _numbers(out):
  return {os.path.basename(f): (r['predicted_dice'], r['mean_uncertainty'], r['decision'])
          for f, r in _rows(os.path.join(out, 'predictions.csv')).items() if r['status'] == 'ok'}


def test_a_case_gets_the_same_numbers_alone_in_any_folder_and_batch(trained, tmp_path):
  """MC-dropout's samples are keyed by the case (its file stem), not by its position:
  alone, after unreadable files, in a subfolder or in batches of another size, an
  image gets the same map, predicted quality and decision -- and the same map PNG
  (one colour scale per run, from every case's map)."""
  config, workdir = trained
  config.predict.maps = 'all'
  _inputs(str(tmp_path / 'in'))
  alone = _numbers_of(config, workdir, str(tmp_path / 'in' / 'good1.jpg'), tmp_path / 'alone')
  folder = _numbers_of(config, workdir, str(tmp_path / 'in'), tmp_path / 'folder')
  assert alone['good1.jpg'] == folder['good1.jpg']
  nested = tmp_path / 'nested' / 'sub'
  os.makedirs(nested)
  for name in ('good1.jpg', 'good2.bmp', 'cut.png'):
    os.link(tmp_path / 'in' / name, nested / name)
  config.seg.eval_batch_size = 2  # other batches, other neighbours (a copy: the fixture's is kept)
  deep = _numbers_of(config, workdir, str(tmp_path / 'nested'), tmp_path / 'deep')
  assert deep['good1.jpg'] == folder['good1.jpg'] and deep['good2.bmp'] == folder['good2.bmp']
  rows = _rows(tmp_path / 'deep' / 'predictions.csv')
  assert set(rows) == {'sub/good1.jpg', 'sub/good2.bmp', 'sub/cut.png'}  # named by relative path
  assert os.path.exists(tmp_path / 'deep' / render.map_file('sub__good1', 'uncertainty'))


def _numbers_of(config, workdir, input_path, out):
  predict.predict(config, workdir, input_path, str(out))
  return _numbers(str(out))


def test_every_check_runs_before_the_output_is_created(trained, tmp_path):
  config, workdir = trained
  _inputs(str(tmp_path / 'in'))
  out = tmp_path / 'out'
  # a config that disagrees with the trained run names the field
  config.data.image_size = 64
  with pytest.raises(errors.ConfigError, match=r'config\.data\.image_size=64 here, 32 in the run'):
    predict.predict(config, workdir, str(tmp_path / 'in'), str(out))
  config.data.image_size = 32
  config.method = 'lce'
  with pytest.raises(errors.ConfigError, match=r"config\.method='lce' here, 'mc_dropout' in the run"):
    predict.predict(config, workdir, str(tmp_path / 'in'), str(out))
  config.method = 'mc_dropout'
  # an untrained workdir
  with pytest.raises(errors.NotTrained, match='--mode=all'):
    predict.predict(config, str(tmp_path / 'untrained'), str(tmp_path / 'in'), str(out))
  with pytest.raises(errors.PredictError, match='no such file or directory'):
    predict.predict(config, workdir, str(tmp_path / 'nowhere'), str(out))
  assert not out.exists()  # nothing left behind to refuse the retry


def test_untrained_workdir_error_names_the_training_command(tmp_path, data_dir):
  os.makedirs(tmp_path / 'in')
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / 'in' / 'a.png')
  r = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/lce.py', '--config.seg.num_epochs=1',
       f'--workdir={tmp_path / "run"}', '--mode=predict', f'--input={tmp_path / "in"}',
       f'--output={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode != 0
  assert (f'python main.py --config=configs/lce.py --config.seg.num_epochs=1 '
          f'--workdir={tmp_path / "run"} --mode=all') in r.stderr, r.stderr
  assert not (tmp_path / 'out').exists()


def test_calibrated_run_without_rules_says_so_loudly(trained, tmp_path):
  config, workdir = trained
  _inputs(str(tmp_path / 'in'))
  config.calibration.fraction = 0.3
  # the run was not trained with this fraction: refused as a disagreeing config
  with pytest.raises(errors.ConfigError, match=r'config\.calibration\.fraction=0\.3 here, 0\.0 in the run'):
    predict.predict(config, workdir, str(tmp_path / 'in'), str(tmp_path / 'out'))
  from segqual_jax.quality import registry
  model = registry.load(config, workdir, 'uncertainty')  # a calibrated config, no calibration.json
  rule = policy.decision_rule(config, model)
  assert rule.description.startswith('fixed') and 'NOT CALIBRATED' in rule.warning
  config.calibration.fraction = 0.0
  assert policy.decision_rule(config, model).warning is None


def test_masks_are_written_at_native_size_and_truth_is_judged_at_its_own(trained, tmp_path):
  """masks/<stem>.png has the input's own size (an EXIF-rotated JPEG as shown); fed back as
  --masks, each gives Dice 1: the true Dice is computed at the truth's resolution, from f's
  p(lesion) resampled to it, not from an enlarged 64-px mask."""
  config, workdir = trained
  folder = tmp_path / 'in'
  os.makedirs(folder)
  rng = np.random.default_rng(3)
  Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(folder / 'tall.png')
  exif = Image.Exif()
  exif[0x0112] = 6  # stored 120 wide x 72 high, shown turned by 90 degrees: 72 x 120
  Image.fromarray(rng.integers(0, 256, (72, 120, 3), dtype=np.uint8)).save(folder / 'turned.jpg',
                                                                          exif=exif)
  out = tmp_path / 'out'
  predict.predict(config, workdir, str(folder), str(out))
  sizes = {'tall': (80, 96), 'turned': (72, 120)}
  for stem, size in sizes.items():
    written = Image.open(out / 'masks' / f'{stem}.png')
    assert written.size == size
    assert set(np.unique(np.asarray(written)).tolist()) <= {0, 255}
  predict.predict(config, workdir, str(folder), str(tmp_path / 'again'),
                  masks_dir=str(out / 'masks'))
  rows = _rows(tmp_path / 'again' / 'predictions.csv')
  assert {float(rows[f]['true_dice']) for f in ('tall.png', 'turned.jpg')} == {1.0}
