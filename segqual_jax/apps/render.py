"""What a person looks at after predict: per-case PNGs and one HTML page.

Pure drawing of already-assessed cases (``assess.Case``); nothing here runs
a model or decides anything. One colour scale serves the whole run
(``map_scale`` over every case's map), so two cases' maps can be compared by
eye whatever batch they were in.
"""

from __future__ import annotations

import html
import os

import matplotlib
import numpy as np
from PIL import Image

from segqual_jax.core import artifacts

matplotlib.use('Agg')
from matplotlib import colormaps  # noqa: E402

MAPS_DIR = 'maps'
MASKS_DIR = 'masks'  # f's segmentations at each input's own size, 0/255 PNGs
DISPLAY_SIDE = 192  # rendered PNGs are enlarged to about this many pixels a side


def map_scale(maps: list[np.ndarray]) -> float:
  """The run's colour-scale top: the 99.5th percentile of every case's map together."""
  if not maps:
    return 1.0
  return float(np.percentile(np.concatenate([m.ravel() for m in maps]), 99.5)) or 1.0


def _save_png(path: str, array: np.ndarray) -> None:
  artifacts.write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format='PNG'),
                         suffix='.tmp.png')


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
  reps = (scale, scale, 1) if array.ndim == 3 else (scale, scale)
  return np.kron(array, np.ones(reps, np.uint8))


def outline(image: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
  """The image enlarged ``scale`` times with the mask's boundary drawn in yellow."""
  big = _enlarge(image, scale)
  m = _enlarge(mask.astype(np.uint8), scale).astype(bool)
  inner = m.copy()
  for axis in (0, 1):
    for shift in (1, -1):
      inner &= np.roll(m, shift, axis)
  edge = m & ~inner
  out = big.copy()
  out[edge] = (255, 230, 0)
  return out


def heat(umap: np.ndarray, vmax: float, scale: int) -> np.ndarray:
  rgb = colormaps['magma'](np.clip(umap / max(vmax, 1e-6), 0.0, 1.0))[..., :3]
  return _enlarge((rgb * 255).astype(np.uint8), scale)


def map_names(cases) -> dict[str, str]:
  """PNG name stem per case: the relative path without extension (``sub/x.png`` ->
  ``sub__x``); where two files share it (``x.png`` and ``x.jpg``), the extension
  too (``x_png``, ``x_jpg``), so no two cases overwrite each other's maps."""
  bare = {c.file: os.path.splitext(c.file)[0].replace('/', '__') for c in cases}
  counts = {}
  for b in bare.values():
    counts[b] = counts.get(b, 0) + 1
  return {f: (b if counts[b] == 1 else f.replace('/', '__').replace('.', '_')) for f, b in bare.items()}


def write_maps(output_dir: str, cases, vmax: float) -> dict[str, str]:
  """``<name>_image.png``, ``_overlay.png`` and ``_uncertainty.png`` of every readable case."""
  names = map_names(cases)
  folder = os.path.join(output_dir, MAPS_DIR)
  for case in cases:
    if not case.ok:
      continue
    scale = max(1, DISPLAY_SIDE // case.image.shape[0])
    base = os.path.join(folder, names[case.file])
    _save_png(base + '_image.png', _enlarge(case.image, scale))
    _save_png(base + '_overlay.png', outline(case.image, case.mask, scale))
    _save_png(base + '_uncertainty.png', heat(case.map, vmax, scale))
  return names


def write_masks(output_dir: str, cases, names: dict[str, str]) -> None:
  """``masks/<name>.png``: f's segmentation of every readable case at the input's own size
  (p(lesion) upsampled bilinearly, then > 0.5), 0 = background, 255 = lesion."""
  folder = os.path.join(output_dir, MASKS_DIR)
  os.makedirs(folder, exist_ok=True)
  for case in cases:
    if case.ok:
      _save_png(os.path.join(folder, names[case.file] + '.png'), case.native_mask * 255)


def _fmt(value, digits: int) -> str:
  return '' if value is None else f'{value:.{digits}f}'


DECISION_LABELS = {'pass': ('auto-accept', '#2e7d32'), 'fail': ('needs review: predicted failure', '#c62828'),
                   'review': ('needs review: not judged', '#e65100')}
_ORDER = {'review': 0, 'fail': 1, 'pass': 2}


def write_html(path: str, cases, decisions: dict, names: dict[str, str], title: str,
               rule_text: str, warnings: list[str], with_truth: bool, gate_text: str = '',
               provenance_text: str = '') -> None:
  """One page: unreadable files first, then cases not judged (review), predicted failures,
  and auto-accepted cases, each group worst predicted quality first.

  ``decisions`` maps a file to its ``predict.Decision`` (decision and reason).
  ``warnings`` are shown above everything in bold red (a missing calibration,
  a suspended run, synthetic training data); the gate's verdict and the run's
  provenance follow.
  """
  e = html.escape
  ordered = sorted(cases, key=lambda c: (c.ok, _ORDER[decisions[c.file].decision] if c.ok else 0,
                                         c.predicted_dice if c.ok else 0.0))
  head = ('<th>file</th><th>image</th><th>f\'s segmentation</th><th>uncertainty</th>'
          '<th>predicted Dice</th><th>predicted Jaccard</th><th>decision</th>'
          '<th>mean uncertainty</th><th>applicability p</th>'
          + ('<th>true Dice</th><th>true Jaccard</th>' if with_truth else '') + '<th>status</th>')
  body = []
  for c in ordered:
    if c.ok:
      cells = ''.join(f'<td><img src="{MAPS_DIR}/{e(names[c.file])}_{kind}.png" loading="lazy"></td>'
                      for kind in ('image', 'overlay', 'uncertainty'))
      decision = decisions[c.file]
      label, colour = DECISION_LABELS[decision.decision]
      numbers = (f'<td>{_fmt(c.predicted_dice, 3)}</td><td>{_fmt(c.predicted_jaccard, 3)}</td>'
                 f'<td style="color:{colour}"><b>{e(label)}</b><br><small>{e(decision.reason)}</small></td>'
                 f'<td>{_fmt(c.mean_uncertainty, 4)}</td><td>{_fmt(c.applicability_p, 3)}</td>')
    else:
      cells = '<td colspan="3">—</td>'
      numbers = '<td></td><td></td><td style="color:#c62828">unreadable</td><td></td><td></td>'
    truth = f'<td>{_fmt(c.true_dice, 3)}</td><td>{_fmt(c.true_jaccard, 3)}</td>' if with_truth else ''
    body.append(f'<tr><td>{e(c.file)}</td>{cells}{numbers}{truth}<td>{e(c.status)}</td></tr>')
  n_ok = sum(c.ok for c in cases)
  count = lambda d: sum(x.decision == d for x in decisions.values())
  note_html = ''.join(f'<p style="color:#c62828;font-weight:bold">{e(w)}</p>\n' for w in warnings)
  note_html += f'<p>{e(gate_text)}</p>\n' if gate_text else ''
  note_html += f'<p><small>Judged by: {e(provenance_text)}</small></p>\n' if provenance_text else ''
  page = f'''<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}} img{{width:160px;height:160px;image-rendering:pixelated}}</style>
</head><body>
<h1>{e(title)}</h1>
{note_html}<p>{len(cases)} files: {n_ok} read, {len(cases) - n_ok} unreadable;
<b>{count('pass')} auto-accepted</b>, {count('fail')} predicted to fail and {count('review')} not judged
(outside what this run can assess): {count('fail') + count('review')} need a human look.
Decision rule: {e(rule_text)}.
Overlay: f's mask outlined in yellow. Uncertainty: brighter = less certain (one colour scale for the run).</p>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table></body></html>
'''
  artifacts.write_text(path, page)
