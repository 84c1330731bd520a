"""The files a run leaves behind: written atomically, and by one process.

Atomic (a temporary file of its own, flushed to disk, then ``os.replace``): a
crash never leaves a half-written file that looks complete, which matters
because the presence of some files (``metrics.json``, ``done.json``) marks a
stage as finished; two writers of one path never share a temporary file, and
a writer that raises leaves no temporary file behind.
One process: in a multi-host job every process runs the same program on its
share of each batch, but only process 0 writes, so logs are not doubled and
two hosts never race on one file of a shared directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0 of the job; every process
  inside ``parallel.independent()``, where each writes files of its own cases).

  JAX is imported here, not at module level: the config layer records
  configs through this module and must load (and reject a bad config) before JAX.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from segqual_jax.core import parallel  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0 or parallel.is_independent()


def write_atomic(path: str, writer: Callable[[str], None], suffix: str = '.tmp') -> None:
  """Calls ``writer(tmp_path)``, then renames the result to ``path``.

  ``suffix`` keeps an extension some writers insist on (``.tmp.png``). The
  temporary file is unique (``mkstemp`` beside ``path``: same file system, so
  the rename is atomic), fsync-ed before the rename (a power cut after it
  cannot leave an empty file under the final name), and removed if
  ``writer`` raises. (The folder is not fsync-ed: a rename lost to a power cut
  leaves the previous file, or none, never a torn one.)
  """
  if not is_writer():
    return
  folder = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + '.', suffix=suffix)
  os.close(fd)
  try:
    writer(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as open() makes them
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _read_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and not thread-safe


def write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (process 0 only)."""
  def writer(tmp):
    with open(tmp, 'wb') as f:
      f.write(data)
  write_atomic(path, writer)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line (a log record; a torn last line only loses that record)."""
  if is_writer():
    with open(path, 'a') as f:
      f.write(json.dumps(record) + '\n')
