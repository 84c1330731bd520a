"""nnU-Net raw volumes: the reader's named errors, slices, volume Dice by hand, outputs on the input grid.

Every volume here is written by the test (tiny, random), never read from ../shared.
"""

import dataclasses
import gzip
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from segqual_jax.data import volumes
from segqual_jax.quality import volume

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
SPEC = volumes.DatasetSpec(('t1', 'flair', 't2'), {'background': 0, 'lesion': 1})


def write_nifti(path, data, affine=AFFINE):
  nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def write_case(folder, case, shape=(12, 10, 4), channels=3, label_dir=None, seed=0, lesion=True,
               affine=AFFINE):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for c in range(channels):
    write_nifti(os.path.join(folder, f'{case}_{c:04d}.nii.gz'), rng.uniform(10, 200, shape).astype(np.float32), affine)
  if label_dir is not None:
    os.makedirs(label_dir, exist_ok=True)
    label = np.zeros(shape, np.uint8)
    if lesion:
      label[3:7, 2:6, 1:3] = 1
    write_nifti(os.path.join(label_dir, f'{case}.nii.gz'), label, affine)


def write_dataset(root, cases, channels=3):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'dataset.json'), 'w') as f:
    json.dump({'channel_names': {str(i): n for i, n in enumerate(SPEC.channels[:channels])},
               'labels': SPEC.labels, 'numTraining': len(cases), 'file_ending': '.nii.gz'}, f)
  for i, case in enumerate(cases):
    write_case(os.path.join(root, 'imagesTr'), case, channels=channels,
               label_dir=os.path.join(root, 'labelsTr'), seed=i)


def test_reads_a_case_with_its_label(tmp_path):
  write_case(tmp_path / 'images', 'p1', label_dir=tmp_path / 'labels')
  vol = volumes.read_case(str(tmp_path / 'images'), 'p1', SPEC, str(tmp_path / 'labels'))
  assert vol.image.shape == (12, 10, 4, 3) and vol.label.shape == (12, 10, 4)
  assert vol.label.sum() == 4 * 4 * 2 and np.allclose(vol.affine, AFFINE)
  assert volumes.list_cases(str(tmp_path / 'images')) == ['p1']


@pytest.mark.parametrize('problem,expected', [
    ('missing_channel', 'channel 2 (t2) missing'),
    ('extra_channel', 'channel 3 present'),
    ('shape', 'has shape (12, 10, 5)'),
    ('affine', 'another affine'),
    ('label_shape', 'label of shape'),
    ('label_affine', 'label on another grid'),
    ('label_values', 'label values [3] not in dataset.json'),
    ('nan', 'NaN or infinite'),
    ('truncated', 'truncated or corrupt'),
    ('not_nifti', 'not a NIfTI image'),
    ('two_d', 'a 2D image'),
    ('rgb', 'expected real numbers'),
])
def test_each_bad_volume_gets_a_named_error(tmp_path, problem, expected):
  images, labels = tmp_path / 'images', tmp_path / 'labels'
  write_case(images, 'bad', label_dir=labels)
  channel = lambda c: images / f'bad_{c:04d}.nii.gz'
  if problem == 'missing_channel':
    os.remove(channel(2))
  elif problem == 'extra_channel':
    write_nifti(channel(3), np.ones((12, 10, 4), np.float32))
  elif problem == 'shape':
    write_nifti(channel(1), np.ones((12, 10, 5), np.float32))
  elif problem == 'affine':
    write_nifti(channel(1), np.ones((12, 10, 4), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
  elif problem == 'label_shape':
    write_nifti(labels / 'bad.nii.gz', np.zeros((12, 10, 3), np.uint8))
  elif problem == 'label_affine':
    write_nifti(labels / 'bad.nii.gz', np.zeros((12, 10, 4), np.uint8), np.eye(4))
  elif problem == 'label_values':
    write_nifti(labels / 'bad.nii.gz', np.full((12, 10, 4), 3, np.uint8))
  elif problem == 'nan':
    data = np.ones((12, 10, 4), np.float32)
    data[0, 0, 0] = np.nan
    write_nifti(channel(0), data)
  elif problem == 'truncated':
    raw = channel(1).read_bytes()
    channel(1).write_bytes(raw[:len(raw) // 2])
  elif problem == 'not_nifti':
    channel(0).write_bytes(gzip.compress(b'this is a PNG, honestly' * 40))
  elif problem == 'two_d':
    write_nifti(channel(0), np.ones((12, 10), np.float32))
  elif problem == 'rgb':
    write_nifti(channel(0), np.zeros((12, 10, 4), [('R', 'u1'), ('G', 'u1'), ('B', 'u1')]))
  with pytest.raises(volumes.VolumeError, match=re.escape(expected)) as raised:
    volumes.read_case(str(images), 'bad', SPEC, str(labels))
  assert 'bad' in str(raised.value)  # the case (or its file) is named


def test_slices_and_back_onto_the_grid(tmp_path):
  write_case(tmp_path / 'images', 'p1', label_dir=tmp_path / 'labels')
  vol = volumes.read_case(str(tmp_path / 'images'), 'p1', SPEC, str(tmp_path / 'labels'))
  images, masks = volumes.slices(vol, 8)
  assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8 and masks.shape == (4, 8, 8)
  assert masks[1].any() and not masks[0].any()  # the lesion is on slices 1 and 2
  back = volumes.to_volume(masks, vol.shape, nearest=True)
  assert back.shape == vol.shape and set(np.unique(back)) <= {0, 1}
  assert volumes.case_of(volumes.slice_id('p1_x', 7)) == 'p1_x'


def test_written_outputs_keep_the_input_grid(tmp_path):
  write_case(tmp_path / 'images', 'p1', shape=(9, 7, 3))
  vol = volumes.read_case(str(tmp_path / 'images'), 'p1', SPEC)
  out = tmp_path / 'p1.nii.gz'
  volumes.write_like(str(out), np.ones(vol.shape, np.uint8), vol)
  back = nib.load(str(out))
  assert back.shape == (9, 7, 3) and np.allclose(back.affine, AFFINE)
  assert back.get_data_dtype() == np.uint8


def test_volume_dice_by_hand():
  # Two volumes of two slices each (4 px slices). Volume 0: slice 0 P = {0, 1}, T = {1};
  # slice 1 P = {}, T = {2, 3}: Dice = 2 * 1 / (2 + 3) = 0.4. Volume 1: nothing anywhere: 1.
  masks = np.zeros((4, 4), np.uint8)
  truth = np.zeros((4, 4), np.uint8)
  masks[0, [0, 1]] = 1
  truth[0, 1] = 1
  truth[1, [2, 3]] = 1
  groups = np.array([0, 0, 1, 1])
  np.testing.assert_allclose(volume.true_dice(masks, truth, groups, 2), [0.4, 1.0])
  # One empty, the other not: 0.
  np.testing.assert_allclose(volume.true_dice(masks[:1], np.zeros((1, 4), np.uint8), np.zeros(1, np.int64), 1), [0.0])
  # Predicted: 2 sum d a / (2 sum a + sum_{a = 0} (1 - d) a_mean). Volume 0: slice 0 has f's
  # 2 px at d 0.9, slice 1 is empty with d 0.1 (a lesion of ~2 px probably missed there):
  # 2 * 1.8 / (4 + 0.9 * 2). Volume 1: f found nothing anywhere: the lowest slice prediction.
  predicted = volume.predicted_dice(np.array([0.9, 0.1, 0.8, 0.6]), masks, groups, 2)
  np.testing.assert_allclose(predicted, [3.6 / 5.8, 0.6])
  sure_empty = volume.predicted_dice(np.array([0.9, 1.0, 0.8, 0.6]), masks, groups, 2)
  np.testing.assert_allclose(sure_empty[0], 0.9)  # the empty slice is surely right: no missed lesion
  masks[1, 0] = 1  # a third predicted pixel, on slice 1 (predicted Dice 0.1): (0.9 * 2 + 0.1) / 3
  np.testing.assert_allclose(volume.predicted_dice(np.array([0.9, 0.1, 0.8, 0.6]), masks, groups, 2)[0],
                             (0.9 * 2 + 0.1) / 3)
  cases, where = volume.groups_of(['a:z000', 'a:z001', 'b:z000'])
  assert cases == ['a', 'b'] and where.tolist() == [0, 0, 1]


def test_nnunet_data_set_splits_by_patient(tmp_path):
  from segqual_jax.config import schema
  from segqual_jax.data import loading
  root = tmp_path / 'Dataset001_Tiny'
  write_dataset(str(root), [f'case{i}' for i in range(12)])  # 2 volumes each for quality and test
  config = schema.get_config()
  config.data.name, config.data.root, config.data.image_size = 'nnunet', str(root), 8
  config.data.data_dir = str(tmp_path / 'tfds')
  splits = loading.load_splits(config.data)
  cases = {name: {volumes.case_of(i) for i in s.ids} for name, s in splits.items()}
  assert sum(len(s) for s in splits.values()) == 12 * 4  # every slice of every volume once
  assert not cases['train'] & cases['test'] and not cases['quality'] & cases['test']
  assert splits['test'].images.shape[1:] == (8, 8, 3)


def test_a_bad_volume_in_the_training_data_is_named(tmp_path):
  from segqual_jax.config import schema
  from segqual_jax.core import errors
  from segqual_jax.data import loading
  root = tmp_path / 'Dataset002_Bad'
  write_dataset(str(root), [f'case{i}' for i in range(6)])
  os.remove(root / 'imagesTr' / 'case3_0001.nii.gz')
  config = schema.get_config()
  config.data.name, config.data.root, config.data.image_size = 'nnunet', str(root), 8
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(errors.DataError, match='1 bad volume.*case3: channel 1 \\(flair\\) missing'):
    loading.load_splits(config.data)


def _check_stage1_volume_dice(config, workdir, summary):
  """Stage 1 reports the validation patients' mean volume Dice (MSP: the log's last epoch and
  the summary are the same dropout-off pass), here recomputed by hand from f's slice masks."""
  from segqual_jax.core import keys
  from segqual_jax.data import loading
  from segqual_jax.segmenter import runner
  assert config.method == 'msp'
  records = [json.loads(l) for l in open(os.path.join(workdir, 'seg', 'log.jsonl'))]
  validation = loading.load_splits(config.data, names=('validation',))['validation']
  method, params = runner.load_f(config, workdir)
  masks = runner.run_split(runner.batch_fn(runner.method_case_fn(method, with_scores=False)), params,
                           validation, keys.purpose_key(config.seed, keys.SEG_VALIDATION),
                           config.seg.eval_batch_size).masks > 0
  per_case = {}
  for sid, p, t in zip(validation.ids, masks, validation.masks > 0):
    inter, total = per_case.get(volumes.case_of(sid), (0, 0))
    per_case[volumes.case_of(sid)] = (inter + (p & t).sum(), total + p.sum() + t.sum())
  by_hand = np.mean([2 * i / t if t else 1.0 for i, t in per_case.values()])
  assert len(per_case) >= 1 and 0 < len(validation.ids)
  assert summary['mean_volume_dice'] == pytest.approx(by_hand, abs=1e-9)
  assert records[-1]['val_volume_dice'] == pytest.approx(by_hand, abs=1e-9)


def test_volume_run_end_to_end_with_one_bad_volume(tmp_path, data_dir):
  """Train on a tiny nnU-Net data set, calibrate on a held-out quality patient, evaluate per
  patient, predict on an inference folder with one broken volume: every good case gets its
  row and its NIfTI files on its own grid, and the calibration's unit is the volume."""
  import csv
  from conftest import tiny_config
  from segqual_jax.apps import volume_predict
  from segqual_jax.evaluation import evaluate
  from segqual_jax.training import train_quality, train_seg
  root = tmp_path / 'Dataset003_Tiny'
  cases = [f'case{i}' for i in range(14)]
  write_dataset(str(root), cases)
  (root / 'lists').mkdir()
  for split, ids in (('train', cases[:8]), ('quality', cases[8:12]), ('test', cases[12:])):
    (root / 'lists' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
  config = tiny_config(data_dir, 'uncertainty')
  config.seg.num_epochs = config.quality.num_epochs = 1
  config.data.name, config.data.root, config.data.image_size = 'nnunet', str(root), 16
  config.quality.label_resolution = 'model'
  config.data.splits = ('train=lists/train.txt,validation=lists/quality.txt,quality=lists/quality.txt,'
                        'test=lists/test.txt')
  config.calibration.fraction = 0.5  # two of the four quality patients; the gate and g keep two
  workdir = str(tmp_path / 'run')
  summary = train_seg.train_and_evaluate(config, workdir)
  _check_stage1_volume_dice(config, workdir, summary)
  train_quality.train_quality(config, workdir)
  calibration = json.load(open(tmp_path / 'run' / 'quality' / 'calibration.json'))
  entry = calibration['models']['uncertainty']
  assert calibration['unit'] == entry['unit'] == 'volume'
  assert {r['calibration_cases'] for r in entry['rules'].values()} == {2}  # two volumes, not their slices
  assert len(entry['interval_cases']['true_dice']) == 2 - calibration['gated_calibration_cases']
  result = evaluate.evaluate(config, workdir)
  per_volume = result['per_volume']
  assert per_volume['volumes'] >= 1 and len(per_volume['rows']) == per_volume['volumes']
  assert 0.0 <= per_volume['mean_dice'] <= 1.0 and 'MC-dropout' not in per_volume['quality_models']
  tested = result['auto_accept']['uncertainty']
  assert tested['unit'] == 'volume'
  assert {r['test']['cases'] for r in tested['rules'].values()} == {per_volume['volumes']}
  table = (tmp_path / 'run' / 'table.md').read_text()
  assert '## Per patient' in table and 'calibration and test cases are whole volumes' in table

  inference = tmp_path / 'imagesTs'
  for i, shape in enumerate([(12, 10, 4), (9, 14, 3), (12, 10, 4)]):  # non-square, another depth
    write_case(inference, f'new{i}', shape=shape, seed=20 + i)
  os.remove(inference / 'new2_0002.nii.gz')  # a broken export: a channel missing
  out = tmp_path / 'out'
  summary = volume_predict.predict(config, workdir, str(inference), str(out))
  rows = {r['case']: r for r in csv.DictReader(open(out / 'predictions.csv'))}
  assert set(rows) == {'new0', 'new1', 'new2'} and summary['read'] == 2
  assert rows['new2']['status'] == 'unreadable' and rows['new2']['decision'] == 'review'
  assert 'channel 2 (t2) missing' in rows['new2']['error']
  for case, shape in (('new0', (12, 10, 4)), ('new1', (9, 14, 3))):
    assert rows[case]['status'] == 'ok' and rows[case]['decision'] in ('pass', 'fail', 'review')
    assert 0.0 <= float(rows[case]['predicted_dice']) <= 1.0
    for path in (out / 'masks' / f'{case}.nii.gz', out / 'maps' / f'{case}_uncertainty.nii.gz'):
      written = nib.load(str(path))
      assert written.shape == shape and np.allclose(written.affine, AFFINE)
    assert (out / 'pages' / f'{case}.png').stat().st_size > 0
    # Two calibration volumes support no threshold: nothing the gate lets through is accepted,
    # and with 2 calibration volumes the 90 % interval is the whole range.
    assert rows[case]['decision'] == 'review', rows[case]
    if not rows[case]['reason'].startswith('outside the training distribution'):
      assert rows[case]['reason'].startswith('the calibration volumes cannot support accepting')
      assert (rows[case]['dice_low'], rows[case]['dice_high']) == ('0.00000', '1.00000')
    else:
      assert rows[case]['dice_low'] == ''
  assert summary['calibrated'] and 'calibrated: accepted-failure rate' in summary['rule']
  assert any(rows[c]['dice_low'] for c in ('new0', 'new1'))  # the rule's branch above was reached
  assert 'NOT CALIBRATED PER VOLUME' not in (out / 'index.html').read_text()
  assert 'channel 2 (t2) missing' in (out / 'index.html').read_text()  # the broken file named on the page


def test_volume_gate_flags_half_the_slices_at_half_alpha():
  # In distribution each slice's p is uniform: P(share of p <= a/2 is >= 1/2) <= a (Markov).
  rng = np.random.default_rng(0)
  flagged = [volume_predict_gate(rng.uniform(size=30), 0.1) for _ in range(2000)]
  assert np.mean(flagged) <= 0.1
  area = np.where(np.arange(30) % 7 == 0, 40.0, 0.0)  # lesion on 5 slices
  assert np.mean([volume_predict_gate(rng.uniform(size=30), 0.1, area) for _ in range(2000)]) <= 0.2
  assert volume_predict_gate(np.full(30, 0.01), 0.1) and not volume_predict_gate(np.full(30, 0.5), 0.1)


def volume_predict_gate(pvalues, alpha, area=None):
  from segqual_jax.apps import volume_predict
  return volume.gate(pvalues, alpha, area)[0]


def test_volume_gate_looks_at_the_slices_the_estimate_rests_on():
  # 3 of 30 slices hold all of f's lesion and are far out: flagged, though 90 % of slices look usual.
  p = np.full(30, 0.5)
  p[10:13] = 0.001
  area = np.zeros(30)
  area[10:13] = 50
  assert not volume_predict_gate(p, 0.1) and volume_predict_gate(p, 0.1, area)


def test_volume_runs_refuse_native_label_resolution():
  from segqual_jax.config import schema, validation
  from segqual_jax.core import errors
  config = schema.get_config()
  config.data.name, config.data.root, config.quality.label_resolution = 'nnunet', '/x', 'native'
  with pytest.raises(errors.ConfigError, match='label_resolution must be model'):
    validation.validate(config)


def test_calibration_holds_out_whole_patients():
  from segqual_jax.quality import auto_accept
  groups = np.repeat(np.arange(10), [3, 5, 2, 4, 4, 6, 1, 3, 5, 2])
  cal, rest = auto_accept.calibration_indices(len(groups), 0.3, 0, groups)
  assert len(np.unique(groups[cal])) == 3 and not set(groups[cal]) & set(groups[rest])
  assert sorted(np.concatenate([cal, rest])) == list(range(len(groups)))
  again, _ = auto_accept.calibration_indices(len(groups), 0.3, 0, groups)
  np.testing.assert_array_equal(cal, again)


def test_a_volume_is_decided_by_its_calibrated_rule():
  from segqual_jax.apps import volume_predict
  from segqual_jax.config import schema
  from segqual_jax.quality import registry
  config = schema.get_config()
  config.calibration.fraction, config.predict.alpha = 0.5, 0.1
  entry = {'unit': 'volume', 'delta': 0.1, 'fail_dice': config.eval.fail_dice,
           'ood_alpha': config.predict.ood_alpha, 'rules': {'0.1': {'threshold': 0.87}}}
  model = registry.QualityModel('uncertainty', 'jaccard', False, None, rules=entry)
  rule, usable = volume_predict.volume_rule(config, model)
  assert usable is entry and rule.threshold == 0.87  # on the volume Dice, whatever g's target
  judged = {'flagged': False, 'dice': 0.85}
  assert volume_predict.decide(judged, config, rule)[0] == 'fail'
  assert volume_predict.decide({**judged, 'dice': 0.9}, config, rule) == (
      'pass', 'predicted volume Dice 0.9000 >= 0.8700 (calibrated rule)')
  nothing = dataclasses.replace(rule, threshold=float('inf'))  # the calibration supports no threshold
  assert volume_predict.decide({**judged, 'dice': 0.99}, config, nothing)[0] == 'review'
  # A rule about slices never decides a volume; the fixed rule is then on the volume Dice
  # (0.8), not on g's Jaccard units (0.667), and the run says it is not calibrated.
  slices = registry.QualityModel('uncertainty', 'jaccard', False, None, rules={**entry, 'unit': 'case'})
  rule, usable = volume_predict.volume_rule(config, slices)
  assert usable is None and rule.threshold == config.eval.fail_dice and rule.warning
  config.predict.alpha = 0.05  # no rule stored at this alpha: fixed, with the warning
  rule, usable = volume_predict.volume_rule(config, model)
  assert rule.threshold == config.eval.fail_dice and rule.warning and 'NOT CALIBRATED' in rule.warning


def test_volumes_of_a_split_carry_the_volume_gate_and_the_predicted_volume_dice():
  from segqual_jax.config import schema
  config = schema.get_config()
  config.predict.ood_alpha = 0.1
  ids = [volumes.slice_id('a', k) for k in range(4)] + [volumes.slice_id('b', k) for k in range(3)]
  masks = np.zeros((7, 8, 8), np.uint8)
  masks[1, 2:5, 2:5] = masks[5, 1:4, 1:4] = 1
  pvalues = np.array([0.5, 0.5, 0.9, 0.5, 0.01, 0.02, 0.5])  # b: 2 of 3 slices at p <= 0.05
  slice_dice = {'g': np.array([1.0, 0.7, 1.0, 1.0, 0.9, 0.6, 0.9])}
  vols = volume.as_volumes(config, ids, masks, slice_dice, 'dice', pvalues, with_truth=False)
  assert vols.cases == ['a', 'b'] and vols.true is None
  groups = np.array([0, 0, 0, 0, 1, 1, 1])
  for g in range(2):
    flagged = volume.gate(pvalues[groups == g], 0.1, masks[groups == g].reshape(-1, 64).sum(1))[0]
    assert vols.pvalues[g] == (0.0 if flagged else 1.0)
  assert list(vols.pvalues) == [1.0, 0.0]
  np.testing.assert_allclose(vols.predicted['g'], volume.predicted_dice(slice_dice['g'], masks, groups, 2))


# ---------------------------------------------------------------------------
# An nnU-Net model's own predictions (--segmentations, external.predictions).

def write_npz(path, p_lesion):
  """nnU-Net's --save_probabilities file: softmax (C, z, y, x), SimpleITK's axis order."""
  probs = np.stack([1 - p_lesion, p_lesion]).astype(np.float32).transpose(0, 3, 2, 1)
  np.savez_compressed(str(path), probabilities=probs)


def test_reads_nnunet_probabilities_in_its_axis_order(tmp_path):
  shape = (12, 10, 4)  # every axis its own length: a wrong transpose cannot pass
  p = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
  write_npz(tmp_path / 'p1.npz', p)
  probs, kind, path = volumes.read_prediction(str(tmp_path), 'p1', SPEC, shape, AFFINE)
  assert kind == 'probabilities' and path.endswith('p1.npz')
  np.testing.assert_allclose(probs, p, atol=1e-6)
  label = (p > 0.7).astype(np.uint8) * 1
  write_nifti(tmp_path / 'p2.nii.gz', label)
  probs, kind, _ = volumes.read_prediction(str(tmp_path), 'p2', SPEC, shape, AFFINE)
  assert kind == 'mask' and np.array_equal(probs, label)
  early = np.stack([1 - p, p]).transpose(0, 3, 2, 1).copy()
  early[:, :1] = 0  # early nnU-Net v2: every channel 0 outside the crop box
  np.savez_compressed(str(tmp_path / 'p4.npz'), probabilities=early)
  probs, _, _ = volumes.read_prediction(str(tmp_path), 'p4', SPEC, shape, AFFINE)
  assert np.all(probs[:, :, 0] == 0) and np.allclose(probs[:, :, 1:], p[:, :, 1:], atol=1e-6)
  single = volumes.DatasetSpec(SPEC.channels, {'background': 0, 'lesion': [1]})  # not a region
  probs, _, _ = volumes.read_prediction(str(tmp_path), 'p1', single, shape, AFFINE)
  np.testing.assert_allclose(probs, p, atol=1e-6)
  three = volumes.DatasetSpec(SPEC.channels, {'background': 0, 'edema': 1, 'core': 2})
  rng = np.random.default_rng(2)
  split = rng.dirichlet([1.0, 1.0, 1.0], size=shape).astype(np.float32)  # (X, Y, Z, 3)
  split[0, 0, 0] = (0.4, 0.3, 0.3)  # background wins the argmax, the lesion labels share 0.6
  split[1, 0, 0] = (0.496, 0.497, 0.002)  # a lesion label wins on channels summing to 0.995
  np.savez_compressed(str(tmp_path / 'p5.npz'), probabilities=np.moveaxis(split, -1, 0).transpose(0, 3, 2, 1))
  probs, _, _ = volumes.read_prediction(str(tmp_path), 'p5', three, shape, AFFINE)
  np.testing.assert_array_equal(probs > 0.5, split.argmax(-1) > 0)  # nnU-Net's own mask
  kept = split.argmax(-1) > 0
  kept[1, 0, 0] = False
  np.testing.assert_allclose(probs[kept], split[..., 1:].sum(-1)[kept], atol=1e-6)
  assert probs[0, 0, 0] == pytest.approx(0.5) and 0.5 < probs[1, 0, 0] < 0.5 + 1e-6
  regions = volumes.DatasetSpec(SPEC.channels, {'background': 0, 'whole': [1, 2], 'core': 2})
  np.savez_compressed(str(tmp_path / 'p3.npz'),
                      probabilities=np.stack([p, p / 2]).transpose(0, 3, 2, 1))  # sigmoid regions
  probs, _, _ = volumes.read_prediction(str(tmp_path), 'p3', regions, shape, AFFINE)
  np.testing.assert_allclose(probs, p, atol=1e-6)


@pytest.mark.parametrize('problem,expected', [
    ('none', 'no prediction p1.npz or p1.nii.gz'),
    ('shape', 'probabilities of shape (4, 10, 12)'),
    ('key', "no array 'probabilities'"),
    ('truncated', 'truncated or unreadable .npz'),
    ('logits', 'outside [0, 1]'),
    ('sums', 'channels sum to'),
    ('labels', 'label values [3] not in dataset.json'),
    ('affine', 'another grid (affine)'),
    ('reoriented', 'written by NibabelIOWithReorient'),
    ('disagree', 'its lesion differs from'),
])
def test_each_bad_prediction_gets_a_named_error(tmp_path, problem, expected):
  shape = (12, 10, 4)
  p = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
  if problem == 'shape':
    write_npz(tmp_path / 'p1.npz', p.transpose(2, 1, 0))  # written in the wrong order
  elif problem == 'key':
    np.savez_compressed(str(tmp_path / 'p1.npz'), softmax=p)
  elif problem == 'truncated':
    write_npz(tmp_path / 'p1.npz', p)
    data = (tmp_path / 'p1.npz').read_bytes()
    (tmp_path / 'p1.npz').write_bytes(data[:len(data) // 2])
  elif problem == 'logits':
    np.savez_compressed(str(tmp_path / 'p1.npz'), probabilities=np.stack([-p, 3 * p]).transpose(0, 3, 2, 1))
  elif problem == 'sums':
    np.savez_compressed(str(tmp_path / 'p1.npz'), probabilities=np.stack([p, p]).transpose(0, 3, 2, 1))
  elif problem == 'labels':
    write_nifti(tmp_path / 'p1.nii.gz', np.full(shape, 3, np.uint8))
  elif problem == 'reoriented':
    write_npz(tmp_path / 'p1.npz', p)
    (tmp_path / 'plans.json').write_text(json.dumps({'image_reader_writer': 'NibabelIOWithReorient'}))
  elif problem == 'disagree':  # probabilities mirrored against the label map beside them
    write_npz(tmp_path / 'p1.npz', p)
    write_nifti(tmp_path / 'p1.nii.gz', (p[::-1] > 0.5).astype(np.uint8))
  elif problem == 'affine':
    write_nifti(tmp_path / 'p1.nii.gz', np.zeros(shape, np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
  with pytest.raises(volumes.VolumeError, match=re.escape(expected)):
    volumes.read_prediction(str(tmp_path), 'p1', SPEC, shape, AFFINE)


def test_volume_run_judges_an_nnunet_models_predictions(tmp_path, data_dir):
  """A run trained on an outside model's nnU-Net predictions (``external.predictions``):
  stage 2 reads them per volume and drops the one case whose file is broken, by name; the
  evaluation scores the outside volumes on their own grid; predict takes ``--segmentations``
  with probabilities and label maps, a missing prediction and one without an input."""
  import csv
  from conftest import tiny_config
  from segqual_jax.apps import volume_predict
  from segqual_jax.core import errors, workdir as run_dirs
  from segqual_jax.evaluation import evaluate
  from segqual_jax.training import train_quality, train_seg
  root = tmp_path / 'Dataset004_Tiny'
  cases = [f'case{i}' for i in range(12)]
  write_dataset(str(root), cases)
  outside = tmp_path / 'outside'  # the "outside model": the truth, with a little noise and a miss
  outside.mkdir()
  for i, case in enumerate(cases):
    label = np.asarray(nib.load(str(root / 'labelsTr' / f'{case}.nii.gz')).dataobj).astype(np.float32)
    noisy = np.clip(0.8 * label + np.random.default_rng(i).uniform(0, 0.3, label.shape), 0, 1)
    if i % 3 == 0:
      noisy[..., 1] = 0.1  # misses a slice of the lesion
    write_npz(outside / f'{case}.npz', noisy)
  (outside / 'case9.npz').write_bytes(b'not a zip')  # a quality-split case
  (root / 'lists').mkdir()
  for split, ids in (('train', cases[:6]), ('quality', cases[6:10]), ('test', cases[10:])):
    (root / 'lists' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
  config = tiny_config(data_dir, 'uncertainty,cheap_qc')
  config.seg.num_epochs = config.quality.num_epochs = 1
  config.data.name, config.data.root, config.data.image_size = 'nnunet', str(root), 16
  config.quality.label_resolution = 'model'
  config.data.splits = ('train=lists/train.txt,validation=lists/quality.txt,quality=lists/quality.txt,'
                        'test=lists/test.txt')
  config.external.predictions = str(outside)
  workdir = str(tmp_path / 'run')
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  result = evaluate.evaluate(config, workdir)
  dropped = json.load(open(os.path.join(run_dirs.f_outputs_dir(workdir), 'quality_left_out.json')))
  assert sorted(dropped) == [volumes.slice_id('case9', k) for k in range(4)]
  assert all('case9.npz: truncated or unreadable .npz' in v for v in dropped.values())
  rows = {r['case']: r for r in result['per_volume']['rows']}
  for case, row in rows.items():  # the outside volume's own Dice on the label's grid, by hand
    label = np.asarray(nib.load(str(root / 'labelsTr' / f'{case}.nii.gz')).dataobj)
    mine = volumes.read_prediction(str(outside), case, SPEC, label.shape, AFFINE)[0] > 0.5
    assert row['true_dice'] == pytest.approx(volume.dice(mine, label), abs=1e-5)

  inference = tmp_path / 'imagesTs'
  preds = tmp_path / 'preds'
  preds.mkdir()
  for i in range(3):
    write_case(inference, f'new{i}', seed=30 + i)
  p = np.zeros((12, 10, 4), np.float32)
  p[2:8, 3:7, 1:3] = 0.9
  write_npz(preds / 'new0.npz', p)
  write_nifti(preds / 'new1.nii.gz', (p > 0.5).astype(np.uint8))  # labels only
  write_npz(preds / 'stray.npz', p)  # no input volume of that name; new2 has no prediction
  with pytest.raises(errors.PredictError, match='give that model'):
    volume_predict.predict(config, workdir, str(inference), str(tmp_path / 'refused'))
  out = tmp_path / 'out'
  summary = volume_predict.predict(config, workdir, str(inference), str(out), segmentations_dir=str(preds))
  rows = {r['case']: r for r in csv.DictReader(open(out / 'predictions.csv'))}
  assert set(rows) == {'new0', 'new1', 'new2', 'stray'} and summary['read'] == 1
  assert rows['new2']['decision'] == 'review' and 'no prediction new2.npz' in rows['new2']['error']
  assert rows['stray']['decision'] == 'review'
  assert 'stray has a prediction but no stray_0000.nii.gz' in rows['stray']['error']
  # g learned from probabilities: a label map is another input, reviewed, not judged
  assert rows['new1']['decision'] == 'review' and 'quality models learned from probabilities' in rows['new1']['error']
  assert rows['new0']['status'] == 'ok' and 0.0 <= float(rows['new0']['predicted_dice']) <= 1.0
  written = nib.load(str(out / 'masks' / 'new0.nii.gz'))
  assert np.array_equal(np.asarray(written.dataobj), (p > 0.5).astype(np.uint8))  # theirs, as written
  assert np.allclose(written.affine, AFFINE)
  assert 'judging the outside model' in (out / 'index.html').read_text()
  assert not summary['calibrated'] and 'NOT CALIBRATED PER VOLUME' in (out / 'index.html').read_text()
  assert rows['new0']['dice_low'] == '' and 'no interval' in summary['interval']


def test_out_of_fold_folds_keep_each_patient_whole():
  from segqual_jax.core import keys
  from segqual_jax.training import quality_cases
  ids = [volumes.slice_id(f'p{c}', k) for c in range(7) for k in range(3 + c % 3)]
  folds = quality_cases.oof_folds(ids, 3, seed=0)
  assert sorted(np.concatenate(folds).tolist()) == list(range(len(ids)))  # each slice once
  owner = {volumes.case_of(ids[i]): f for f, fold in enumerate(folds) for i in fold}
  for f, fold in enumerate(folds):  # every slice of a patient in its patient's fold
    assert len(fold) and all(owner[volumes.case_of(ids[i])] == f for i in fold)
  flat = [f'img{i}' for i in range(10)]  # 2D: the permutation cut in k, as before
  old = np.array_split(np.random.default_rng([0, keys.OOF_FOLDS]).permutation(10), 3)
  assert all(np.array_equal(a, b) for a, b in zip(quality_cases.oof_folds(flat, 3, 0), old))


@pytest.mark.parametrize('action', ['suspend', 'review_unusual', 'warn'])
def test_a_run_of_volumes_unlike_the_reference_volumes(action):
  """The batch test per run of volumes: one statistic per volume against the reference
  volumes'; a shifted run is suspended, its unusual volumes reviewed, or only warned of."""
  from segqual_jax.apps import volume_predict
  from segqual_jax.config import schema
  from segqual_jax.quality import applicability
  config = schema.get_config()
  config.predict.on_shift, config.predict.shift_min_cases = action, 5
  groups = np.repeat(np.arange(8), 4)  # 8 reference volumes of 4 slices
  score = applicability.Applicability('mahalanobis', (1,), (), np.zeros((1, 2)), np.zeros((0, 0)), 1,
                                      np.linspace(0, 1, 32), reference_groups=groups)
  assert len(score.volume_references()) == 8

  def run(stats):
    judged = {f'v{i}': {'batch_stat': t} for i, t in enumerate(stats)}
    rows = [{'case': c, 'status': 'ok', 'decision': 'pass', 'reason': 'r'} for c in judged]
    notes = []
    return volume_predict.volume_batch_test(config, score, judged, rows, notes), rows, notes

  batch, rows, notes = run(np.linspace(0.1, 0.9, 12))  # like the references: no shift
  assert not batch['rejected'] and all(r['decision'] == 'pass' for r in rows) and not notes
  batch, rows, notes = run(np.full(12, 50.0))  # every volume far above every reference volume
  assert batch['rejected'] and batch['unit'] == 'volumes'
  reviewed = [r['decision'] == 'review' for r in rows]
  assert all(reviewed) if action != 'warn' else not any(reviewed)
  assert 'volumes of this run as a whole look unlike' in notes[0]
  if action == 'review_unusual':  # 8 references: p >= 1/9, BH at 0.1 picks none -> all reviewed
    assert 'cannot single out' in notes[1]
  assert volume_predict.volume_batch_test(config, score, {'v0': {'batch_stat': 1.0}}, [], []) is None


def test_batch_test_of_volumes_picks_the_unusual_ones_and_says_when_it_cannot(tmp_path):
  from segqual_jax.apps import volume_predict
  from segqual_jax.config import schema
  from segqual_jax.quality import applicability
  config = schema.get_config()
  config.predict.on_shift, config.predict.shift_min_cases = 'review_unusual', 5
  refs = np.random.default_rng(0).uniform(size=60 * 3)
  score = applicability.Applicability('mahalanobis', (1,), (), np.zeros((1, 2)), np.zeros((0, 0)), 1,
                                      refs, reference_groups=np.repeat(np.arange(60), 3))
  score.save(str(tmp_path / 'score.npz'))  # the volumes of the reference cases survive a reload
  loaded = applicability.Applicability.load(str(tmp_path / 'score.npz'))
  np.testing.assert_array_equal(loaded.reference_groups, score.reference_groups)
  stats = np.r_[np.full(12, 9.0), np.linspace(0.1, 0.9, 8)]  # 12 far out, 8 usual
  judged = {f'v{i}': {'batch_stat': t} for i, t in enumerate(stats)}
  rows = [{'case': c, 'status': 'ok', 'decision': 'pass', 'reason': 'r'} for c in judged]
  notes = []
  batch = volume_predict.volume_batch_test(config, loaded, judged, rows, notes)
  assert batch['rejected'] and len(notes) == 1  # 60 references: BH can pick, and picks the far ones
  assert [r['decision'] for r in rows] == ['review'] * 12 + ['pass'] * 8
  assert applicability.batch_powerless(20, 1, 0.001) and not applicability.batch_powerless(20, 60, 0.001)
