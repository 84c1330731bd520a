"""Shapes and ranges of every U-Net head."""

import jax
import jax.numpy as jnp
import pytest

from segqual_jax.segmenter import unet


@pytest.mark.parametrize('heads', [(), ('variance',), ('confidence',), ('variance', 'confidence')])
def test_head_shapes_and_ranges(heads):
  model = unet.UNet(base_width=4, depth=2, heads=heads)
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  params = model.init(jax.random.key(1), x)
  out = model.apply(params, x)
  assert set(out) == {'logits', *heads}
  assert out['logits'].shape == (3, 16, 16, 2)
  if 'variance' in heads:
    assert out['variance'].shape == (3, 16, 16) and bool(jnp.all(out['variance'] >= 0))
  if 'confidence' in heads:
    c = out['confidence']
    assert c.shape == (3, 16, 16) and bool(jnp.all((c > 0) & (c < 1)))


def test_dropout_only_when_sampling():
  model = unet.UNet(base_width=4, depth=2, dropout_rate=0.5)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  params = model.init(jax.random.key(1), x)
  det = model.apply(params, x)['logits']
  assert jnp.array_equal(det, model.apply(params, x)['logits'])
  s1 = model.apply(params, x, deterministic=False, rngs={'dropout': jax.random.key(2)})['logits']
  s2 = model.apply(params, x, deterministic=False, rngs={'dropout': jax.random.key(3)})['logits']
  assert not jnp.allclose(s1, det) and not jnp.allclose(s1, s2)


def test_dropout_sits_only_in_central_blocks():
  """With central_levels=0 only the bottleneck has dropout: the first encoder
  level's skip path is deterministic, so outputs differ less than with all levels."""
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  model = unet.UNet(base_width=4, depth=2, central_levels=0)
  params = model.init(jax.random.key(1), x)
  inter = model.apply(params, x, deterministic=False, rngs={'dropout': jax.random.key(2)},
                      capture_intermediates=True, mutable=['intermediates'])[1]['intermediates']
  det = model.apply(params, x, capture_intermediates=True, mutable=['intermediates'])[1]['intermediates']
  # encoder blocks and the bottleneck are before any dropout: identical with and without sampling
  for name in ('ConvBlock_0', 'ConvBlock_1', 'ConvBlock_2'):
    assert jnp.array_equal(inter[name]['__call__'][0], det[name]['__call__'][0])
  assert not jnp.array_equal(inter['ConvBlock_3']['__call__'][0], det['ConvBlock_3']['__call__'][0])


@pytest.mark.parametrize('central_levels', [0, 1, 2, 5])
def test_prefix_then_rest_equals_full_pass(central_levels):
  """The split the sampler relies on: from_prefix(prefix(x)) is the full pass,
  with the same dropout masks for the same key, at every dropout placement."""
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  model = unet.UNet(base_width=4, depth=2, central_levels=central_levels, heads=('variance',))
  variables = model.init(jax.random.key(1), x)
  rngs = {'dropout': jax.random.key(2)}
  full = model.apply(variables, x, deterministic=False, rngs=rngs)
  h, skips = model.apply(variables, x, method=unet.UNet.prefix)
  assert len(skips) == model.depth - min(central_levels, model.depth)
  rest = model.apply(variables, h, skips, deterministic=False, rngs=rngs,
                     method=unet.UNet.from_prefix)
  for name in full:
    assert jnp.allclose(full[name], rest[name], atol=1e-6), name
  assert not jnp.allclose(full['logits'], model.apply(variables, x)['logits'])
