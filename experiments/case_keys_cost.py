"""What a case's own key costs: f vmapped over cases (runner.py) vs one batched call.

Since the redesign each case's samples use ``fold_in(key, hash(case id))`` and
f runs ``vmap``-ped over the cases of a batch, so a case's map no longer
depends on its batch neighbours. This times that path against the batched
``method.predict`` with one key for the batch (the old path), taking turns
in one process, with identical weights and images.

  python experiments/case_keys_cost.py --method=mc_dropout --size=64 --batch=32 --rounds=5
"""

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from segqual_jax.core import keys, runtime  # noqa: E402
from segqual_jax.data import pipeline  # noqa: E402
from segqual_jax.segmenter import methods, runner, sampling  # noqa: E402

_METHOD = flags.DEFINE_string('method', 'mc_dropout', 'Uncertainty method.')
_SIZE = flags.DEFINE_integer('size', 64, 'Image side.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Cases per call.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed calls per path, taking turns (median reported).')


def auto_chunk(method, params, images, cases: int) -> int:
  """The chunk ``sampling.chunk_size='auto'`` picks for ``images`` traced with ``cases`` in flight."""
  if method.name not in ('mc_dropout', 'hcnn', 'hierarchical'):
    return 0
  u = method.config.uncertainty
  num = {'mc_dropout': u.mc_samples, 'hcnn': u.hcnn_test_samples, 'hierarchical': u.hier_samples}[method.name]
  features = method.sample_features(params, pipeline.to_float(images))
  row = jax.tree.map(lambda a: a[0], method.sample_inputs(params, jax.random.key(0), num))
  with sampling.cases_vmapped(cases):
    return method.chunk_for(lambda k: method.sample(params, features, k), row, num)


def main(argv):
  del argv
  config = default.get_config()
  config.method, config.data.image_size = _METHOD.value, _SIZE.value
  runtime.configure(config)
  method = methods.create_method(config)
  params = method.init_params(jax.random.key(0), _SIZE.value)
  images = np.random.default_rng(0).integers(0, 256, (_BATCH.value, _SIZE.value, _SIZE.value, 3), np.uint8)
  hashes = keys.case_hashes([f'case{i}' for i in range(_BATCH.value)])
  base = jax.random.key(1)
  per_case = runner.batch_fn(runner.method_case_fn(method, with_scores=False))
  batched = jax.jit(lambda p, x, k: method.predict(p, pipeline.to_float(x), k))
  paths = {'per-case keys (vmap over cases)': lambda: per_case(params, images, hashes, base),
           'one key per batch (batched call)': lambda: batched(params, images, base)}
  for fn in paths.values():
    jax.block_until_ready(fn())  # compile
  times = {name: [] for name in paths}
  for _ in range(_ROUNDS.value):
    for name, fn in paths.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  print(f'{_METHOD.value}, {_SIZE.value} px, batch {_BATCH.value}, T as configured, '
        f'{jax.devices()[0].device_kind}, median of {_ROUNDS.value}:')
  print(f'  auto chunk: per-case path {auto_chunk(method, params, images[:1], _BATCH.value)}, '
        f'batched path {auto_chunk(method, params, images, 1)}')
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, t in medians.items():
    print(f'  {name}: {t:.3f} s')
  a, b = medians.values()
  print(f'  ratio per-case / batched: {a / b:.2f}')
  # a case's own key: the same map alone as inside the batch (up to the device's rounding)
  alone = per_case(params, images[:1], hashes[:1], base)
  inside = per_case(params, images, hashes, base)
  diff = float(np.abs(np.asarray(alone['maps'][0]) - np.asarray(inside['maps'][0])).max())
  same = bool(np.array_equal(np.asarray(alone['masks'][0]), np.asarray(inside['masks'][0])))
  print(f'  case 0 alone vs in the batch: max |map difference| {diff:.2e}, same mask: {same}')


if __name__ == '__main__':
  app.run(main)
