"""What each CPU change of the engine is worth: the engine and one deterministic pass with
each change undone, compiled side by side and timed taking turns in one process.

  python experiments/engine_cpu_gains.py --size=128 --batch=8 --samples=20 --rounds=3 \\
      --out=runs/engine_cpu_gains.md

The changes (segqual_jax/segmenter/unet.py): ``GroupNorm`` (per-channel sums
instead of flax's strided group reduction) and ``skip_terms`` (the prefix
skips' share of the decoder convolutions computed once per image instead of
once per sample).
Random weights (speed does not depend on them), U-Net of configs/bench.py.
Expected runtime on 2 cores: ~3 min.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_SIZE = flags.DEFINE_integer('size', 128, 'Image side.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per call.')
_SAMPLES = flags.DEFINE_integer('samples', 20, 'MC-dropout samples T.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (medians).')
_OUT = flags.DEFINE_string('out', 'runs/engine_cpu_gains.md', 'Markdown table.')


def main(argv):
  del argv
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from configs import bench as bench_config  # pylint: disable=g-import-not-at-top
  from segqual_jax.apps import bench  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter import methods, unet  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter.methods import mc_dropout  # pylint: disable=g-import-not-at-top

  class WithoutSkipTerms(mc_dropout.MCDropout):
    """The engine before skip terms: the prefix's raw skips, concatenated per sample."""

    def sample_features(self, params, images):
      return self.model.apply({'params': params}, images, method=unet.UNet.prefix)

    def sample(self, params, features, key):
      h, skips = features
      out = self.model.apply({'params': params}, h, skips, deterministic=False,
                             rngs={'dropout': key}, method=unet.UNet.from_prefix)
      return jax.nn.softmax(out['logits'])

  config = bench_config.get_config()
  config.method = 'mc_dropout'
  config.uncertainty.mc_samples = _SAMPLES.value
  images = jax.random.uniform(jax.random.key(1), (_BATCH.value, _SIZE.value, _SIZE.value, 3))
  key = jax.random.key(2)
  params = methods.create_method(config).init_params(jax.random.key(0), _SIZE.value)

  def compiled(undo: set[str]):
    """(engine, deterministic pass) compiled with the changes in ``undo`` undone."""
    saved = unet.GroupNorm
    if 'group_norm' in undo:
      unet.GroupNorm = nn.GroupNorm
    try:
      method = (WithoutSkipTerms if 'skip_terms' in undo else mc_dropout.MCDropout)(config)
      engine = bench.compile_fn(method.predict, params, images, key)
      det = bench.compile_fn(lambda p, x: method.deterministic_predict(p, x), params, images)
    finally:
      unet.GroupNorm = saved
    return engine, det

  variants = {
      'engine as shipped': set(),
      'without skip terms': {'skip_terms'},
      'with flax GroupNorm': {'group_norm'},
      'both undone (before)': {'skip_terms', 'group_norm'},
  }
  programs = {name: compiled(undo) for name, undo in variants.items()}
  contenders = {}
  for name, (engine, det) in programs.items():
    contenders[f'{name}: engine'] = lambda e=engine: e.run(params, images, key)
    if 'skip terms' not in name:  # a single pass has no samples to share a skip term with
      contenders[f'{name}: det pass'] = lambda d=det: d.run(params, images)
  times = bench.median_times(contenders, _ROUNDS.value)
  base = {kind: times[f'engine as shipped: {kind}'] for kind in ('engine', 'det pass')}
  lines = [f'{_SIZE.value} px x {_BATCH.value}, T={_SAMPLES.value}, U-Net base '
           f'{config.seg.base_width}, depth {config.seg.depth}; {jax.devices()[0]}, JAX '
           f'{jax.__version__}; medians of {_ROUNDS.value} rounds, taking turns.', '',
           '| variant | program | s | vs shipped |', '|---|---|---|---|']
  for name, t in times.items():
    variant, kind = name.split(': ')
    lines.append(f'| {variant} | {kind} | {t:.3f} | {t / base[kind]:.2f}x |')
  text = '\n'.join(lines) + '\n'
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
