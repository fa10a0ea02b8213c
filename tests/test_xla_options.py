"""The per-program XLA options: chosen per backend and config, and value-preserving."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from onetrans_jax import xla_options
from onetrans_jax.errors import ConfigError


def _config(**train):
  return ml_collections.ConfigDict({'train': train})


def test_cpu_gets_fused_dots_unless_turned_off():
  on_cpu = jax.default_backend() == 'cpu'
  assert xla_options.compiler_options(_config()) == (xla_options.CPU_FUSED_DOTS if on_cpu else None)
  assert xla_options.compiler_options(_config(cpu_fused_dots=True)) == (
      xla_options.CPU_FUSED_DOTS if on_cpu else None)
  assert xla_options.compiler_options(_config(cpu_fused_dots=False)) is None
  with pytest.raises(ConfigError, match="config.train.cpu_fused_dots must be True or False, "
                     "got 'no'"):
    xla_options.compiler_options(_config(cpu_fused_dots='no'))
  # Configs written before the field existed get the default.
  assert xla_options.compiler_options(ml_collections.ConfigDict()) == (
      xla_options.CPU_FUSED_DOTS if on_cpu else None)


def test_fused_dots_compute_the_same_ffn_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 24, 16)), jnp.float32)
  w1 = jnp.asarray(rng.normal(size=(16, 64)) * 0.2, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(64, 16)) * 0.2, jnp.float32)

  def loss(w1, w2, x):
    h = jax.nn.silu(jnp.einsum('bld,de->ble', x, w1))
    return jnp.sum(jnp.einsum('ble,ed->bld', h, w2) ** 2)

  grad = jax.grad(loss, argnums=(0, 1, 2))
  fused = jax.jit(grad, compiler_options=xla_options.compiler_options(_config()))(w1, w2, x)
  plain = jax.jit(grad)(w1, w2, x)
  for a, b in zip(fused, plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
