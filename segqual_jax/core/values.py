"""Whether two settings are the same: numbers as numbers, everywhere a run compares them.

A setting is compared with its recorded copy in several places -- a stage's
``config.json`` on resume and predict, the calibration's settings, a stored
rule's ``fail_dice`` and ``ood_alpha``, the rules keyed by alpha in JSON.
Exact float equality and string forms break on harmless differences: ``0.1``
read back as ``0.1000000000000000055``, ``1`` vs ``1.0``, ``'0.10'`` vs
``0.1``, a chunk given as ``10`` or ``'10'``. One helper decides, so every
caller agrees on what "the same" means.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

REL_TOL = 1e-9  # two numbers closer than this (relative) are one setting


def as_number(value: Any) -> float | None:
  """``value`` as a float when it is a number or a string that spells one (not a bool)."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    try:
      return float(value)
    except ValueError:
      return None
  return None


def same(a: Any, b: Any) -> bool:
  """Whether ``a`` and ``b`` are the same setting: numbers within ``REL_TOL`` (a numeric
  string counts as its number), sequences and mappings element by element, the rest by ``==``."""
  x, y = as_number(a), as_number(b)
  if x is not None and y is not None:
    if math.isnan(x) or math.isnan(y):
      return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-12)
  if isinstance(a, Mapping) and isinstance(b, Mapping):
    return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
  if isinstance(a, bool) or isinstance(b, bool):  # True is not the number 1 here
    return type(a) is type(b) and a == b
  return a == b


def lookup(mapping: Mapping[str, Any], number: float) -> Any | None:
  """The entry of ``mapping`` (JSON keys such as ``'0.1'``) whose key is the same number as
  ``number``, or None."""
  for key, value in mapping.items():
    if same(key, number):
      return value
  return None
