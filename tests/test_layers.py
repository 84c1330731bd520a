"""The package's imports run one way: core -> config/data/metrics -> segmenter -> quality ->
training -> evaluation -> apps -> main. Walked with ast, function-level imports included."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'segqual_jax')
RANK = {'core': 0, 'config': 1, 'data': 1, 'metrics': 1, 'segmenter': 2, 'quality': 3,
        'training': 4, 'evaluation': 5, 'apps': 6}
TRAINERS = {'segqual_jax.training.train_seg', 'segqual_jax.training.train_quality'}
# the out-of-fold code trains copies of f: the one library module allowed to import a trainer
MAY_IMPORT_TRAINERS = {'segqual_jax.training.quality_cases'}


def _modules():
  """``{module name: set of imported segqual_jax modules}`` for every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if not f.endswith('.py'):
        continue
      path = os.path.join(root, f)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
      name = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
      imported = set()
      for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
          imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
          imported.add(node.module)
          imported |= {f'{node.module}.{a.name}' for a in node.names}
      out[name] = {m for m in imported if m.split('.')[0] in ('segqual_jax', 'configs')}
  return out


def _subpackage(module: str) -> str | None:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_no_import_from_a_higher_layer_and_no_library_import_of_configs():
  bad = []
  for name, imported in _modules().items():
    here = _subpackage(name)
    for m in imported:
      if m.split('.')[0] == 'configs':
        bad.append(f'{name} imports the top-level configs package ({m})')
      there = _subpackage(m)
      if here and there and RANK[there] > RANK[here]:
        bad.append(f'{name} ({here}) imports {m} ({there}), a higher layer')
  assert not bad, '\n'.join(bad)


def test_no_cycle_between_subpackages():
  edges = {p: set() for p in RANK}
  for name, imported in _modules().items():
    here = _subpackage(name)
    for m in imported:
      there = _subpackage(m)
      if here and there and there != here:
        edges[here].add(there)

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in edges[todo.pop()]:
        if nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
    return seen
  cycles = [p for p in RANK if p in reachable(p)]
  assert not cycles, {p: sorted(edges[p]) for p in cycles}


def test_only_main_and_the_out_of_fold_code_import_a_trainer():
  bad = [(name, sorted(imported & TRAINERS)) for name, imported in _modules().items()
         if imported & TRAINERS and name not in MAY_IMPORT_TRAINERS]
  assert not bad, bad


def test_every_module_is_in_a_layer():
  loose = [n for n in _modules() if n != 'segqual_jax' and _subpackage(n) is None]
  assert not loose, loose


def test_walker_sees_imports():
  """The walk must find real edges, or every check above passes vacuously."""
  mods = _modules()
  assert 'segqual_jax.segmenter.runner' in mods['segqual_jax.apps.assess']
  assert 'segqual_jax.training.train_seg' in mods['segqual_jax.training.quality_cases']


def test_running_f_needs_no_tfds():
  """predict, the bench and every stage module import without TFDS (an accelerator image
  may lack it); only loading a data set imports it."""
  import subprocess
  import sys
  code = ('import sys, main; from segqual_jax.apps import bench, predict; '
          'from segqual_jax.evaluation import evaluate; from segqual_jax.training import train_quality; '
          "assert 'tensorflow_datasets' not in sys.modules")
  root = os.path.dirname(PACKAGE)
  r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
