"""Seeded image corruptions at three severities: how a QC tool meets a shifted input.

Used twice: by stage 2's shift-aware training (``quality.shift_corruptions``:
the quality models also learn from corrupted copies of their cases, labelled
by running f on them, so they see how f degrades) and by
``experiments/shift.py``'s shift suite. Each is numpy/PIL only, works on
uint8 (H, W, 3) images of any size, and draws its randomness from the case
(``case_rng``), so a corrupted copy is the same in every run.

Severities (1 mild .. 3 strong), chosen to span "a scan from a slightly
different device" to "a scan nobody should grade automatically":

==========  ==========================  ==========  ==========
corruption  parameter                   1           3
==========  ==========================  ==========  ==========
blur        Gaussian radius (image %)   0.6         2.0
noise       Gaussian sigma (of 255)     10          40
brightness  intensity factor            0.7         0.35
contrast    factor around the mean      0.6         0.3
jpeg        JPEG quality                30          6
==========  ==========================  ==========  ==========
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from segqual_jax.core import keys

SEVERITIES = (1, 2, 3)
_BLUR_RADIUS_PERCENT = {1: 0.6, 2: 1.2, 3: 2.0}
_NOISE_SIGMA = {1: 10.0, 2: 20.0, 3: 40.0}
_BRIGHTNESS = {1: 0.7, 2: 0.5, 3: 0.35}
_CONTRAST = {1: 0.6, 2: 0.45, 3: 0.3}
_JPEG_QUALITY = {1: 30, 2: 15, 3: 6}


def _blur(image, severity, rng):
  del rng
  radius = _BLUR_RADIUS_PERCENT[severity] / 100.0 * max(image.shape[:2])
  return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def _noise(image, severity, rng):
  noisy = image.astype(np.float32) + rng.normal(0.0, _NOISE_SIGMA[severity], image.shape)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _brightness(image, severity, rng):
  del rng
  return np.clip(np.round(image.astype(np.float32) * _BRIGHTNESS[severity]), 0, 255).astype(np.uint8)


def _contrast(image, severity, rng):
  del rng
  x = image.astype(np.float32)
  mean = x.mean(axis=(0, 1), keepdims=True)
  return np.clip(np.round(mean + (x - mean) * _CONTRAST[severity]), 0, 255).astype(np.uint8)


def _jpeg(image, severity, rng):
  del rng
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=_JPEG_QUALITY[severity])
  buf.seek(0)
  return np.asarray(Image.open(buf).convert('RGB'))


CORRUPTIONS = {'blur': _blur, 'noise': _noise, 'brightness': _brightness, 'contrast': _contrast,
               'jpeg': _jpeg}


def case_rng(case_id: str, corruption: str, severity: int, seed: int = 0) -> np.random.Generator:
  """The random stream of one corrupted copy: from the case, never from its position."""
  return np.random.default_rng([seed, keys.CORRUPTIONS, keys.case_hash(case_id),
                                list(CORRUPTIONS).index(corruption), severity])


def corrupt(image: np.ndarray, corruption: str, severity: int, case_id: str, seed: int = 0) -> np.ndarray:
  """``image`` (H, W, 3) uint8 under ``corruption`` at ``severity`` (1..3)."""
  if corruption not in CORRUPTIONS:
    raise ValueError(f'unknown corruption {corruption!r}; one of {", ".join(CORRUPTIONS)}')
  if severity not in SEVERITIES:
    raise ValueError(f'severity must be one of {SEVERITIES}, got {severity!r}')
  return CORRUPTIONS[corruption](np.asarray(image, np.uint8), severity,
                                 case_rng(case_id, corruption, severity, seed))


def corrupt_all(images: np.ndarray, ids, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
  """Every image of ``images`` (N, H, W, 3) corrupted, each by its own case's stream."""
  return np.stack([corrupt(im, corruption, severity, i, seed) for im, i in zip(images, ids)]) \
      if len(images) else np.asarray(images)


def copy_id(case_id: str, corruption: str, severity: int) -> str:
  """The id (and so the key) of a corrupted copy: ``<id>~<corruption><severity>``."""
  return f'{case_id}~{corruption}{severity}'


def drawn_corruption(case_id: str, copy: int, names, severities, seed: int = 0) -> tuple[str, int]:
  """The corruption and severity of copy ``copy`` of a case, drawn from the case's own stream
  (shift-aware training: each copy of each case gets another one)."""
  rng = np.random.default_rng([seed, keys.CORRUPTIONS, keys.case_hash(case_id), 1_000_000 + copy])
  return str(names[rng.integers(len(names))]), int(severities[rng.integers(len(severities))])
