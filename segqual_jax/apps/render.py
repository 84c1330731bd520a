"""What a person looks at after predict: per-case PNGs and one HTML page.

Pure drawing of already-assessed and decided cases (``assess.Case``, each with
its ``name`` and ``decision``) and the run's record (``assess.PredictRun``);
nothing here runs a model or decides anything. One colour scale serves the whole run
(``map_scale`` over every case's map), so two cases' maps can be compared by
eye whatever batch they were in.
"""

from __future__ import annotations

import html
import math
import os

import matplotlib
import numpy as np
from PIL import Image

from segqual_jax.core import artifacts
from segqual_jax.data import images as image_io
from segqual_jax.data import segmentations
from segqual_jax.quality import policy

matplotlib.use('Agg')
from matplotlib import colormaps  # noqa: E402

MAPS_DIR = 'maps'
MASKS_DIR = 'masks'  # f's segmentations at each input's own size, 0/255 PNGs
DISPLAY_MAX_SIDE = 512  # the HTML's images: the input's own resolution, longer side capped here
SCALE_FILE = 'colour_scale.png'  # the run's map colour bar, in maps/
PREDICTED = (255, 221, 0)  # f's outline: yellow ...
TRUE = (0, 200, 255)  # ... the true mask's: cyan; both edged in black, visible on pale skin too
EDGE = (0, 0, 0)


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


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
  """Pixels of ``mask`` within ``width`` pixels of its edge (inside), as bool."""
  m = mask.astype(bool)
  inner = m.copy()
  for _ in range(width):
    shrunk = inner.copy()
    for axis in (0, 1):
      for shift in (1, -1):
        shrunk &= np.roll(inner, shift, axis)
    inner = shrunk
  return m & ~inner


def outline(image: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]],
            width: int = 2) -> np.ndarray:
  """``image`` with each mask's boundary drawn ``width`` px thick in its colour, edged by a
  1-px black line on both sides (so a yellow line stays visible on pale skin)."""
  out = image.copy()
  for mask, colour in masks:
    line = _boundary(mask, width)
    edged = _boundary(mask, width + 1) | (_boundary(~mask.astype(bool), 1))
    out[edged & ~line] = EDGE
    out[line] = colour
  return out


def heat(umap: np.ndarray, vmax: float, scale: int) -> np.ndarray:
  rgb = colormaps['magma'](np.clip(umap / max(vmax, 1e-6), 0.0, 1.0))[..., :3]
  return _enlarge((rgb * 255).astype(np.uint8), scale)


def colour_scale(width: int = 256, height: int = 14) -> np.ndarray:
  """The map colour bar, 0 (left) to the run's scale top (right)."""
  ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
  return (colormaps['magma'](ramp)[..., :3] * 255).astype(np.uint8)


def _resize(array: np.ndarray, shape: tuple[int, int], nearest: bool = True) -> np.ndarray:
  if array.shape[:2] == tuple(shape):
    return array
  resample = Image.NEAREST if nearest else Image.BILINEAR
  return np.asarray(Image.fromarray(array).resize((shape[1], shape[0]), resample))


def name_cases(cases) -> None:
  """Sets each case's ``name``, the stem of its output files: the relative path without
  extension (``sub/x.png`` -> ``sub__x``); where two files share it (``x.png`` and
  ``x.jpg``), the extension too (``x_png``, ``x_jpg``), so no two cases overwrite each
  other's maps."""
  bare = [os.path.splitext(c.file)[0].replace('/', '__') for c in cases]
  counts = {}
  for b in bare:
    counts[b] = counts.get(b, 0) + 1
  for case, b in zip(cases, bare):
    case.name = b if counts[b] == 1 else case.file.replace('/', '__').replace('.', '_')


def write_maps(output_dir: str, cases, vmax: float, input_root: str, truth=None) -> None:
  """``<name>_image.png``, ``_overlay.png`` and ``_uncertainty.png`` of every readable case,
  at the input's own resolution (longer side capped at ``DISPLAY_MAX_SIDE``), and the run's
  colour bar.

  The overlay outlines f's mask at that resolution (its p(lesion) resampled,
  ``Case.mask_at``) and, when ``truth(case)`` gives the true mask, the true
  outline beside it. The map keeps the model's pixels (enlarged by nearest
  neighbour), so what f saw is what is shown.
  """
  folder = os.path.join(output_dir, MAPS_DIR)
  os.makedirs(folder, exist_ok=True)
  _save_png(os.path.join(folder, SCALE_FILE), colour_scale())
  for case in cases:
    if not case.ok:
      continue
    try:
      shown = image_io.read_display(os.path.join(input_root, case.file), DISPLAY_MAX_SIDE)
    except image_io.ImageError:  # changed on disk since it was assessed: draw what f saw
      shown = case.image
    shape = shown.shape[:2]
    layers = [(case.mask_at(shape), PREDICTED)]
    true_mask = truth(case) if truth else None
    if true_mask is not None:
      layers.append((segmentations.to_shape(segmentations.Segmentation(
          true_mask.astype(np.float32), 'mask'), shape).mask, TRUE))
    base = os.path.join(folder, case.name)
    _save_png(base + '_image.png', shown)
    _save_png(base + '_overlay.png', outline(shown, layers))
    _save_png(base + '_uncertainty.png', _resize(heat(case.map, vmax, 1), shape))


def write_masks(output_dir: str, cases) -> None:
  """``masks/<name>.png``: f's segmentation of every readable case at the input's own size
  (p(lesion) upsampled bilinearly, then > 0.5), 0 = background, 255 = lesion."""
  folder = os.path.join(output_dir, MASKS_DIR)
  os.makedirs(folder, exist_ok=True)
  for case in cases:
    if case.ok:
      _save_png(os.path.join(folder, case.name + '.png'), case.native_mask * 255)


def _fmt(value, digits: int) -> str:
  return '' if value is None else f'{value:.{digits}f}'


DECISION_LABELS = {'pass': ('auto-accept', '#2e7d32'), 'fail': ('needs review: predicted failure', '#c62828'),
                   'review': ('needs review: not judged', '#e65100')}
_ORDER = {'review': 0, 'fail': 1, 'pass': 2}


def margin_text(case, threshold: float, target: str) -> str:
  """How far the predicted quality lies from the decision threshold, in its units."""
  if not math.isfinite(threshold):
    return 'no threshold accepts'
  return f'{case.predicted(target) - threshold:+.3f} vs the bar {threshold:.3f} ({target})'


def write_html(path: str, cases, run) -> None:
  """One page: unreadable files first, then cases not judged (review), predicted failures,
  and auto-accepted cases, each group worst predicted quality first.

  ``run`` (``assess.PredictRun``) gives the rule, the gate, the provenance and
  the warnings, shown above everything in bold red (a missing calibration, a
  suspended run, synthetic training data); each judged case shows its
  decision and reason and its margin to the rule's threshold (in the quality
  model's units); the map's colour bar runs 0 to the run's ``vmax``.
  """
  e = html.escape
  threshold, target, whose = run.rule.threshold, run.target, run.whose
  ordered = sorted(cases, key=lambda c: (c.ok, _ORDER[c.decision.decision] if c.ok else 0,
                                         c.predicted_dice if c.ok else 0.0))
  head = (f'<th>file</th><th>image</th><th>{e(whose)} segmentation</th><th>uncertainty</th>'
          '<th>predicted Dice</th><th>predicted Jaccard</th><th>decision</th>'
          '<th>mean uncertainty</th><th>applicability p</th>'
          + ('<th>true Dice</th><th>true Jaccard</th>' if run.with_truth else '') + '<th>status</th>')
  body = []
  for c in ordered:
    if c.ok:
      cells = ''.join(f'<td><img src="{MAPS_DIR}/{e(c.name)}_{kind}.png" loading="lazy"></td>'
                      for kind in ('image', 'overlay', 'uncertainty'))
      label, colour = DECISION_LABELS[c.decision.decision]
      margin = f'<br><small>{e(margin_text(c, threshold, target))}</small>'
      numbers = (f'<td>{_fmt(c.predicted_dice, 3)}{margin}</td><td>{_fmt(c.predicted_jaccard, 3)}</td>'
                 f'<td style="color:{colour}"><b>{e(label)}</b><br><small>{e(c.decision.reason)}</small></td>'
                 f'<td>{_fmt(c.mean_uncertainty, 4)}</td><td>{_fmt(c.applicability_p, 3)}</td>')
    else:
      cells = '<td colspan="3">—</td>'
      numbers = '<td></td><td></td><td style="color:#c62828">unreadable</td><td></td><td></td>'
    truth = f'<td>{_fmt(c.true_dice, 3)}</td><td>{_fmt(c.true_jaccard, 3)}</td>' if run.with_truth else ''
    notes = ''.join(f'<br><small>{e(n)}</small>' for n in c.notes)
    body.append(f'<tr><td>{e(c.file)}</td>{cells}{numbers}{truth}<td>{e(c.status)}{notes}</td></tr>')
  n_ok = sum(c.ok for c in cases)
  count = lambda d: sum(c.ok and c.decision.decision == d for c in cases)
  note_html = ''.join(f'<p style="color:#c62828;font-weight:bold">{e(w)}</p>\n' for w in run.warnings)
  note_html += f'<p>{e(policy.gate_text(run.gate))}</p>\n'
  note_html += f'<p><small>Judged by: {e(run.provenance_text)}</small></p>\n'
  page = f'''<!doctype html>
<html><head><meta charset="utf-8"><title>{e(run.title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}} td img{{width:240px;height:auto;image-rendering:pixelated}}</style>
</head><body>
<h1>{e(run.title)}</h1>
{note_html}<p>{len(cases)} files: {n_ok} read, {len(cases) - n_ok} unreadable;
<b>{count('pass')} auto-accepted</b>, {count('fail')} predicted to fail and {count('review')} not judged
(outside what this run can assess): {count('fail') + count('review')} need a human look.
Decision rule: {e(run.rule.description)}.
Overlay: {e(whose)} mask outlined in yellow{' and the true mask in cyan' if run.with_truth else ''}, each
edged in black, on the image at its own resolution (longer side at most {DISPLAY_MAX_SIDE} px).
Uncertainty ({e(run.map_label)}): brighter = less certain, one colour scale for the run:
0 <img src="{MAPS_DIR}/{SCALE_FILE}" style="width:256px;height:14px;vertical-align:middle"> {run.vmax:.3g}.</p>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table></body></html>
'''
  artifacts.write_text(path, page)
