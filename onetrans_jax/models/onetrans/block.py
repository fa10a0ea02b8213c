"""The OneTrans block (SPEC A.4) with tail queries for the pyramid (SPEC A.5).

    Z  = MixedMHA(Norm(X)) + X         queries: the last q_s S tokens and all NS tokens
    X' = MixedFFN(Norm(Z)) + Z         keys/values: the whole input

Two layouts of the same computation:
  * ``__call__``: one token list per candidate, s [B, Ls, d] and ns [B, N, d]; the joint mask
    covers causal and full attention. The reference, and the only layout for full attention.
  * ``user_side`` then ``candidate_side`` (SPEC A.6, request-level sharing): under the causal mask
    no S token reads an NS token, so the S side runs once per request ([R, Ls, d]) and leaves its
    keys/values; each candidate's NS tokens ([R, C, N, d]) then attend to them. Training and
    cached serving both use this split.
Each returns only the query rows (the kept tail), so the next layer's input is this layer's queries.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.activations import ACTIVATIONS
from onetrans_jax.models.layers.attention import shared_prefix_attention, tail_attention
from onetrans_jax.models.layers.mixed import MixedLinear
from onetrans_jax.models.layers.norms import MixedRMSNorm
from onetrans_jax.models.layers.partitioning import (ACT_EMBED, ACT_HEADS, ACT_MLP, BATCH, EMBED,
                                                     HEADS, LENGTH, MLP)

def _hint(x: jnp.ndarray | None, feature: str, trailing: int = 0,
          token_first: bool = False) -> jnp.ndarray | None:
  """Sharding hint for a token activation [B, L, ..feature, (trailing)] or, candidates sharing a
  request, [R, C, L, ..] ([L, R, C, ..] ``token_first``): batch, (candidates,) length, then
  ``feature`` and ``trailing`` whole axes. None passes through (a side that does not run)."""
  if x is None:
    return None
  if token_first:
    lead = (LENGTH, BATCH, None)
  else:
    lead = (BATCH, LENGTH) if x.ndim == 2 + 1 + trailing else (BATCH, None, LENGTH)
  return partitioning.constrain(x, lead + (feature,) + (None,) * trailing)


def _stream(x: jnp.ndarray | None, token_first: bool = False) -> jnp.ndarray | None:
  """A token stream [B, L, d] / [R, C, N, d] / [N, R, C, d] entering or leaving a block."""
  return _hint(x, ACT_EMBED, token_first=token_first)


def _head_hint(x: jnp.ndarray) -> jnp.ndarray:
  """Queries / keys / values [B, L, H, Dh] / [R, C, N, H, Dh]."""
  return _hint(x, ACT_HEADS, trailing=1)


class OneTransBlock(nn.Module):
  width: int
  num_heads: int
  num_ns: int
  num_s_queries: int            # q_s: S tokens this layer keeps (pyramid schedule minus N)
  ffn_mult: int = 4
  activation: str = 'silu'
  shared: bool = False          # the "shared params for all tokens" ablation
  causal: bool = True           # False: the "full attention" ablation
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32
  ns_token_first: bool = False  # candidate_side's NS tokens are [N, R, C, d] (model.ns_layout)

  def setup(self):
    kw = dict(num_ns=self.num_ns, shared=self.shared, dtype=self.dtype)
    d = self.width
    self.attn_norm = MixedRMSNorm(**kw)
    self.kv = MixedLinear(2 * d, axes=(EMBED, HEADS), **kw)
    self.q = MixedLinear(d, axes=(EMBED, HEADS), **kw)
    self.out = MixedLinear(d, axes=(HEADS, EMBED), **kw)
    self.ffn_norm = MixedRMSNorm(**kw)
    self.ffn_in = MixedLinear(self.ffn_mult * d, axes=(EMBED, MLP), **kw)
    self.ffn_out = MixedLinear(d, axes=(MLP, EMBED), **kw)

  def _heads(self, x: jnp.ndarray) -> jnp.ndarray:
    return x.reshape(x.shape[:-1] + (self.num_heads, self.width // self.num_heads))

  def _q(self, x: jnp.ndarray) -> jnp.ndarray:
    return _head_hint(self._heads(x))

  def _kv(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    kv = self._heads(x.reshape(x.shape[:-1] + (2, self.width)))
    return _head_hint(kv[..., 0, :, :]), _head_hint(kv[..., 1, :, :])

  def _ffn(self, zs: jnp.ndarray | None, zns: jnp.ndarray | None, tf: bool = False):
    """Residual mixed FFN on either side or both; a None side stays None; ``tf``: the NS side
    is token-first [N, ..., d]."""
    act = ACTIVATIONS[self.activation]
    zs, zns = _stream(zs), _stream(zns, tf)  # whole features into the (EMBED, MLP) kernel
    ys, yns = self.ffn_in(*self.ffn_norm(zs, zns, token_first=tf), token_first=tf)
    ys = _hint(None if ys is None else act(ys), ACT_MLP)
    yns = _hint(None if yns is None else act(yns), ACT_MLP, token_first=tf)
    ys, yns = self.ffn_out(ys, yns, token_first=tf)
    return (_stream(None if zs is None else zs + ys.astype(zs.dtype)),
            _stream(None if zns is None else zns + yns.astype(zns.dtype), tf))

  # ------------------------------------------------------------------ per-list (reference) layout
  def __call__(self, s: jnp.ndarray, s_valid: jnp.ndarray, ns: jnp.ndarray
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """s [B, Ls, d], s_valid [B, Ls], ns [B, N, d] -> (s' [B, q_s, d], ns' [B, N, d])."""
    b, ls, d = s.shape
    q_s = self.num_s_queries
    s, ns = _stream(s), _stream(ns)
    xs, xns = self.attn_norm(s, ns)
    ks, kns = self.kv(xs, xns)                                  # keys/values over all tokens
    qs, qns = self.q(xs[:, ls - q_s:] if q_s else None, xns)   # queries: the tail only
    kv = jnp.concatenate([ks, kns], axis=1)
    k, v = self._kv(kv)
    q = self._q(qns if qs is None else jnp.concatenate([qs, qns], axis=1))
    key_valid = jnp.concatenate([s_valid, jnp.ones((b, self.num_ns), bool)], axis=1)
    o = tail_attention(q, k, v, key_valid, self.causal, self.attention_impl).reshape(b, -1, d)
    os_, ons = self.out(o[:, :q_s] if q_s else None, o[:, q_s:])
    zs = s[:, ls - q_s:] + os_.astype(s.dtype) if q_s else s[:, ls:]
    zns = ns + ons.astype(ns.dtype)
    ys, yns = self._ffn(zs if q_s else None, zns)
    return (ys if q_s else zs), yns

  # ------------------------------------------------------------------ request-level layout
  def user_side(self, s: jnp.ndarray, s_valid: jnp.ndarray
                ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    """Once per request: s [R, Ls, d] -> (kept S states [R, q_s, d], (k_s, v_s) [R, Ls, H, Dh]).

    Needs the causal mask (checked by the model): S queries then see S keys only.
    """
    s = _stream(s)
    k_s, v_s = self.s_kv(s)
    return self.s_rows(s[:, s.shape[1] - self.num_s_queries:], k_s, v_s, s_valid), (k_s, v_s)

  def s_kv(self, s: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """S tokens [R, n, d] -> their keys and values [R, n, H, Dh]; each row reads its own token
    only, which is what lets the incremental user cache reuse the rows of unchanged tokens."""
    xs, _ = self.attn_norm(s, None)
    return self._kv(self.kv(xs, None)[0])

  def s_rows(self, s_tail: jnp.ndarray, k_s: jnp.ndarray, v_s: jnp.ndarray,
             s_valid: jnp.ndarray) -> jnp.ndarray:
    """Outputs of the last ``s_tail.shape[1]`` S tokens (their inputs [R, t, d]) under the causal
    mask over all S keys [R, Ls, H, Dh]: the kept tail (t = q_s) or only the rows that changed."""
    r, t, d = s_tail.shape
    if not t:  # the last pyramid layer: S only feeds keys/values
      return s_tail
    xs, _ = self.attn_norm(s_tail, None)
    q = self._q(self.q(xs, None)[0])
    o = tail_attention(q, k_s, v_s, s_valid, True, self.attention_impl)
    zs = s_tail + self.out(o.reshape(r, t, d), None)[0].astype(s_tail.dtype)
    return self._ffn(zs, None)[0]

  def candidate_side(self, ns: jnp.ndarray, k_s: jnp.ndarray, v_s: jnp.ndarray,
                     s_valid: jnp.ndarray) -> jnp.ndarray:
    """Per candidate: ns [R, C, N, d] against the request's S keys/values -> ns' [R, C, N, d].

    With ``ns_token_first`` ns is [N, R, C, d] in and out: the norms, projections and FFN read
    the token axis first (no transposes around their batched einsums); only the attention, small
    at N tokens, runs in the shared [R, C, N, H, Dh] layout."""
    tf = self.ns_token_first
    tokens_last = (lambda x: jnp.moveaxis(x, 0, -2)) if tf else (lambda x: x)
    ns = _stream(ns, tf)
    _, xns = self.attn_norm(None, ns, token_first=tf)
    k_ns, v_ns = self._kv(tokens_last(self.kv(None, xns, token_first=tf)[1]))
    q = self._q(tokens_last(self.q(None, xns, token_first=tf)[1]))
    o = shared_prefix_attention(q, k_s, v_s, s_valid, k_ns, v_ns)
    o = o.reshape(o.shape[:3] + (self.width,))                  # [R, C, N, d]
    o = jnp.moveaxis(o, -2, 0) if tf else o
    zns = ns + self.out(None, o, token_first=tf)[1].astype(ns.dtype)
    return self._ffn(None, zns, tf)[1]
