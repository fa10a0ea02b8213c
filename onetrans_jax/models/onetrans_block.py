"""The OneTrans block (SPEC A.4) with tail queries for the pyramid (SPEC A.5).

    Z  = MixedMHA(Norm(X)) + X         queries: the last q_s S tokens and all NS tokens
    X' = MixedFFN(Norm(Z)) + Z         keys/values: the whole input

Inputs and outputs are the (S, NS) pair: ``s`` [B, Ls, d] with its validity mask, ``ns`` [B, N, d].
The block returns only the query rows (the kept tail), so the next layer's input is this layer's
query set.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models.attention import attend, attention_mask
from onetrans_jax.models.mixed import MixedLinear, MixedRMSNorm

FFN_ACTIVATIONS = {'silu': nn.silu, 'gelu': nn.gelu, 'relu': nn.relu}


class OneTransBlock(nn.Module):
  width: int
  num_heads: int
  num_ns: int
  ffn_mult: int = 4
  activation: str = 'silu'
  shared: bool = False          # the "shared params for all tokens" ablation
  causal: bool = True           # False: the "full attention" ablation
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s: jnp.ndarray, s_valid: jnp.ndarray, ns: jnp.ndarray,
               num_s_queries: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """s [B, Ls, d], s_valid [B, Ls], ns [B, N, d] -> (s' [B, q_s, d], ns' [B, N, d])."""
    b, ls, d = s.shape
    h, dh = self.num_heads, self.width // self.num_heads
    q_s = num_s_queries
    kw = dict(num_ns=self.num_ns, shared=self.shared, dtype=self.dtype)

    xs, xns = MixedRMSNorm(name='attn_norm', **kw)(s, ns)
    ks, kns = MixedLinear(2 * d, name='kv', **kw)(xs, xns)      # keys/values over all tokens
    qs, qns = MixedLinear(d, name='q', **kw)(xs[:, ls - q_s:], xns)  # queries: the tail only
    kv = jnp.concatenate([ks, kns], axis=1).reshape(b, ls + self.num_ns, 2, h, dh)
    q = jnp.concatenate([qs, qns], axis=1).reshape(b, q_s + self.num_ns, h, dh)
    key_valid = jnp.concatenate([s_valid, jnp.ones((b, self.num_ns), bool)], axis=1)
    mask = attention_mask(key_valid, q_s + self.num_ns, self.causal)
    o = attend(q, kv[:, :, 0], kv[:, :, 1], mask, self.attention_impl).reshape(b, -1, d)
    os_, ons = MixedLinear(d, name='out', **kw)(o[:, :q_s], o[:, q_s:])
    zs = s[:, ls - q_s:] + os_.astype(s.dtype)
    zns = ns + ons.astype(ns.dtype)

    ys, yns = MixedRMSNorm(name='ffn_norm', **kw)(zs, zns)
    ys, yns = MixedLinear(self.ffn_mult * d, name='ffn_in', **kw)(ys, yns)
    act = FFN_ACTIVATIONS[self.activation]
    ys, yns = MixedLinear(d, name='ffn_out', **kw)(act(ys), act(yns))
    return zs + ys.astype(zs.dtype), zns + yns.astype(zns.dtype)
