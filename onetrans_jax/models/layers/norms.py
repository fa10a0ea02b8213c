"""Normalisations with per-token or per-task gains, as stacked parameters (never a loop).

Both compute their statistics in float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.partitioning import NORM, TASKS, TOKENS


class MixedRMSNorm(nn.Module):
  """RMSNorm with a gain for S tokens and one gain per NS position; computed in float32."""
  num_ns: int
  shared: bool = False
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s: jnp.ndarray | None, ns: jnp.ndarray | None, token_first: bool = False
               ) -> tuple[jnp.ndarray | None, jnp.ndarray | None]:
    """Either side may be None; gains are created on first use (see MixedLinear);
    ``token_first``: ``ns`` is [N, ..., d]."""
    d = (s if s is not None else ns).shape[-1]

    def norm(x, g):
      x = x.astype(jnp.float32)
      x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
      return (x * g.astype(jnp.float32)).astype(self.dtype)

    g_s = None
    if s is not None or self.shared:
      g_s = partitioning.param(self, 's_scale', nn.initializers.ones, (d,), (NORM,),
                               self.param_dtype)
    s_out = None if s is None else norm(s, g_s)
    ns_out = None
    if ns is not None:
      g_ns = g_s[None] if self.shared else partitioning.param(
          self, 'ns_scale', nn.initializers.ones, (self.num_ns, d), (TOKENS, NORM),
          self.param_dtype)
      if token_first:   # gain j on token j, the leading axis
        g_ns = g_ns.reshape((g_ns.shape[0],) + (1,) * (ns.ndim - 2) + (d,))
      ns_out = norm(ns, g_ns)
    return s_out, ns_out


class StackedLayerNorm(nn.Module):
  """LayerNorm over the last axis of x [..., K, d] with a private scale and bias per task [K, d].

  [D] per-task gains: the normalisations sit inside task k's channel, so they are task-private.
  Statistics in float32 whatever the compute dtype.
  """
  num_tasks: int
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    k = self.num_tasks
    scale = partitioning.param(self, 'scale', nn.initializers.ones, (k, d), (TASKS, NORM))
    bias = partitioning.param(self, 'bias', nn.initializers.zeros, (k, d), (TASKS, NORM))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)
