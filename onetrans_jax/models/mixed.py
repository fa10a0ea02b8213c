"""Mixed parameterization (SPEC A.4): one weight set shared by all S tokens, one per NS position.

Activations travel as a pair: ``s`` [B, Ls, ...] and ``ns`` [B, N, ...]. The S weights apply with
one einsum; the N stacked NS weights apply with one batched einsum ('bnd,nde->bne'), never a loop
over tokens. ``shared=True`` is the paper's "shared params for all tokens" ablation: the NS tokens
then use the S weights and the stacked weights do not exist.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Init = Any


def _default_init() -> Init:
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


class MixedLinear(nn.Module):
  """y_s = x_s W_S;  y_ns[:, j] = x_ns[:, j] W_NS[j]  (no biases, SPEC A.4 [D])."""
  features: int
  num_ns: int
  shared: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Init | None = None

  @nn.compact
  def __call__(self, s: jnp.ndarray, ns: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    init = self.kernel_init or _default_init()
    d_in = s.shape[-1]
    if s.shape[1] == 0 and not self.shared:
      # No S token passes here (the last pyramid layer queries NS tokens only): an S kernel
      # would be a parameter that can never receive a gradient, so none is created.
      s_out = jnp.zeros(s.shape[:2] + (self.features,), self.dtype)
    else:
      w_s = self.param('s_kernel', init, (d_in, self.features), self.param_dtype)
      s_out = jnp.einsum('bld,de->ble', s.astype(self.dtype), w_s.astype(self.dtype))
    if self.shared:
      ns_out = jnp.einsum('bnd,de->bne', ns.astype(self.dtype), w_s.astype(self.dtype))
    else:
      # Stack of per-token kernels: init each slice like an independent [d_in, features] kernel.
      w_ns = self.param('ns_kernel', _stacked(init), (self.num_ns, d_in, self.features),
                        self.param_dtype)
      ns_out = jnp.einsum('bnd,nde->bne', ns.astype(self.dtype), w_ns.astype(self.dtype))
    return s_out, ns_out


def _stacked(init: Init) -> Init:
  def f(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return f


class MixedRMSNorm(nn.Module):
  """RMSNorm with a gain for S tokens and one gain per NS position; computed in float32."""
  num_ns: int
  shared: bool = False
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s: jnp.ndarray, ns: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    d = s.shape[-1]
    no_s = s.shape[1] == 0 and not self.shared  # see MixedLinear: no gain nobody uses
    g_s = None if no_s else self.param('s_scale', nn.initializers.ones, (d,), self.param_dtype)
    g_ns = g_s[None] if self.shared else self.param('ns_scale', nn.initializers.ones,
                                                    (self.num_ns, d), self.param_dtype)

    def norm(x, g):
      x = x.astype(jnp.float32)
      x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
      return (x * g.astype(jnp.float32)).astype(self.dtype)

    return (s.astype(self.dtype) if no_s else norm(s, g_s)), norm(ns, g_ns)
