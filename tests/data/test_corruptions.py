"""The seeded corruptions: keyed by the case, stronger with severity, any image size."""

import numpy as np
import pytest

from segqual_jax.config import schema
from segqual_jax.data import corruptions


def _image(rng, h=48, w=40):
  yy, xx = np.mgrid[:h, :w]
  base = np.stack([yy * 4, xx * 5, (yy + xx) * 2], -1) % 256
  return np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def test_the_schema_lists_every_corruption():
  assert tuple(corruptions.CORRUPTIONS) == schema.CORRUPTIONS


@pytest.mark.parametrize('name', schema.CORRUPTIONS)
def test_each_corruption_is_seeded_by_the_case_and_grows_with_severity(name):
  image = _image(np.random.default_rng(0))
  out = {s: corruptions.corrupt(image, name, s, 'case-7') for s in corruptions.SEVERITIES}
  for s, x in out.items():
    assert x.shape == image.shape and x.dtype == np.uint8
    np.testing.assert_array_equal(x, corruptions.corrupt(image, name, s, 'case-7'))  # reproducible
  change = [np.abs(out[s].astype(int) - image).mean() for s in corruptions.SEVERITIES]
  assert 0 < change[0] < change[1] < change[2], change
  if name == 'noise':  # random corruptions draw from the case, not from a shared stream
    assert not np.array_equal(out[2], corruptions.corrupt(image, name, 2, 'case-8'))


def test_bad_arguments_are_named():
  image = _image(np.random.default_rng(0))
  with pytest.raises(ValueError, match='unknown corruption'):
    corruptions.corrupt(image, 'fog', 1, 'x')
  with pytest.raises(ValueError, match='severity'):
    corruptions.corrupt(image, 'blur', 4, 'x')
