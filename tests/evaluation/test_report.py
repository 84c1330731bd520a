"""The Table 1 formatter used for single runs and for mean +- std over seeds."""

from segqual_jax.evaluation import report


def _metrics(auroc, rmse):
  block = {'detection_error': 0.2, 'auroc': auroc, 'aupr_pass': 0.9, 'aupr_fail': None}
  return {'rmse': rmse, 'aurc': 0.05, 'e_aurc': 0.01, 'spearman': 0.7, 'dice<0.8': block}


def test_single_run_and_mean_std_cells():
  table = report.table_markdown({'LCE': [_metrics(0.8, 0.1), _metrics(0.9, 0.3)],
                                 'QualityNet': [_metrics(0.85, 0.2)]}, 'dice<0.8')
  lines = table.strip().splitlines()
  assert lines[0].startswith('| Method | RMSE | Det. err (%) | AUROC (%)')
  lce = lines[2].split(' | ')
  assert lce[1] == '0.200 ± 0.141'  # RMSE: mean, sample std (ddof=1)
  assert lce[3] == '85.0 ± 7.1'  # AUROC in %
  assert lce[5] == 'n/a'  # AUPR-Fail null in every seed
  assert lines[3].split(' | ')[3] == '85.0'  # one seed: the value alone


def test_row_names_and_titles():
  assert report.row_name('mc_dropout', 'uncertainty') == 'MC-dropout'
  assert report.row_name('lce', 'qualitynet') == 'QualityNet'
  assert report.threshold_title('dice<0.8') == 'Dice < 0.8'


def test_run_record_returns_a_result_only_for_the_same_identity(tmp_path):
  path = str(tmp_path / 'record.json')
  assert report.load_record(path) == {}
  identity = {'config': 'configs/isic2017.py:msp', 'seed': 1, 'models': 'uncertainty',
              'overrides': ['--config.calibration.fraction=0.3']}
  result = {'metrics': {'quality_models': {'Max probability': _metrics(0.9, 0.1)}},
            'seg': {'mean_dice': 0.8}}
  report.store_result(path, {}, 'msp_seed1', identity, result)
  record = report.load_record(path)  # the file, not the dict in memory
  assert report.recorded_result(record, 'msp_seed1', identity) == result
  assert report.recorded_result(record, 'msp_seed2', identity) is None
  for field, other in (('seed', 2), ('models', 'uncertainty,cheap_qc'), ('overrides', [])):
    assert report.recorded_result(record, 'msp_seed1', {**identity, field: other}) is None
  # A second run, and a second identity of the same run, are added without losing the first;
  # storing an identity again replaces its result.
  report.store_result(path, record, 'tta_seed1', {**identity, 'config': 'c:tta'}, result)
  with_rca = {**identity, 'models': 'uncertainty,rca'}
  report.store_result(path, record, 'msp_seed1', with_rca, {'metrics': {}, 'seg': {}})
  report.store_result(path, record, 'msp_seed1', with_rca, {'metrics': {'x': 1}, 'seg': {}})
  record = report.load_record(path)
  assert sorted(record) == ['msp_seed1', 'tta_seed1'] and len(record['msp_seed1']) == 2
  assert report.recorded_result(record, 'msp_seed1', identity) == result
  assert report.recorded_result(record, 'msp_seed1', with_rca) == {'metrics': {'x': 1}, 'seg': {}}
