"""Run by test_sharding.py in a process with 4 fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_check.py WORKDIR

Checks that sampling on a batch split over the 4-device mesh equals the same
sampling on one device, then runs both stages and the evaluation on the mesh
into WORKDIR (the parent test compares its f with a one-device run).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import test as test_config  # noqa: E402
from segqual_jax.core import keys, parallel, runtime  # noqa: E402
from segqual_jax.evaluation import evaluate  # noqa: E402
from segqual_jax.segmenter import methods as uncertainty  # noqa: E402
from segqual_jax.segmenter import runner  # noqa: E402
from segqual_jax.training import train_quality, train_seg  # noqa: E402


def check_sampling(config):
  device0 = jax.devices()[0]
  for method in ('mc_dropout', 'hcnn'):
    config.method = method
    m = uncertainty.create_method(config)
    params = m.init_params(jax.random.key(0), config.data.image_size)
    images = np.asarray(jax.random.uniform(jax.random.key(1), (8, 32, 32, 3)))
    predict = jax.jit(m.predict)
    key = jax.random.key(2)
    one = predict(jax.device_put(params, device0), jax.device_put(images, device0), key)
    sharded = predict(parallel.replicate(params), parallel.shard_batch(images), key)
    for a, b in zip(one, sharded):
      assert len(b.sharding.device_set) == 4, b.sharding
      assert len(a.sharding.device_set) == 1, a.sharding
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # f over cases, each with its own key: rows split over the devices change nothing
    run_batch = runner.batch_fn(runner.method_case_fn(m, with_scores=True))
    uint8 = (images * 255).astype(np.uint8)
    hashes = keys.case_hashes([f'case{i}' for i in range(8)])
    one = run_batch(jax.device_put(params, device0), jax.device_put(uint8, device0),
                    jax.device_put(hashes, device0), key)
    sharded = run_batch(parallel.replicate(params), *parallel.shard_batch((uint8, hashes)), key)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    print(f'{method}: sharded prediction == one-device prediction')


def main(workdir):
  assert jax.device_count() == 4, jax.devices()
  config = test_config.get_config()
  config.data.data_dir = os.environ['SEGQUAL_DATA_DIR']
  runtime.configure(config)
  check_sampling(config)
  config.method = 'mc_dropout'
  train_seg.train_and_evaluate(config, workdir)
  config.quality.models = 'uncertainty'
  train_quality.train_quality(config, workdir)
  metrics = evaluate.evaluate(config, workdir)
  print(f"evaluated on the mesh: {len(metrics['quality_models'])} quality model(s)")
  print('OK')


if __name__ == '__main__':
  main(sys.argv[1])
