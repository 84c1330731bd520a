"""Which config changes a stage directory accepts on resume, from the one table in config/stages.py."""

import json

import pytest

from segqual_jax.config import schema, stages
from segqual_jax.core.errors import ConfigError


def test_every_field_has_exactly_one_role_and_every_stage_known_roles():
  for field in stages.flatten(schema.get_config()):
    assert stages.role(field) in {r for _, r in stages.FIELD_ROLES}, field
  roles = {r for _, r in stages.FIELD_ROLES}
  for stage, needed in stages.STAGES.items():
    assert set(needed) <= roles, stage


def test_stage1_dir_ignores_quality_fields_but_not_seg_fields(config, tmp_path):
  out = str(tmp_path / 'seg')
  stages.record(out, config, 'seg')
  config.quality.models = 'uncertainty'
  config.quality.num_epochs = 7
  config.seg.eval_batch_size = 4  # a batch size never changes a result (per-case keys)
  stages.record(out, config, 'seg')  # f is unaffected
  config.uncertainty.mc_samples = 9
  with pytest.raises(ConfigError, match=r'config\.uncertainty\.mc_samples: 3 -> 9'):
    stages.record(out, config, 'seg')


def test_a_quality_model_depends_on_f_and_its_own_kind_only(config, tmp_path):
  stages.record(str(tmp_path), config, 'quality:cnn')
  config.cheap_qc.regressor = 'lasso'  # another kind's setting
  config.eval.fail_dice = 0.75  # evaluation settings never block a resume
  config.calibration.delta = 0.2  # the rules are redone in stage 2, the model is not
  stages.record(str(tmp_path), config, 'quality:cnn')
  config.quality.num_epochs = 7
  with pytest.raises(ConfigError, match=r'config\.quality\.num_epochs: 2 -> 7'):
    stages.record(str(tmp_path), config, 'quality:cnn')
  config.quality.num_epochs = 2
  config.seg.depth = 1
  with pytest.raises(ConfigError, match=r'config\.seg\.depth: 2 -> 1'):
    stages.record(str(tmp_path), config, 'quality:cnn')


def test_adding_a_quality_model_reuses_the_trained_ones(config, tmp_path):
  stages.record(str(tmp_path), config, 'quality:cnn')
  config.quality.models = 'uncertainty,qualitynet'
  stages.record(str(tmp_path), config, 'quality:cnn')  # no error: the existing g is unaffected


def test_fields_added_later_at_their_default_do_not_block_a_resume(config, tmp_path):
  """A workdir from before a field existed resumes while the field keeps its default;
  a field the schema no longer has (e.g. the old testing.*) is ignored."""
  out = tmp_path / 'seg'
  stages.record(str(out), config, 'seg')
  saved = json.loads((out / 'config.json').read_text())
  del saved['uncertainty']['mc_map']  # as written by a version without the field
  saved['testing'] = {'interrupt_at_step': 3}  # as written by a version with a field since removed
  (out / 'config.json').write_text(json.dumps(saved))
  stages.record(str(out), config, 'seg')
  (out / 'config.json').write_text(json.dumps(saved))  # the old file again
  config.uncertainty.mc_map = 'mutual_information'
  with pytest.raises(ConfigError, match=r"config\.uncertainty\.mc_map: None -> 'mutual_information'"):
    stages.record(str(out), config, 'seg')


def test_check_matches_run_names_the_disagreeing_fields(config, tmp_path):
  stages.record(str(tmp_path), config, 'seg')
  stages.check_matches_run(str(tmp_path), config, 'seg')
  config.data.image_size = 64
  config.method = 'lce'
  with pytest.raises(ConfigError, match=r"config\.data\.image_size=64 here, 32 in the run.*"
                                        r"config\.method='lce' here, 'msp' in the run"):
    stages.check_matches_run(str(tmp_path), config, 'seg')
