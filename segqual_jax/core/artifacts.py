"""The files a run leaves behind: written atomically, and by one process.

Atomic (a temporary file, then ``os.replace``): a crash never leaves a
half-written file that looks complete, which matters because the presence of
some files (``metrics.json``, ``done.json``) marks a stage as finished.
One process: in a multi-host job every process runs the same program on its
share of each batch, but only process 0 writes, so logs are not doubled and
two hosts never race on one file of a shared directory.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0 of the job).

  JAX is imported here, not at module level: the config layer records
  configs through this module and must load (and reject a bad config) before JAX.
  """
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def write_atomic(path: str, writer: Callable[[str], None], suffix: str = '.tmp') -> None:
  """Calls ``writer(tmp_path)``, then renames the result to ``path``.

  ``suffix`` keeps an extension some writers insist on (``.tmp.png``).
  """
  if not is_writer():
    return
  tmp = path + suffix
  writer(tmp)
  os.replace(tmp, path)


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
