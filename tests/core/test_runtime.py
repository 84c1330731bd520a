"""Process-wide settings from config.runtime."""

import jax

from segqual_jax.core import runtime


def test_matmul_precision_is_applied_and_reset(config):
  config.runtime.matmul_precision = 'highest'
  runtime.configure(config)
  assert jax.config.jax_default_matmul_precision == 'highest'
  config.runtime.matmul_precision = 'default'
  runtime.configure(config)
  assert jax.config.jax_default_matmul_precision is None
