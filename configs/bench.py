"""The sampling benchmark: engine vs naive Python loop vs the machine's peak.

Launch:
  python main.py --config=configs/bench.py --workdir=runs/bench --mode=bench
  python main.py --config=configs/bench.py:quick --workdir=runs/bench_quick --mode=bench  # under a minute
Expected CPU runtime (2 cores): ~15-20 min for the full grid (most of it the
naive loop at T=100), under a minute for ``:quick`` (one small case, a narrow
U-Net, few T, no chunk sweep). The default case is the first of bench.cases
(128 px, batch 8, U-Net base width 16); the targets in bench.md are evaluated there.
"""

from configs import default


def get_config(variant: str = 'full'):
  if variant not in ('full', 'quick'):
    raise ValueError(f'unknown bench variant {variant!r}: full | quick')
  config = default.get_config()
  config.seg.base_width = 16  # the paper-style f the issue measures at
  config.seg.depth = 4
  config.sampling.chunk_size = 'auto'
  if variant == 'quick':
    config.bench.cases = '32x4'
    config.bench.samples = (1, 5, 20)
    config.bench.repeats = 2
    config.bench.chunk_sweep = ()
    config.seg.base_width = 8
    config.seg.depth = 3
  return config
