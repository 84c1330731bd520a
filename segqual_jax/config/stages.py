"""Which result depends on which config field: one table, read by resume, reuse and predict.

Every field has one *role* (``FIELD_ROLES``, the first matching prefix wins):

* ``f_train`` -- shapes f's parameters (seed, data, U-Net, training losses);
* ``f_test`` -- shapes f's test-time outputs (samples, maps, scores);
* ``g_shared`` -- which cases and which target every quality model learns;
* ``g_cnn`` / ``g_cheap_qc`` / ``g_rca`` -- one kind of quality model's own settings;
* ``external`` -- the outside segmentations under review and the maps g sees of them;
* ``applicability`` -- the score of how unlike f's in-distribution cases an image is;
* ``calibration`` -- the auto-accept rules (stage 2, after the quality models and the score);
* ``free`` -- never changes a result (logging, batch sizes, paths, where
  processes meet, what to evaluate or predict).

A stage's directory records the config that made it; a rerun with a
different value of a field the stage depends on (``STAGES``) is refused,
naming the field, instead of silently mixing two configs. ``predict`` and
``evaluate`` check the given config against the trained run the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from segqual_jax.config import schema
from segqual_jax.core import artifacts, values
from segqual_jax.core.errors import ConfigError

F_TRAIN, F_TEST, G_SHARED, CALIBRATION, FREE = 'f_train', 'f_test', 'g_shared', 'calibration', 'free'
APPLICABILITY = 'applicability'
EXTERNAL = 'external'
G_KIND = {'cnn': 'g_cnn', 'cheap_qc': 'g_cheap_qc', 'rca': 'g_rca'}

FIELD_ROLES = (
    ('seed', F_TRAIN),
    ('method', F_TRAIN),
    ('data.data_dir', FREE),  # where TFDS keeps prepared data
    ('data.', F_TRAIN),
    ('seg.log_every_steps', FREE),
    ('seg.checkpoint_every_steps', FREE),
    ('seg.eval_batch_size', FREE),  # each case has its own key: batches do not change samples
    ('seg.reuse_from', FREE),  # the copied f is checked to be the same f
    ('seg.', F_TRAIN),
    ('uncertainty.hcnn_train_samples', F_TRAIN),
    ('uncertainty.lce_', F_TRAIN),
    ('uncertainty.ensemble_members', F_TRAIN),
    ('uncertainty.hier_kl_weight', F_TRAIN),
    ('uncertainty.', F_TEST),
    ('sampling.', F_TEST),  # the chunk changes the summation order of the samples
    ('runtime.threefry_partitionable', F_TRAIN),  # draws other random bits
    ('runtime.', FREE),
    ('quality.models', FREE),  # which models to train; each model's result ignores the list
    ('quality.eval_batch_size', FREE),
    ('quality.log_every_steps', FREE),
    ('quality.checkpoint_every_steps', FREE),
    ('quality.label_source', G_SHARED),
    ('quality.oof_folds', G_SHARED),
    ('quality.target', G_SHARED),
    ('quality.label_resolution', G_SHARED),
    ('quality.shift_', G_SHARED),  # corrupted copies join every quality model's training cases
    ('quality.', G_KIND['cnn']),
    ('cheap_qc.', G_KIND['cheap_qc']),
    ('rca.', G_KIND['rca']),
    ('external.', EXTERNAL),  # what every quality model judges (f itself is still the surrogate)
    ('applicability.', APPLICABILITY),
    ('calibration.fraction', G_SHARED),  # the calibration cases are held out from g
    ('calibration.', CALIBRATION),
    ('eval.fail_dice', CALIBRATION),  # the failure the rules bound; free for everything else
    ('eval.', FREE),
    ('predict.ood_alpha', CALIBRATION),  # the rules are calibrated on the cases the gate lets through
    ('predict.', FREE),
    ('bench.', FREE),
)

# Paths compared after resolving symlinks: the same data reached another way is the same data.
PATH_FIELDS = ('data.root', 'external.predictions')

_F = (F_TRAIN, F_TEST)
STAGES = {
    'seg': _F,
    'seg_reuse': (F_TRAIN,),  # a reused f: the method is checked by training family instead
    'quality:cnn': _F + (EXTERNAL, G_SHARED, G_KIND['cnn']),
    'quality:cheap_qc': _F + (EXTERNAL, G_SHARED, G_KIND['cheap_qc']),
    'quality:rca': _F + (EXTERNAL, G_SHARED, G_KIND['rca']),
    'quality:mean': _F + (EXTERNAL, G_SHARED),  # fits nothing: its members' settings are theirs
}


def role(field: str) -> str:
  """The role of a flattened field name (``'seg.depth'``)."""
  for prefix, r in FIELD_ROLES:
    if field == prefix or (prefix.endswith('.') or prefix.endswith('_')) and field.startswith(prefix):
      return r
  raise KeyError(f'config.{field} has no role in config/stages.py')


def quality_stage(model: str) -> str:
  """The stage of quality model ``model`` (the three CNN inputs share one kind)."""
  return f'quality:{model}' if model in ('cheap_qc', 'rca', 'mean') else 'quality:cnn'


def flatten(cfg, prefix: str = '') -> dict[str, Any]:
  """``{'seg.depth': 4, ...}`` for a nested ConfigDict or dict."""
  out = {}
  for key, value in cfg.items():
    path = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, path + '.'))
    else:
      out[path] = value
  return out


def as_flat(config) -> dict[str, Any]:
  """A config as flat JSON values (tuples become lists, as in a recorded config.json)."""
  return flatten(json.loads(config.to_json()))


def differences(before: dict[str, Any], now: dict[str, Any], roles) -> list[str]:
  """Fields of ``roles`` whose values differ between two flat configs.

  A field absent from ``before`` at its default changes nothing (fields are
  added with defaults that keep the old behaviour); a field the schema no
  longer has is ignored; a value whose type only widened (chunk 10 -> '10')
  is unchanged; a data path reached through a symlink is the same path.
  """
  defaults = as_flat(schema.get_config())
  out = []
  for k in sorted(set(before) | set(now)):
    if k not in defaults or role(k) not in roles:
      continue
    if k not in before and values.same(now.get(k), defaults[k]):
      continue
    a, b = before.get(k), now.get(k)
    if k in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
      a, b = os.path.realpath(a), os.path.realpath(b)
    if not values.same(a, b):
      out.append(k)
  return out


def read_recorded(path: str) -> dict[str, Any]:
  with open(path) as f:
    return flatten(json.load(f))


def record(out_dir: str, config, stage: str) -> None:
  """Creates ``out_dir`` and records ``config``; refuses a dir made with other values of
  the fields ``stage`` depends on (a resume must continue the same run)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'config.json')
  if os.path.exists(path):
    before = read_recorded(path)
    diff = differences(before, as_flat(config), STAGES[stage])
    if diff:
      details = ', '.join(f'config.{k}: {before.get(k)!r} -> {as_flat(config).get(k)!r}' for k in diff)
      raise ConfigError(f'{path} was written by a run with a different config ({details}). '
                        'Use a new --workdir, or the original config to resume.')
  artifacts.write_text(path, config.to_json(indent=2))


def check_matches_run(out_dir: str, config, stage: str) -> None:
  """Raises ``ConfigError`` naming every field ``stage`` depends on that ``config`` sets
  differently from the trained run in ``out_dir`` (its recorded ``config.json``).

  Why: predict and evaluate must judge with the model that was trained; a
  different ``data.image_size`` or method would silently give other numbers,
  or fail deep inside checkpoint restoring.
  """
  path = os.path.join(out_dir, 'config.json')
  if not os.path.exists(path):
    return
  before, now = read_recorded(path), as_flat(config)
  diff = differences(before, now, STAGES[stage])
  if diff:
    details = '; '.join(f'config.{k}={now.get(k)!r} here, {before.get(k)!r} in the run' for k in diff)
    raise ConfigError(f'the config disagrees with the trained run in {out_dir}: {details}. '
                      'Use the config the run was trained with (or drop the overrides).')


def quality_model_names(config) -> list[str]:
  """The configured quality models (``quality.models``), in order."""
  return [v.strip() for v in config.quality.models.split(',') if v.strip()]


def calibration_settings(config) -> dict:
  """What a calibration of the auto-accept rules depends on (roles ``g_shared``'s
  ``calibration.fraction`` and ``calibration``); stored rules made with other
  settings are redone by stage 2 and refused by evaluate and predict."""
  cal = config.calibration
  return {'fraction': cal.fraction, 'alphas': [float(a) for a in cal.alphas], 'delta': cal.delta,
          'starts': cal.starts, 'grid_size': cal.grid_size, 'fail_dice': config.eval.fail_dice,
          'ood_alpha': config.predict.ood_alpha, 'applicability': applicability_settings(config)}


def applicability_settings(config) -> dict:
  """What the fitted applicability score depends on (besides f): a stored score made with
  other settings is refitted by stage 2."""
  a = config.applicability
  return {'score': a.score, 'knn_k': a.knn_k, 'reference_fraction': a.reference_fraction,
          'calibration_fraction': config.calibration.fraction,
          # the feature blocks the score is fitted on (a score stored before they were named
          # was fitted on other features: refitted, never applied to these)
          'views': [v.strip() for v in a.views.split(',') if v.strip()],
          'batch_views': [v.strip() for v in a.batch_views.split(',') if v.strip()],
          'image_fit': a.image_fit}


# What a trained run fixes: a field of these roles shapes f, the cases and targets the
# quality models learned, or the fitted applicability score. Everything else -- what
# predict decides and how (predict.*, the rules' alpha, eval.*), batch sizes, logging,
# paths -- may be set anew when the run is used.
TRAINED_ROLES = _F + (EXTERNAL, G_SHARED, APPLICABILITY, *G_KIND.values())


def recorded_config_path(workdir: str, quality_model: str | None = None) -> str | None:
  """A trained run's recorded ``config.json``: ``quality_model``'s own stage-2 record when
  given and present, else the newest stage-2 record (the last stage 2 fitted the gate and
  the rules), else stage 1's."""
  quality_root = os.path.join(workdir, 'quality')
  if quality_model:
    own = os.path.join(quality_root, quality_model, 'config.json')
    if os.path.exists(own):
      return own
  records = []
  if os.path.isdir(quality_root):
    records = [os.path.join(quality_root, d, 'config.json') for d in sorted(os.listdir(quality_root))]
    records = [p for p in records if os.path.exists(p)]
  if records:
    return max(records, key=os.path.getmtime)
  seg = os.path.join(workdir, 'seg', 'config.json')
  return seg if os.path.exists(seg) else None


def from_flat(flat: dict[str, Any]) -> ml_collections.ConfigDict:
  """A schema config with ``flat``'s values (JSON lists become the schema's tuples; a field
  the schema no longer has is dropped; one it gained keeps its default)."""
  config = schema.get_config()
  defaults = flatten(config)
  for key, value in flat.items():
    if key not in defaults:
      continue
    if isinstance(defaults[key], tuple) and isinstance(value, list):
      value = tuple(value)
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def for_run(workdir: str, given, from_file: bool, overridden: set[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
  """The config to use a trained run with (predict, evaluate): the run's own recorded one.

  ``given`` is the command line's config: the ``--config`` file with its
  overrides when ``from_file``, else the schema's defaults with the overrides
  (``overridden``: the flattened names given as ``--config.x=y``). From it
  come only the fields a trained run does not fix (``TRAINED_ROLES``): the
  file's and the overrides' when there is a file, the overrides' alone when
  there is none. A trained field the file sets otherwise keeps the run's value
  (listed in the returned notes); one an override sets otherwise is refused by
  name -- the user asked for a model the run does not have.

  Returns ``(config, notes)``. A workdir without a record returns ``given``
  unchanged, so the stage's own check says what is not trained.
  """
  now = as_flat(given)
  path = recorded_config_path(workdir)  # the newest record: the last stage 2 fitted the gate and rules
  if path is None:
    return given, []
  recorded = read_recorded(path)
  explicit = from_file or 'predict.quality_model' in overridden
  model = now.get('predict.quality_model') if explicit else recorded.get('predict.quality_model')
  own = recorded_config_path(workdir, model)
  if own != path and own is not None and model and model != 'mean':  # its own settings, from its own record
    kind = G_KIND[model if model in ('cheap_qc', 'rca') else 'cnn']
    known = as_flat(schema.get_config())
    recorded.update({k: v for k, v in read_recorded(own).items() if k in known and role(k) == kind})
  differ = differences(recorded, now, TRAINED_ROLES)
  refused = [k for k in differ if k in overridden]
  if refused:
    details = '; '.join(f'--config.{k}={now.get(k)!r}, the run has {recorded.get(k, as_flat(schema.get_config()).get(k))!r}'
                        for k in refused)
    raise ConfigError(f'{details}: the trained run in {workdir} was made with other values of '
                      f'{"this field" if len(refused) == 1 else "these fields"}, which shape its '
                      'models (recorded in ' + path + '). Drop the override, or train a run with it.')
  merged = dict(recorded)
  for key in as_flat(schema.get_config()):
    if role(key) not in TRAINED_ROLES and (from_file or key in overridden):
      merged[key] = now.get(key)
  notes = [f'config.{k}: the --config file says {now.get(k)!r}, the run was trained with '
           f'{recorded.get(k)!r}; the run\'s value is used' for k in differ] if from_file else []
  config = from_flat(merged)
  config.lock()
  return config, notes
