"""The training loop's progress line and step hooks."""

from segqual_jax.training import loop


def test_first_progress_line_has_no_nan_rate():
  progress = loop.Progress('train_seg', 0, 10)
  progress.step_done(1)  # the first step: compilation, the clock starts after it
  first = progress.update(1, {'loss': 0.5})
  assert 'nan' not in first and 'timing starts now' in first
  progress.step_done(2)
  progress.step_done(3)
  later = progress.update(3, {'loss': 0.4})
  assert 'steps/s' in later and 'nan' not in later and 'ETA' in later
