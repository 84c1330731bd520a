"""predict's drawing: one colour scale per run, map names that never collide."""

import numpy as np

from segqual_jax.apps import assess, render
from segqual_jax.quality import policy


def test_one_colour_scale_from_every_case():
  calm, wild = np.full((4, 4), 0.1, np.float32), np.full((4, 4), 0.1, np.float32)
  wild[0, 0] = 5.0
  many = [calm] * 10 + [wild] * 10
  assert render.map_scale(many) > 1.0  # the later, wilder maps set the scale too
  assert 0.1 <= render.map_scale([calm]) <= 0.1 * 1.004  # to within a bin of the histogram
  a = render.heat(calm, render.map_scale(many), 1)
  b = render.heat(calm, render.map_scale([calm]), 1)
  assert not np.array_equal(a, b)  # the same map is drawn against the run's scale


def test_map_names_never_collide():
  files = ('x.png', 'x.jpg', 'sub/x.png', 'y.png')
  names = render.case_names(list(files))
  assert [names[f] for f in files] == ['x_png', 'x_jpg', 'sub__x', 'y']
  assert assess.Case(file='sub/x.png').stem == 'x'  # the case id (its key) is the stem, whatever the folder
  clash = render.case_names(['a/b.png', 'a__b.png'])  # one bare name even with the extension
  assert len(set(clash.values())) == 2 and all(n.startswith('a__b_') for n in clash.values())


def test_outline_is_thick_and_edged_in_black_on_pale_skin():
  """A yellow line alone vanishes on pale skin: the outline is 2 px of colour with a black
  edge on both sides, and the true mask gets its own colour beside f's."""
  pale = np.full((40, 40, 3), 235, np.uint8)
  mask = np.zeros((40, 40), np.uint8)
  mask[10:30, 10:30] = 1
  truth = np.zeros((40, 40), np.uint8)
  truth[14:34, 14:34] = 1
  out = render.outline(pale, [(mask, render.PREDICTED), (truth, render.TRUE)])
  row = out[20]  # across f's left edge at x=10: black, yellow, yellow, black
  assert tuple(row[9]) == render.EDGE and tuple(row[10]) == render.PREDICTED
  assert tuple(row[11]) == render.PREDICTED and tuple(row[12]) == render.EDGE
  assert (np.all(out == render.TRUE, -1)).sum() > 0
  assert tuple(out[2, 2]) == (235, 235, 235)  # away from the lines the image is untouched


def test_maps_and_page_at_the_inputs_own_resolution(tmp_path):
  """A 300 x 120 image is shown at 300 x 120 (not a 64-px square), a 2000-px one capped at the
  display side; the page carries the colour bar and each case's margin to the threshold."""
  from PIL import Image
  rng = np.random.default_rng(0)
  files = {'wide.png': (120, 300), 'big.png': (2000, 1000)}
  cases = []
  for name, (h, w) in files.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    probs = np.zeros((16, 16), np.float32)
    probs[4:12, 4:12] = 0.9
    cases.append(assess.Case(file=name, image=np.zeros((16, 16, 3), np.uint8),
                             native_size=(w, h), mask=(probs > 0.5).astype(np.uint8), probs=probs,
                             map=rng.random((16, 16)).astype(np.float32), predicted_dice=0.85,
                             predicted_jaccard=0.74, error_map=rng.random((16, 16)).astype(np.float32)))
  out = tmp_path / 'out'
  names = render.case_names([c.file for c in cases])
  render.write_scale(str(out))
  for c in cases:
    c.name = names[c.file]
    assert render.draw_case(str(out), c, 1.0, str(tmp_path),
                            truth=lambda c: np.ones(c.native_size[::-1], np.uint8))
  shown = lambda name, kind: Image.open(out / render.map_file(names[name], kind)).size
  for kind in ('image', 'overlay', 'uncertainty', 'error'):  # every picture at the input's own size
    assert shown('wide.png', kind) == (300, 120)
    assert shown('big.png', kind) == (256, render.DISPLAY_MAX_SIDE)
  assert (out / 'maps' / render.SCALE_FILE).exists()
  for c in cases:
    c.decision = policy.Decision('pass', 'predicted Dice 0.850 >= 0.800')
  run = assess.PredictRun(title='run', rule=policy.DecisionRule(0.8, 'fixed'), gate=policy.Gate(0.0),
                          provenance={}, provenance_text='method=msp', warnings=('LOUD',),
                          quality_model='uncertainty', target='dice', vmax=0.69, whose="f's",
                          map_label="f's pixels", with_truth=True)
  render.write_report(str(out), cases, run)
  page = (out / 'index.html').read_text()
  assert 'font-weight:bold">LOUD</p>' in page and 'Judged by: method=msp' in page
  assert 'Applicability gate off' in page and page.count('auto-accept</b>') == 2
  assert '+0.050 vs the bar 0.800 (dice)' in page
  assert f'maps/{render.SCALE_FILE}' in page and '0.69' in page and 'true mask in cyan' in page
  assert render.margin_text(cases[0], float('inf'), 'dice') == 'no threshold accepts'
