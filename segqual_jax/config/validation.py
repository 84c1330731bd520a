"""Config checks that run before any work starts (and before JAX is imported).

ml_collections' locked configs already reject an unknown ``--config.x=y``
override; a config *file* can still add a misspelt field, and no type system
stops ``dropout_rate=1.5``. ``validate`` catches both and names the field, so a
mistake costs a second, not a ten-minute run.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import ml_collections

from segqual_jax.config import schema
from segqual_jax.config.stages import flatten
from segqual_jax.core.errors import ConfigError  # noqa: F401  (raised here; importers catch it)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _names(value: str) -> list[str]:
  """The names of a comma-separated list field (blanks dropped)."""
  return [v.strip() for v in value.split(',') if v.strip()]


def _views_ok(value) -> bool:
  """``applicability.views``: views of known blocks, image statistics joined by '+', each
  block once (``segmenter/runner.feature_blocks`` reads them)."""
  if not isinstance(value, str) or not _names(value):
    return False
  parts = [[n.strip() for n in view.split('+')] for view in _names(value)]
  used = [n for view in parts for n in view]
  return (set(used) <= set(schema.APPLICABILITY_VIEWS) and len(set(used)) == len(used)
          and all(len(view) == 1 for view in parts if {'encoder', 'encoder_grid'} & set(view)))


def _positive_int(v) -> bool:
  return _is_int(v) and v >= 1


QUALITY_MODELS = schema.QUALITY_MODELS


def _variants_ok(value: str) -> bool:
  names = [v.strip() for v in value.split(',') if v.strip()]
  members = [n for n in names if n not in ('mean', 'rca')]
  return (bool(names) and len(set(names)) == len(names) and set(names) <= set(QUALITY_MODELS)
          and ('mean' not in names or len(members) >= 2))


def _map_channels_ok(value) -> bool:
  names = [v.strip() for v in value.split(',') if v.strip()] if isinstance(value, str) else []
  return bool(names) and len(set(names)) == len(names) and set(names) <= set(schema.EXTERNAL_MAP_CHANNELS)


def _positive_ints(value) -> bool:
  return isinstance(value, (tuple, list)) and len(value) >= 1 and all(_positive_int(v) for v in value)


def _split_spec_ok(value) -> bool:
  if not isinstance(value, str):
    return False
  items = [i for i in value.split(',') if i.strip()]
  for item in items:
    split, sep, path = item.partition('=')
    if not sep or split.strip() not in ('train', 'validation', 'quality', 'test') or not path.strip():
      return False
  return True


def _cases_ok(value) -> bool:
  if not isinstance(value, str) or not value.strip():
    return False
  for item in value.split(','):
    parts = item.strip().lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
      return False
  return True


def _rules(methods) -> list[tuple[str, Callable[[Any], bool], str]]:
  return [
      ('seed', _is_int, 'must be an integer'),
      ('method', lambda v: v in methods, f'must be one of {sorted(methods)}'),
      ('data.name', lambda v: v in ('synthetic', 'folder', 'isic2017', 'nnunet'),
       'must be synthetic, folder, isic2017 or nnunet'),
      ('data.root', lambda v: isinstance(v, str), 'must be a path'),
      ('data.data_dir', lambda v: isinstance(v, str), 'must be a path or empty'),
      ('data.seed', _is_int, 'must be an integer'),
      ('data.splits', _split_spec_ok,
       'must be comma-separated SPLIT=PATH items with SPLIT in train, validation, quality, test'),
      ('data.image_size', _positive_int, 'must be a positive integer'),
      ('data.num_train', _positive_int, 'must be >= 1'),
      ('data.num_validation', _positive_int, 'must be >= 1'),
      ('data.num_quality', lambda v: _is_int(v) and v >= 0, 'must be >= 0'),
      ('data.num_test', lambda v: _is_int(v) and v >= 0, 'must be >= 0'),
      ('seg.base_width', _positive_int, 'must be >= 1'),
      ('seg.depth', _positive_int, 'must be >= 1'),
      ('seg.dropout_rate', lambda v: isinstance(v, (int, float)) and 0.0 <= v < 1.0,
       'must be in [0, 1)'),
      ('seg.norm', lambda v: v in ('group', 'none'), 'must be "group" or "none"'),
      ('seg.batch_size', _positive_int, 'must be >= 1'),
      ('seg.learning_rate', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('seg.lr_schedule', lambda v: v in ('constant', 'cosine'), 'must be "constant" or "cosine"'),
      ('seg.loss', lambda v: v in ('ce', 'ce_dice'), 'must be "ce" or "ce_dice"'),
      ('seg.augment', lambda v: v in ('dihedral', 'nnunet'), 'must be "dihedral" or "nnunet"'),
      ('seg.foreground_fraction', lambda v: isinstance(v, (int, float)) and 0.0 <= v <= 1.0,
       'must be in [0, 1]'),
      ('seg.num_epochs', _positive_int, 'must be >= 1'),
      ('seg.eval_batch_size', _positive_int, 'must be >= 1'),
      ('seg.log_every_steps', _positive_int, 'must be >= 1'),
      ('seg.checkpoint_every_steps', _positive_int, 'must be >= 1'),
      ('seg.reuse_from', lambda v: isinstance(v, str), 'must be a workdir path or empty'),
      ('uncertainty.mc_samples', _positive_int, 'must be >= 1 (the number of passes T)'),
      ('uncertainty.hcnn_train_samples', _positive_int, 'must be >= 1'),
      ('uncertainty.hcnn_test_samples', lambda v: _is_int(v) and v >= 0,
       'must be >= 0 (0: mean-field closed form)'),
      ('uncertainty.mc_map', lambda v: v in ('entropy', 'mutual_information'),
       'must be "entropy" or "mutual_information"'),
      ('uncertainty.hcnn_map', lambda v: v in ('sigma', 'entropy'), 'must be "sigma" or "entropy"'),
      ('uncertainty.lce_budget', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('uncertainty.lce_lambda_init', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('uncertainty.ensemble_members', lambda v: _is_int(v) and v >= 2, 'must be >= 2'),
      ('uncertainty.hier_samples', _positive_int, 'must be >= 1'),
      ('uncertainty.hier_kl_weight', lambda v: isinstance(v, (int, float)) and v >= 0, 'must be >= 0'),
      ('uncertainty.tta_transforms', lambda v: _is_int(v) and 1 <= v <= 8, 'must be in 1..8'),
      ('uncertainty.score_band_px', _positive_int, 'must be >= 1'),
      ('sampling.chunk_size',
       lambda v: v in ('auto', 'measure') or (str(v).isdigit() and int(v) >= 1),
       'must be "auto", "measure" or a positive integer'),
      ('sampling.dtype', lambda v: v in ('float32', 'bfloat16'), 'must be float32 or bfloat16'),
      ('sampling.auto_accelerator_memory_fraction',
       lambda v: isinstance(v, (int, float)) and 0 < v <= 1, 'must be in (0, 1]'),
      ('quality.models', lambda v: isinstance(v, str) and _variants_ok(v),
       f'must be a comma-separated, non-empty subset of {",".join(QUALITY_MODELS)} (mean needs two '
       'others besides rca to average)'),
      ('quality.label_source', lambda v: v in ('holdout', 'train', 'oof'),
       'must be holdout, train or oof'),
      ('quality.oof_folds', lambda v: _is_int(v) and v >= 2, 'must be >= 2'),
      ('quality.target', lambda v: v in ('jaccard', 'dice'), 'must be "jaccard" or "dice"'),
      ('quality.label_resolution', lambda v: v in schema.LABEL_RESOLUTIONS,
       f'must be one of {", ".join(schema.LABEL_RESOLUTIONS)}'),
      ('external.predictions', lambda v: isinstance(v, str), 'must be a folder path or empty'),
      ('external.map_channels', _map_channels_ok,
       f'must be a comma-separated, non-repeating subset of {",".join(schema.EXTERNAL_MAP_CHANNELS)}'),
      ('quality.widths', lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(_positive_int(w) for w in v),
       'must be a non-empty tuple of positive integers'),
      ('quality.dense', _positive_int, 'must be >= 1'),
      ('quality.batch_size', _positive_int, 'must be >= 1'),
      ('quality.learning_rate', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('quality.num_epochs', _positive_int, 'must be >= 1'),
      ('quality.rank_weight', lambda v: isinstance(v, (int, float)) and v >= 0, 'must be >= 0'),
      ('quality.eval_batch_size', _positive_int, 'must be >= 1'),
      ('quality.log_every_steps', _positive_int, 'must be >= 1'),
      ('quality.checkpoint_every_steps', _positive_int, 'must be >= 1'),
      ('predict.quality_model', lambda v: v in QUALITY_MODELS, f'must be one of {", ".join(QUALITY_MODELS)}'),
      ('predict.alpha', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('predict.ood_alpha', lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
       'must be in [0, 1) (0 turns the applicability gate off)'),
      ('predict.on_shift', lambda v: v in ('suspend', 'review_unusual', 'warn'),
       'must be "suspend", "review_unusual" or "warn"'),
      ('predict.shift_alpha', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('predict.shift_min_cases', _positive_int, 'must be >= 1'),
      ('predict.unusual_fdr', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('predict.monitor_delta', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('quality.shift_corruptions', lambda v: isinstance(v, str) and set(
          c.strip() for c in v.split(',') if c.strip()) <= set(schema.CORRUPTIONS),
       f'must be empty or a comma-separated subset of {",".join(schema.CORRUPTIONS)}'),
      ('quality.shift_severities', lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(
          _is_int(s) and 1 <= s <= 3 for s in v), 'must be a non-empty tuple of severities in 1..3'),
      ('quality.shift_copies', _positive_int, 'must be >= 1'),
      ('predict.maps', lambda v: v in ('all', 'flagged', 'none'), 'must be all, flagged or none'),
      ('quality.error_map', lambda v: isinstance(v, bool), 'must be True or False'),
      ('predict.interval', lambda v: v in ('scaled', 'constant', 'none'), 'must be scaled, constant or none'),
      ('predict.interval_alpha', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('predict.interval_floor', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('predict.page_size', _positive_int, 'must be >= 1'),
      ('predict.chunk_cases', _positive_int, 'must be >= 1'),
      ('predict.read_threads', _positive_int, 'must be >= 1'),
      ('applicability.score', lambda v: v in schema.APPLICABILITY_SCORES,
       f'must be one of {", ".join(schema.APPLICABILITY_SCORES)}'),
      ('applicability.knn_k', _positive_int, 'must be >= 1'),
      ('applicability.views', _views_ok,
       f'must be comma-separated views, each one of {", ".join(schema.APPLICABILITY_VIEWS)} or '
       "image statistics joined by '+' (tone+texture; encoder alone), none used twice"),
      ('applicability.batch_views', lambda v: v == '' or _views_ok(v),
       "must be '' (the gate's own score) or views as applicability.views"),
      ('applicability.reference_fraction', lambda v: isinstance(v, (int, float)) and 0 < v < 1,
       'must be in (0, 1)'),
      ('applicability.image_fit', lambda v: v in ('', 'train'),
       "must be 'train' (f's training images) or '' (the quality split's fitting cases); never a "
       'split that may share cases with the reference set'),
      ('cheap_qc.regressor', lambda v: v in ('gradient_boosting', 'random_forest', 'lasso'),
       'must be gradient_boosting, random_forest or lasso'),
      ('rca.references', _positive_int, 'must be >= 1'),
      ('rca.steps', _positive_int, 'must be >= 1'),
      ('rca.learning_rate', lambda v: isinstance(v, (int, float)) and v > 0, 'must be > 0'),
      ('rca.base_width', _positive_int, 'must be >= 1'),
      ('rca.depth', _positive_int, 'must be >= 1'),
      ('calibration.fraction', lambda v: isinstance(v, (int, float)) and 0 <= v < 1, 'must be in [0, 1)'),
      ('calibration.alphas', lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(
          isinstance(a, (int, float)) and 0 < a < 1 for a in v), 'must be a non-empty tuple of rates in (0, 1)'),
      ('calibration.delta', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('calibration.starts', _positive_int, 'must be >= 1'),
      ('calibration.grid_size', lambda v: _is_int(v) and v >= 2, 'must be >= 2'),
      ('eval.fail_dice', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('eval.fail_jaccard', lambda v: isinstance(v, (int, float)) and 0 < v < 1, 'must be in (0, 1)'),
      ('eval.num_figure_cases', _positive_int, 'must be >= 1'),
      ('bench.methods', lambda v: isinstance(v, str) and bool(v.strip()) and all(
          m.strip() in ('mc_dropout', 'hcnn', 'ensemble') for m in v.split(',') if m.strip()),
       'must be a comma-separated subset of mc_dropout,hcnn,ensemble'),
      ('bench.cases', _cases_ok, 'must be comma-separated SIZExBATCH items, e.g. 128x8,64x32'),
      ('bench.samples', _positive_ints, 'must be a non-empty tuple of positive integers'),
      ('bench.chunk_sweep', lambda v: v == () or v == [] or _positive_ints(v),
       'must be a tuple of positive integers (empty: no sweep)'),
      ('bench.repeats', _positive_int, 'must be >= 1'),
      ('bench.ceiling_batch', lambda v: _is_int(v) and v >= 0, 'must be >= 0 (0: the case\'s batch)'),
      ('bench.base_widths', lambda v: v == () or v == [] or _positive_ints(v),
       'must be a tuple of positive integers (empty: seg.base_width)'),
      ('bench.dtypes', lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(
          d in ('float32', 'bfloat16') for d in v), 'must be a non-empty tuple of float32 / bfloat16'),
      ('bench.matmul_size', _positive_int, 'must be >= 1'),
      ('runtime.distributed', lambda v: isinstance(v, bool), 'must be True or False'),
      ('runtime.coordinator_address', lambda v: isinstance(v, str), 'must be a string (host:port)'),
      ('runtime.num_processes', lambda v: _is_int(v) and v >= 0, 'must be >= 0 (0: auto-detect)'),
      ('runtime.process_id', lambda v: _is_int(v) and v >= -1, 'must be >= -1 (-1: auto-detect)'),
      ('runtime.threefry_partitionable', lambda v: isinstance(v, bool), 'must be True or False'),
      ('runtime.matmul_precision', lambda v: v in ('default', 'highest'), 'must be "default" or "highest"'),
  ]


def known_fields() -> list[str]:
  """Every field of the schema, flattened (``'seg.depth'``)."""
  return list(flatten(schema.get_config()))


def unknown_field_text(field: str) -> str:
  """``config.seg.num_epoch (did you mean config.seg.num_epochs?)`` for a misspelt field."""
  close = difflib.get_close_matches(field, known_fields(), n=1, cutoff=0.6)
  return f'config.{field}' + (f' (did you mean config.{close[0]}?)' if close else '')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` naming the first bad field of ``config``.

  Checks that every field exists in the base config (catches misspellings in
  config files), that each value is valid, and cross-field constraints.
  """
  known = flatten(schema.get_config())
  given = flatten(config)
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ConfigError(f'unknown config field(s): {", ".join(unknown_field_text(u) for u in unknown)}')
  missing = sorted(set(known) - set(given))
  if missing:
    raise ConfigError(f'missing config field(s): {", ".join("config." + m for m in missing)}')
  for path, ok, message in _rules(schema.METHODS):
    if not ok(given[path]):
      raise ConfigError(f'config.{path}={given[path]!r}: {message}')
  if config.data.name != 'synthetic' and not config.data.root:
    raise ConfigError(f'config.data.name={config.data.name!r} needs config.data.root '
                      '(the folder with images/ and masks/, or the ISIC 2017 download)')
  if config.external.predictions.strip():
    if config.quality.label_source == 'oof':
      raise ConfigError('config.quality.label_source=oof trains extra copies of f for their outputs; '
                        'with config.external.predictions the outside model\'s segmentations are '
                        'judged: use holdout (or train, if it segmented f\'s training split too)')
    if config.quality.shift_corruptions.strip():
      raise ConfigError('config.quality.shift_corruptions labels corrupted copies by running f on '
                        'them; the outside model of config.external.predictions never saw them: '
                        'set quality.shift_corruptions=\'\'')
  if config.data.name == 'nnunet':
    refused = [(config.quality.label_resolution != 'model', 'quality.label_resolution must be model '
                '(slices are labelled at the model\'s size; volumes are judged on their own grid)')]
    for bad, why in refused:
      if bad:
        raise ConfigError(f'config.data.name=nnunet: {why}')
  if config.seg.central_levels < 0 or config.seg.central_levels > config.seg.depth:
    raise ConfigError(f'config.seg.central_levels={config.seg.central_levels!r}: '
                      f'must be in [0, seg.depth={config.seg.depth}]')
  if config.data.image_size % 2**config.seg.depth:
    raise ConfigError(f'config.data.image_size={config.data.image_size}: must be divisible by '
                      f'2**seg.depth = {2**config.seg.depth}')
  if config.data.image_size % 2**len(config.quality.widths):
    raise ConfigError(f'config.quality.widths={tuple(config.quality.widths)}: image_size '
                      f'{config.data.image_size} must be divisible by 2**len(widths)')
  if config.data.image_size % 2**config.rca.depth:
    raise ConfigError(f'config.rca.depth={config.rca.depth}: image_size {config.data.image_size} '
                      f'must be divisible by 2**rca.depth')
