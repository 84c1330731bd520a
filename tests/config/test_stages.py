"""Which config changes a stage directory accepts on resume, from the one table in config/stages.py."""

import json

import pytest

from segqual_jax.config import schema, stages
from segqual_jax.core.errors import ConfigError


def test_every_field_has_a_role_and_the_first_matching_prefix_wins():
  for field in stages.flatten(schema.get_config()):
    stages.role(field)  # a schema field without a role raises KeyError naming it
  # exceptions listed before their family's prefix: the order of the table matters
  assert stages.role('seg.learning_rate') == stages.F_TRAIN
  assert stages.role('seg.eval_batch_size') == stages.FREE
  assert stages.role('quality.target') == stages.G_SHARED
  assert stages.role('quality.num_epochs') == stages.G_KIND['cnn']
  assert stages.role('calibration.fraction') == stages.G_SHARED
  assert stages.role('calibration.delta') == stages.CALIBRATION
  assert stages.role('predict.ood_alpha') == stages.CALIBRATION
  assert stages.role('predict.alpha') == stages.FREE
  assert stages.role('uncertainty.lce_budget') == stages.F_TRAIN
  assert stages.role('uncertainty.mc_samples') == stages.F_TEST
  with pytest.raises(KeyError, match='config.nothing.here has no role'):
    stages.role('nothing.here')


def test_numbers_are_compared_as_numbers(config, tmp_path):
  """A value read back with float noise, an int for a float or a chunk as a string is the
  same setting; a changed number or a bool for a number is not."""
  stages.record(str(tmp_path), config, 'seg')
  saved = json.loads((tmp_path / 'config.json').read_text())
  saved['seg']['learning_rate'] += 1e-18  # 0.010000000000000002: the same number, written by another tool
  saved['sampling']['chunk_size'] = 2  # an int where the config now has the string '2'
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  stages.check_matches_run(str(tmp_path), config, 'seg')
  before = stages.read_recorded(str(tmp_path / 'config.json'))
  assert stages.differences(before, {**before, 'seg.learning_rate': 0.011}, (stages.F_TRAIN,)) == [
      'seg.learning_rate']
  assert stages.differences({**before, 'runtime.threefry_partitionable': True},
                            {**before, 'runtime.threefry_partitionable': 1},
                            (stages.F_TRAIN,)) == ['runtime.threefry_partitionable']


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


def _trained_run(tmp_path, config) -> str:
  """A workdir whose records say: trained with calibration.fraction 0.3, base width 4, alpha 0.05."""
  config.calibration.fraction = 0.3
  config.predict.alpha = 0.05
  stages.record(str(tmp_path / 'seg'), config, 'seg')
  stages.record(str(tmp_path / 'quality' / 'uncertainty'), config, 'quality:cnn')
  return str(tmp_path)


def test_a_run_is_used_with_its_own_config(config, tmp_path):
  """No --config: every field is the run's, so a run trained with overrides needs none
  repeated; an override may change what the run does not fix (predict.*, batch sizes)."""
  workdir = _trained_run(tmp_path, config)
  given = schema.get_config()  # what main.py holds without --config
  used, notes = stages.for_run(workdir, given, from_file=False, overridden=set())
  assert used.calibration.fraction == 0.3 and used.seg.base_width == 4 and used.predict.alpha == 0.05
  assert used.data.image_size == 32 and notes == []
  stages.check_matches_run(str(tmp_path / 'seg'), used, 'seg')
  given.predict.alpha, given.seg.eval_batch_size = 0.1, 2
  used, _ = stages.for_run(workdir, given, from_file=False, overridden={'predict.alpha', 'seg.eval_batch_size'})
  assert used.predict.alpha == 0.1 and used.seg.eval_batch_size == 2 and used.calibration.fraction == 0.3


def test_an_override_that_would_change_the_models_is_refused_by_name(config, tmp_path):
  workdir = _trained_run(tmp_path, config)
  given = schema.get_config()
  given.calibration.fraction = 0.0
  with pytest.raises(ConfigError, match=r'--config\.calibration\.fraction=0\.0, the run has 0\.3'):
    stages.for_run(workdir, given, from_file=False, overridden={'calibration.fraction'})
  given.calibration.fraction, given.seg.base_width = 0.3, 16
  with pytest.raises(ConfigError, match=r'--config\.seg\.base_width=16, the run has 4'):
    stages.for_run(workdir, given, from_file=False, overridden={'calibration.fraction', 'seg.base_width'})


def test_a_config_file_sets_only_what_the_run_does_not_fix(config, tmp_path):
  """The file's own trained fields that differ (it lacks the run's overrides) keep the run's
  values and are named in a note; its predict fields are taken."""
  workdir = _trained_run(tmp_path, config)
  from configs import test as test_config
  given = test_config.get_config()  # calibration.fraction 0.0, predict.alpha 0.1
  used, notes = stages.for_run(workdir, given, from_file=True, overridden=set())
  assert used.calibration.fraction == 0.3 and used.predict.alpha == 0.1
  assert len(notes) == 1 and 'config.calibration.fraction' in notes[0] and "run's value is used" in notes[0]
  assert stages.for_run(str(tmp_path / 'nothing'), given, True, set()) == (given, [])
