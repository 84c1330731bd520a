"""What an image looks like apart from f: colour, frequency content, edges.

The applicability gate's second view (``quality/applicability.py``; the first
is f's own encoder statistics). f's pooled features see what f was trained to
see; an image of another modality can land among them -- Kvasir-SEG's
colonoscopy frames passed a dermoscopy run's gate one by one -- while its
colours and textures are plainly unlike. These statistics are computed on the
image as f sees it (``data.image_size``), on the device beside f's pass, so
stage 2's reference cases and predict's new ones are described alike whatever
the input's own resolution (statistics of the native files would flag every
image of a resolution the references do not have -- a harmless difference).

Each block gets its own shrunk Gaussian in the gate, or shares one with the
blocks a view joins to it (``applicability.views``, e.g. ``tone+texture``;
feature counts in ``BLOCKS``):

* ``colour``: per RGB channel, the share of pixels in each of 8 intensity bins.
* ``texture``: the share of the grey image's spectral power (DC left out) in
  6 radial frequency bands (blur moves it down, noise and JPEG up), and the
  mean and deviation of the gradient magnitude.
* ``layout``: on a 4 x 4 grid of cells, each cell's mean R, G, B and the
  deviation of its grey values: where the image is bright, dark, coloured or
  busy. Histograms pool the whole frame, so a colonoscopy frame -- an orange
  field in a black octagonal border -- has the colour shares of an orange-lit
  dermoscopy image in a dark vignette (Kvasir-SEG's frames were no further
  from ISIC 2017's in the colour view than ISIC's own unusual images); laid
  out on a grid they differ (measured in ``experiments/RESULTS.md``, "Streams").
* ``tone``: the joint histogram of each pixel's saturation and value (HSV's
  ``(max - min) / max`` and ``max`` of R, G, B; 8 x 8 bins): how vivid the
  colours are at each brightness, whatever the hue. Colonoscopy's saturated
  orange-red mucosa and white specular glints sit where dermoscopy's muted
  skin tones rarely do; the histogram ignores where a pixel lies, so it needs
  no alignment, and it leaves hue -- which varies with a camera's white
  balance -- out.

These blocks do not depend on f, so the gate fits them on f's own training
images (``applicability.image_fit``), several times the quality split's share.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COLOUR_BINS = 8
FREQUENCY_BANDS = 6
LAYOUT_GRID = 4  # cells per side of the layout block
TONE_BINS = 8  # saturation and value bins of the tone block
NAMES = ('colour', 'texture', 'layout', 'tone')  # the blocks, in order
BLOCKS = (3 * COLOUR_BINS, FREQUENCY_BANDS + 2, 4 * LAYOUT_GRID ** 2, TONE_BINS ** 2)  # feature count of each block


def cell_means(values: jax.Array, grid: int = LAYOUT_GRID) -> jax.Array:
  """(G, G, ...) means of ``values`` (H, W, ...) over a G x G grid of cells (any H, W >= G);
  pixel i of n falls in cell ``floor(i * G / n)``."""
  def averaging(n):  # (G, n): row g averages the pixels of cell g
    cell = jnp.minimum(jnp.arange(n) * grid // n, grid - 1)
    member = jax.nn.one_hot(cell, grid).T
    return member / member.sum(1, keepdims=True)
  h, w = values.shape[:2]
  return jnp.einsum('gh,hw...,kw->gk...', averaging(h), values, averaging(w))


def statistics(image: jax.Array) -> jax.Array:
  """(sum(BLOCKS),) statistics of one (H, W, 3) image with values in [0, 1]; all >= 0."""
  image = image.astype(jnp.float32)
  bins = jnp.clip(jnp.floor(image * COLOUR_BINS), 0, COLOUR_BINS - 1).astype(jnp.int32)
  colour = jax.nn.one_hot(bins, COLOUR_BINS).mean((0, 1)).reshape(-1)  # (3 * bins,)
  grey = image.mean(-1)
  h, w = grey.shape
  power = jnp.abs(jnp.fft.fft2(grey - grey.mean())) ** 2
  fy, fx = jnp.meshgrid(jnp.fft.fftfreq(h), jnp.fft.fftfreq(w), indexing='ij')
  radius = jnp.sqrt(fy ** 2 + fx ** 2) / jnp.sqrt(0.5)  # 0 (DC) .. 1 (the corner frequency)
  band = jnp.clip(jnp.floor(radius * FREQUENCY_BANDS), 0, FREQUENCY_BANDS - 1).astype(jnp.int32)
  per_band = jnp.sum(jax.nn.one_hot(band, FREQUENCY_BANDS) * power[..., None], (0, 1))
  spectrum = per_band / jnp.maximum(per_band.sum(), 1e-12)
  gy, gx = grey[1:, :-1] - grey[:-1, :-1], grey[:-1, 1:] - grey[:-1, :-1]
  gradient = jnp.sqrt(gy ** 2 + gx ** 2)
  mean_rgb = cell_means(image)  # (G, G, 3)
  grey_sd = jnp.sqrt(jnp.maximum(cell_means(grey ** 2) - cell_means(grey) ** 2, 0.0))
  layout = jnp.concatenate([mean_rgb.reshape(-1, 3), grey_sd.reshape(-1, 1)], 1).reshape(-1)
  value, low = image.max(-1), image.min(-1)
  saturation = (value - low) / jnp.maximum(value, 1e-3)
  def tone_bin(x):
    return jnp.clip(jnp.floor(x * TONE_BINS), 0, TONE_BINS - 1).astype(jnp.int32)
  tone = jax.nn.one_hot(tone_bin(saturation) * TONE_BINS + tone_bin(value), TONE_BINS ** 2).mean((0, 1))
  return jnp.concatenate([colour, spectrum, jnp.stack([gradient.mean(), gradient.std()]), layout, tone])
