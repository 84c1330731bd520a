"""Cost of one deep-ensemble training step against one single-model step.

  python experiments/ensemble_step.py --members=5 --out=runs/ensemble_step.md

Times the stage-1 train step of ``configs/isic2017.py`` (64 px, batch 16,
base width 16) for MSP (one U-Net) and for the M-member ensemble at each
engine chunk in ``--chunks`` (``auto`` = 1 on CPU: the members one at a time
in one jit; ``M`` = a full ``vmap`` over the stacked parameters). The
variants take turns for ``--rounds`` rounds and the median per variant is
reported, so the ratios are measured side by side on a noisy shared machine.
Random images and masks: speed does not depend on them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import isic2017  # noqa: E402
from segqual_jax.segmenter import methods as uncertainty  # noqa: E402
from segqual_jax.training import loop, train_seg  # noqa: E402

_MEMBERS = flags.DEFINE_integer('members', 5, 'Ensemble members M.')
_CHUNKS = flags.DEFINE_list('chunks', ['auto', '5'], 'Engine chunks to time for the ensemble.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Steps per timing.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of taking turns (median reported).')
_OUT = flags.DEFINE_string('out', '', 'Optional Markdown output file.')


def make_variant(method_name: str, members: int, chunk: str):
  """A compiled ``(state, batch)`` and a function running ``n`` steps from it."""
  config = isic2017.get_config(method_name)
  config.uncertainty.ensemble_members = members
  config.sampling.chunk_size = chunk
  method = uncertainty.create_method(config)
  state, tx = train_seg.create_train_state(method, config, jax.random.key(0), _ROUNDS.value * _STEPS.value)
  step = loop.make_train_step(train_seg.make_loss_fn(method, config.seg.augment), tx)
  size, batch = config.data.image_size, config.seg.batch_size
  shape = (batch, members) if method.members > 1 else (batch,)
  rng = np.random.default_rng(0)
  data = (rng.integers(0, 256, shape + (size, size, 3), dtype=np.uint8),
          (rng.random(shape + (size, size)) > 0.5).astype(np.uint8))
  start = time.perf_counter()
  state, _ = step(state, data, jax.random.key(1))
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def run(n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
      holder['state'], _ = step(holder['state'], data, jax.random.key(i))
    jax.block_until_ready(holder['state'])
    return (time.perf_counter() - start) / n
  return run, compile_s


def main(argv):
  del argv
  m = _MEMBERS.value
  variants = {'MSP (1 U-Net)': make_variant('msp', 1, 'auto')}
  for chunk in _CHUNKS.value:
    variants[f'ensemble M={m}, chunk {chunk}'] = make_variant('ensemble', m, chunk)
  times = {name: [] for name in variants}
  for _ in range(_ROUNDS.value):
    for name, (run, _) in variants.items():
      times[name].append(run(_STEPS.value))
  base = statistics.median(times['MSP (1 U-Net)'])
  lines = [f'Train step, configs/isic2017.py (64 px, batch 16), {jax.devices()[0].platform}, '
           f'median of {_ROUNDS.value} rounds x {_STEPS.value} steps, variants taking turns:\n\n',
           '| variant | s / step | x MSP step | x MSP step per member | first call (compile + step, s) |\n',
           '|---|---|---|---|---|\n']
  for name, (_, compile_s) in variants.items():
    t = statistics.median(times[name])
    per_member = t / base / (1 if name.startswith('MSP') else m)
    lines.append(f'| {name} | {t:.3f} | {t / base:.2f} | {per_member:.2f} | {compile_s:.1f} |\n')
  text = ''.join(lines)
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
