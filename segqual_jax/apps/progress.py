"""What a predict run has judged so far, on disk: how it resumes and how it stays small.

An archive run takes hours; a machine can be stopped at any moment (kill -9
included). So predict keeps, in ``<output>/.progress/``:

* ``run.json`` -- what the run is (the trained run, its config's settings that
  shape a case's numbers, the input folder and its file list, the options):
  a rerun with anything different is refused by name, as training resume is;
* ``journal-<process>.jsonl`` -- one JSON line per judged file, appended after
  the chunk's masks and arrays are on disk and flushed with ``fsync``. A line
  torn by a kill is ignored (its chunk is judged again: every case is keyed
  by its id, so it gets the same numbers), a complete line is never judged
  twice;
* ``chunks/<process>-<k>.npz`` -- each chunk's maps and p(lesion) at the
  model's size (float16), what the report draws from once every case is
  decided, without holding every map in memory. A case's journal line names
  its chunk: a chunk saved just before a kill, whose lines never made it,
  is judged again into a new chunk, and only the chunk its line names counts.

The journal holds only numbers and short strings per case, so deciding
100,000 cases needs the scalars, never the images. Everything is removed
once the run's CSV, summary and report are written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from typing import Iterator

import numpy as np

from segqual_jax.core import artifacts, values
from segqual_jax.core.errors import PredictError

DIR = '.progress'
RUN_FILE = 'run.json'
CHUNKS = 'chunks'
_CHUNK_NAME = re.compile(r'^\d+-\d{6}\.npz$')  # not the temporary files of a save killed midway
# the Case fields a journal line keeps (numbers and short strings: no arrays)
FIELDS = ('file', 'status', 'native_size', 'predicted_dice', 'predicted_jaccard', 'true_dice',
          'true_jaccard', 'applicability', 'applicability_p', 'batch_score', 'mean_uncertainty', 'notes', 'name',
          'content', 'chunk')


def files_digest(files: list[str]) -> str:
  """A short digest of the ordered file list (a changed folder is another run)."""
  return hashlib.sha256('\n'.join(files).encode()).hexdigest()[:16]


class Journal:
  """The progress of one predict run in ``<output_dir>/.progress`` (see the module)."""

  def __init__(self, output_dir: str, identity: dict, process: int = 0):
    self.dir = os.path.join(output_dir, DIR)
    self.identity = identity
    self.process = process

  @property
  def path(self) -> str:
    return os.path.join(self.dir, f'journal-{self.process}.jsonl')

  def chunk_id(self, index: int) -> str:
    """This process's chunk ``index`` as named on disk and in its cases' journal lines."""
    return f'{self.process}-{index:06d}'

  def chunk_path(self, index: int) -> str:
    return os.path.join(self.dir, CHUNKS, self.chunk_id(index) + '.npz')

  def is_this_run(self) -> bool:
    """Whether the folder holds an unfinished run with this identity."""
    try:
      stored = artifacts.read_json(os.path.join(self.dir, RUN_FILE))
    except (OSError, ValueError):
      return False
    return all(values.same(stored.get(k), self.identity.get(k)) for k in set(stored) | set(self.identity))

  def start_or_resume(self) -> bool:
    """Creates the progress folder, or checks an existing one is this run's; True when resuming.

    ``PredictError`` naming the first difference when it belongs to another run."""
    path = os.path.join(self.dir, RUN_FILE)
    if os.path.exists(path):
      try:
        stored = artifacts.read_json(path)
      except (OSError, ValueError) as e:
        raise PredictError(f'{path}: unreadable progress record ({e}); remove {self.dir} to start '
                           'this output again') from None
      for key in sorted(set(stored) | set(self.identity)):
        if not values.same(stored.get(key), self.identity.get(key)):
          raise PredictError(
              f'{self.dir} holds an unfinished predict run with {key}={stored.get(key)!r}; this '
              f'one has {self.identity.get(key)!r}. Rerun the same command to finish it, or give '
              'another --output (or remove the folder) to start afresh')
      return True
    os.makedirs(self.dir, exist_ok=True)
    artifacts.write_json(path, self.identity)  # first: a kill after it leaves an identified folder
    os.makedirs(os.path.join(self.dir, CHUNKS), exist_ok=True)
    return False

  def records(self, process: int | None = None) -> Iterator[dict]:
    """Every complete line of the journals (``process`` alone, or every process's), in the
    order written, one at a time (100,000 dicts at once would outweigh the cases); a line
    torn by a kill is dropped (the resumed run's lines follow it)."""
    pattern = f'journal-{"*" if process is None else process}.jsonl'
    for path in sorted(glob.glob(os.path.join(self.dir, pattern))):
      with open(path, 'rb') as f:
        for line in f:
          if not line.endswith(b'\n'):
            continue  # the last line, torn by a kill
          try:
            yield json.loads(line)
          except ValueError:
            continue  # a torn line the resumed run closed with its newline

  def append(self, records: list[dict]) -> None:
    """Appends ``records`` (one chunk's) and forces them to disk. A line torn by a kill is
    cut off first: closed with a newline instead, a line torn just before its newline
    would come back to life beside its case's new line."""
    text = ''.join(json.dumps(r, separators=(',', ':')) + '\n' for r in records)
    with open(self.path, 'ab') as f:
      _cut_torn_line(f)
      f.write(text.encode())
      f.flush()
      os.fsync(f.fileno())

  def save_chunk(self, index: int, names: list[str], maps: np.ndarray, probs: np.ndarray,
                 errors: np.ndarray | None = None) -> None:
    """One chunk's maps, p(lesion) and error maps if any (float16), by case name."""
    arrays = {'names': np.array(names, dtype=str), 'maps': maps.astype(np.float16),
              'probs': probs.astype(np.float16)}
    if errors is not None:
      arrays['errors'] = errors.astype(np.float16)
    artifacts.write_atomic(self.chunk_path(index), lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')

  def chunk_files(self) -> list[tuple[str, str]]:
    """``(chunk id, path)`` of every process's saved chunks."""
    paths = sorted(glob.glob(os.path.join(self.dir, CHUNKS, '*.npz')))
    return [(os.path.basename(p)[:-len('.npz')], p) for p in paths if _CHUNK_NAME.match(os.path.basename(p))]

  def next_chunk(self) -> int:
    """The next unused chunk index of this process (after a resume: past every saved one)."""
    mine = [c for c, _ in self.chunk_files() if c.startswith(f'{self.process}-')]
    return 1 + max((int(c.split('-')[1]) for c in mine), default=-1)

  def remove(self) -> None:
    """Removes the progress folder: renamed first (one atomic step: a kill midway through
    deleting cannot leave half a journal to resume from), then deleted."""
    if os.path.isdir(self.dir):
      gone = f'{self.dir}.{os.getpid()}.tmp'
      os.replace(self.dir, gone)
      shutil.rmtree(gone, ignore_errors=True)


def _cut_torn_line(f) -> None:
  """Truncates the journal open in ``f`` (append mode) after its last newline."""
  size = f.seek(0, os.SEEK_END)
  if size == 0:
    return
  with open(f.name, 'rb') as r:
    pos = size
    while pos > 0:
      step = min(pos, 1 << 16)
      r.seek(pos - step)
      block = r.read(step)
      cut = block.rfind(b'\n')
      if cut >= 0:
        end = pos - step + cut + 1
        break
      pos -= step
    else:
      end = 0
  if end != size:
    f.truncate(end)


def remove_temporaries(output_dir: str, folders: tuple[str, ...]) -> int:
  """Deletes the temporary files of writes a kill interrupted (``artifacts.write_atomic``'s
  ``<name>.<random>.tmp...``) in ``folders`` of ``output_dir`` and their subfolders, so a
  resumed run leaves no half-written file beside its masks. Returns how many."""
  removed = 0
  for folder in folders:
    for root, _, names in os.walk(os.path.join(output_dir, folder)):
      for name in names:
        if '.tmp' in name:
          os.remove(os.path.join(root, name))
          removed += 1
  return removed


def load_chunk(path: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
  """``(names, maps, p(lesion), error maps or None)`` of a saved chunk."""
  with np.load(path) as f:
    errors = f['errors'].astype(np.float32) if 'errors' in f.files else None
    return [str(n) for n in f['names']], f['maps'].astype(np.float32), f['probs'].astype(np.float32), errors
