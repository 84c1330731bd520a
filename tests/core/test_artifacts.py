"""Atomic writes: a temporary file of their own, nothing left behind on failure, fsync before rename."""

import os
import threading

import pytest

from segqual_jax.core import artifacts


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'done.json'
  artifacts.write_text(str(path), 'old')

  def broken(tmp):
    with open(tmp, 'w') as f:
      f.write('half')
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError, match='disk full'):
    artifacts.write_atomic(str(path), broken)
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['done.json']


def test_concurrent_writers_of_one_path_never_mix(tmp_path):
  """Each writer has its own temporary file, so the result is one whole write, never a blend
  (with one fixed temporary name two writers would write into the same file)."""
  path = str(tmp_path / 'out.txt')
  texts = [str(i) * 200_000 for i in range(8)]
  barrier = threading.Barrier(len(texts))

  def write(text):
    barrier.wait()
    artifacts.write_text(path, text)

  threads = [threading.Thread(target=write, args=(t,)) for t in texts]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert open(path).read() in texts
  assert os.listdir(tmp_path) == ['out.txt']


def test_the_data_is_synced_before_the_rename(tmp_path, monkeypatch):
  events = []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(os, 'fsync', lambda fd: (events.append('fsync'), real_fsync(fd))[1])
  monkeypatch.setattr(os, 'replace', lambda a, b: (events.append('replace'), real_replace(a, b))[1])
  artifacts.write_text(str(tmp_path / 'a.txt'), 'x')
  assert events == ['fsync', 'replace']
  assert (tmp_path / 'a.txt').read_text() == 'x'
  mask = os.umask(0)
  os.umask(mask)
  assert os.stat(tmp_path / 'a.txt').st_mode & 0o777 == 0o666 & ~mask  # as open() makes files
