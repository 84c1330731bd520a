"""Why do f's test cases fail, and how much does a map-free signal already tell?

  python experiments/failure_anatomy.py --workdir=runs/table1/msp_seed0 [--workdir=...]

For each run: the failure rate (Dice < 0.8) of the test split broken down by
the generator's difficulty attributes (faint, small, multi-part lesions, hair,
rim, lazy annotation), and the AUROC for detecting failures of two trivial
scores that need no g: the predicted lesion area (no map at all) and the mean
of the uncertainty map. If a failure is visible from the predicted mask alone (e.g. an empty
prediction on a faint lesion), g(x, y_hat) can find it without z, and the
uncertainty-based g has little left to add.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.data import builders  # noqa: E402
from segqual_jax.metrics import quality as quality_metrics  # noqa: E402

_WORKDIRS = flags.DEFINE_multi_string('workdir', [], 'Run directories (with quality/f_outputs/test.npz).')
ATTRIBUTES = ('low_contrast', 'small', 'hair', 'rim', 'lazy')


def test_attributes(data_config) -> dict[str, np.ndarray]:
  source = builders.synthetic_builder(data_config).as_data_source()['test']
  examples = sorted(source.__getitems__(range(len(source))), key=lambda e: int(e['id']))
  out = {a: np.array([int(e[a]) > 0 for e in examples]) for a in ATTRIBUTES}
  out['multi_part'] = np.array([int(e['n_parts']) > 1 for e in examples])
  return out


def main(argv):
  del argv
  import ml_collections
  for workdir in _WORKDIRS.value:
    with open(os.path.join(workdir, 'seg', 'config.json')) as f:
      config = ml_collections.ConfigDict(json.load(f))
    labels = np.load(os.path.join(workdir, 'quality', 'f_outputs', 'test.npz'))
    failed = labels['dice'] < 0.8
    attrs = test_attributes(config.data)
    print(f'\n{workdir}: {failed.sum()} of {len(failed)} test cases fail (Dice < 0.8)')
    print('| attribute | cases | failure rate | share of all failures |\n|---|---|---|---|')
    for name, has in attrs.items():
      print(f'| {name} | {has.sum()} | {100 * failed[has].mean():.1f} % | '
            f'{100 * (failed & has).sum() / max(failed.sum(), 1):.1f} % |')
    plain = ~np.any(np.stack(list(attrs.values())), axis=0)
    print(f'| none of these | {plain.sum()} | {100 * failed[plain].mean():.1f} % | '
          f'{100 * (failed & plain).sum() / max(failed.sum(), 1):.1f} % |')
    area = labels['masks'].reshape(len(failed), -1).mean(1)
    empty = area == 0
    print(f'empty predictions: {empty.sum()} ({100 * failed[empty].mean() if empty.any() else 0:.0f} % of them fail); '
          f'failures with an empty prediction: {100 * (failed & empty).sum() / max(failed.sum(), 1):.1f} %')
    passed = ~failed
    print(f'AUROC (pass = positive) of trivial scores: predicted area '
          f'{quality_metrics.auroc(area, passed):.3f}; of the mean uncertainty (negated) '
          f'{quality_metrics.auroc(-labels["maps"].reshape(len(failed), -1).mean(1), passed):.3f}')


if __name__ == '__main__':
  app.run(main)
