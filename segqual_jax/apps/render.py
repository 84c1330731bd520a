"""What a person looks at after predict: per-case PNGs and a paged HTML report.

Pure drawing of already-assessed and decided cases (``assess.Case``, each with
its ``name`` and ``decision``) and the run's record (``assess.PredictRun``);
nothing here runs a model or decides anything. One colour scale serves the
whole run (``MapScale``: a histogram of every case's map, bounded in size
however many cases), so two cases' maps can be compared by eye whatever batch
they were in. The report is an index page (counts, warnings, provenance, the
gate, and the first page of rows: unreadable files, cases not judged and
predicted failures first) and ``pages/`` of ``page_size`` rows each; maps go
to ``maps/<2 hex digits>/``, 256 subfolders, so the maps of an archive run
are not 300,000 files in one folder (``masks/`` stays one flat folder: it is
what a user's pipeline reads back by stem).
"""

from __future__ import annotations

import hashlib
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


PAGES_DIR = 'pages'
NAV_WINDOW = 10  # a page links to this many pages either side, and to the first and last
SCALE_QUANTILE = 0.995  # the colour scale's top: this quantile of every map pixel of the run


class MapScale:
  """The run's colour-scale top, from maps added a chunk at a time in bounded memory.

  A histogram over 8,192 log-spaced bins from 1e-7 to 1e4 (each 0.3 % wide),
  plus the count of zeros: the ``SCALE_QUANTILE`` is read off it to within a
  bin, where holding every pixel of 100,000 maps would take gigabytes.
  """
  EDGES = np.geomspace(1e-7, 1e4, 8193)

  def __init__(self):
    self.counts = np.zeros(len(self.EDGES) + 1, np.int64)  # [<= 0 or < 1e-7, bins..., > 1e4]

  def add(self, maps: np.ndarray) -> None:
    values = np.asarray(maps, np.float64).ravel()
    values = values[np.isfinite(values)]
    self.counts += np.bincount(np.searchsorted(self.EDGES, values, side='right'),
                               minlength=len(self.counts))[:len(self.counts)]

  def top(self) -> float:
    """The scale's top (1.0 when no map was added or all are zero)."""
    total = self.counts.sum()
    if total == 0:
      return 1.0
    k = int(np.searchsorted(np.cumsum(self.counts), SCALE_QUANTILE * total, side='left'))
    if k == 0:
      return 1.0  # the quantile is zero: any top shows a blank map
    return float(self.EDGES[min(k, len(self.EDGES) - 1)])


def map_scale(maps: list[np.ndarray]) -> float:
  """``MapScale`` of ``maps`` at once."""
  scale = MapScale()
  for m in maps:
    scale.add(m)
  return scale.top()


def map_file(name: str, kind: str) -> str:
  """A case's map file relative to the output folder: ``maps/<2 hex>/<name>_<kind>.png``."""
  return f'{MAPS_DIR}/{hashlib.sha256(name.encode()).hexdigest()[:2]}/{name}_{kind}.png'


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


def case_names(files: list[str]) -> dict[str, str]:
  """``{file: the stem of its output files}``: the relative path without extension
  (``sub/x.png`` -> ``sub__x``); where two files share it (``x.png`` and ``x.jpg``), the
  extension too (``x_png``, ``x_jpg``), so no two cases overwrite each other's maps. A
  function of the file list alone: every chunk and every process names alike."""
  bare = [os.path.splitext(f)[0].replace('/', '__') for f in files]
  counts = {}
  for b in bare:
    counts[b] = counts.get(b, 0) + 1
  names = {f: b if counts[b] == 1 else f.replace('/', '__').replace('.', '_') for f, b in zip(files, bare)}
  taken = {}
  for n in names.values():
    taken[n] = taken.get(n, 0) + 1
  # still shared (``a/b.png`` and ``a__b.png``): the path's digest makes each its own
  return {f: n if taken[n] == 1 else f'{n}_{hashlib.sha256(f.encode()).hexdigest()[:8]}' for f, n in names.items()}


def write_scale(output_dir: str) -> None:
  """The run's colour bar, ``maps/colour_scale.png``."""
  os.makedirs(os.path.join(output_dir, MAPS_DIR), exist_ok=True)
  _save_png(os.path.join(output_dir, MAPS_DIR, SCALE_FILE), colour_scale())


def draw_case(output_dir: str, case, vmax: float, input_root: str, truth=None) -> bool:
  """``<name>_image.png``, ``_overlay.png`` and ``_uncertainty.png`` of one readable case
  (``map_file``), at the input's own resolution (longer side capped at ``DISPLAY_MAX_SIDE``).

  The overlay outlines f's mask at that resolution (its p(lesion) resampled,
  ``Case.mask_at``) and, when ``truth(case)`` gives the true mask, the true
  outline beside it. The map keeps the model's pixels (enlarged by nearest
  neighbour), so what f saw is what is shown.
  """
  try:
    shown = image_io.read_display(os.path.join(input_root, case.file), DISPLAY_MAX_SIDE)
  except image_io.ImageError:  # changed on disk since it was assessed: draw what f saw
    if case.image is None:
      return False
    shown = case.image
  shape = shown.shape[:2]
  layers = [(case.mask_at(shape), PREDICTED)]
  true_mask = truth(case) if truth else None
  if true_mask is not None:
    layers.append((segmentations.to_shape(segmentations.Segmentation(
        true_mask.astype(np.float32), 'mask'), shape).mask, TRUE))
  path = lambda kind: os.path.join(output_dir, map_file(case.name, kind))
  os.makedirs(os.path.dirname(path('image')), exist_ok=True)
  _save_png(path('image'), shown)
  _save_png(path('overlay'), outline(shown, layers))
  _save_png(path('uncertainty'), _resize(heat(case.map, vmax, 1), shape))
  if case.error_map is not None:  # P(pixel wrong) on a fixed 0-1 scale
    _save_png(path('error'), _resize(heat(case.error_map, 1.0, 1), shape))
  return True


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


def interval_text(case, run) -> str:
  """``"90 % interval 0.79-0.92; "`` for a case with an interval of its predicted Dice, else ''."""
  if case.dice_low is None or run.interval is None:
    return ''
  return f'{100 * (1 - run.interval.alpha):g} % interval {case.dice_low:.2f}-{case.dice_high:.2f}; '


def report_order(cases) -> list:
  """Unreadable files first, then cases not judged (review), predicted failures and
  auto-accepted cases, each group worst predicted quality first."""
  return sorted(cases, key=lambda c: (c.ok, _ORDER[c.decision.decision] if c.ok else 0,
                                      c.predicted_dice if c.ok else 0.0))


def _pictures(run) -> tuple[str, ...]:
  """The pictures of a case on the page: the image, the outline, the map, and the error map
  when the run has one."""
  return ('image', 'overlay', 'uncertainty') + (('error',) if run.with_error_map else ())


def _row(c, run, drawn, prefix: str) -> str:
  e = html.escape
  if c.ok:
    if c.name in drawn:
      cells = ''.join(f'<td><img src="{prefix}{e(map_file(c.name, kind))}" loading="lazy"></td>'
                      for kind in _pictures(run))
    else:
      cells = f'<td colspan="{len(_pictures(run))}"><small>not drawn (predict.maps)</small></td>'
    label, colour = DECISION_LABELS[c.decision.decision]
    margin = f'<br><small>{e(interval_text(c, run))}{e(margin_text(c, run.rule.threshold, run.target))}</small>'
    numbers = (f'<td>{_fmt(c.predicted_dice, 3)}{margin}</td><td>{_fmt(c.predicted_jaccard, 3)}</td>'
               f'<td style="color:{colour}"><b>{e(label)}</b><br><small>{e(c.decision.reason)}</small></td>'
               f'<td>{_fmt(c.mean_uncertainty, 4)}</td><td>{_fmt(c.applicability_p, 3)}</td>')
  else:
    cells = f'<td colspan="{len(_pictures(run))}">—</td>'
    numbers = '<td></td><td></td><td style="color:#c62828">unreadable</td><td></td><td></td>'
  truth = f'<td>{_fmt(c.true_dice, 3)}</td><td>{_fmt(c.true_jaccard, 3)}</td>' if run.with_truth else ''
  notes = ''.join(f'<br><small>{e(n)}</small>' for n in c.notes)
  return f'<tr><td>{e(c.file)}</td>{cells}{numbers}{truth}<td>{e(c.status)}{notes}</td></tr>'


def _page(title: str, top: str, rows: list[str], run, nav: str) -> str:
  e = html.escape
  head = (f'<th>file</th><th>image</th><th>{e(run.whose)} segmentation</th><th>uncertainty</th>'
          + ('<th>probably wrong (error map, 0-1)</th>' if run.with_error_map else '') +
          '<th>predicted Dice</th><th>predicted Jaccard</th><th>decision</th>'
          '<th>mean uncertainty</th><th>applicability p</th>'
          + ('<th>true Dice</th><th>true Jaccard</th>' if run.with_truth else '') + '<th>status</th>')
  return f'''<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}} td img{{width:240px;height:auto;image-rendering:pixelated}}</style>
</head><body>
<h1>{e(title)}</h1>
{top}{nav}
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{nav}</body></html>
'''


def page_name(k: int) -> str:
  """Page ``k`` (1-based) of the report, relative to the output folder (1 is the index)."""
  return 'index.html' if k == 1 else f'{PAGES_DIR}/page-{k:05d}.html'


def write_report(output_dir: str, cases, run, page_size: int = 300, drawn=None) -> int:
  """``index.html`` and ``pages/page-K.html``; returns the number of pages.

  The index holds the counts, the warnings (bold red: a missing calibration,
  a suspended run, a monitor alarm, synthetic training data), the gate, the
  provenance and page 1 -- the most urgent rows (``report_order``); every
  page links to the first, the last and the ``NAV_WINDOW`` pages either side
  (not to every page: 300 pages would make the links outweigh the rows). ``drawn``: the names whose maps were drawn
  (None: every readable case); the others' rows say so. Each judged case
  shows its decision and reason and its margin to the rule's threshold (in
  the quality model's units); the map's colour bar runs 0 to ``run.vmax``.
  """
  e = html.escape
  ordered = report_order(cases)
  drawn = {c.name for c in cases if c.ok} if drawn is None else drawn
  pages = max(1, math.ceil(len(ordered) / page_size))
  n_ok = sum(c.ok for c in cases)
  count = lambda d: sum(c.ok and c.decision.decision == d for c in cases)
  note_html = ''.join(f'<p style="color:#c62828;font-weight:bold">{e(w)}</p>\n' for w in run.warnings)
  note_html += f'<p>{e(policy.gate_text(run.gate))}</p>\n'
  note_html += f'<p><small>Judged by: {e(run.provenance_text)}</small></p>\n'
  top = (f'''{note_html}<p>{len(cases)} files: {n_ok} read, {len(cases) - n_ok} unreadable;
<b>{count('pass')} auto-accepted</b>, {count('fail')} predicted to fail and {count('review')} not judged
(outside what this run can assess): {count('fail') + count('review')} need a human look.
Decision rule: {e(run.rule.description)}. Interval: {e(run.interval_text)}.
Overlay: {e(run.whose)} mask outlined in yellow{' and the true mask in cyan' if run.with_truth else ''}, each
edged in black, on the image at its own resolution (longer side at most {DISPLAY_MAX_SIDE} px).
Uncertainty ({e(run.map_label)}): brighter = less certain, one colour scale for the run:
0 <img src="{MAPS_DIR}/{SCALE_FILE}" style="width:256px;height:14px;vertical-align:middle"> {run.vmax:.3g}.
{len(drawn)} cases drawn. {pages} page(s) of at most {page_size} rows, the most urgent first.</p>
''')
  if pages > 1:
    os.makedirs(os.path.join(output_dir, PAGES_DIR), exist_ok=True)
  for k in range(1, pages + 1):
    prefix = '' if k == 1 else '../'
    near = sorted({1, pages} | set(range(max(1, k - NAV_WINDOW), min(pages, k + NAV_WINDOW) + 1)))
    links = ' '.join(f'<b>{j}</b>' if j == k else f'<a href="{prefix}{page_name(j)}">{j}</a>' for j in near)
    nav = f'<p>Pages: {links}</p>\n' if pages > 1 else ''
    rows = [_row(c, run, drawn, prefix) for c in ordered[(k - 1) * page_size:k * page_size]]
    head = top if k == 1 else (f'<p>Page {k} of {pages} of <a href="../index.html">{e(run.title)}</a>: '
                               'counts, warnings and the gate are on the index.</p>\n')
    artifacts.write_text(os.path.join(output_dir, page_name(k)),
                         _page(run.title if k == 1 else f'{run.title}, page {k}', head, rows, run, nav))
  return pages
