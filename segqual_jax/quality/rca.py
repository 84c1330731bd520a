"""Reverse classification accuracy (RCA; Valindria et al. 2017), the paper's weakest baseline.

For a new image x with f's predicted mask y_hat, train a small *reverse*
segmenter on the single pair (x, y_hat) for a few steps, apply it to K
reference images whose ground truth is known, and take the best Dice it
reaches there as x's predicted Dice: a good y_hat teaches a segmenter that
works on similar images.

Vectorised: the per-image training (``rca.steps`` Adam steps, a
``lax.scan``) is ``vmap``-ped over a batch of test images, each from the same
initial parameters, and the K reference predictions of every trained copy are
one more ``vmap``. One jit call scores a whole batch; no Python loop over
images or steps.

The reverse segmenter is the project's U-Net at a small size
(``rca.base_width``, ``rca.depth``) without dropout or normalisation. The
references are a seeded sample of g's training cases (their images and
masks are saved in ``<workdir>/quality/rca/references.npz``, so prediction on
new images needs no data set). RCA needs no training of its own beyond that
choice.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segqual_jax.core import artifacts, keys
from segqual_jax.data import pipeline
from segqual_jax.metrics import overlap
from segqual_jax.segmenter import unet

REFERENCES_FILE = 'references.npz'


def reverse_model(rca_config) -> unet.UNet:
  return unet.UNet(base_width=rca_config.base_width, depth=rca_config.depth, dropout_rate=0.0,
                   central_levels=0, norm='none')


def make_scorer(model: unet.UNet, rca_config):
  """Jitted ``(init params, images (B,S,S,3) float, predictions (B,S,S), refs, ref masks) -> (B,)`` best Dice."""
  tx = optax.adam(rca_config.learning_rate)

  def fit_one(params, image, prediction):
    def loss(p):
      logits = model.apply({'params': p}, image[None])['logits']
      return optax.softmax_cross_entropy_with_integer_labels(logits, prediction[None].astype(jnp.int32)).mean()

    def step(carry, _):
      p, opt_state = carry
      grads = jax.grad(loss)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=rca_config.steps)
    return params

  def score(init_params, images, predictions, ref_images, ref_masks):
    def one(image, prediction):
      params = fit_one(init_params, image, prediction)
      labels = jnp.argmax(model.apply({'params': params}, ref_images)['logits'], -1)
      return overlap.dice(labels, ref_masks).max()
    return jax.vmap(one)(images, predictions)
  return jax.jit(score)


def fit(config, out_dir: str, split: pipeline.Split) -> dict:
  """Chooses and saves the K reference cases (a seeded sample of ``split``, with masks)."""
  t0 = time.time()
  k = min(config.rca.references, len(split))
  idx = np.sort(np.random.default_rng([config.seed, keys.RCA_REFERENCES]).choice(len(split), k, replace=False))
  arrays = {'images': split.images[idx], 'masks': split.masks[idx]}
  artifacts.write_atomic(os.path.join(out_dir, REFERENCES_FILE),
                         lambda tmp: np.savez(tmp, **arrays), suffix='.tmp.npz')
  return {'variant': 'rca', 'references': int(k), 'reference_split': split.name,
          'reference_ids': [split.ids[i] for i in idx] if split.ids else idx.tolist(),
          'wall_time_s': round(time.time() - t0, 1)}


def load_predictor(config, out_dir: str):
  """``(uint8 images, f's masks) -> predicted quality`` (Dice or Jaccard, as g's target)."""
  with np.load(os.path.join(out_dir, REFERENCES_FILE)) as f:
    ref_images, ref_masks = pipeline.to_float(jnp.asarray(f['images'])), jnp.asarray(f['masks'])
  model = reverse_model(config.rca)
  size = ref_images.shape[1]
  init = model.init(keys.purpose_key(config.seed, keys.RCA),
                    jnp.zeros((1, size, size, 3)))['params']
  scorer = make_scorer(model, config.rca)

  def predict(images, predictions):
    dice = np.asarray(scorer(init, pipeline.to_float(jnp.asarray(images)), jnp.asarray(predictions),
                             ref_images, ref_masks))
    return overlap.jaccard_from_dice(dice) if config.quality.target == 'jaccard' else dice
  return predict
