"""Every random key and seed the project derives, by purpose, in one table.

Why one table: a purpose number reused by two modules would silently
correlate their randomness (the same dropout masks for g's batches and f's
samples), and a reader looking for "what decides this sample" finds it here.

Keys are ``fold_in(key(seed), PURPOSE)``, then ``fold_in`` by step, member or
case. A case's key comes from the case itself (``case_hash`` of its id or
file stem), never from its position in a batch or folder: an image gets the
same MC-dropout / HCNN / latent map alone, inside any folder, and in
evaluate and predict alike.

Below these, a method splits a sample's key by use
(``segmenter/methods/base.purpose_keys``: dropout, noise, hints, latent) and
a deep ensemble by member (``methods/ensemble.member_key``); those stay with
the methods they belong to.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

# fold_in purposes of jax.random.key(config.seed); numbers are frozen (changing one
# changes every trained result that uses it).
SEG_INIT = 0  # f's parameters
SEG_STEPS = 1  # f's training steps (then fold_in(step))
SEG_VALIDATION = 2  # f's per-epoch and final validation passes
CASES = 3  # every case's test-time samples (then fold_in(case_hash(id)))
QUALITY = 10  # g: then fold_in(index of the CNN kind), then 0 init / 1 steps
RCA = 0x4CA  # RCA's reverse U-Net init

# numpy seeds [config.seed or data.seed, STREAM]
OOF_FOLDS = 3  # out-of-fold partition of f's training split
CALIBRATION_SPLIT = 0xCA1  # calibration cases held out from the quality split
RCA_REFERENCES = 0x4CA  # RCA's reference cases
APPLICABILITY_SPLIT = 0xA99  # the applicability score's fitting and reference cases
CORRUPTIONS = 0xC0E  # corrupted copies of cases (then the case hash, corruption, severity)


def purpose_key(seed: int, purpose: int) -> jax.Array:
  """``fold_in(key(seed), purpose)``."""
  return jax.random.fold_in(jax.random.key(seed), purpose)


def case_hash(case_id: str) -> int:
  """A stable 32-bit number of a case id (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:4], 'little')


def case_hashes(case_ids) -> np.ndarray:
  """``case_hash`` of each id, as the uint32 array a jitted predictor takes."""
  return np.asarray([case_hash(c) for c in case_ids], np.uint32).reshape(-1)


def case_keys(base: jax.Array, hashes: jax.Array) -> jax.Array:
  """One key per case: ``fold_in(base, hash)``, traceable (hashes may be a device array)."""
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(jnp.asarray(hashes, jnp.uint32))
