"""predict at archive scale: killed and resumed, split over processes, a paged report.

A hospital's first run goes over its archive for hours; what it must never do
is judge a case twice, lose a row, or hold every case in memory.
"""

import csv
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segqual_jax.apps import assess, predict, progress, render
from segqual_jax.core import errors
from segqual_jax.quality import policy
from segqual_jax.training import train_quality, train_seg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_IMAGES = 26


@pytest.fixture(scope='module')
def archive(tmp_path_factory, data_dir):
  """A trained tiny run and a folder of 26 images (two unreadable), in two subfolders."""
  from conftest import tiny_config
  config = tiny_config(data_dir, 'uncertainty')
  workdir = str(tmp_path_factory.mktemp('run'))
  train_seg.train_and_evaluate(config, workdir)
  train_quality.train_quality(config, workdir)
  from segqual_jax.data import synthetic
  folder = tmp_path_factory.mktemp('archive')
  rng = np.random.default_rng(3)
  for i in range(N_IMAGES):  # noise (the gate sends it to review) and the run's own kind of image
    sub = folder / ('a' if i % 2 else 'b')
    sub.mkdir(exist_ok=True)
    image = (rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) if i % 3 == 0 else synthetic.generate_example(
        5, 'test', i, synthetic.GeneratorConfig(image_size=32))['image'])
    Image.fromarray(image).save(sub / f'img{i:02d}.png')
  (folder / 'a' / 'img01.png').write_bytes(b'')  # unreadable: a row with its reason
  (folder / 'b' / 'img02.png').write_bytes((folder / 'b' / 'img00.png').read_bytes()[:50])
  return config, workdir, str(folder)


def _args(workdir, folder, out, *extra):
  return [sys.executable, 'main.py', '--config=configs/test.py', f'--workdir={workdir}', '--mode=predict',
          f'--input={folder}', f'--output={out}', '--config.quality.models=uncertainty',
          '--config.seg.eval_batch_size=4', '--config.predict.chunk_cases=4', *extra]


@pytest.fixture(scope='module')
def uninterrupted(archive, tmp_path_factory):
  """The CSV rows of one uninterrupted single-process run: what every other way must equal."""
  config, workdir, folder = archive
  out = str(tmp_path_factory.mktemp('whole') / 'out')
  subprocess.run(_args(workdir, folder, out), cwd=ROOT, check=True, capture_output=True)
  return _rows(out)


def _rows(out) -> list[dict]:
  with open(os.path.join(out, 'predictions.csv')) as f:
    return list(csv.DictReader(f))


# Runs main.py's predict in a child that SIGKILLs itself at a chosen point -- a real kill -9:
# KILL=append: after the KILL_AT-th chunk's journal lines are on disk; torn: halfway through
# writing them (the line on disk is cut); save: halfway through saving that chunk's maps
# (a temporary file is left in .progress/chunks).
_KILLER = '''
import os, signal, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.getcwd())
from segqual_jax.apps import progress
kill_at, where = int(os.environ['KILL_AT']), os.environ['KILL']
calls = []
append, save = progress.Journal.append, progress.Journal.save_chunk
def dying_append(self, records):
  calls.append(1)
  if len(calls) == kill_at and where in ('append', 'torn'):
    if where == 'torn':
      with open(self.path, 'ab') as f:
        f.write(b'{"file": "half')
        f.flush()
    else:
      append(self, records)
    os.kill(os.getpid(), signal.SIGKILL)
  append(self, records)
def dying_save(self, index, names, maps, probs, errors=None):
  if len(calls) + 1 == kill_at and where == 'save':
    with open(self.chunk_path(index) + '.x1y2.tmp.npz', 'wb') as f:
      f.write(b'PK half a zip')
    os.kill(os.getpid(), signal.SIGKILL)
  save(self, index, names, maps, probs, errors)
progress.Journal.append, progress.Journal.save_chunk = dying_append, dying_save
import runpy
runpy.run_path('main.py', run_name='__main__')
'''


def _killed(workdir, folder, out, where, at=3, *extra):
  env = dict(os.environ, KILL_AT=str(at), KILL=where)
  return subprocess.run([sys.executable, '-c', _KILLER] + _args(workdir, folder, out, *extra)[1:],
                        cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize('where', ['append', 'torn', 'save'])
def test_kill_9_then_the_same_command_equals_an_uninterrupted_run(archive, uninterrupted, tmp_path, where):
  config, workdir, folder = archive
  killed = str(tmp_path / 'killed')
  child = _killed(workdir, folder, killed, where)
  assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
  journal = progress.Journal(killed, {})
  judged = [r['file'] for r in journal.records()]
  assert len(judged) == {'append': 12, 'torn': 8, 'save': 8}[where]  # chunks of 4 before the kill
  assert len(set(judged)) == len(judged)
  assert not os.path.exists(os.path.join(killed, 'predictions.csv'))
  lines = open(journal.path).read().splitlines()
  assert (where == 'torn') == (not lines[-1].endswith('}'))
  rerun = subprocess.run(_args(workdir, folder, killed), cwd=ROOT, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resuming an unfinished run' in rerun.stderr
  assert f'{len(judged)} of {N_IMAGES} files already judged' in rerun.stderr  # none judged twice
  assert _rows(killed) == uninterrupted  # no case lost, none twice, the same numbers
  assert len(_rows(killed)) == N_IMAGES
  assert not os.path.exists(os.path.join(killed, progress.DIR))  # cleared once finished
  leftovers = [f for d, _, fs in os.walk(killed) for f in fs if '.tmp' in f]
  assert leftovers == []


def test_a_changed_config_does_not_resume_another_runs_output(archive, tmp_path):
  config, workdir, folder = archive
  out = str(tmp_path / 'o')
  assert _killed(workdir, folder, out, 'append', 2).returncode == -signal.SIGKILL
  again = subprocess.run(_args(workdir, folder, out, '--config.predict.alpha=0.2'), cwd=ROOT,
                         capture_output=True, text=True)
  assert again.returncode != 0 and 'unfinished predict run' in again.stderr
  assert 'config_digest' in again.stderr
  # what does not change a case's numbers may change; --overwrite with the same run resumes
  smaller = subprocess.run(_args(workdir, folder, out, '--config.predict.chunk_cases=3', '--overwrite'),
                           cwd=ROOT, capture_output=True, text=True)
  assert smaller.returncode == 0, smaller.stderr[-2000:]
  assert '8 of 26 files already judged' in smaller.stderr


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_give_the_csv_of_one(archive, uninterrupted, tmp_path):
  """Each process judges every other file on its own devices; process 0 merges."""
  config, workdir, folder = archive
  two = str(tmp_path / 'two')
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      _args(workdir, folder, two, '--config.runtime.distributed=True',
            f'--config.runtime.coordinator_address=localhost:{port}',
            '--config.runtime.num_processes=2', f'--config.runtime.process_id={i}'),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert f'judged {N_IMAGES // 2} files' in out  # each its share, not every file
  assert _rows(two) == uninterrupted
  summary = open(os.path.join(two, 'summary.json')).read()
  assert '"processes": 2' in summary


def test_maps_are_drawn_for_what_a_person_looks_at(archive, tmp_path):
  config, workdir, folder = archive
  config = config.copy_and_resolve_references()
  drawn = {}
  for which in ('all', 'flagged', 'none'):
    config.predict.maps = which
    out = str(tmp_path / which)
    predict.predict(config, workdir, folder, out)
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, 'maps')) for f in fs]
    drawn[which] = {os.path.basename(f).rsplit('_', 1)[0] for f in files if f.endswith('_overlay.png')}
    folders = {os.path.dirname(f) for f in files if f.endswith('_overlay.png')}
    assert all(re.fullmatch(r'[0-9a-f]{2}', os.path.basename(d)) for d in folders)  # maps/<2 hex>/
    rows = _rows(out)
    if which == 'all':
      assert drawn[which] == {r['file'].replace('/', '__')[:-4] for r in rows if r['status'] == 'ok'}
      # the fixed rule's bar at the median prediction: about half pass, the rest are flagged
      config.eval.fail_dice = float(np.median([float(r['predicted_dice']) for r in rows if r['status'] == 'ok']))
    elif which == 'flagged':
      assert drawn[which] == {r['file'].replace('/', '__')[:-4] for r in rows if r['decision'] in ('review', 'fail')}
    assert len(os.listdir(os.path.join(out, 'masks'))) == N_IMAGES - 2  # masks whatever is drawn
  assert drawn['none'] == set() and 0 < len(drawn['flagged']) < len(drawn['all'])


def test_the_report_pages_hold_every_case_exactly_once(tmp_path):
  rng = np.random.default_rng(0)
  cases = []
  for i in range(23):
    if i % 7 == 3:
      cases.append(assess.Case(file=f'bad{i}.png', status='error: empty file'))
      continue
    d = float(rng.random())
    decision = rng.choice(['pass', 'fail', 'review'])
    cases.append(assess.Case(file=f'c{i}.png', predicted_dice=d, predicted_jaccard=d / (2 - d),
                             native_size=(8, 8), decision=policy.Decision(str(decision), 'why')))
  names = render.case_names([c.file for c in cases])
  for c in cases:
    c.name = names[c.file]
  run = assess.PredictRun(title='t', rule=policy.DecisionRule(0.8, 'fixed'), gate=policy.Gate(0.0),
                          provenance={}, provenance_text='p', warnings=('LOUD',), quality_model='g',
                          target='dice', vmax=1.0, whose="f's", map_label='m', with_truth=False)
  drawn = {c.name for c in report_cases_on(cases, page=2)}
  pages = render.write_report(str(tmp_path), cases, run, page_size=5, drawn=drawn)
  assert pages == 5
  texts = [(tmp_path / render.page_name(k)).read_text() for k in range(1, pages + 1)]
  seen = [f for t in texts for f in re.findall(r'<tr><td>([^<]+)</td>', t)]
  assert sorted(seen) == sorted(c.file for c in cases)  # every case, exactly once
  order = [c.file for c in render.report_order(cases)]
  assert seen == order  # the unreadable, review and fail rows first, page after page
  assert 'LOUD' in texts[0] and 'LOUD' not in texts[1]  # warnings on the index
  assert all(f'page-{k:05d}.html' in texts[0] for k in range(2, 6))
  assert 'not drawn' in texts[0]
  assert texts[1].count('src="../maps/') == 3 * len(drawn) and len(drawn) > 0  # pages/ -> maps/


def report_cases_on(cases, page, page_size=5):
  return [c for c in render.report_order(cases)[(page - 1) * page_size:page * page_size] if c.ok]


def test_the_colour_scale_is_a_bounded_summary():
  rng = np.random.default_rng(0)
  maps = [rng.gamma(2.0, 0.05, (32, 32)).astype(np.float32) for _ in range(200)]
  exact = np.percentile(np.concatenate([m.ravel() for m in maps]), 99.5)
  scale = render.MapScale()
  for m in maps:
    scale.add(m)
  assert exact <= scale.top() <= exact * 1.004  # within one bin (0.3 %) above
  assert scale.counts.nbytes < 100_000  # the same size for 200 maps or 200,000
  assert render.map_scale([np.zeros((4, 4))]) == 1.0


def test_a_torn_journal_line_is_not_a_case(tmp_path):
  journal = progress.Journal(str(tmp_path), {'a': 1})
  assert journal.start_or_resume() is False
  journal.append([{'file': 'x'}, {'file': 'y'}])
  with open(journal.path, 'ab') as f:
    f.write(b'{"file": "z"')  # a kill during the write
  assert [r['file'] for r in journal.records()] == ['x', 'y']
  journal.append([{'file': 'z'}])  # the resumed run first cuts the torn line off
  assert [r['file'] for r in journal.records()] == ['x', 'y', 'z']
  assert open(journal.path, 'rb').read() == b'{"file":"x"}\n{"file":"y"}\n{"file":"z"}\n'
  with open(journal.path, 'ab') as f:  # torn just before its newline: complete-looking ...
    f.write(b'{"file":"w"}')
  assert [r['file'] for r in journal.records()] == ['x', 'y', 'z']  # ... but not counted
  journal.append([{'file': 'w'}])  # and cut off, never revived beside the judged-again line
  assert [r['file'] for r in journal.records()] == ['x', 'y', 'z', 'w']
  assert progress.Journal(str(tmp_path), {'a': 1}).start_or_resume() is True
  with pytest.raises(errors.PredictError, match="a=1"):
    progress.Journal(str(tmp_path), {'a': 2}).start_or_resume()
