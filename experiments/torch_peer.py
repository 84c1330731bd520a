"""The real peer: MC-dropout sampled the PyTorch way, with f's own weights, beside the engine.

Every public tool that does this job (MIC-DKFZ's segmentation_failures_benchmark,
MONAI Label's EpistemicScoring, ivadomed) samples MC-dropout as a Python loop
of T full PyTorch forward passes. This script ports segqual-jax's U-Net to
PyTorch, copies in the weights of a trained run (or of a random init), checks
that the two networks give the same logits (max |difference| <= --tolerance,
1e-4, before any timing), and then times, taking turns in one process:

* ``engine``: ``method.predict`` of MC-dropout (one jit; the sampling engine).
* ``jax det``: one deterministic JAX pass (``deterministic_predict``).
* ``torch loop``: the peers' way -- T full passes with dropout on, summed
  softmax, then the entropy; ``inference_mode``, threads = cores, in the
  default and in the channels_last layout, and compiled with
  ``torch.compile`` where that works (the fastest variant is the peer).
* ``torch det``: one pass with dropout off, in the same variants.

Launch (CPU, the issue's case; torch from experiments/requirements-peer.txt):
  python experiments/torch_peer.py --config=configs/bench.py --workdir=RUN \\
      --size=128 --batch=8 --samples=20 --rounds=3 --out=runs/peer/cpu
``--workdir`` is any trained run (its recorded ``seg`` architecture is used);
without it the weights are a seeded random init (speed does not depend on
them). On a GPU (``device_bench.sh``) the same script times float32 eager
PyTorch and, with ``--torch_bf16``, its bfloat16 autocast.
Expected CPU runtime at the default case: ~2 min (compiling both sides
included). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bench.py', 'segqual-jax config.',
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run whose f weights to copy; '
                               'default: a seeded random init.')
_SIZE = flags.DEFINE_integer('size', 128, 'Image side in pixels.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per call.')
_SAMPLES = flags.DEFINE_multi_integer('samples', [20], 'Numbers of MC-dropout samples T.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds after warm-up; medians are reported.')
_TOLERANCE = flags.DEFINE_float('tolerance', 1e-4, 'Largest allowed |logit difference|.')
_COMPILE = flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile variants.')
_TORCH_BF16 = flags.DEFINE_bool('torch_bf16', False, 'Also time PyTorch under bfloat16 autocast '
                                '(accelerators).')
_OUT = flags.DEFINE_string('out', 'runs/peer/cpu', 'Output prefix: <out>.json and <out>.md.')


def torch_unet(torch, seg):
  """The U-Net of ``segqual_jax/segmenter/unet.py`` (logits head) as a torch.nn.Module."""
  nn, F = torch.nn, torch.nn.functional

  class Block(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.convs = nn.ModuleList([nn.Conv2d(cin, cout, 3, padding=1),
                                  nn.Conv2d(cout, cout, 3, padding=1)])
      group = seg.norm == 'group'
      self.norms = nn.ModuleList([nn.GroupNorm(min(8, cout), cout, eps=1e-6) if group
                                  else nn.Identity() for _ in range(2)])

    def forward(self, x):
      for conv, norm in zip(self.convs, self.norms):
        x = F.relu(norm(conv(x)))
      return x

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      width = lambda level: seg.base_width * 2**level
      self.depth, self.rate = seg.depth, seg.dropout_rate
      self.first_central = seg.depth - min(seg.central_levels, seg.depth)
      self.down = nn.ModuleList([Block(3 if level == 0 else width(level - 1), width(level))
                                 for level in range(seg.depth + 1)])
      self.upsample = nn.ModuleList([nn.ConvTranspose2d(width(level + 1), width(level), 2, 2)
                                     for level in range(seg.depth)])
      self.up = nn.ModuleList([Block(2 * width(level), width(level)) for level in range(seg.depth)])
      self.logits = nn.Conv2d(seg.base_width, 2, 1)

    def forward(self, x, dropout: bool = False):
      drop = lambda t: F.dropout(t, self.rate, training=dropout)
      x = (x - 0.5) * 2.0
      skips = []
      for level in range(self.depth):
        x = self.down[level](x)
        if level >= self.first_central:
          x = drop(x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
      x = drop(self.down[self.depth](x))
      for level in reversed(range(self.depth)):
        x = self.up[level](torch.cat([self.upsample[level](x), skips[level]], 1))
        if level >= self.first_central:
          x = drop(x)
      return self.logits(x)

  return UNet()


def copy_weights(torch, model, params, depth: int) -> None:
  """Flax parameters -> the torch port (HWIO -> OIHW; ConvTranspose kernels flipped)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))

  def conv(module, p, transpose=False):
    kernel = tensor(p['kernel'])
    if transpose:  # flax's transposed conv does not flip its kernel; torch's does
      module.weight.data = kernel.flip(0, 1).permute(2, 3, 0, 1).contiguous()
    else:
      module.weight.data = kernel.permute(3, 2, 0, 1).contiguous()
    module.bias.data = tensor(p['bias'])

  def block(module, p):
    for i in range(2):
      conv(module.convs[i], p[f'Conv_{i}'])
      if f'GroupNorm_{i}' in p:
        module.norms[i].weight.data = tensor(p[f'GroupNorm_{i}']['scale'])
        module.norms[i].bias.data = tensor(p[f'GroupNorm_{i}']['bias'])

  for level in range(depth + 1):
    block(model.down[level], params[f'ConvBlock_{level}'])
  for level in range(depth):
    conv(model.upsample[level], params[f'ConvTranspose_{depth - 1 - level}'], transpose=True)
    block(model.up[level], params[f'ConvBlock_{2 * depth - level}'])
  conv(model.logits, params['logits'])


def load_jax(config, workdir: str | None, size: int):
  """``(config, method, params, source)``: a trained run's f, or a seeded random one."""
  import jax  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter import methods, runner  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.method = 'mc_dropout'
  if workdir:
    with open(os.path.join(workdir, 'seg', 'config.json')) as f:
      recorded = json.load(f)
    for field in ('base_width', 'depth', 'dropout_rate', 'central_levels', 'norm'):
      config.seg[field] = recorded['seg'][field]
    if recorded['method'] not in ('msp', 'mc_dropout'):
      raise SystemExit(f'{workdir}: f was trained as {recorded["method"]!r}; the peer ports the '
                       'plain U-Net of msp / mc_dropout runs')
    config.data.image_size = recorded['data']['image_size']
    method, params = runner.load_f(config, workdir)
    return config, method, params, f'trained run {os.path.abspath(workdir)}'
  method = methods.create_method(config)
  return config, method, method.init_params(jax.random.key(0), size), 'random init (seed 0)'


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from segqual_jax.apps import bench  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter import unet  # pylint: disable=g-import-not-at-top
  from segqual_jax.segmenter.methods import base  # pylint: disable=g-import-not-at-top

  config, method, params, source = load_jax(_CONFIG.value, _WORKDIR.value, _SIZE.value)
  cuda = torch.cuda.is_available() and jax.devices()[0].platform == 'gpu'
  device = torch.device('cuda' if cuda else 'cpu')
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  size, batch = _SIZE.value, _BATCH.value
  images = jax.random.uniform(jax.random.key(1), (batch, size, size, 3))
  key = jax.random.key(2)

  model = torch_unet(torch, config.seg).to(device).eval()
  copy_weights(torch, model, jax.device_get(params), config.seg.depth)
  model = model.to(device)
  x_nchw = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous().to(device)

  # Same network? Deterministic float32 logits at full precision (no TF32 on a GPU), before
  # any timing; the timings then run in each library's default precision.
  with jax.default_matmul_precision('highest'):
    jax_logits = np.asarray(jax.jit(lambda p, x: method.apply(p, x)['logits'])(params, images))
  tf32 = torch.backends.cudnn.allow_tf32
  torch.backends.cudnn.allow_tf32 = False
  with torch.inference_mode():
    torch_logits = model(x_nchw).permute(0, 2, 3, 1).float().cpu().numpy()
  torch.backends.cudnn.allow_tf32 = tf32
  max_diff = float(np.abs(jax_logits - torch_logits).max())
  print(f'logits check: max |JAX - PyTorch| = {max_diff:.2e} (tolerance {_TOLERANCE.value:g})')
  if not max_diff <= _TOLERANCE.value:
    raise SystemExit(f'the PyTorch port does not reproduce f (max |logit difference| '
                     f'{max_diff:.2e} > {_TOLERANCE.value:g}); no timing')

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  variants = {'default': (model, x_nchw)}
  cl_model = torch_unet(torch, config.seg).to(device).eval()
  cl_model.load_state_dict(model.state_dict())
  variants['channels_last'] = (cl_model.to(memory_format=torch.channels_last),
                               x_nchw.contiguous(memory_format=torch.channels_last))
  compile_notes = {}
  if _COMPILE.value:
    for name in list(variants):
      try:
        compiled = torch.compile(variants[name][0])
        with torch.inference_mode():
          t0 = time.perf_counter()
          compiled(variants[name][1], dropout=True)
          compiled(variants[name][1], dropout=False)
          sync()
        variants[f'{name}+compile'] = (compiled, variants[name][1])
        compile_notes[f'{name}+compile'] = f'compiled in {time.perf_counter() - t0:.0f} s'
      except Exception as e:  # pylint: disable=broad-except
        compile_notes[f'{name}+compile'] = f'torch.compile failed: {type(e).__name__}: {e}'[:300]
        print(compile_notes[f'{name}+compile'])

  def torch_loop(net, x, num_samples, dtype=None):
    def run():
      with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype is not None):
        total = torch.softmax(net(x, dropout=True).float(), 1)
        for _ in range(num_samples - 1):
          total = total + torch.softmax(net(x, dropout=True).float(), 1)
        mean = total / num_samples
        out = -(mean * torch.log(mean.clamp_min(base.EPS))).sum(1)
        sync()
      return out
    return run

  def torch_det(net, x, dtype=None):
    def run():
      with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype is not None):
        out = torch.softmax(net(x).float(), 1)
        sync()
      return out
    return run

  params = unet.compute_params(params, config.sampling.dtype)  # the engine's compute dtype
  det = bench.compile_fn(lambda p, x: method.deterministic_predict(p, x), params, images)
  rows = []
  for num_samples in _SAMPLES.value:
    config.uncertainty.mc_samples = num_samples
    engine = bench.compile_fn(method.predict, params, images, key)
    contenders = {'engine': lambda: engine.run(params, images, key),
                  'jax det': lambda: det.run(params, images)}
    for name, (net, x) in variants.items():
      contenders[f'torch loop ({name})'] = torch_loop(net, x, num_samples)
      contenders[f'torch det ({name})'] = torch_det(net, x)
      if _TORCH_BF16.value and 'compile' not in name:
        contenders[f'torch loop bf16 ({name})'] = torch_loop(net, x, num_samples, torch.bfloat16)
        contenders[f'torch det bf16 ({name})'] = torch_det(net, x, torch.bfloat16)
    times = bench.median_times(contenders, _ROUNDS.value)
    loops = {k: v for k, v in times.items() if k.startswith('torch loop (')}
    dets = {k: v for k, v in times.items() if k.startswith('torch det (')}
    peer = min(loops, key=loops.get)
    peer_det = min(dets, key=dets.get)
    rows.append({'samples': num_samples, 'times_s': times, 'peer': peer, 'peer_det': peer_det,
                 'engine_speedup_vs_peer_loop': times[peer] / times['engine'],
                 'jax_det_over_torch_det': times['jax det'] / times[peer_det],
                 'engine_memory_mb': engine.memory_bytes / 2**20})
    print(f'T={num_samples}: engine {times["engine"]:.3f} s, {peer} {times[peer]:.3f} s '
          f'-> {rows[-1]["engine_speedup_vs_peer_loop"]:.2f}x; det JAX {times["jax det"]:.4f} s vs '
          f'{peer_det} {times[peer_det]:.4f} s -> {rows[-1]["jax_det_over_torch_det"]:.2f}x')

  result = {
      'machine': {'jax_backend': jax.devices()[0].platform, 'jax_device': str(jax.devices()[0]),
                  'torch_device': str(torch.cuda.get_device_name() if cuda else 'cpu'),
                  'processor': platform.processor() or platform.machine(), 'cpu_count': threads,
                  'jax': jax.__version__, 'torch': torch.__version__},
      'weights': source, 'image_size': size, 'batch': batch, 'rounds': _ROUNDS.value,
      'seg': {k: config.seg[k] for k in ('base_width', 'depth', 'dropout_rate', 'central_levels',
                                         'norm')},
      'chunk_size': config.sampling.chunk_size, 'engine_dtype': config.sampling.dtype,
      'logits_max_abs_diff': max_diff, 'compile_notes': compile_notes, 'rows': rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  text = markdown(result)
  with open(_OUT.value + '.md', 'w') as f:
    f.write(text)
  print(text)


def markdown(result: dict) -> str:
  m = result['machine']
  lines = [f"JAX {m['jax']} on {m['jax_device']} (engine in {result['engine_dtype']}, chunk "
           f"{result['chunk_size']}); PyTorch {m['torch']} on {m['torch_device']} "
           f"({m['processor']}, {m['cpu_count']} cores). U-Net {result['seg']}, "
           f"{result['image_size']} px x {result['batch']}, weights: {result['weights']}; "
           f"logits agree within {result['logits_max_abs_diff']:.1e}. Medians of "
           f"{result['rounds']} rounds, contenders taking turns.", '']
  for row in result['rows']:
    lines += [f"T = {row['samples']}: engine **{row['engine_speedup_vs_peer_loop']:.2f}x** the "
              f"fastest PyTorch loop ({row['peer']}); JAX deterministic pass "
              f"**{row['jax_det_over_torch_det']:.2f}x** the time of PyTorch's ({row['peer_det']}).",
              '', '| contender | s | vs engine |', '|---|---|---|']
    lines += [f"| {name} | {t:.4f} | {t / row['times_s']['engine']:.2f}x |"
              for name, t in row['times_s'].items()]
    lines.append('')
  for name, note in result['compile_notes'].items():
    lines.append(f'- {name}: {note}')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
