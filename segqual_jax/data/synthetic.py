"""Procedural, seeded generator of dermoscopy-like lesion images and masks.

Why this exists: no machine this project runs on reaches the internet, yet the
pipeline needs a default data set on which a U-Net produces a *spread* of
segmentation quality -- mostly good cases and a real minority of failures --
because that spread is what the quality network g learns from. Every hard case
in real dermoscopy that we can imitate cheaply is here:

* skin-tone background with low- and high-frequency texture, an illumination
  gradient, vignetting and sometimes the dark rim of the dermoscope (a classic
  false-positive trigger);
* irregular lesion outlines (a random Fourier radius), elongation, fuzzy
  borders, darker cores, blotches and faded ("regression") zones;
* low-contrast lesions, small lesions and multi-part lesions;
* occluders: hair strands, air bubbles / specular rings and ink marks;
* a small share of imperfect ("lazy") annotations: an ellipse instead of the
  outline, a dilated or eroded outline, or only the main part of a multi-part
  lesion annotated. The stored mask is the lazy one, as in real data sets.

Everything is a pure function of ``(seed, split, index)``, so a data set is
reproducible bit for bit and any single example can be regenerated alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

# Split names map to disjoint random streams; the order is part of the format.
SPLIT_STREAMS = {'train': 0, 'validation': 1, 'quality': 2, 'test': 3}
LAZY_KINDS = ('none', 'ellipse', 'dilate', 'erode', 'main_part_only')


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Probabilities of each kind of difficulty; defaults give ~15-25% failures."""
  image_size: int = 64  # side of the square image, in pixels
  p_low_contrast: float = 0.15  # share of faint lesions
  p_small: float = 0.12  # share of small lesions
  p_multi_part: float = 0.12  # share of lesions made of 2-3 parts
  p_regression: float = 0.2  # share with faded zones inside the lesion
  p_hair: float = 0.35  # share with hair strands
  p_bubbles: float = 0.15  # share with bubbles / specular rings
  p_ink: float = 0.06  # share with an ink mark next to the lesion
  p_rim: float = 0.2  # share with a dark dermoscope rim
  p_lazy: float = 0.08  # share of imperfect annotations


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Zero-mean, unit-ish smooth random field: cubic upsampling of a coarse grid."""
  coarse = rng.standard_normal((cells, cells))
  field = ndimage.zoom(coarse, size / cells, order=3, mode='reflect')
  return field[:size, :size]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates in [-1, 1] (y, x)."""
  c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
  return np.meshgrid(c, c, indexing='ij')


def _background(rng, size, yy, xx):
  """Skin tone, texture, illumination gradient and vignetting, shape (S, S, 3)."""
  r = rng.uniform(0.70, 0.95)
  g = r * rng.uniform(0.62, 0.82)
  b = g * rng.uniform(0.70, 0.92)
  skin = np.array([r, g, b])[None, None, :]
  low = 1.0 + 0.05 * _smooth_noise(rng, size, 6)[..., None]
  fine = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.6)
  img = skin * low * (1.0 + 0.03 * fine[..., None])
  angle = rng.uniform(0, 2 * np.pi)
  grad = 1.0 + rng.uniform(0.0, 0.15) * (np.cos(angle) * xx + np.sin(angle) * yy)
  rho = np.sqrt(xx**2 + yy**2) / np.sqrt(2.0)
  v = rng.uniform(0.1, 0.5)
  vignette = 1.0 - v * np.clip((rho - 0.5) / 0.5, 0, 1) ** 2
  return img * (grad * vignette)[..., None], skin


def _blob_radius(rng, r0, theta):
  """Irregular outline: a random low-order Fourier series of the radius."""
  irregularity = rng.uniform(0.04, 0.28)
  radius = np.ones_like(theta)
  for k in range(2, 8):
    radius += rng.normal(0, irregularity / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  return r0 * np.clip(radius, 0.35, None)


def _blob_alpha(rng, yy, xx, centre, r0, edge):
  """Soft (fuzzy-bordered) coverage of one blob, in [0, 1]."""
  aspect = rng.uniform(0.65, 1.0)
  rot = rng.uniform(0, np.pi)
  dy, dx = yy - centre[0], xx - centre[1]
  u = np.cos(rot) * dx + np.sin(rot) * dy
  w = (-np.sin(rot) * dx + np.cos(rot) * dy) / aspect
  rho, theta = np.sqrt(u**2 + w**2), np.arctan2(w, u)
  radius = _blob_radius(rng, r0, theta)
  return 1.0 / (1.0 + np.exp(-(radius - rho) / edge))


def _lesion(rng, cfg, yy, xx):
  """Returns (soft alpha of the lesion, per-part alphas, attributes)."""
  small = rng.random() < cfg.p_small
  r0 = rng.uniform(0.08, 0.16) if small else rng.uniform(0.2, 0.7)
  centre = np.clip(rng.normal(0, 0.22, 2), -0.45, 0.45)
  edge = rng.uniform(0.006, 0.04)
  parts = [_blob_alpha(rng, yy, xx, centre, r0, edge)]
  if rng.random() < cfg.p_multi_part:
    for _ in range(rng.integers(1, 3)):
      ang = rng.uniform(0, 2 * np.pi)
      dist = r0 * rng.uniform(1.2, 1.9)
      c2 = centre + dist * np.array([np.sin(ang), np.cos(ang)])
      parts.append(_blob_alpha(rng, yy, xx, c2, r0 * rng.uniform(0.3, 0.6), edge))
  alpha = np.max(np.stack(parts), axis=0)
  return alpha, parts, {'small': small, 'n_parts': len(parts)}


def _lesion_colour(rng, skin, size, alpha):
  """Brown / dark / reddish / blue-grey pigment with a darker core and blotches."""
  kind = rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])
  f = rng.uniform(0.3, 0.65)
  if kind == 0:  # brown
    tint = np.array([f, f * rng.uniform(0.75, 0.9), f * rng.uniform(0.6, 0.85)])
  elif kind == 1:  # dark brown / black
    tint = np.array([f, f, f]) * rng.uniform(0.4, 0.7)
  elif kind == 2:  # reddish
    tint = np.array([rng.uniform(0.8, 1.0), f, f * 0.9])
  else:  # blue-grey
    tint = np.array([f * 0.8, f * 0.85, rng.uniform(0.7, 0.95)])
  col = skin * tint[None, None, :]
  blotch = 1.0 + 0.18 * _smooth_noise(rng, size, rng.integers(4, 9))
  core = 1.0 - rng.uniform(0.0, 0.35) * np.clip((alpha - 0.5) * 2, 0, 1)
  return col * (blotch * core)[..., None]


def _hair(rng, size):
  """Soft coverage of 3-15 curved dark strands (quadratic Bezier curves)."""
  canvas = np.zeros((size, size))
  for _ in range(rng.integers(3, 16)):
    p0 = rng.uniform(-1.1, 1.1, 2)
    direction = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.6, 2.2)
    p2 = p0 + length * np.array([np.sin(direction), np.cos(direction)])
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.25, 2)
    t = np.linspace(0, 1, 4 * size)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    idx = np.round((pts + 1) / 2 * size - 0.5).astype(int)
    ok = np.all((idx >= 0) & (idx < size), axis=1)
    canvas[idx[ok, 0], idx[ok, 1]] = 1.0
  width = rng.uniform(0.35, 0.7) * size / 64
  return np.clip(ndimage.gaussian_filter(canvas, width) * (2.5 / max(width, 0.35)), 0, 1)


def _rings(rng, yy, xx):
  """Air bubbles: thin bright rings with a faint glare inside."""
  cover = np.zeros_like(yy)
  for _ in range(rng.integers(1, 5)):
    c = rng.uniform(-0.9, 0.9, 2)
    r = rng.uniform(0.05, 0.25)
    rho = np.sqrt((yy - c[0]) ** 2 + (xx - c[1]) ** 2)
    cover = np.maximum(cover, np.exp(-(((rho - r) / 0.015) ** 2)))
    cover = np.maximum(cover, 0.25 * (rho < r))
  return cover


def _lazy_mask(rng, mask, parts, size):
  """An imperfect annotation of ``mask``; returns (mask, kind index)."""
  kinds = ['ellipse', 'dilate', 'erode']
  if len(parts) > 1:
    kinds.append('main_part_only')
  kind = kinds[rng.integers(len(kinds))]
  k = max(2, int(round(size * rng.uniform(0.05, 0.1))))
  if kind == 'ellipse':
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
      return mask, 0
    mean = np.array([ys.mean(), xs.mean()])
    cov = np.cov(np.stack([ys, xs])) + 1e-3 * np.eye(2)
    iy, ix = np.mgrid[:size, :size]
    d = np.stack([iy - mean[0], ix - mean[1]], -1)
    maha = np.einsum('...i,ij,...j->...', d, np.linalg.inv(cov), d)
    out = maha < 4.0 * rng.uniform(0.9, 1.3)
  elif kind == 'dilate':
    out = ndimage.binary_dilation(mask, iterations=k)
  elif kind == 'erode':
    out = ndimage.binary_erosion(mask, iterations=max(1, k // 2))
    if not out.any():
      out = mask
  else:
    out = parts[0] > 0.5
  return out, LAZY_KINDS.index(kind)


def generate_example(seed: int, split: str, index: int,
                     cfg: GeneratorConfig = GeneratorConfig()) -> dict:
  """One image/mask pair and its difficulty attributes.

  Args:
    seed: data-set seed; different seeds give unrelated data sets.
    split: one of ``SPLIT_STREAMS``; splits never share examples.
    index: example number within the split.
    cfg: difficulty mix and image size.

  Returns:
    dict with ``image`` (S, S, 3) uint8, ``mask`` (S, S) uint8 in {0, 1}, and
    integer attributes ``lazy`` (index into ``LAZY_KINDS``), ``low_contrast``,
    ``small``, ``n_parts``, ``hair``, ``rim``.
  """
  rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAMS[split], index]))
  size = cfg.image_size
  yy, xx = _grid(size)
  img, skin = _background(rng, size, yy, xx)

  alpha, parts, attrs = _lesion(rng, cfg, yy, xx)
  mask = alpha > 0.5
  low_contrast = rng.random() < cfg.p_low_contrast
  contrast = rng.uniform(0.12, 0.32) if low_contrast else rng.uniform(0.6, 1.0)
  shade = alpha * contrast
  if rng.random() < cfg.p_regression:
    # Faded patches stay in the annotation but almost vanish from the image.
    fade = np.clip(0.5 + 0.6 * _smooth_noise(rng, size, 5), 0.1, 1.0)
    shade = shade * fade
  col = _lesion_colour(rng, skin, size, alpha)
  img = img * (1 - shade[..., None]) + col * shade[..., None] * (img / skin)

  if rng.random() < cfg.p_ink:
    ang = rng.uniform(0, 2 * np.pi)
    c = np.clip(rng.normal(0, 0.2, 2), -0.4, 0.4) + 0.7 * np.array([np.sin(ang), np.cos(ang)])
    ink = _blob_alpha(rng, yy, xx, c, rng.uniform(0.05, 0.12), 0.02)
    img = img * (1 - 0.8 * ink[..., None]) + 0.8 * ink[..., None] * np.array([0.35, 0.2, 0.45])
  hair = rng.random() < cfg.p_hair
  if hair:
    cover = _hair(rng, size)[..., None]
    img = img * (1 - cover) + cover * rng.uniform(0.05, 0.25) * np.array([1.0, 0.9, 0.8])
  if rng.random() < cfg.p_bubbles:
    ring = _rings(rng, yy, xx)[..., None]
    img = img * (1 - ring) + ring * 0.97
  rim = rng.random() < cfg.p_rim
  if rim:
    rho = np.sqrt(xx**2 + yy**2)
    edge = np.clip((rho - rng.uniform(0.95, 1.2)) / 0.06, 0, 1)[..., None]
    img = img * (1 - edge) + 0.04 * edge
  img = img + rng.normal(0, 0.01, img.shape)

  lazy = 0
  if rng.random() < cfg.p_lazy:
    mask, lazy = _lazy_mask(rng, mask, parts, size)
  return {
      'image': np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8),
      'mask': mask.astype(np.uint8),
      'lazy': int(lazy),
      'low_contrast': int(low_contrast),
      'small': int(attrs['small']),
      'n_parts': int(attrs['n_parts']),
      'hair': int(hair),
      'rim': int(rim),
  }
