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
CASES = 3  # every case's test-time samples (then fold_in of each 32-bit word of case_hash(id))
QUALITY = 10  # g: then fold_in(index of the CNN kind), then 0 init / 1 steps
RCA = 0x4CA  # RCA's reverse U-Net init

# numpy seeds [config.seed or data.seed, STREAM]
OOF_FOLDS = 3  # out-of-fold partition of f's training split
CALIBRATION_SPLIT = 0xCA1  # calibration cases held out from the quality split
RCA_REFERENCES = 0x4CA  # RCA's reference cases
APPLICABILITY_SPLIT = 0xA99  # the applicability score's fitting and reference cases
CORRUPTIONS = 0xC0E  # corrupted copies of cases (then the case hash, corruption, severity)
MONITOR = 0x3017  # the stream monitor's tie-breaking uniforms (then the state's seed, the stream index)
ERROR_MAP = 0xE44  # the pixels sampled to fit the error map


def purpose_key(seed: int, purpose: int) -> jax.Array:
  """``fold_in(key(seed), purpose)``."""
  return jax.random.fold_in(jax.random.key(seed), purpose)


HASH_WORDS = 4  # a case hash is 128 bits: 4 uint32 words, each folded into the key in turn


def case_hash(case_id: str) -> int:
  """A stable 128-bit number of a case id (Python's ``hash`` is salted per process).

  Why 128 bits: with 32, two of ~77,000 archive cases share a key (so the same
  dropout masks) with probability 1/2; with 128 that takes ~2e19 cases. numpy
  seeds take the whole int (``SeedSequence`` accepts any size).
  """
  return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:4 * HASH_WORDS], 'little')


def hash_words(value: int) -> tuple[int, ...]:
  """A case hash as ``HASH_WORDS`` uint32 words, least significant first."""
  return tuple((value >> (32 * i)) & 0xFFFFFFFF for i in range(HASH_WORDS))


def case_hashes(case_ids) -> np.ndarray:
  """``case_hash`` of each id as the (N, HASH_WORDS) uint32 array a jitted predictor takes."""
  return np.asarray([hash_words(case_hash(c)) for c in case_ids], np.uint32).reshape(-1, HASH_WORDS)


def case_keys(base: jax.Array, hashes: jax.Array) -> jax.Array:
  """One key per case: ``base`` folded with each word of its hash (rows of ``hashes``, from
  ``case_hashes``), traceable (hashes may be a device array)."""
  def one(words):
    key = base
    for i in range(HASH_WORDS):
      key = jax.random.fold_in(key, words[i])
    return key
  return jax.vmap(one)(jnp.asarray(hashes, jnp.uint32))
