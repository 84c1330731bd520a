"""Issue 16 end to end: judging another model's segmentations on configs/test.py.

One f (the surrogate) is trained once; a second run reuses it and trains the
quality models on an outside model's segmentations of the synthetic quality
split -- some missing or unusable -- then evaluates and predicts with
``--segmentations`` on a folder with every kind of bad segmentation.
"""

import csv
import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segqual_jax.apps import predict
from segqual_jax.core import artifacts, errors
from segqual_jax.data import loading, pipeline, segmentations
from segqual_jax.evaluation import evaluate
from segqual_jax.quality import policy
from segqual_jax.segmenter import judged, runner
from segqual_jax.training import train_quality, train_seg


def _outside_mask(truth: np.ndarray, i: int) -> np.ndarray:
  """A segmentation whose quality varies by case: the truth grown by 0-3 pixels."""
  k = i % 4
  return (ndimage.binary_dilation(truth, iterations=k) if k else truth > 0).astype(np.uint8)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  from conftest import tiny_config
  config = tiny_config(data_dir, 'uncertainty')
  f_run = str(tmp_path_factory.mktemp('f_run'))
  train_seg.train_and_evaluate(config, f_run)  # the surrogate; predict's refusal needs no g of it

  folder = tmp_path_factory.mktemp('predictions')
  splits = loading.load_splits(config.data, names=('quality', 'test'))
  for split in splits.values():
    for i, (case_id, truth) in enumerate(zip(split.ids, split.masks)):
      mask = _outside_mask(truth, i)
      if i % 2:  # half as 0/255 PNG masks, half as float p(lesion)
        Image.fromarray(mask * 255).save(folder / f'{case_id}.png')
      else:
        np.save(folder / f'{case_id}.npy', (0.1 + 0.8 * mask).astype(np.float32))
  quality_ids = splits['quality'].ids
  os.remove(folder / f'{quality_ids[0]}.npy')  # missing
  Image.fromarray(np.zeros((32, 16), np.uint8)).save(folder / f'{quality_ids[1]}.png')  # wrong aspect

  outside = tiny_config(data_dir, 'uncertainty,cheap_qc')
  outside.seg.reuse_from = f_run
  outside.external.predictions = str(folder)
  workdir = str(tmp_path_factory.mktemp('outside_run'))
  train_seg.train_and_evaluate(outside, workdir)
  train_quality.train_quality(outside, workdir)
  evaluate.evaluate(outside, workdir)
  return config, f_run, outside, workdir, splits


def test_quality_models_learn_the_outside_segmentations_and_list_the_missing(runs, caplog):
  """The quality cases are the outside model's masks with their own true Dice; the two cases
  without a usable segmentation are left out and named; evaluate says whose masks it judged."""
  _, _, outside, workdir, splits = runs
  quality = splits['quality']
  with caplog.at_level(logging.WARNING):
    cases = judged.judged(outside, workdir, quality)
  assert set(cases.dropped) == set(quality.ids[:2])
  assert 'no segmentation' in cases.dropped[quality.ids[0]]
  assert 'aspect ratio differs' in cases.dropped[quality.ids[1]]
  assert quality.ids[0] in caplog.text and 'left out' in caplog.text
  listed = artifacts.read_json(judged.left_out_file(workdir, 'quality'))
  assert listed == cases.dropped
  assert cases.split.ids == quality.ids[2:]
  for j, i in enumerate(range(2, len(quality))):
    expected = _outside_mask(quality.masks[i], i)
    np.testing.assert_array_equal(cases.outputs.masks[j], expected)
    inter = (expected & quality.masks[i]).sum()
    assert cases.outputs.dice[j] == pytest.approx(2 * inter / (expected.sum() + quality.masks[i].sum()))
  assert cases.outputs.maps.shape[-1] == 2  # surrogate map, disagreement
  assert {'dice_with_f', 'surrogate_map_mean', 'own_map_mean'} <= set(cases.outputs.scores)
  metrics = artifacts.read_json(os.path.join(workdir, 'metrics.json'))
  assert 'outside model' in metrics['segmenter']
  assert any(r.startswith('Outside model, g with maps') for r in metrics['quality_models'])
  assert 'Outside model: Dice with the surrogate f' in metrics['scores']
  assert 'an outside model' in open(os.path.join(workdir, 'table.md')).read()


def test_labels_are_measured_at_the_true_mask_files_resolution(tmp_path):
  """Truth 20x20 (left half), the judged segmentation 10x10 (four left columns): upsampled to
  the truth's size it covers 160 of 200 px -> Dice 0.8889, Jaccard 0.8, not the 1.0 of a
  comparison at the model's size."""
  truth = np.zeros((20, 20), np.uint8)
  truth[:, :10] = 255
  Image.fromarray(truth).save(tmp_path / 'a.png')
  seg = np.zeros((10, 10), np.float32)
  seg[:, :4] = 1.0
  split = pipeline.Split('quality', np.zeros((1, 10, 10, 3), np.uint8), (seg > 0).astype(np.uint8)[None],
                         ('a',))
  outputs = runner.SegOutputs(seg.astype(np.uint8)[None], np.zeros((1, 10, 10), np.float32))
  labelled = judged.labelled(outputs, [segmentations.Segmentation(seg, 'mask')], split,
                             {'a': ('unused.png', str(tmp_path / 'a.png'))}, ('a',))
  assert labelled.dice[0] == pytest.approx(320 / 360, abs=1e-6)
  assert labelled.jaccard[0] == pytest.approx(0.8, abs=1e-6)
  at_model = judged.labelled(outputs, [segmentations.Segmentation(seg, 'mask')], split, {}, ('a',))
  assert at_model.dice[0] == pytest.approx(1.0)


def _rows(path):
  with open(path) as f:
    return {r['file']: r for r in csv.DictReader(f)}


def test_predict_with_segmentations_gives_every_problem_its_own_row(runs, tmp_path):
  config, f_run, outside, workdir, splits = runs
  test = splits['test']
  images, segs, truths = tmp_path / 'images', tmp_path / 'segs', tmp_path / 'truth'
  for d in (images, segs, truths):
    os.makedirs(d)
  for i in range(8):
    Image.fromarray(test.images[i]).save(images / f'c{i}.png')
    Image.fromarray(test.masks[i] * 255).save(truths / f'c{i}.png')
  Image.fromarray(test.masks[0] * 255).save(segs / 'c0.png')  # the truth itself: Dice 1
  np.save(segs / 'c1.npy', (0.05 + 0.9 * test.masks[1]).astype(np.float32))  # probabilities
  # c2: missing
  Image.fromarray(np.zeros((32, 16), np.uint8)).save(segs / 'c3.png')  # other aspect ratio
  np.save(segs / 'c4.npy', np.full((32, 32), 1.5, np.float32))  # outside [0, 1]
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
      segs / 'c5.png')  # colour: multi-channel
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(segs / 'c6.png')  # empty: valid "no lesion"
  big = np.asarray(Image.fromarray(test.masks[7] * 255).resize((64, 64), Image.NEAREST))
  Image.fromarray(big).save(segs / 'c7.png')  # same aspect, twice the size: resized
  Image.fromarray(test.masks[0] * 255).save(segs / 'stray.png')  # no image of that name
  out = tmp_path / 'out'
  summary = predict.predict(outside, workdir, str(images), str(out), masks_dir=str(truths),
                            segmentations_dir=str(segs))
  rows = _rows(out / 'predictions.csv')
  assert len(rows) == 9
  for ok in ('c0.png', 'c1.png', 'c6.png', 'c7.png'):
    assert rows[ok]['status'] == 'ok' and rows[ok]['decision'] in policy.DECISIONS
  assert float(rows['c0.png']['true_dice']) == 1.0
  assert 'missing' in rows['c2.png']['status']
  assert 'aspect ratio differs' in rows['c3.png']['status']
  assert 'outside [0, 1]' in rows['c4.png']['status']
  assert 'multi-channel' in rows['c5.png']['status']
  assert 'empty prediction' in rows['c6.png']['notes']
  assert 'resized from 64x64' in rows['c7.png']['notes']
  assert float(rows['c7.png']['true_dice']) == 1.0
  stray = rows[os.path.join(str(segs), 'stray.png')]
  assert 'without an image' in stray['status']
  assert summary['read'] == 4
  page = (out / 'index.html').read_text()
  assert "the outside model&#x27;s mask outlined" in page and 'resized from 64x64' in page
  written = np.asarray(Image.open(out / 'masks' / 'c0.png')) > 0  # the judged mask, not f's
  np.testing.assert_array_equal(written, test.masks[0] > 0)


def test_predict_refuses_to_mix_the_segmentations_a_run_was_trained_on(runs, tmp_path):
  config, f_run, outside, workdir, splits = runs
  images = tmp_path / 'images'
  os.makedirs(images)
  Image.fromarray(splits['test'].images[0]).save(images / 'a.png')
  with pytest.raises(errors.PredictError, match='--segmentations=DIR'):
    predict.predict(outside, workdir, str(images), str(tmp_path / 'o1'))
  with pytest.raises(errors.PredictError, match='learned to judge f'):
    predict.predict(config, f_run, str(images), str(tmp_path / 'o2'), segmentations_dir=str(images))
  assert not os.path.exists(tmp_path / 'o1') and not os.path.exists(tmp_path / 'o2')
