"""Deep ensemble, test-time augmentation and hierarchical latents (issue 6, items 1-3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.data import pipeline
from segqual_jax.training import loop, train_seg
from segqual_jax.segmenter import sampling
from segqual_jax.segmenter.methods import base, ensemble, tta


def _train(method, config, init_key, loss_fn, batches, steps):
  """A few plain steps of the stage-1 step function from a given init key."""
  state, tx = train_seg.create_train_state(method, config, init_key, steps)
  step = loop.make_train_step(loss_fn, tx)
  step_key = jax.random.key(7)
  for s in range(steps):
    state, _ = step(state, batches(s), step_key)
  return state['params']


@pytest.mark.parametrize('chunk', ['1', '2'])  # a scan over members; vmap over 2 + the remainder
def test_vmapped_ensemble_equals_separately_trained_members(config, chunk):
  """Member m of the one-jit ensemble == a single U-Net trained with member m's keys and data order."""
  config.sampling.chunk_size = chunk
  config.seg.norm = 'none'  # every parameter then reaches the output (no bias cancelled by a norm)
  config.uncertainty.ensemble_members = 3
  config.seg.learning_rate = 1e-3  # small steps: float rounding of the two orders stays small
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  masks = (rng.random((20, 32, 32)) > 0.6).astype(np.uint8)
  steps, batch = 4, 4
  init_key = jax.random.key(1)

  config.method = 'ensemble'
  ens = uncertainty.create_method(config)
  def ens_batches(s):
    idx = train_seg.batch_indices(ens, len(images), batch, config.seed, s)
    assert idx.shape == (batch, 3)
    return images[idx], masks[idx]
  stacked = _train(ens, config, init_key, train_seg.make_loss_fn(ens), ens_batches, steps)

  config.method = 'msp'
  single = uncertainty.create_method(config)
  single_loss = train_seg.make_loss_fn(single)
  probe = jnp.asarray(images[:2], jnp.float32) / 255.0
  for m in range(3):
    def batches(s, m=m):
      idx = pipeline.batch_indices(len(images), batch, ensemble.member_seed(config.seed, m), s)
      return images[idx], masks[idx]
    loss_m = lambda p, st, b, k, m=m: single_loss(p, st, b, ensemble.member_key(k, m))
    params = _train(single, config, ensemble.member_key(init_key, m), loss_m, batches, steps)
    member = jax.tree.map(lambda a, m=m: a[m], stacked)
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(single.apply(member, probe)['logits'],
                               single.apply(params, probe)['logits'], rtol=1e-4, atol=1e-5)
  first = jax.tree.leaves(stacked)[0]
  assert not np.allclose(first[0], first[1])  # the members really differ


def test_ensemble_prediction_is_mean_of_members(config):
  config.method = 'ensemble'
  m = uncertainty.create_method(config)
  params = m.init_params(jax.random.key(0), 32)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  probs, umap, labels = jax.jit(lambda p, x: m.predict_samples(p, x, None, keep_labels=True))(params, images)
  members = [jax.nn.softmax(m.apply(jax.tree.map(lambda a, i=i: a[i], params), images)['logits'])
             for i in range(config.uncertainty.ensemble_members)]
  np.testing.assert_allclose(probs, np.mean(members, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(umap, base.entropy(jnp.mean(jnp.stack(members), 0)), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(labels, np.argmax(members, -1))


@pytest.mark.parametrize('size', [5, 8])
def test_tta_transforms_are_the_dihedral_group_and_invert_exactly(size):
  x = np.random.default_rng(size).random((2, size, size, 3)).astype(np.float32)
  seen = set()
  for t in range(tta.NUM_TRANSFORMS):
    y = np.asarray(tta.apply_transform(jnp.asarray(x), t))
    ref = np.rot90(np.flip(x, 2) if t >= 4 else x, t % 4, axes=(1, 2))
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(tta.invert_transform(jnp.asarray(y), t), x)  # exact, not close
    seen.add(y.tobytes())
  assert len(seen) == 8  # eight different transforms
  # Under vmap over the transform index (how the engine calls it) as well.
  ts = jnp.arange(8)
  back = jax.vmap(lambda t: tta.invert_transform(tta.apply_transform(jnp.asarray(x), t), t))(ts)
  np.testing.assert_array_equal(back, np.broadcast_to(x, (8,) + x.shape))


def test_tta_predict_equals_loop_of_transformed_passes(config):
  config.method = 'tta'
  config.sampling.chunk_size = '3'
  m = uncertainty.create_method(config)
  params = m.init_params(jax.random.key(0), 32)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  probs, umap = jax.jit(m.predict)(params, images, None)
  passes = []
  for t in range(8):
    x = np.rot90(np.flip(np.asarray(images), 2) if t >= 4 else np.asarray(images), t % 4, axes=(1, 2))
    p = np.asarray(jax.nn.softmax(m.apply(params, jnp.asarray(x.copy()))['logits']))
    p = np.rot90(p, -(t % 4), axes=(1, 2))  # undo the rotation, then the flip
    passes.append(np.flip(p, 2) if t >= 4 else p)
  np.testing.assert_allclose(probs, np.mean(passes, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(umap, base.entropy(jnp.asarray(np.mean(passes, 0))), rtol=1e-4, atol=1e-5)


def test_hierarchical_engine_equals_naive_samples_and_latents_matter(config):
  config.method = 'hierarchical'
  config.uncertainty.hier_samples = 5
  m = uncertainty.create_method(config)
  params = m.init_params(jax.random.key(0), 32)
  assert any('SkipLogVar' in k for k in params)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  key = jax.random.key(4)
  probs, umap = jax.jit(m.predict)(params, images, key)
  keys = sampling.sample_keys(base.purpose_keys(key)['latent'], 5)
  samples = [jax.jit(m.naive_sample)(params, images, k) for k in keys]
  np.testing.assert_allclose(probs, np.mean(samples, 0), rtol=1e-5, atol=1e-6)
  assert not np.allclose(samples[0], samples[1])  # the latents are sampled
  # The deterministic pass uses z = mu: two calls agree, and it is not a sample.
  det = jax.jit(m.deterministic_predict)(params, images)[0]
  np.testing.assert_array_equal(det, jax.jit(m.deterministic_predict)(params, images)[0])
  masks = (images[..., 0] > 0.5).astype(jnp.int32)
  loss, (metrics, _) = jax.jit(m.loss)(params, {}, images, masks, key)
  # The training pass by hand: dropout and latents from the key's purposes, cross-entropy of
  # its logits in numpy, plus the weighted KL of its skip latents.
  k = base.purpose_keys(key)
  out = m.model.apply({'params': params}, images, deterministic=False, sample_latents=True,
                      rngs={'dropout': k['dropout'], 'latent': k['latent']})
  logp = np.asarray(jax.nn.log_softmax(out['logits']))
  nll = -np.mean(np.take_along_axis(logp, np.asarray(masks)[..., None], -1))
  assert float(out['kl']) > 0
  np.testing.assert_allclose(float(loss), nll + config.uncertainty.hier_kl_weight * float(out['kl']),
                             rtol=1e-5)


def test_skip_latent_kl_is_the_gaussian_kl():
  """The KL term of a skip equals the closed-form KL(N(mu, s^2) || N(0, 1)) of its convolutions."""
  from segqual_jax.segmenter import unet
  model = unet.UNet(base_width=4, depth=2, skip_latents=True)
  x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3))
  params = model.init(jax.random.key(1), x)['params']
  out = model.apply({'params': params}, x)
  h, skips = model.apply({'params': params}, x, method=unet.UNet.prefix)
  # Level 0's skip comes from the prefix; recompute its KL by hand.
  conv = lambda name, s: jnp.einsum('nhwc,cd->nhwd', s, params[name]['kernel'][0, 0]) + params[name]['bias']
  mean, logvar = conv('SkipMean_0', skips[0]), jnp.clip(conv('SkipLogVar_0', skips[0]), -10, 5)
  kl0 = 0.5 * np.mean(np.square(mean) + np.exp(logvar) - 1 - logvar)
  assert 0 < kl0 < float(out['kl'])  # level 1 adds its own non-negative term
