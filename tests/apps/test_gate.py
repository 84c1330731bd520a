"""predict's three decisions end to end: the applicability gate, the batch check, provenance."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from segqual_jax.apps import predict
from segqual_jax.data import synthetic
from segqual_jax.evaluation import evaluate
from segqual_jax.training import train_quality, train_seg


@pytest.fixture(scope='module')
def gated_run(tmp_path_factory, data_dir):
  """A tiny calibrated run whose gate can flag: 24 reference cases (smallest p 1/25 < 0.05)."""
  from configs import test as test_config
  config = test_config.get_config()
  config.data.data_dir = data_dir
  config.data.num_quality = 64
  config.calibration.fraction = 0.25
  config.applicability.reference_fraction = 0.5
  config.predict.ood_alpha = 0.05
  config.predict.shift_min_cases = 6
  config.predict.shift_alpha = 0.01
  config.quality.models = 'uncertainty'
  workdir = str(tmp_path_factory.mktemp('gated'))
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  return config, workdir


def _rows(path):
  with open(path) as f:
    return {r['file']: r for r in csv.DictReader(f)}


def _synthetic_images(folder, n, start=0):
  os.makedirs(folder, exist_ok=True)
  for i in range(start, start + n):
    ex = synthetic.generate_example(0, 'test', i, synthetic.GeneratorConfig(image_size=32))
    Image.fromarray(ex['image']).save(os.path.join(folder, f'case{i}.png'))


def test_a_far_out_of_distribution_image_is_never_accepted(gated_run, tmp_path):
  config, workdir = gated_run
  folder = str(tmp_path / 'in')
  _synthetic_images(folder, 3)
  Image.fromarray(np.full((40, 40, 3), (30, 200, 90), np.uint8)).save(os.path.join(folder, 'flat.png'))
  out = str(tmp_path / 'out')
  summary = predict.predict(config, workdir, folder, out)
  rows = _rows(os.path.join(out, 'predictions.csv'))
  flat = rows['flat.png']
  assert flat['decision'] == 'review' and flat['reason'].startswith('outside the training distribution')
  assert float(flat['applicability_p']) < config.predict.ood_alpha
  for name, r in rows.items():  # every row carries the gate's numbers and the run's provenance
    assert np.isfinite(float(r['applicability_score'])) and 0 < float(r['applicability_p']) <= 1
    assert 'method=msp' in r['run'] and 'trained on synthetic at 32 px' in r['run']
    assert r['decision'] in ('pass', 'fail', 'review')
  assert summary['decisions']['review'] >= 1 and summary['applicability']['flagged'] >= 1
  assert summary['applicability']['batch_test'] is None  # 4 cases < shift_min_cases: per-case gate only
  assert summary['provenance']['training_data'] == 'synthetic'
  assert any('TRAINED ON SYNTHETIC DATA' in w for w in summary['warnings'])
  page = open(os.path.join(out, 'index.html')).read()
  assert 'needs review: not judged' in page and 'applicability p' in page and 'Judged by: method=msp' in page
  assert 'Too few cases for the batch test' in page
  # the gate off: the same image is judged like any other (and the rules made behind the gate
  # no longer apply, which predict says instead of silently reusing them)
  config_off = config.copy_and_resolve_references()
  config_off.predict.ood_alpha = 0.0
  summary_off = predict.predict(config_off, workdir, folder, str(tmp_path / 'off'))
  assert _rows(str(tmp_path / 'off' / 'predictions.csv'))['flat.png']['decision'] in ('pass', 'fail')
  assert any('NOT CALIBRATED' in w for w in summary_off['warnings'])


def test_a_batch_unlike_the_calibration_cases_suspends_auto_accept(gated_run, tmp_path):
  config, workdir = gated_run
  folder = str(tmp_path / 'dark')
  _synthetic_images(folder, 16, start=100)
  for name in os.listdir(folder):  # every image of the run darkened: some pass the gate alone
    path = os.path.join(folder, name)
    Image.fromarray((np.asarray(Image.open(path)) * 0.5).astype(np.uint8)).save(path)
  out = str(tmp_path / 'out')
  summary = predict.predict(config, workdir, folder, out)
  batch = summary['applicability']['batch_test']
  assert batch['rejected'] and batch['action'] == 'suspend' and batch['pvalue'] < config.predict.shift_alpha
  assert summary['decisions'] == {'pass': 0, 'fail': 0, 'review': 16}
  assert summary['applicability']['flagged'] < 16  # the batch test caught what the gate alone did not
  assert summary['interval']['cases_with_interval'] == 0  # its promise is for cases like the calibration's
  assert summary['warnings'][0].startswith('AUTO-ACCEPT SUSPENDED')
  assert 'AUTO-ACCEPT SUSPENDED' in open(os.path.join(out, 'index.html')).read()
  # on_shift=review_unusual: only the cases Benjamini-Hochberg picks go to review
  config_bh = config.copy_and_resolve_references()
  config_bh.predict.on_shift = 'review_unusual'
  picked = predict.predict(config_bh, workdir, folder, str(tmp_path / 'bh'))
  rows = _rows(str(tmp_path / 'bh' / 'predictions.csv'))
  unusual = [r for r in rows.values() if 'Benjamini-Hochberg' in r['reason']]
  assert picked['warnings'][0].startswith('SHIFTED RUN') and picked['decisions']['review'] < 16
  assert picked['decisions']['review'] == len(unusual) + picked['applicability']['flagged']
  reviewed = [float(r['applicability_p']) for r in rows.values() if r['decision'] == 'review']
  judged = [float(r['applicability_p']) for r in rows.values() if r['decision'] != 'review']
  assert judged and (not reviewed or max(reviewed) <= min(judged))  # the most unusual ones, no others
  # on_shift=warn: the verdict is stated, the decisions are made anyway
  config_warn = config.copy_and_resolve_references()
  config_warn.predict.on_shift = 'warn'
  warned = predict.predict(config_warn, workdir, folder, str(tmp_path / 'warn'))
  assert warned['applicability']['batch_test']['action'] == 'warn'
  assert warned['decisions']['review'] < 16 and warned['warnings'][0].startswith('SHIFT WARNING')


def test_each_decided_case_gets_its_interval_and_a_case_sent_to_review_none(gated_run, tmp_path):
  """The conformal interval of the predicted Dice: on every pass/fail row (CSV, HTML,
  summary with its coverage against the masks), on no review row; none when switched off."""
  from segqual_jax.metrics import overlap
  config, workdir = gated_run
  config = config.copy_and_resolve_references()
  config.predict.interval_alpha = 0.25  # 16 calibration cases bound a 75 % interval (>= 7 needed)
  folder, masks = str(tmp_path / 'in'), str(tmp_path / 'masks')
  os.makedirs(masks)
  _synthetic_images(folder, 8, start=300)
  for i in range(300, 308):
    ex = synthetic.generate_example(0, 'test', i, synthetic.GeneratorConfig(image_size=32))
    Image.fromarray(ex['mask'].astype(np.uint8) * 255).save(os.path.join(masks, f'case{i}.png'))
  Image.fromarray(np.full((40, 40, 3), (30, 200, 90), np.uint8)).save(os.path.join(folder, 'flat.png'))
  out = str(tmp_path / 'out')
  summary = predict.predict(config, workdir, folder, out, masks_dir=masks)
  rows = _rows(os.path.join(out, 'predictions.csv'))
  assert rows['flat.png']['decision'] == 'review' and rows['flat.png']['dice_low'] == ''
  decided = [r for r in rows.values() if r['decision'] in ('pass', 'fail')]
  assert decided and summary['interval']['cases_with_interval'] == len(decided)
  for r in decided:
    low, high = float(r['dice_low']), float(r['dice_high'])
    assert 0.0 <= low < high <= 1.0
    assert abs(float(r['jaccard_low']) - overlap.jaccard_from_dice(low)) < 1e-4
  for r in rows.values():
    if r['decision'] == 'review':
      assert r['dice_low'] == r['dice_high'] == r['jaccard_low'] == ''
  interval = summary['interval']
  assert interval['kind'] == 'scaled' and interval['alpha'] == 0.25 and interval['text'].startswith('75 %')
  assert interval['cases_with_truth'] == len(decided) and 0.0 <= interval['coverage'] <= 1.0
  inside = [float(r['dice_low']) <= float(r['true_dice']) <= float(r['dice_high']) for r in decided]
  assert interval['coverage'] == pytest.approx(np.mean(inside))
  html = open(os.path.join(out, 'index.html')).read()
  assert '75 % interval' in html and '75 % conformal interval' in html
  config.predict.interval = 'none'
  off = predict.predict(config, workdir, folder, str(tmp_path / 'off'))
  assert off['interval']['cases_with_interval'] == 0 and off['interval']['text'].startswith('no interval')
  assert all(r['dice_low'] == '' for r in _rows(str(tmp_path / 'off' / 'predictions.csv')).values())


def test_an_exchangeable_batch_is_not_suspended(gated_run, tmp_path):
  config, workdir = gated_run
  folder = str(tmp_path / 'in')
  _synthetic_images(folder, 12, start=200)
  summary = predict.predict(config, workdir, folder, str(tmp_path / 'out'))
  assert not summary['applicability']['batch_test']['rejected']
  assert summary['decisions']['review'] == summary['applicability']['flagged']


def test_evaluate_reports_the_gate_and_rules_behind_it(gated_run):
  config, workdir = gated_run
  result = evaluate.evaluate(config, workdir)
  gate = result['applicability']
  # in-distribution test cases: P(p < 0.05) <= 0.05 each, so 3 or more of 8 flagged is a broken gate
  assert gate['ood_alpha'] == 0.05 and gate['test_flagged'] <= 2
  assert gate['test_flagged_share'] == gate['test_flagged'] / config.data.num_test
  rule = result['auto_accept']['uncertainty']['rules']['0.1']
  assert rule['test']['accepted'] <= rule['test_without_gate']['accepted']
  assert 'Applicability gate' in open(os.path.join(workdir, 'table.md')).read()
  cal = json.load(open(os.path.join(workdir, 'quality', 'calibration.json')))
  assert cal['settings']['ood_alpha'] == 0.05 and 'gated_calibration_cases' in cal
  kept = cal['models']['uncertainty']['interval_cases']  # the calibration cases behind the gate
  assert len(kept['predicted_dice']) == len(kept['true_dice']) == 16 - cal['gated_calibration_cases']
  intervals = result['intervals']['uncertainty']
  assert set(intervals['kinds']) == {'scaled', 'constant'}
  for k in intervals['kinds'].values():  # 8 test cases: the coverage is a share of the gated ones
    assert k['test_cases'] == config.data.num_test - gate['test_flagged']
    assert k['coverage'] * k['test_cases'] == pytest.approx(round(k['coverage'] * k['test_cases']))
  assert 'Interval of the predicted Dice' in open(os.path.join(workdir, 'table.md')).read()
  errors = result['error_map']  # stage 2 fitted the error map; the evaluation scores both maps
  assert 0 < errors['error_pixels'] < 1
  assert 0 <= errors['error_map_auroc'] <= 1 and 0 <= errors['uncertainty_map_auroc'] <= 1
  assert 'Error map (pixels where' in open(os.path.join(workdir, 'table.md')).read()


def test_the_shift_suite_reports_every_set(gated_run, tmp_path):
  """experiments/shift.py end to end on the tiny run: every corruption x severity and far set."""
  import subprocess
  import sys
  config, workdir = gated_run
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = str(tmp_path / 'suite.json')
  done = subprocess.run(
      [sys.executable, 'experiments/shift.py', '--config=configs/test.py', f'--workdir={workdir}',
       f'--config.data.data_dir={config.data.data_dir}', '--config.data.num_quality=64',
       '--config.calibration.fraction=0.25', '--config.applicability.reference_fraction=0.5',
       '--config.predict.ood_alpha=0.05', '--config.quality.models=uncertainty',
       '--synthetic=4', '--noise=3', f'--out={out}'],
      cwd=repo, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.load(open(out))
  sets = [r['set'] for r in result['rows']]
  assert sets[0] == 'clean' and len(sets) == 1 + 5 * 3 + 3  # + synthetic, noise, flat colour
  flat = result['rows'][-1]
  assert flat['set'] == 'far: flat colour' and flat['flagged'] == 1.0
  assert flat['models']['uncertainty']['automation'] == 0.0
  assert '| far: flat colour | 3 |' in open(out.replace('.json', '.md')).read()


def test_the_stream_monitor_alarms_across_calls_and_holds_until_reset(gated_run, tmp_path):
  """Small folders fed one call after another share one monitor: calm cases leave
  auto-accept on; a run of unlike images alarms it, and from then on every case of every
  call goes to review -- also calm ones -- until a person resets it."""
  from segqual_jax.apps import monitor as monitor_app
  from segqual_jax.core import errors
  config, workdir = gated_run
  config = config.copy_and_resolve_references()
  config.predict.shift_min_cases = 1000  # small folders: no batch test, the monitor alone
  state = str(tmp_path / 'stream.json')
  with pytest.raises(errors.PredictError, match='no monitor state here'):  # never a silent start
    predict.predict(config, workdir, _calm(tmp_path, 'never', 0), str(tmp_path / 'o0'), monitor_path=state)
  assert not (tmp_path / 'o0').exists()
  monitor_app.run(config, workdir, state, 'start')
  with pytest.raises(errors.PredictError, match='exists'):
    monitor_app.run(config, workdir, state, 'start')
  calm = predict.predict(config, workdir, _calm(tmp_path, 'calm', 300), str(tmp_path / 'o1'),
                         monitor_path=state)
  assert 'Stream monitor: 3 cases' in calm['monitor'] and calm['decisions']['review'] < 3
  assert all(0 < float(r['stream_p']) <= 1 for r in _rows(str(tmp_path / 'o1' / 'predictions.csv')).values())
  resent = predict.predict(config, workdir, str(tmp_path / 'calm'), str(tmp_path / 'o1b'), monitor_path=state)
  assert 'Stream monitor: 3 cases' in resent['monitor']  # the same images again are not fed twice
  far = str(tmp_path / 'far')
  os.makedirs(far)
  rng = np.random.default_rng(0)
  for i in range(12):  # noise images of every strength: unlike anything the run knows
    Image.fromarray(rng.integers(0, 256 - 10 * i, (40, 40, 3), dtype=np.uint8)).save(f'{far}/noise{i}.png')
  alarmed = predict.predict(config, workdir, far, str(tmp_path / 'o2'), monitor_path=state)
  assert alarmed['warnings'][0].startswith('STREAM MONITOR ALARM') and 'noise' in alarmed['warnings'][0]
  assert alarmed['decisions']['pass'] == 0
  after = predict.predict(config, workdir, _calm(tmp_path, 'after', 310), str(tmp_path / 'o3'),
                          monitor_path=state)
  rows = _rows(str(tmp_path / 'o3' / 'predictions.csv'))
  assert after['decisions'] == {'pass': 0, 'fail': 0, 'review': 3}
  assert all('stream monitor has alarmed' in r['reason'] for r in rows.values())
  assert 'STREAM MONITOR ALARM' in open(tmp_path / 'o3' / 'index.html').read()
  said = monitor_app.run(config, workdir, state, 'reset')
  assert 'cleared the alarm' in said and 'dropped the stream history of 18 cases' in said
  again = predict.predict(config, workdir, _calm(tmp_path, 'again', 300), str(tmp_path / 'o4'),
                          monitor_path=state)
  assert again['decisions'] == calm['decisions'] and 'Stream monitor: 3 cases' in again['monitor']
  open(state, 'w').write('{')  # a torn state file: a clear error, not a fresh start
  with pytest.raises(errors.PredictError, match='unreadable monitor state'):
    predict.predict(config, workdir, _calm(tmp_path, 'torn', 300), str(tmp_path / 'o5'), monitor_path=state)


def _calm(tmp_path, name, start):
  folder = str(tmp_path / name)
  _synthetic_images(folder, 3, start=start)
  return folder
