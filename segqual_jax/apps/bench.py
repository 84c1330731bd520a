"""``main.py --mode=bench``: the sampling engine against the naive loop and the machine.

For each stochastic method, image size x batch case and number of samples T,
in one run (the machines are shared and noisy, so only ratios measured side by
side mean anything):

* ``engine``: the method's ``predict`` (one jit; the sampling engine).
* ``loop``: what every peer does -- a Python loop of T jitted whole forward
  passes (``naive_sample``), averaged, then the map.
* ``det``: one deterministic forward pass (MSP's cost; HCNN's reference).
* ``rng only`` (HCNN): drawing the T x C normals per pixel and nothing else,
  the floor under any exact sampler of HCNN's noise.
* ``peak``: a float32 matmul (``bench.matmul_size``), the machine's practical
  FLOP/s ceiling, and ``conv ceiling``: the U-Net's 3x3 convolutions timed
  alone, which is what a convolution network can reach here at best.

Times are medians of ``bench.repeats`` runs after compilation, the contenders
taking turns. FLOPs are counted from the programs' jaxprs (``program_flops``:
convolutions and matrix products, loops per trip); memory from XLA's buffer
assignment (arguments + outputs + temporaries: the device memory the program
needs at its peak). Results go to ``<workdir>/bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
from jax.extend import core as jax_core

from segqual_jax.core import artifacts
from segqual_jax.segmenter import methods as uncertainty
from segqual_jax.segmenter import sampling, unet
from segqual_jax.segmenter.methods import base

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Compiled:
  """A compiled program with its compile time and XLA's peak buffer memory (FLOPs come from
  ``program_flops``); ``memory_bytes`` is None where the backend reports none."""
  run: Callable
  compile_s: float
  memory_bytes: int | None

  @property
  def memory_mb(self) -> float | None:
    return None if self.memory_bytes is None else self.memory_bytes / 2**20


def compile_fn(fn: Callable, *args) -> Compiled:
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  # XLA's buffer assignment: everything live at the program's peak. (Its own
  # peak_memory_in_bytes leaves the temporaries out on CPU.)
  mem = compiled.memory_analysis()
  memory = None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return Compiled(compiled, compile_s, memory)


def program_flops(fn: Callable, *args) -> float:
  """FLOPs of ``fn``'s convolutions and matrix products, counted from its jaxpr.

  XLA's cost analysis misses work it hands to libraries (on a GPU it counted
  none of cuDNN's convolutions: an MC-dropout engine read as 6 GFLOP instead
  of ~400) and counts a loop body once. Here every ``conv_general_dilated``
  and ``dot_general`` counts 2 x (output elements) x (products per output),
  a transposed convolution only its non-zero taps, and a ``scan`` body its
  trip count times; the elementwise rest is left out, the same on every backend.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, spatial...)
      taps = math.prod(rhs.shape[d] for d in spec[2:]) / math.prod(eqn.params['lhs_dilation'])
      total += 2.0 * math.prod(out.shape) * rhs.shape[spec[1]] * taps
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)
    elif name == 'scan':
      total += eqn.params['length'] * _jaxpr_flops(eqn.params['jaxpr'].jaxpr)
    elif name == 'cond':
      total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params['branches'])
    else:
      total += sum(_jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


def median_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median wall time of each ``fn()`` (blocked until ready), after one warm-up call each.

  The functions take turns (round robin), so a slow spell of a shared machine
  hits all of them alike and their ratios stay meaningful.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  return median_times({'fn': fn}, repeats)['fn']


def matmul_peak(size: int, repeats: int) -> float:
  """GFLOP/s of a float32 ``size x size`` matmul: the practical peak."""
  a = jax.random.normal(jax.random.key(0), (size, size))
  mm = compile_fn(lambda a: a @ a, a)
  return 2 * size**3 / median_time(lambda: mm.run(a), repeats) / 1e9


def conv_ceiling(config, image_size: int, batch: int, repeats: int, dtype: str = 'float32') -> float:
  """GFLOP/s of the U-Net's 3x3 convolutions timed alone, one per level, in ``dtype``.

  Total FLOPs over total time: the rate a network made only of these
  convolutions would reach on this backend, the realistic ceiling for f (in
  bfloat16: the card's measured bf16 convolution throughput).
  """
  flops = seconds = 0.0
  cast = unet.COMPUTE_DTYPES[dtype]
  for level in range(config.seg.depth + 1):
    side, width = image_size // 2**level, config.seg.base_width * 2**level
    x = jax.random.normal(jax.random.key(0), (batch, side, side, width)).astype(cast)
    w = jax.random.normal(jax.random.key(1), (3, 3, width, width)).astype(cast)
    fn = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    conv = compile_fn(fn, x, w)
    flops += program_flops(fn, x, w)
    seconds += median_time(lambda: conv.run(x, w), repeats)
  return flops / seconds / 1e9


def _parse_cases(text: str) -> list[tuple[int, int]]:
  cases = []
  for item in text.split(','):
    size, batch = item.strip().lower().split('x')
    cases.append((int(size), int(batch)))
  return cases


def samples_field(method_name: str) -> str | None:
  """The config field holding a method's T (None: an ensemble's T is its member count)."""
  return {'mc_dropout': 'mc_samples', 'hcnn': 'hcnn_test_samples'}.get(method_name)


def bench_method(config, method_name: str, image_size: int, batch: int, samples_list,
                 repeats: int, peak: float, ceiling: float) -> list[dict]:
  """Rows for one method and case (at ``config.seg.base_width`` and ``config.sampling.dtype``):
  engine vs loop vs deterministic pass, per T."""
  config = config.copy_and_resolve_references()
  config.method = method_name
  method = uncertainty.create_method(config)
  dtype = config.sampling.dtype
  params = unet.compute_params(method.init_params(jax.random.key(0), image_size), dtype)
  images = jax.random.uniform(jax.random.key(1), (batch, image_size, image_size, 3))
  key = jax.random.key(2)
  field = samples_field(method_name)
  if field is None:
    samples_list = (method.members,)

  det = compile_fn(lambda p, x: method.deterministic_predict(p, x), params, images)
  first_row = jax.tree.map(lambda a: a[0], method.sample_inputs(params, key, 1))
  naive = compile_fn(lambda p, x, r: method.naive_sample(p, x, r), params, images, first_row)
  features = method.sample_features(params, images)
  naive_flops = program_flops(lambda p, x, r: method.naive_sample(p, x, r), params, images,
                              first_row)
  finish = jax.jit(lambda probs_sum, t: (probs_sum / t, base.entropy(probs_sum / t)))

  rows = []
  for num_samples in samples_list:
    if field is not None:
      config.uncertainty[field] = num_samples
    engine = compile_fn(method.predict, params, images, key)
    inputs = method.sample_inputs(params, key, max(num_samples, 1))
    sample_rows = [jax.tree.map(lambda a, i=i: a[i], inputs) for i in range(max(num_samples, 1))]

    def loop():
      total = naive.run(params, images, sample_rows[0])
      for row in sample_rows[1:]:
        total = total + naive.run(params, images, row)
      return finish(total, float(len(sample_rows)))

    contenders = {'engine': lambda: engine.run(params, images, key),
                  'det': lambda: det.run(params, images)}
    if num_samples > 0:  # the closed form (T=0) has no loop to compare with
      contenders['loop'] = loop
    if method_name == 'hcnn' and num_samples > 0:
      # The floor of exact sampling: only drawing HCNN's T x C normals per pixel.
      shape = (num_samples,) + jax.eval_shape(method.apply, params, images)['logits'].shape
      rng = compile_fn(lambda k: jax.random.normal(k, shape), key)
      contenders['rng_only'] = lambda: rng.run(key)
    times = median_times(contenders, repeats)
    engine_s, det_s, loop_s = times['engine'], times['det'], times.get('loop')
    chunk = 0 if num_samples == 0 else method.chunk_for(
        lambda r: method.sample(params, features, r), first_row, num_samples)
    flops = program_flops(method.predict, params, images, key)
    gflops = flops / engine_s / 1e9
    rows.append({
        'method': method_name, 'image_size': image_size, 'batch': batch,
        'base_width': config.seg.base_width, 'dtype': dtype, 'samples': num_samples,
        'chunk': chunk, 'engine_s': engine_s, 'loop_s': loop_s, 'det_s': det_s,
        'speedup_vs_loop': loop_s and loop_s / engine_s, 'cost_vs_det_pass': engine_s / det_s,
        'rng_only_vs_det_pass': times['rng_only'] / det_s if 'rng_only' in times else None,
        'images_per_s': batch / engine_s, 'samples_per_s': batch * max(num_samples, 1) / engine_s,
        'engine_gflop': flops / 1e9, 'gflop_per_s': gflops,
        'loop_gflop_per_s': loop_s and naive_flops * len(sample_rows) / loop_s / 1e9,
        'fraction_of_matmul_peak': gflops / peak, 'fraction_of_conv_ceiling': gflops / ceiling,
        'compile_s': engine.compile_s, 'peak_memory_mb': engine.memory_mb,
    })
    log.info('bench %s %dpx x%d w%d %s T=%d chunk=%d: engine %.3f s, loop %s s, det %.3f s, '
             '%.0f GFLOP/s', method_name, image_size, batch, config.seg.base_width, dtype,
             num_samples, chunk, engine_s, _fmt(loop_s, '.3f'), det_s, gflops)
  return rows


def chunk_sweep(config, methods, image_size: int, batch: int, chunks, repeats: int) -> list[dict]:
  """Engine time and memory per fixed chunk, beside the auto rule's pick, at
  each method's configured T (``uncertainty.mc_samples``, ``hcnn_test_samples``,
  an ensemble's members)."""
  rows = []
  for name in methods:
    for chunk in [str(c) for c in chunks] + ['auto']:
      cfg = config.copy_and_resolve_references()
      cfg.method, cfg.sampling.chunk_size = name, chunk
      method = uncertainty.create_method(cfg)
      field = samples_field(name)
      num_samples = cfg.uncertainty[field] if field else method.members
      params = unet.compute_params(method.init_params(jax.random.key(0), image_size),
                                   cfg.sampling.dtype)
      images = jax.random.uniform(jax.random.key(1), (batch, image_size, image_size, 3))
      key = jax.random.key(2)
      engine = compile_fn(method.predict, params, images, key)
      features = method.sample_features(params, images)
      first_row = jax.tree.map(lambda a: a[0], method.sample_inputs(params, key, 1))
      resolved = method.chunk_for(lambda r: method.sample(params, features, r), first_row,
                                  num_samples)
      rows.append({'method': name, 'samples': num_samples, 'setting': chunk, 'chunk': resolved,
                   'engine_s': median_time(lambda: engine.run(params, images, key), repeats),
                   'peak_memory_mb': engine.memory_mb})
      log.info('chunk sweep %s T=%d %s -> %d: %.3f s', name, num_samples, chunk, resolved,
               rows[-1]['engine_s'])
  return rows


def targets(rows: list[dict], default_case: tuple[int, int]) -> dict[str, Any]:
  """The issue's targets, evaluated on the default case."""
  first = rows[0] if rows else {}

  def row(method, t):  # the default case at the first base width and compute dtype
    for r in rows:
      if ((r['method'], r['image_size'], r['batch'], r['samples'], r['base_width'], r['dtype'])
          == (method, *default_case, t, first['base_width'], first['dtype'])):
        return r
    return None

  out = {}
  mc20, mc100 = row('mc_dropout', 20), row('mc_dropout', 100)
  if mc20:
    out['mc_dropout_T20_speedup_vs_loop'] = {'value': mc20['speedup_vs_loop'], 'target': '>= 1.3',
                                             'met': mc20['speedup_vs_loop'] >= 1.3}
    out['mc_dropout_T20_fraction_of_matmul_peak'] = {
        'value': mc20['fraction_of_matmul_peak'], 'target': '>= 0.6',
        'met': mc20['fraction_of_matmul_peak'] >= 0.6}
  if mc20 and mc100 and mc20['peak_memory_mb'] and mc100['peak_memory_mb'] is not None:
    growth = mc100['peak_memory_mb'] / mc20['peak_memory_mb']
    out['mc_dropout_memory_T100_over_T20'] = {'value': growth, 'target': '<= 1.2',
                                              'met': growth <= 1.2}
  for t in (100, 0):
    if (h := row('hcnn', t)):
      out[f'hcnn_T{t}_cost_vs_det_pass'] = {'value': h['cost_vs_det_pass'], 'target': '<= 1.10',
                                            'met': h['cost_vs_det_pass'] <= 1.10}
  return out


def _fmt(value, spec: str, suffix: str = '') -> str:
  return '-' if value is None else f'{value:{spec}}{suffix}'


def markdown(result: dict) -> str:
  machine = result['machine']
  ceilings = '; '.join(f"{dtype} {value:.0f} GFLOP/s" for dtype, value in
                       result['conv_ceiling_gflop_per_s_by_dtype'].items())
  lines = [f"Machine: {machine['backend']} x{machine['devices']} ({machine['processor']}), "
           f"JAX {machine['jax']}. Matmul peak {result['matmul_gflop_per_s']:.0f} GFLOP/s; "
           f"U-Net conv ceiling {ceilings} at {result['default_case'][0]} px x "
           f"{result['default_case'][1]}, base width {result['rows'][0]['base_width'] if result['rows'] else '-'}.",
           '',
           '| method | px | batch | width | dtype | T | chunk | engine s | loop s | vs loop | '
           'vs det pass | RNG alone vs det pass | images/s | samples/s | GFLOP/s | of peak | '
           'of conv ceiling | compile s | memory MB |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(
        f"| {r['method']} | {r['image_size']} | {r['batch']} | {r['base_width']} | {r['dtype']} | "
        f"{r['samples']} | {r['chunk']} | "
        f"{r['engine_s']:.3f} | {_fmt(r['loop_s'], '.3f')} | "
        f"{_fmt(r['speedup_vs_loop'], '.2f', 'x')} | "
        f"{r['cost_vs_det_pass']:.2f}x | {_fmt(r['rng_only_vs_det_pass'], '.2f', 'x')} | "
        f"{r['images_per_s']:.1f} | {r['samples_per_s']:.0f} | "
        f"{r['gflop_per_s']:.0f} | {r['fraction_of_matmul_peak']:.0%} | "
        f"{r['fraction_of_conv_ceiling']:.0%} | {r['compile_s']:.1f} | "
        f"{_fmt(r['peak_memory_mb'], '.0f')} |")
  if result['chunk_sweep']:
    size, batch = result['default_case']
    lines += ['', f'Chunk sweep at {size} px x {batch} (each method at its configured T):', '',
              '| method | T | chunk setting | chunk | engine s | memory MB |',
              '|---|---|---|---|---|---|']
    lines += [f"| {r['method']} | {r['samples']} | {r['setting']} | {r['chunk']} | "
              f"{r['engine_s']:.3f} | {_fmt(r['peak_memory_mb'], '.0f')} |" for r in result['chunk_sweep']]
  lines += ['', 'Targets at the default case:', '', '| target | value | goal | met |',
            '|---|---|---|---|']
  lines += [f"| {name} | {t['value']:.3g} | {t['target']} | {'yes' if t['met'] else 'no'} |"
            for name, t in result['targets'].items()]
  return '\n'.join(lines) + '\n'


def run(config, workdir: str) -> dict:
  """Runs the benchmark described by ``config.bench``; writes bench.json and bench.md.

  ``bench.json`` is rewritten after every row (``complete: false`` until the
  end), so a run cut short by a time limit still leaves what it measured.
  """
  bench = config.bench
  cases = _parse_cases(bench.cases)
  samples_list = tuple(bench.samples)
  repeats = bench.repeats
  methods = [m.strip() for m in bench.methods.split(',') if m.strip()]
  widths = tuple(bench.base_widths) or (config.seg.base_width,)
  dtypes = tuple(bench.dtypes)
  os.makedirs(workdir, exist_ok=True)

  t0 = time.time()
  peak = matmul_peak(bench.matmul_size, repeats)
  device = jax.devices()[0]
  result = {
      'machine': {'backend': device.platform, 'devices': jax.device_count(),
                  'processor': (device.device_kind if device.platform != 'cpu' else
                                platform.processor() or platform.machine()),
                  'jax': jax.__version__, 'cpu_count': os.cpu_count()},
      'config': {'base_widths': list(widths), 'depth': config.seg.depth,
                 'norm': config.seg.norm, 'chunk_size': config.sampling.chunk_size,
                 'dtypes': list(dtypes), 'repeats': repeats},
      'matmul_gflop_per_s': peak, 'conv_ceiling_gflop_per_s_by_dtype': {},
      'default_case': list(cases[0]), 'rows': [], 'chunk_sweep': [], 'targets': {},
      'complete': False,
  }

  def save():
    result['wall_time_s'] = round(time.time() - t0, 1)
    artifacts.write_json(os.path.join(workdir, 'bench.json'), result)

  ceilings = {}
  for size, batch in cases:
    for width in widths:
      for dtype in dtypes:
        cfg = config.copy_and_resolve_references()
        cfg.seg.base_width, cfg.sampling.dtype = width, dtype
        if (size, batch, width, dtype) not in ceilings:
          ceilings[size, batch, width, dtype] = conv_ceiling(
              cfg, size, bench.ceiling_batch or batch, repeats, dtype)
          if (size, batch) == cases[0] and width == widths[0]:
            result['conv_ceiling_gflop_per_s_by_dtype'][dtype] = ceilings[size, batch, width, dtype]
          log.info('conv ceiling %dpx x%d w%d %s: %.0f GFLOP/s', size, batch, width, dtype,
                   ceilings[size, batch, width, dtype])
        for name in methods:
          hcnn_extra = (0,) if name == 'hcnn' else ()
          result['rows'] += bench_method(cfg, name, size, batch, samples_list + hcnn_extra,
                                         repeats, peak, ceilings[size, batch, width, dtype])
          save()
  result['conv_ceiling_gflop_per_s'] = result['conv_ceiling_gflop_per_s_by_dtype'][dtypes[0]]
  if bench.chunk_sweep:
    result['chunk_sweep'] = chunk_sweep(config, methods, *cases[0], bench.chunk_sweep, repeats)
  result['targets'] = targets(result['rows'], cases[0])
  result['complete'] = True
  save()
  text = markdown(result)
  artifacts.write_text(os.path.join(workdir, 'bench.md'), text)
  print(text)
  return result
