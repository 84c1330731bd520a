"""Which config changes a stage directory accepts on resume."""

import pytest

from segqual_jax.config_validation import ConfigError
from segqual_jax.training import loop, train_seg


def test_stage1_dir_ignores_quality_fields_but_not_seg_fields(config, tmp_path):
  out = str(tmp_path / 'seg')
  loop.prepare_stage_dir(out, config, train_seg.STAGE1_FIELDS)
  config.quality.models = 'uncertainty'
  config.quality.num_epochs = 7
  loop.prepare_stage_dir(out, config, train_seg.STAGE1_FIELDS)  # f is unaffected
  config.uncertainty.mc_samples = 9
  with pytest.raises(ConfigError, match=r'config\.uncertainty\.mc_samples: 3 -> 9'):
    loop.prepare_stage_dir(out, config, train_seg.STAGE1_FIELDS)


def test_full_dependency_by_default(config, tmp_path):
  loop.prepare_stage_dir(str(tmp_path), config)
  config.quality.num_epochs = 7
  with pytest.raises(ConfigError, match=r'config\.quality\.num_epochs: 2 -> 7'):
    loop.prepare_stage_dir(str(tmp_path), config)
  config.quality.num_epochs = 2
  config.eval.fail_dice = 0.75  # evaluation settings never block a resume
  loop.prepare_stage_dir(str(tmp_path), config)


def test_adding_a_quality_variant_reuses_the_trained_ones(config, tmp_path):
  loop.prepare_stage_dir(str(tmp_path), config)
  config.quality.models = 'uncertainty,qualitynet'
  loop.prepare_stage_dir(str(tmp_path), config)  # no error: the existing g is unaffected


def test_fields_added_later_at_their_default_do_not_block_a_resume(config, tmp_path):
  """A workdir from before a field existed resumes while the field keeps its default."""
  import json
  out = tmp_path / 'seg'
  loop.prepare_stage_dir(str(out), config, train_seg.STAGE1_FIELDS)
  saved = json.loads((out / 'config.json').read_text())
  del saved['uncertainty']['mc_map']  # as written by a version without the field
  (out / 'config.json').write_text(json.dumps(saved))
  loop.prepare_stage_dir(str(out), config, train_seg.STAGE1_FIELDS)
  (out / 'config.json').write_text(json.dumps(saved))  # the old file again
  config.uncertainty.mc_map = 'mutual_information'
  with pytest.raises(ConfigError, match=r"config\.uncertainty\.mc_map: None -> 'mutual_information'"):
    loop.prepare_stage_dir(str(out), config, train_seg.STAGE1_FIELDS)
