"""predict at archive scale: peak memory and throughput at 1,000 to 50,000 cases.

  python experiments/predict_scale.py --workdir=runs/clinical/seed0 --sizes=1000,10000,50000 \
      --out=experiments/archive/predict_scale_cpu.json

For each size it generates a folder of that many PNGs (below), runs
``main.py --mode=predict`` on it in a child process, and reads the child's
peak resident memory (``wait4``'s ``ru_maxrss``: the kernel's high-water
mark, not a sample), its wall time, and from its ``summary.json`` the time
the passes of f and g took and the time they waited for decoding (the
``assess.Timing`` of the run). The folder is removed after its run.

The generated folder (part of this script, seeded): each file is one of the
ISIC 2017 images of ``--source`` (the shared 128-px copies), flipped,
rotated by a multiple of 90 degrees and its brightness scaled by 0.9-1.1,
chosen by the file's index -- in-distribution cases, so the gate and the
rule decide as they would on an archive, and no two files are one image.
``--source=''`` draws the project's own synthetic lesions instead.

Nothing here is a timed test: the machines are shared and noisy, so the
figures are ratios within one run of this script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from segqual_jax.core import artifacts  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run (configs/clinical.py).')
_SIZES = flags.DEFINE_list('sizes', ['1000', '10000', '50000'], 'Numbers of cases.')
_SOURCE = flags.DEFINE_string('source', os.path.join(ROOT, '..', 'shared', 'data', 'isic2017', '128', 'images'),
                              "Images the folder is made from ('': synthetic lesions).")
_MAPS = flags.DEFINE_string('maps', 'flagged', "predict.maps for the runs ('': not given, for a checkout without it).")
_SCRATCH = flags.DEFINE_string('scratch', None, 'Where the folders go (default: a temporary folder).')
_OUT = flags.DEFINE_string('out', None, 'JSON result (a .md table is written beside it).')
_MAIN = flags.DEFINE_string('main', os.path.join(ROOT, 'main.py'),
                            "The main.py to run (another checkout's, for a before/after comparison).")


def sources(source: str, count: int = 500) -> list[np.ndarray]:
  if source:
    names = sorted(n for n in os.listdir(source) if n.endswith('.png'))[:count]
    return [np.asarray(Image.open(os.path.join(source, n)).convert('RGB')) for n in names]
  from segqual_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  gen = synthetic.GeneratorConfig(image_size=128)
  return [synthetic.generate_example(7, 'test', i, gen)['image'] for i in range(count)]


def make_folder(folder: str, n: int, base: list[np.ndarray]) -> None:
  """``n`` PNGs in 100 subfolders (an archive's day folders), each a transformed source image."""
  for i in range(n):
    image = base[i % len(base)]
    k = (i // len(base)) % 8
    image = np.rot90(image[:, ::-1] if k >= 4 else image, k % 4)
    scale = 0.9 + 0.2 * ((i * 7919) % 101) / 100
    image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    sub = os.path.join(folder, f'day{i % 100:03d}')
    os.makedirs(sub, exist_ok=True)
    Image.fromarray(image).save(os.path.join(sub, f'case{i:06d}.png'), compress_level=1)


def run_predict(workdir: str, folder: str, out: str) -> dict:
  """``main.py --mode=predict`` in a child: its peak RSS, wall time and summary."""
  args = [sys.executable, _MAIN.value, f'--workdir={os.path.realpath(workdir)}', '--mode=predict',
          f'--input={folder}', f'--output={out}']
  if _MAPS.value:
    args.append(f'--config.predict.maps={_MAPS.value}')
  t0 = time.time()
  with open(out + '.log', 'w') as log:  # a file, not a pipe: an unread pipe fills and blocks the child
    child = subprocess.Popen(args, cwd=os.path.dirname(os.path.abspath(_MAIN.value)),
                             stdout=subprocess.DEVNULL, stderr=log)
    _, status, usage = os.wait4(child.pid, 0)
  wall = time.time() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'predict failed on {folder}:\n{open(out + ".log").read()[-3000:]}')
  summary = artifacts.read_json(os.path.join(out, 'summary.json'))
  nothing = {'read_s': None, 'wait_s': 0.0, 'compute_s': wall, 'wait_share': None}  # before the timing existed
  return {'peak_rss_mb': usage.ru_maxrss / 1024, 'wall_s': wall, 'files': summary['files'],
          'decisions': summary['decisions'], 'maps_drawn': summary.get('maps_drawn', summary['read']),
          'timing': summary.get('timing', nothing), 'report_pages': summary.get('report_pages', 1)}


def _share(value) -> str:
  return '-' if value is None else f'{100 * value:.1f} %'


def main(argv):
  del argv
  base = sources(_SOURCE.value)
  scratch = _SCRATCH.value or tempfile.mkdtemp(prefix='segqual_scale_')
  rows = []
  for n in (int(s) for s in _SIZES.value):
    folder, out = os.path.join(scratch, f'in_{n}'), os.path.join(scratch, f'out_{n}')
    t0 = time.time()
    make_folder(folder, n, base)
    made = time.time() - t0
    row = {'cases': n, 'generate_s': made, **run_predict(_WORKDIR.value, folder, out)}
    row['images_per_s'] = n / row['wall_s']
    row['judge_images_per_s'] = n / max(row['timing']['compute_s'] + row['timing']['wait_s'], 1e-9)
    rows.append(row)
    print(json.dumps(row), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
  result = {'workdir': os.path.realpath(_WORKDIR.value), 'maps': _MAPS.value, 'main': _MAIN.value,
            'source': _SOURCE.value or 'synthetic', 'rows': rows}
  artifacts.write_json(_OUT.value, result)
  first = rows[0]
  lines = [f'predict at scale, {_WORKDIR.value} (maps={_MAPS.value}); ratios to the {first["cases"]:,}-case run.',
           '', '| cases | peak RSS (MB) | RSS ratio | wall (s) | images/s | images/s ratio | '
           'judging images/s | device waited for decoding | maps drawn | pages |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['cases']:,} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / first['peak_rss_mb']:.3f} | "
                 f"{r['wall_s']:.0f} | {r['images_per_s']:.1f} | {r['images_per_s'] / first['images_per_s']:.2f} | "
                 f"{r['judge_images_per_s']:.1f} | {_share(r['timing']['wait_share'])} | "
                 f"{r['maps_drawn']} | {r['report_pages']} |")
  artifacts.write_text(os.path.splitext(_OUT.value)[0] + '.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
