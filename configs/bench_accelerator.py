"""The sampling benchmark at accelerator scale (one GPU or TPU chip).

Launch:
  python main.py --config=configs/bench_accelerator.py --workdir=runs/bench_gpu --mode=bench
  bash experiments/device_bench.sh   # this bench and the PyTorch peer on a GPU, one table, < 8 min
Expected runtime: on one H100/H200 ~20 min for the full grid (most of it
compiling: every shape's engine, its loop program and the measured chunk's
candidates, ~30 s a shape); ~3.5 min for ``:quick``; on a 2-core CPU, hours
(use configs/bench.py there).

Grid: 224 px at batch 8 and 32; U-Net base widths 16 and 32; T 20 and 100;
MC-dropout, HCNN and a 5-member deep ensemble; float32 and bfloat16 compute.
The chunk is ``auto``: measured on the device (``sampling.measured_chunk``).
The conv ceiling (the card's measured convolution throughput per dtype) runs
the U-Net's 3x3 convolutions at batch 256, enough to fill the card.
``:quick`` is the grid cut to what fits experiments/device_bench.sh's ~4 min
for this step (measuring a shape's chunk costs ~25 s of compiling on an H200):
224 px x 8, base width 16, MC-dropout (T 20 and 100) and the ensemble, in
float32 and bfloat16 -- the bf16 and memory targets; batch 32 is timed by the
PyTorch peer step.
"""

from configs import default


def get_config(variant: str = 'full'):
  if variant not in ('full', 'quick'):
    raise ValueError(f'unknown bench_accelerator variant {variant!r}: full | quick')
  config = default.get_config()
  config.seg.base_width = 16
  config.seg.depth = 4
  config.sampling.chunk_size = 'auto'
  config.bench.methods = 'mc_dropout,hcnn,ensemble'
  config.bench.cases = '224x8,224x32'
  config.bench.base_widths = (16, 32)
  config.bench.samples = (20, 100)
  config.bench.dtypes = ('float32', 'bfloat16')
  config.bench.repeats = 5
  config.bench.matmul_size = 8192
  config.bench.chunk_sweep = ()
  config.bench.ceiling_batch = 256  # the card's conv throughput needs a batch that fills it
  if variant == 'quick':
    config.bench.methods = 'mc_dropout,ensemble'
    config.bench.cases = '224x8'
    config.bench.base_widths = (16,)
  return config
