"""Bad configs fail fast with an error naming the field."""

import os
import subprocess
import sys

import pytest

from configs import default
from segqual_jax.config import validation as config_validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_shipped_configs_are_valid():
  import importlib
  with_args = ('__init__.py', 'isic2017.py', 'kvasir_seg.py', 'synthetic.py', 'external.py')
  names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
                 if f.endswith('.py') and f not in with_args)
  assert {'msp', 'ensemble', 'tta', 'hierarchical', 'cheap_qc', 'rca', 'auto_accept'} <= set(names)
  for name in names:
    config_validation.validate(importlib.import_module(f'configs.{name}').get_config())
  from configs import bench, isic2017, kvasir_seg, synthetic
  for module in (isic2017, kvasir_seg):
    for method in isic2017.METHOD_CONFIGS:
      config_validation.validate(module.get_config(method))
  for name in synthetic.VARIANTS:
    config_validation.validate(synthetic.get_config(name))
  config_validation.validate(bench.get_config('quick'))
  from configs import external
  for kind in ('masks', 'probabilities'):
    config = external.get_config(kind)
    with pytest.raises(config_validation.ConfigError, match='needs config.data.root'):
      config_validation.validate(config)  # the user's folder is theirs to name
    config.data.root = '/data/mine'
    config_validation.validate(config)


def test_synthetic_aliases_equal_their_variant():
  """configs/lce.py etc. are thin aliases: the same config as synthetic.py:lce."""
  import importlib
  from configs import synthetic
  for name in synthetic.VARIANTS:
    alias = importlib.import_module(f'configs.{name}').get_config()
    assert alias.to_dict() == synthetic.get_config(name).to_dict(), name


def test_registries_match_the_names_the_config_accepts():
  """Validation cannot import JAX, so the schema lists the names; the registries must agree."""
  from segqual_jax.config import schema
  from segqual_jax.quality import cnn, registry
  from segqual_jax.segmenter import methods
  assert set(schema.METHODS) == set(methods.METHODS)
  assert tuple(registry.NAMES) == schema.QUALITY_MODELS and cnn.NAMES == schema.CNN_QUALITY_MODELS
  from segqual_jax.evaluation import report
  for name in schema.QUALITY_MODELS:  # every model has a table row under every method
    for method in schema.METHODS:
      assert report.row_name(method, name)


def test_every_field_has_a_rule():
  from segqual_jax.config import schema
  fields = set(config_validation.known_fields())
  ruled = {path for path, _, _ in config_validation._rules(schema.METHODS)}  # pylint: disable=protected-access
  # checked by cross-field rules in validate() instead
  cross_field = {'seg.central_levels'}
  assert fields - ruled - cross_field == set()


@pytest.mark.parametrize('path,value,field', [
    ('uncertainty.mc_samples', -1, 'config.uncertainty.mc_samples=-1'),
    ('uncertainty.hcnn_train_samples', 0, 'config.uncertainty.hcnn_train_samples=0'),
    ('seg.dropout_rate', 1.0, 'config.seg.dropout_rate=1.0'),
    ('seg.dropout_rate', -0.1, 'config.seg.dropout_rate=-0.1'),
    ('method', 'bayes', "config.method='bayes'"),
    ('data.image_size', 60, 'config.data.image_size=60'),
    ('seg.central_levels', 9, 'config.seg.central_levels=9'),
    ('uncertainty.ensemble_members', 1, 'config.uncertainty.ensemble_members=1'),
    ('uncertainty.tta_transforms', 9, 'config.uncertainty.tta_transforms=9'),
    ('quality.models', 'uncertainty,svm', "config.quality.models='uncertainty,svm'"),
    ('cheap_qc.regressor', 'svm', "config.cheap_qc.regressor='svm'"),
    ('calibration.fraction', 1.0, 'config.calibration.fraction=1.0'),
    ('seg.loss', 'dice', "config.seg.loss='dice'"),
    ('seg.lr_schedule', 'poly', "config.seg.lr_schedule='poly'"),
    ('seg.augment', 'elastic', "config.seg.augment='elastic'"),
    ('seg.foreground_fraction', 1.5, 'config.seg.foreground_fraction=1.5'),
    ('calibration.alphas', (0.1, 1.5), 'config.calibration.alphas='),
])
def test_invalid_values_name_the_field(path, value, field):
  cfg = default.get_config()
  section, _, leaf = path.rpartition('.')
  setattr(cfg[section] if section else cfg, leaf, value)
  with pytest.raises(config_validation.ConfigError, match=field.replace('.', r'\.').replace('(', r'\(')):
    config_validation.validate(cfg)


def test_misspelt_field_in_a_config_file_is_named():
  cfg = default.get_config()
  cfg.seg.droput_rate = 0.3
  with pytest.raises(config_validation.ConfigError, match=r'config\.seg\.droput_rate'):
    config_validation.validate(cfg)


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_main_rejects_unknown_override_before_any_work(tmp_path):
  r = _main('--config=configs/test.py', f'--workdir={tmp_path}', '--config.seg.nonsense=3')
  assert r.returncode != 0
  assert 'nonsense' in r.stderr
  assert not os.listdir(tmp_path)  # nothing was started


def test_misspelt_override_is_one_line_with_its_close_match(tmp_path):
  r = _main('--config=configs/test.py', f'--workdir={tmp_path}', '--config.seg.num_epoch=3')
  assert r.returncode != 0
  assert r.stderr.strip().splitlines() == [
      'error: --config.seg.num_epoch=3: unknown config field config.seg.num_epoch '
      '(did you mean config.seg.num_epochs?)'], r.stderr


def test_config_layer_loads_without_jax():
  """main validates the config before JAX loads: the config layer must not import it."""
  code = ('import sys; from segqual_jax.config import validation, stages, schema; '
          'from segqual_jax.core import errors, workdir; '
          "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))")
  r = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr


def test_main_rejects_invalid_value_before_any_work(tmp_path):
  r = _main('--config=configs/test.py', f'--workdir={tmp_path}', '--config.uncertainty.mc_samples=-2')
  assert r.returncode != 0
  assert 'config.uncertainty.mc_samples=-2' in r.stderr
  assert not os.listdir(tmp_path)


def test_mean_needs_two_quality_models_to_average():
  from segqual_jax.config import validation
  assert validation._variants_ok('uncertainty,cheap_qc,mean')
  assert not validation._variants_ok('uncertainty,mean')
  assert not validation._variants_ok('uncertainty,rca,mean')  # RCA is not averaged
