"""The sampling engine equals the naive samplers it replaces, whatever the chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.segmenter import sampling
from segqual_jax.segmenter.methods import base, hcnn


def _setup(config, method, batch=2):
  config.method = method
  m = uncertainty.create_method(config)
  params = m.init_params(jax.random.key(0), 32)
  images = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
  return m, params, images


def _toy_sample(k):
  logits = jnp.linspace(-2.0, 2.0, 3 * 4 * 5 * 2).reshape(3, 4, 5, 2)
  return jax.nn.softmax(logits + 2.0 * jax.random.normal(k, logits.shape))


@pytest.mark.parametrize('num_samples,chunk', [(7, 3), (6, 2), (4, 10), (1, 1), (5, 5)])
def test_summarize_matches_python_loop(num_samples, chunk):
  key = jax.random.key(4)
  got = jax.jit(lambda k: sampling.summarize(_toy_sample, k, num_samples, chunk,
                                             keep_labels=True, expected_entropy=True))(key)
  samples = np.stack([_toy_sample(k) for k in sampling.sample_keys(key, num_samples)])
  mean = samples.mean(0)
  np.testing.assert_allclose(got['mean_probs'], mean, rtol=1e-5, atol=1e-6)
  ent = lambda p: -(p * np.log(np.clip(p, base.EPS, 1))).sum(-1)
  np.testing.assert_allclose(got['entropy'], ent(mean), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got['expected_entropy'], ent(samples).mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got['mutual_information'],
                             np.maximum(ent(mean) - ent(samples).mean(0), 0), atol=1e-5)
  assert got['labels'].dtype == jnp.uint8 and got['labels'].shape == (num_samples, 3, 4, 5)
  np.testing.assert_array_equal(got['labels'], samples.argmax(-1))


def test_only_what_is_asked_is_returned():
  got = sampling.summarize(_toy_sample, jax.random.key(0), 3, 2)
  assert set(got) == {'mean_probs', 'entropy'}


def test_mc_dropout_prefix_reuse_gives_the_naive_samples(config):
  """Prefix once + rest per key == whole pass per key: same masks, same samples."""
  m, params, images = _setup(config, 'mc_dropout')
  features = jax.jit(m.sample_features)(params, images)
  fast = jax.jit(lambda k: m.sample(params, features, k))
  naive = jax.jit(lambda k: m.naive_sample(params, images, k))
  for k in sampling.sample_keys(jax.random.key(7), 4):
    a, b = fast(k), naive(k)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(fast(jax.random.key(1)), fast(jax.random.key(2)))


@pytest.mark.parametrize('method', ['mc_dropout', 'hcnn'])
def test_predict_is_the_naive_loop_for_every_chunk(config, method):
  """The engine's prediction equals a Python loop of whole-pass samples, and
  the chunk (fixed or auto) changes nothing but float rounding."""
  config.uncertainty.mc_samples = 5
  config.uncertainty.hcnn_test_samples = 5
  config.uncertainty.hcnn_map = 'entropy'
  key = jax.random.key(3)
  results = []
  for chunk in ('1', '2', '5', 'auto'):
    config.sampling.chunk_size = chunk
    m, params, images = _setup(config, method)
    results.append(jax.jit(m.predict)(params, images, key))
  purpose = 'dropout' if method == 'mc_dropout' else 'noise'
  naive = jax.jit(lambda k: m.naive_sample(params, images, k))
  ref = np.mean([naive(k) for k in sampling.sample_keys(base.purpose_keys(key)[purpose], 5)], 0)
  for probs, umap in results:
    np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(umap, base.entropy(jnp.asarray(ref)), rtol=1e-4, atol=1e-5)


def test_mc_dropout_mutual_information_map(config):
  config.uncertainty.mc_samples = 4
  config.uncertainty.mc_map = 'mutual_information'
  m, params, images = _setup(config, 'mc_dropout')
  key = jax.random.key(2)
  _, umap = jax.jit(m.predict)(params, images, key)
  summary = jax.jit(lambda k: m.sample_summary(
      params, images, base.purpose_keys(k)['dropout'], 4, expected_entropy=True))(key)
  np.testing.assert_allclose(umap, summary['mutual_information'], atol=1e-6)
  assert float(umap.max()) > 0 and bool(jnp.all(umap <= summary['entropy'] + 1e-6))


def test_hcnn_mean_field_matches_sampling():
  """The samples=0 closed form against 20,000 noise samples of the same logits."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  logits = 4.0 * jax.random.normal(k1, (64, 2))
  sigma = 3.0 * jax.random.uniform(k2, (64,))
  closed = hcnn.mean_field_probs(logits, sigma)
  sample = lambda k: jax.nn.softmax(logits + sigma[:, None] * jax.random.normal(k, logits.shape))
  sampled = jax.jit(lambda k: sampling.mean_over_samples(sample, k, 20000, 1000))(k3)
  np.testing.assert_allclose(closed.sum(-1), 1.0, rtol=1e-6)
  err = np.abs(np.asarray(closed) - np.asarray(sampled))
  # probit approximation error (<= ~0.02) plus Monte-Carlo error (std <= 0.0035)
  assert err.max() < 0.03, err.max()
  # without noise it is the plain softmax; more noise pulls toward 1/2
  np.testing.assert_allclose(hcnn.mean_field_probs(logits, 0 * sigma), jax.nn.softmax(logits),
                             rtol=1e-6)
  assert bool(jnp.all(jnp.abs(closed - 0.5) <= jnp.abs(jax.nn.softmax(logits) - 0.5) + 1e-6))


def test_hcnn_predict_with_zero_samples_is_the_closed_form(config):
  config.uncertainty.hcnn_test_samples = 0
  m, params, images = _setup(config, 'hcnn')
  probs, umap = jax.jit(m.predict)(params, images, jax.random.key(0))
  out = jax.jit(m.apply)(params, images)
  np.testing.assert_allclose(probs, hcnn.mean_field_probs(out['logits'], out['variance']),
                             rtol=1e-6)
  np.testing.assert_allclose(umap, out['variance'], rtol=1e-6)


def test_chunk_rule(config):
  """Fixed chunks are clipped to T; auto is 1 on CPU and, on accelerators,
  grows with the memory budget and shrinks with the work per sample."""
  config.sampling.chunk_size = '8'
  assert sampling.resolve_chunk(config.sampling, _toy_sample, jax.random.key(0), 5) == 5
  config.sampling.chunk_size = 'auto'
  assert sampling.resolve_chunk(config.sampling, _toy_sample, jax.random.key(0), 100) == 1
  per_sample = sampling.working_set_bytes(_toy_sample, jax.random.key(0))
  assert per_sample >= 3 * 4 * 5 * 2 * 4  # at least the output
  assert sampling.accelerator_chunk(per_sample, 12 * per_sample, 0.25, 100) == 3
  assert sampling.accelerator_chunk(per_sample, 12 * per_sample, 0.25, 2) == 2
  assert sampling.accelerator_chunk(per_sample, per_sample, 0.25, 100) == 1
  m, params, images = _setup(config, 'mc_dropout', batch=1)
  _, _, images4 = _setup(config, 'mc_dropout', batch=4)
  work = lambda x: sampling.working_set_bytes(
      lambda k: m.sample(params, m.sample_features(params, x), k), jax.random.key(0))
  assert work(images4) > 3 * work(images)


def test_runner_tells_the_auto_chunk_how_many_cases_share_the_device():
  """f runs vmapped over cases; the engine traces one case, but its memory budget must
  cover the whole batch, or an accelerator's auto chunk overshoots by the batch size."""
  from segqual_jax.segmenter import runner
  seen = []

  def predict(params, images, key):
    del params, key
    seen.append((images.shape[0], sampling.cases_in_flight()))
    probs = jnp.stack([1.0 - images[..., 0], images[..., 0]], -1)
    return probs, images[..., 0]
  fn = runner.case_fn(predict)
  keys = jax.random.split(jax.random.key(0), 6)
  jax.jit(fn)(None, jnp.zeros((6, 8, 8, 3)), keys)
  assert seen == [(1, 6)]  # traced with one case, budgeted for six
  assert sampling.cases_in_flight() == 1  # and only while tracing


def test_measure_candidates():
  assert sampling.measure_candidates(20, 20) == [1, 4, 16, 20]
  assert sampling.measure_candidates(64, 100) == [1, 4, 16, 64]
  assert sampling.measure_candidates(50, 10) == [1, 4, 10]
  assert sampling.measure_candidates(1, 100) == [1]


def test_measured_chunk_times_candidates_once_and_keeps_the_samples(config):
  """'measure' (what 'auto' does on accelerators) times the candidates while the engine is
  traced, inside a vmap over cases too, caches the pick, and the samples stay those of chunk 1."""
  config.uncertainty.mc_samples = 4
  config.sampling.chunk_size = 'measure'
  m, params, images = _setup(config, 'mc_dropout', batch=2)
  key = jax.random.key(5)
  sampling._MEASURED.clear()
  probs, umap = jax.jit(m.predict)(params, images, key)
  assert len(sampling._MEASURED) == 1
  (picked,) = sampling._MEASURED.values()
  assert picked in sampling.measure_candidates(4, 4)
  features = m.sample_features(params, images)
  chunk, seconds = sampling.measured_chunk(lambda k: m.sample(params, features, k),
                                           jax.random.key(0), 4, 4)
  assert chunk == picked and seconds == {}  # the same program and shape: no second timing
  from segqual_jax.segmenter import runner
  jax.jit(runner.case_fn(m.predict))(params, images, jax.random.split(key, 2))
  assert len(sampling._MEASURED) == 2  # one case traced, two on the device: measured again
  config.sampling.chunk_size = '1'
  m1, _, _ = _setup(config, 'mc_dropout', batch=2)
  ref_probs, ref_map = jax.jit(m1.predict)(params, images, key)
  np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(umap, ref_map, rtol=1e-4, atol=1e-6)


def test_bfloat16_maps_stay_close_to_float32(config):
  """The stated tolerance of ``sampling.dtype='bfloat16'``: MC-dropout's mean probabilities
  within 0.05 and its entropy map within 0.05 nats (mean difference under 0.01)."""
  from segqual_jax.segmenter import unet
  config.uncertainty.mc_samples = 8
  m, params, images = _setup(config, 'mc_dropout', batch=2)
  key = jax.random.key(3)
  probs, umap = jax.jit(m.predict)(params, images, key)
  half_probs, half_map = jax.jit(m.predict)(unet.compute_params(params, 'bfloat16'), images, key)
  assert half_probs.dtype == jnp.float32
  assert float(jnp.abs(half_probs - probs).max()) < 0.05
  assert float(jnp.abs(half_map - umap).max()) < 0.05
  assert float(jnp.abs(half_map - umap).mean()) < 0.01
