"""predict's drawing: one colour scale per run, map names that never collide."""

import numpy as np

from segqual_jax.apps import assess, render


def test_one_colour_scale_from_every_case():
  calm, wild = np.full((4, 4), 0.1, np.float32), np.full((4, 4), 0.1, np.float32)
  wild[0, 0] = 5.0
  many = [calm] * 10 + [wild] * 10
  assert render.map_scale(many) > 1.0  # the later, wilder maps set the scale too
  assert render.map_scale([calm]) == np.float32(0.1)
  a = render.heat(calm, render.map_scale(many), 1)
  b = render.heat(calm, render.map_scale([calm]), 1)
  assert not np.array_equal(a, b)  # the same map is drawn against the run's scale


def test_map_names_never_collide():
  cases = [assess.Case(file=f) for f in ('x.png', 'x.jpg', 'sub/x.png', 'y.png')]
  names = render.map_names(cases)
  assert names == {'x.png': 'x_png', 'x.jpg': 'x_jpg', 'sub/x.png': 'sub__x', 'y.png': 'y'}
  assert cases[2].stem == 'x'  # the case id (its key) is the stem, whatever the folder
