"""Does a learned error map find f's wrong pixels better than the uncertainty map? Pixel AUROC on the test list.

  python experiments/error_map.py --workdir=runs/clinical/seed0 --out=experiments/error_map/clinical_seed0.json
  python experiments/error_map.py --aggregate experiments/error_map/clinical_seed0.json experiments/error_map/clinical_seed1.json ...

Fits ``quality/error_map.py``'s pixel classifier on the quality split's
fitting cases (the cases g trains on; never the calibration or test cases),
where f's true errors are known, and scores f's masks of the calibration
cases (dev: where the features were chosen) and of the test list: the AUROC
over all pixels pooled of (a) the error map, with all features and with the
first version's eight, (b) f's uncertainty map (the method's map, channel
0), for the pixels where f's mask differs from the truth, at the model's
size; also the mean of per-image AUROCs (images whose mask is all right or
all wrong left out).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segqual_jax.config import schema, stages  # noqa: E402
from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.data import loading  # noqa: E402
from segqual_jax.quality import error_map  # noqa: E402
from segqual_jax.segmenter import judged  # noqa: E402
from segqual_jax.training import quality_cases  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run (stage 1 and its f outputs).')
_OUT = flags.DEFINE_string('out', None, 'JSON of the measurements.')
_AGGREGATE = flags.DEFINE_multi_string('aggregate', [], 'JSON files of this script to average.')


def per_image_auroc(scores: np.ndarray, errors: np.ndarray) -> float:
  values = [error_map.pixel_auroc(s, e) for s, e in zip(scores, errors)]
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else float('nan')


BASE = 8  # the first FEATURES without the colour-likeness and mask-share cues (the first version)


def measure(workdir: str) -> dict:
  config, _ = stages.for_run(workdir, schema.get_config(), from_file=False, overridden=set())
  quality = loading.load_splits(config.data, names=('quality',))['quality']
  (fit_split, fit_out), cal = quality_cases.holdout_parts(config, workdir, quality)
  test = judged.judged(config, workdir, loading.load_splits(config.data, names=('test',))['test'])
  parts = {'dev (calibration cases)': cal, 'test': (test.split, test.outputs)}
  fit_features = error_map.pixel_features(fit_split.images, fit_out.masks, fit_out.probs, fit_out.maps)
  fit_errors = error_map.errors_of(fit_out.masks, fit_split.masks)
  t0 = time.time()
  models = {'all features': error_map.ErrorMap.fit(fit_features, fit_errors, seed=config.seed),
            f'first {BASE} features': error_map.ErrorMap.fit(fit_features[..., :BASE], fit_errors, seed=config.seed)}
  fit_s = time.time() - t0
  out = {'workdir': workdir, 'seed': config.seed, 'method': config.method,
         'fitting_cases': int(len(fit_split)), 'features': list(error_map.FEATURES),
         'fit_seconds_both': round(fit_s, 1), 'parts': {}}
  for part, value in parts.items():
    if value is None:
      continue
    split, outputs = value
    errors = error_map.errors_of(outputs.masks, split.masks)
    features = error_map.pixel_features(split.images, outputs.masks, outputs.probs, outputs.maps)
    maps = {'uncertainty map': error_map.uncertainty_of(outputs.maps)}
    for name, model in models.items():
      maps[f'error map, {name}'] = model.predict(features if name == 'all features' else features[..., :BASE])
    out['parts'][part] = {'cases': int(len(split)), 'error_pixels': float(errors.mean()),
                          'pooled_auroc': {k: error_map.pixel_auroc(v, errors) for k, v in maps.items()},
                          'per_image_auroc': {k: per_image_auroc(v, errors) for k, v in maps.items()}}
  return out


def aggregate(paths: list[str]) -> str:
  runs = [json.load(open(p)) for p in paths]
  lines = [f'Pixel AUROC (%) for the pixels where f\'s mask is wrong, seeds '
           f'{", ".join(str(r["seed"]) for r in runs)} (pooled over all pixels; mean over images).', '',
           '| cases | map | pooled | mean over images |', '|---|---|---|---|']
  for part in runs[0]['parts']:
    for name in runs[0]['parts'][part]['pooled_auroc']:
      pooled = [100 * r['parts'][part]['pooled_auroc'][name] for r in runs]
      image = [100 * r['parts'][part]['per_image_auroc'][name] for r in runs]
      lines.append(f"| {part} | {name} | {np.mean(pooled):.1f} ({' / '.join(f'{v:.1f}' for v in pooled)}) | "
                   f"{np.mean(image):.1f} ({' / '.join(f'{v:.1f}' for v in image)}) |")
  return '\n'.join(lines) + '\n'


def main(argv):
  if _AGGREGATE.value:
    print(aggregate(_AGGREGATE.value + list(argv[1:])))
    return
  result = measure(_WORKDIR.value)
  artifacts.write_json(_OUT.value, result)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
