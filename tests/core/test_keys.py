"""A case's key comes from its whole id: ids that a 32-bit hash would merge get other keys."""

import hashlib

import jax
import numpy as np

from segqual_jax.core import keys


def _ids_sharing_32_bits() -> tuple[str, str]:
  """Two ids whose sha256 agree in their first 4 bytes (a birthday search, ~10^5 ids)."""
  seen = {}
  for i in range(2_000_000):
    case_id = f'case{i}'
    prefix = hashlib.sha256(case_id.encode()).digest()[:4]
    if prefix in seen:
      return seen[prefix], case_id
    seen[prefix] = case_id
  raise AssertionError('no 32-bit collision found')


def test_ids_a_32_bit_hash_merges_get_different_keys():
  a, b = _ids_sharing_32_bits()
  assert keys.case_hash(a) != keys.case_hash(b)
  hashes = keys.case_hashes([a, b])
  assert hashes.shape == (2, keys.HASH_WORDS) and hashes.dtype == np.uint32
  assert (hashes[0, 0] == hashes[1, 0]) and not np.array_equal(hashes[0], hashes[1])
  k = jax.random.key_data(keys.case_keys(jax.random.key(0), hashes))
  assert not np.array_equal(np.asarray(k[0]), np.asarray(k[1]))
  draws = jax.vmap(lambda key: jax.random.uniform(key, (4,)))(keys.case_keys(jax.random.key(0), hashes))
  assert not np.allclose(draws[0], draws[1])


def test_a_case_key_depends_on_its_id_only():
  hashes = keys.case_hashes(['x', 'y', 'x'])
  k = np.asarray(jax.random.key_data(keys.case_keys(jax.random.key(3), hashes)))
  np.testing.assert_array_equal(k[0], k[2])
  alone = np.asarray(jax.random.key_data(keys.case_keys(jax.random.key(3), keys.case_hashes(['x']))))
  np.testing.assert_array_equal(k[0], alone[0])
  assert not np.array_equal(k[0], k[1])
  assert keys.case_hash('x') < 2**128 and keys.hash_words(keys.case_hash('x'))[0] == hashes[0, 0]
