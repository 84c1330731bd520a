"""The sampling benchmark: engine vs naive Python loop vs the machine's peak.

Launch:
  python main.py --config=configs/bench.py --workdir=runs/bench --mode=bench
  python main.py --config=configs/bench.py --workdir=runs/bench_quick --mode=bench \
      --config.bench.quick=True   # under a minute
Expected CPU runtime (2 cores): ~15-20 min for the full grid (most of it the
naive loop at T=100), under a minute when quick. The default case is the
first of bench.cases (128 px, batch 8, U-Net base width 16); the
targets in bench.md are evaluated there.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.seg.base_width = 16  # the paper-style f the issue measures at
  config.seg.depth = 4
  config.sampling.chunk_size = 'auto'
  return config
