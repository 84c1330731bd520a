"""Figures a person can read: scatter, uncertainty maps, risk-coverage.

matplotlib with the Agg backend (no screen needed); every figure is written to
a temporary file and renamed, so a crash never leaves a truncated PNG.
"""

from __future__ import annotations


import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segqual_jax.core import artifacts  # noqa: E402
from segqual_jax.metrics import quality as quality_metrics  # noqa: E402


def _save(fig, path: str) -> None:
  artifacts.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches='tight'),
                         suffix='.tmp.png')
  plt.close(fig)


def overlay(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Image with true positives green, false positives red, false negatives blue."""
  out = image.astype(np.float32) / 255.0
  pred, true = prediction.astype(bool), truth.astype(bool)
  for region, colour in ((pred & true, (0, 1, 0)), (pred & ~true, (1, 0, 0)), (~pred & true, (0, 0, 1))):
    out[region] = 0.45 * out[region] + 0.55 * np.asarray(colour)
  return out


def scatter(path: str, true: np.ndarray, predicted: dict[str, np.ndarray], target: str,
            thresholds: list[tuple[str, float]]) -> None:
  """True vs predicted quality, one panel per quality model, failure thresholds dashed."""
  n = len(predicted)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False, layout="constrained")
  for ax, (name, pred) in zip(axes[0], predicted.items()):
    ax.scatter(true, pred, s=8, alpha=0.6)
    ax.plot([0, 1], [0, 1], color='grey', lw=0.8)
    for label, t in thresholds:
      ax.axvline(t, ls='--', lw=0.8, color='tab:red')
      ax.axhline(t, ls='--', lw=0.8, color='tab:red')
      ax.text(t, 0.02, f' {label}', color='tab:red', fontsize=7, rotation=90, va='bottom')
    ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel=f'true {target}', ylabel=f'predicted {target}')
  _save(fig, path)


def uncertainty_maps(path: str, images, truths, predictions, umaps, dice, num_cases: int,
                     fail_dice: float) -> None:
  """Best and worst test cases: image, TP/FP/FN overlay, uncertainty map."""
  order = np.argsort(dice)
  chosen = list(order[::-1][:num_cases]) + list(order[:num_cases])
  fig, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.5 * len(chosen)), squeeze=False)
  vmax = float(np.percentile(umaps, 99.5)) or 1.0
  for row, i in zip(axes, chosen):
    row[0].imshow(images[i])
    row[0].set_title(f'case {i}: Dice {dice[i]:.3f}' + (f' (Dice < {fail_dice}: fail)' if dice[i] < fail_dice else ''), fontsize=8)
    row[1].imshow(overlay(images[i], predictions[i], truths[i]))
    row[1].set_title('green TP, red FP, blue FN', fontsize=8)
    im = row[2].imshow(umaps[i], cmap='viridis_r', vmin=0, vmax=vmax)
    row[2].set_title('uncertainty (purple = high)', fontsize=8)
    fig.colorbar(im, ax=row[2], fraction=0.046)
    for ax in row:
      ax.axis('off')
  _save(fig, path)


def risk_coverage(path: str, predicted: dict[str, np.ndarray], risk: np.ndarray) -> None:
  """Selective risk (1 - Dice of accepted cases) against coverage, per model and the oracle."""
  fig, ax = plt.subplots(figsize=(5, 4))
  for name, pred in predicted.items():
    cov, sel = quality_metrics.risk_coverage(pred, risk)
    ax.plot(cov, sel, label=f'{name} (AURC {np.mean(sel):.3f})')
  cov, sel = quality_metrics.risk_coverage(-risk, risk)
  ax.plot(cov, sel, 'k--', lw=0.8, label=f'oracle (AURC {np.mean(sel):.3f})')
  ax.set(xlabel='coverage (share of cases accepted)', ylabel='selective risk (1 - Dice)',
         xlim=(0, 1), ylim=(0, None))
  ax.legend(fontsize=7)
  _save(fig, path)
