"""The four methods: interface, sampling determinism, loop equivalence, LCE rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.segmenter import sampling
from segqual_jax.segmenter.methods import base, lce


def _setup(config, method):
  config.method = method
  m = uncertainty.create_method(config)
  params = m.init_params(jax.random.key(0), 32)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  return m, params, images


@pytest.mark.parametrize('method', sorted(uncertainty.METHODS))
def test_predict_interface(config, method):
  m, params, images = _setup(config, method)
  probs, umap = jax.jit(m.predict)(params, images, jax.random.key(5))
  assert probs.shape == (2, 32, 32, 2) and umap.shape == (2, 32, 32)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert bool(jnp.all(jnp.isfinite(umap))) and bool(jnp.all(umap >= 0))
  # Same key -> same output (all methods); stochastic methods differ with the key.
  again = jax.jit(m.predict)(params, images, jax.random.key(5))
  np.testing.assert_array_equal(probs, again[0])
  other = jax.jit(m.predict)(params, images, jax.random.key(6))[0]
  assert np.array_equal(probs, other) == (method in ('msp', 'lce', 'ensemble', 'tta'))


def test_msp_and_lce_maps():
  """MSP map = 1 - max softmax; LCE map = 1 - confidence head."""
  import configs.test as tc
  cfg = tc.get_config()
  m, params, images = _setup(cfg, 'msp')
  probs, umap = jax.jit(m.predict)(params, images, None)
  np.testing.assert_allclose(umap, 1 - probs.max(-1), rtol=1e-6)
  m, params, images = _setup(cfg, 'lce')
  probs, umap = jax.jit(m.predict)(params, images, None)
  conf = jax.jit(m.apply)(params, images)['confidence']
  np.testing.assert_allclose(umap, 1 - conf, rtol=1e-6)


@pytest.mark.parametrize('num_samples,chunk', [(7, 3), (6, 2), (4, 10), (1, 1)])
def test_mean_over_samples_matches_python_loop(num_samples, chunk):
  x = jnp.linspace(0.0, 1.0, 12).reshape(3, 4)
  fn = lambda k: {'a': jax.nn.softmax(x + jax.random.normal(k, x.shape)), 'b': jax.random.uniform(k)}
  key = jax.random.key(11)
  got = jax.jit(lambda k: sampling.mean_over_samples(fn, k, num_samples, chunk))(key)
  ref = [fn(k) for k in sampling.sample_keys(key, num_samples)]
  np.testing.assert_allclose(got['a'], np.mean([r['a'] for r in ref], 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got['b'], np.mean([r['b'] for r in ref]), rtol=1e-5)


def test_mc_dropout_equals_python_loop_of_passes(config):
  """T vectorised passes == T separate applies with the same keys (float tolerance)."""
  config.uncertainty.mc_samples = 5
  config.sampling.chunk_size = '2'
  m, params, images = _setup(config, 'mc_dropout')
  key = jax.random.key(3)
  probs, umap = jax.jit(m.predict)(params, images, key)
  keys = sampling.sample_keys(base.purpose_keys(key)['dropout'], 5)
  apply = jax.jit(lambda k: jax.nn.softmax(m.apply(params, images, dropout_key=k)['logits']))
  samples = [apply(k) for k in keys]
  ref = np.mean(samples, 0)
  np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(umap, base.entropy(jnp.asarray(ref)), rtol=1e-4, atol=1e-6)
  assert not np.allclose(samples[0], samples[1])  # the passes really differ


def test_lce_lambda_update_rule():
  assert float(lce.update_lambda(jnp.float32(0.1), jnp.float32(0.2), 0.3)) == pytest.approx(0.1 / 1.01)
  assert float(lce.update_lambda(jnp.float32(0.1), jnp.float32(0.4), 0.3)) == pytest.approx(0.1 / 0.99)
  assert float(lce.update_lambda(jnp.float32(0.1), jnp.float32(0.3), 0.3)) == pytest.approx(0.1 / 0.99)


def test_lce_loss_uses_hints_on_half_and_updates_lambda(config):
  m, params, images = _setup(config, 'lce')
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  masks = (images[..., 0] > 0.5).astype(jnp.int32)
  state = m.init_state()
  loss, (metrics, new_state) = jax.jit(m.loss)(params, state, images, masks, jax.random.key(2))
  conf_loss = float(metrics['confidence_loss'])
  expected = 0.1 / 1.01 if 0.3 > conf_loss else 0.1 / 0.99
  assert float(new_state['lmbda']) == pytest.approx(expected)
  # Reference NLL with hints on exactly the images the permutation picks, and the
  # confidence penalty -mean(log c) over every image, computed here from the raw heads.
  out = jax.jit(m.apply)(params, images, base.purpose_keys(jax.random.key(2))['dropout'])
  hinted = np.asarray(jax.random.permutation(base.purpose_keys(jax.random.key(2))['hints'], 4) < 2)
  assert hinted.sum() == 2
  p = np.clip(np.asarray(jax.nn.softmax(out['logits'])), base.EPS, 1 - base.EPS)
  conf = np.clip(np.asarray(out['confidence']), base.EPS, 1 - base.EPS)
  c = np.where(hinted[:, None, None], conf, 1.0)[..., None]
  onehot = np.eye(2)[np.asarray(masks)]
  nll = -np.mean(np.sum(onehot * np.log(c * p + (1 - c) * onehot), -1))
  penalty = -np.mean(np.log(conf))
  np.testing.assert_allclose(float(metrics['nll']), nll, rtol=1e-4)
  np.testing.assert_allclose(conf_loss, penalty, rtol=1e-4)
  np.testing.assert_allclose(float(loss), nll + 0.1 * penalty, rtol=1e-4)  # lambda's initial 0.1


def test_hcnn_loss_with_zero_noise_is_cross_entropy(config):
  """With sigma forced to 0 every noise sample equals the logits: loss = CE."""
  m, params, images = _setup(config, 'hcnn')
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.full_like(p, -1e4) if 'variance' in jax.tree_util.keystr(path) and 'bias' in jax.tree_util.keystr(path) else
      (jnp.zeros_like(p) if 'variance' in jax.tree_util.keystr(path) else p), params)
  masks = (images[..., 0] > 0.5).astype(jnp.int32)
  loss, _ = jax.jit(m.loss)(params, {}, images, masks, jax.random.key(2))
  out = jax.jit(m.apply)(params, images, base.purpose_keys(jax.random.key(2))['dropout'])
  assert float(out['variance'].max()) < 1e-6
  import optax
  ce = optax.softmax_cross_entropy_with_integer_labels(out['logits'], masks).mean()
  np.testing.assert_allclose(float(loss), float(ce), rtol=1e-4)


def test_overlap_loss_is_one_minus_the_batch_soft_dice_of_the_lesion(config):
  config.seg.loss = 'ce_dice'
  m = uncertainty.create_method(config)
  masks = jnp.zeros((2, 8, 8), jnp.int32).at[0, 2:4, 2:4].set(1)  # slice 1 holds no lesion
  sure = jnp.stack([jnp.where(masks == 1, -30.0, 30.0), jnp.where(masks == 1, 30.0, -30.0)], -1)
  assert float(m.overlap_loss(sure, masks)) == pytest.approx(0.0, abs=1e-6)
  assert float(m.overlap_loss(-sure, masks)) == pytest.approx(1.0, abs=1e-6)
  # p = 0.5 everywhere: intersection 0.5 * 4, total 0.5 * 128 + 4 over both slices.
  assert float(m.overlap_loss(jnp.zeros_like(sure), masks)) == pytest.approx(1 - 4 / 68, rel=1e-5)
  config.seg.loss = 'ce'
  assert float(uncertainty.create_method(config).overlap_loss(jnp.zeros_like(sure), masks)) == 0.0


@pytest.mark.parametrize('method', ['msp', 'lce', 'hcnn', 'hierarchical'])
def test_ce_dice_adds_the_overlap_term_to_each_methods_own_loss(config, method):
  """Same weights, data and key: the ce_dice loss is the ce loss plus the soft Dice term of
  the method's own logits (an ensemble's members use msp's loss)."""
  m, params, images = _setup(config, method)
  masks = (images[..., 0] > 0.7).astype(jnp.int32)
  state = m.init_state()
  ce, _ = jax.jit(m.loss)(params, state, images, masks, jax.random.key(2))
  config.seg.loss = 'ce_dice'
  m_cd = uncertainty.create_method(config)
  total, (metrics, _) = jax.jit(m_cd.loss)(params, state, images, masks, jax.random.key(2))
  overlap = float(metrics['overlap'])
  assert 0.05 < overlap < 1.0
  np.testing.assert_allclose(float(total), float(ce) + overlap, rtol=1e-4)
  if method != 'hierarchical':  # its training pass also samples latents; the rest: one dropout pass
    out = m_cd.apply(params, images, base.purpose_keys(jax.random.key(2))['dropout'])
    assert float(m_cd.overlap_loss(out['logits'], masks)) == pytest.approx(overlap, rel=1e-4)
