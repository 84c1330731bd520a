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
  """The split the sampler relies on: from_prefix(prefix(x)) is the full pass, also with the
  skips as precomputed terms, with the same dropout masks for the same key, at every
  dropout placement."""
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
  # The sampler's form: the prefix skips' share of their decoder convolutions precomputed
  # (a convolution of a concatenation is the sum of its parts' convolutions).
  h, terms = model.apply(variables, x, method=unet.UNet.shared_prefix)
  assert len(terms) == len(skips)
  shared = model.apply(variables, h, (), skip_terms=terms, deterministic=False, rngs=rngs,
                       method=unet.UNet.from_prefix)
  for name in full:
    assert float(jnp.abs(full[name] - shared[name]).max()) < 1e-5, name


def test_group_norm_is_flax_group_norm_with_a_faster_reduction():
  """Same parameters, same outputs (to float32 rounding) as nn.GroupNorm, at every group size."""
  import flax.linen as nn
  for channels, groups in ((16, 8), (32, 8), (4, 4), (24, 3)):
    x = 3.0 * jax.random.normal(jax.random.key(channels), (2, 8, 8, channels)) + 1.5
    ref = nn.GroupNorm(num_groups=groups)
    variables = ref.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape),
                             variables)
    ours = unet.GroupNorm(num_groups=groups)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    got, want = ours.apply(variables, x), ref.apply(variables, x)
    assert float(jnp.abs(got - want).max()) < 1e-4
    assert got.dtype == x.dtype


def test_parameter_tree_is_the_one_checkpoints_hold():
  """Own Conv / GroupNorm / setup-style ConvBlock keep nn.compact's names and shapes."""
  model = unet.UNet(base_width=4, depth=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert set(params['ConvBlock_0']) == {'Conv_0', 'Conv_1', 'GroupNorm_0', 'GroupNorm_1'}
  assert params['ConvBlock_0']['Conv_0']['kernel'].shape == (3, 3, 3, 4)
  assert params['ConvBlock_3']['Conv_0']['kernel'].shape == (3, 3, 16, 8)  # decoder: up + skip
  assert params['ConvBlock_4']['Conv_0']['kernel'].shape == (3, 3, 8, 4)
  assert params['ConvBlock_0']['GroupNorm_0']['scale'].shape == (4,)
  assert set(params) >= {'ConvTranspose_0', 'ConvTranspose_1', 'logits'}


def test_skip_latents_have_no_shared_skip_terms():
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  latent = unet.UNet(base_width=4, depth=2, skip_latents=True)
  with pytest.raises(ValueError, match='skip latents'):
    latent.apply(latent.init(jax.random.key(1), x), x, method=unet.UNet.shared_prefix)


def test_bfloat16_parameters_make_the_pass_bfloat16_with_float32_outputs():
  model = unet.UNet(base_width=8, depth=2, heads=('variance', 'confidence'))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  params = model.init(jax.random.key(1), x)['params']
  half = unet.compute_params(params, 'bfloat16')
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
  assert unet.compute_params(params, 'float32') is params
  out = model.apply({'params': half}, x)
  assert all(v.dtype == jnp.float32 for v in out.values())
  ref = model.apply({'params': params}, x)
  assert float(jnp.abs(out['logits'] - ref['logits']).max()) < 0.1
  inter = model.apply({'params': half}, x, capture_intermediates=True,
                      mutable=['intermediates'])[1]['intermediates']
  assert inter['ConvBlock_1']['__call__'][0].dtype == jnp.bfloat16  # computed in bfloat16
