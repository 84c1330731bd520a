"""Bad configs fail fast with an error naming the field."""

import os
import subprocess
import sys

import pytest

from configs import default
from segqual_jax import config_validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_configs_are_valid():
  import importlib
  names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
                 if f.endswith('.py') and f not in ('__init__.py', 'isic2017.py', 'kvasir_seg.py'))
  assert {'msp', 'ensemble', 'tta', 'hierarchical', 'cheap_qc', 'rca', 'auto_accept'} <= set(names)
  for name in names:
    config_validation.validate(importlib.import_module(f'configs.{name}').get_config())
  from configs import isic2017, kvasir_seg
  for module in (isic2017, kvasir_seg):
    for method in isic2017.METHOD_CONFIGS:
      config_validation.validate(module.get_config(method))


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


def test_main_rejects_invalid_value_before_any_work(tmp_path):
  r = _main('--config=configs/test.py', f'--workdir={tmp_path}', '--config.uncertainty.mc_samples=-2')
  assert r.returncode != 0
  assert 'config.uncertainty.mc_samples=-2' in r.stderr
  assert not os.listdir(tmp_path)
