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
