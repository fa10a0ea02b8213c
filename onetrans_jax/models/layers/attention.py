"""Tail-query attention masks and the attention call (SPEC A.3, A.5, A.7).

With L keys and Q queries (the last Q tokens), query row r sits at absolute position
p = L - Q + r and, under the causal mask, may attend to keys j <= p. Padding keys (left-padded S
tokens) are masked out; every query keeps its own key so that a padding query's row is never empty
(its output is discarded: no valid token attends to a padding key).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from onetrans_jax.models.layers.blocked_attention import blocked_attention

# 'auto': 'blocked' on CPU, where the bench shape's layer-0 attention runs forward + backward in
# 371 ms against XLA's 964 (onetrans_jax/benchmarks/suite.py), 'xla' elsewhere (not yet measured
# on a GPU); 'blocked' (blocked_attention.py) is exact on any backend; 'cudnn' is GPU flash
# attention (bf16).
IMPLEMENTATIONS = ('auto', 'blocked', 'xla', 'cudnn')


def resolve_implementation(implementation: str) -> str:
  """'auto' -> the fastest measured path on this backend; anything else is checked."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation {implementation!r}: choose one of '
                     f'{IMPLEMENTATIONS}')
  if implementation == 'auto':
    return 'blocked' if jax.default_backend() == 'cpu' else 'xla'
  return implementation


def tail_causal(num_keys: int, num_queries: int) -> np.ndarray:
  """Static [Q, L] bool: query r (absolute position L - Q + r) sees keys j <= its position."""
  pos = num_keys - num_queries + np.arange(num_queries)
  return np.arange(num_keys)[None, :] <= pos[:, None]


def attention_mask(key_valid: jnp.ndarray, num_queries: int, causal: bool) -> jnp.ndarray:
  """key_valid [B, L] -> [B, 1, Q, L] bool mask for ``jax.nn.dot_product_attention``."""
  num_keys = key_valid.shape[-1]
  own = np.zeros((num_queries, num_keys), bool)
  own[np.arange(num_queries), num_keys - num_queries + np.arange(num_queries)] = True
  visible = key_valid[:, None, None, :]
  if causal:
    visible = visible & tail_causal(num_keys, num_queries)[None, None]
  return visible | own[None, None]


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
           implementation: str = 'xla') -> jnp.ndarray:
  """q [B, Q, H, Dh], k/v [B, L, H, Dh], mask [B, 1, Q, L] -> [B, Q, H, Dh].

  ``implementation='cudnn'`` selects cuDNN flash attention (GPU, bf16/fp16); the tail-offset causal
  mask is passed as an explicit mask because ``is_causal`` assumes aligned query/key positions.
  """
  implementation = resolve_implementation(implementation)
  if implementation == 'blocked':  # an arbitrary mask has no block structure to exploit
    implementation = 'xla'
  with jax.named_scope('attention'):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def tail_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, key_valid: jnp.ndarray,
                   causal: bool, implementation: str = 'auto') -> jnp.ndarray:
  """q [B, Q, H, Dh] (the last Q key positions), k/v [B, L, H, Dh], key_valid [B, L] ->
  [B, Q, H, Dh] under ``attention_mask(key_valid, Q, causal)``.

  The structured form lets 'blocked' build the mask per block and skip the causally masked keys;
  the other implementations get the explicit mask.
  """
  implementation = resolve_implementation(implementation)
  # The scope names the ops in profiles (onetrans_jax/benchmarks/profile_step.py).
  with jax.named_scope('attention'):
    if implementation == 'blocked':
      return blocked_attention(q, k, v, key_valid, causal)
    return attend(q, k, v, attention_mask(key_valid, q.shape[1], causal), implementation)


def shared_prefix_attention(q: jnp.ndarray, k_s: jnp.ndarray, v_s: jnp.ndarray,
                            s_valid: jnp.ndarray, k_ns: jnp.ndarray, v_ns: jnp.ndarray
                            ) -> jnp.ndarray:
  """Candidates' NS queries over [the request's S keys ; their own NS keys], causal within NS.

  q, k_ns, v_ns [R, C, N, H, Dh]; k_s, v_s [R, L, H, Dh] (one copy per request); s_valid [R, L].
  NS query i sees every valid S key and NS keys j <= i: exactly its rows of the joint causal mask.
  The S keys are never broadcast over C, so a candidate costs O(N (L + N)) and the memory stays
  O(R L) for the S side; the two logit blocks share one float32 softmax. This path is einsum-based
  (XLA): a fused kernel would need the S keys copied per candidate, which is what it avoids.
  """
  n = q.shape[2]
  return prefix_group_attention(q, k_s, v_s, s_valid, k_ns, v_ns, np.tril(np.ones((n, n), bool)))


def reference_attention(q: Any, k: Any, v: Any, mask: Any) -> jnp.ndarray:
  """Plain softmax(QK^T / sqrt(Dh)) V with the mask, in float32: the test oracle."""
  q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(mask, logits, -1e30)
  w = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', w, v)


def prefix_group_attention(q: jnp.ndarray, k_p: jnp.ndarray, v_p: jnp.ndarray,
                           p_valid: jnp.ndarray, k_g: jnp.ndarray, v_g: jnp.ndarray,
                           group_mask: Any) -> jnp.ndarray:
  """Candidate groups' queries over [the request's prefix keys ; their own group's keys].

  q, k_g, v_g [R, C, G, H, Dh]: one token group per candidate (OneRank, SPEC B.3: [c_i, t_1..t_K]);
  k_p, v_p [R, P, H, Dh]: the request's prefix, one copy per request, never broadcast over C;
  p_valid [R, P]; group_mask [G, G] static bool (query a may read group key b). A group query sees
  every valid prefix key and the keys its in-group mask allows, never another candidate's group:
  its rows of the joint mask over [prefix ; group_1 ; .. ; group_C]. The two logit blocks share one
  float32 softmax, as ``shared_prefix_attention`` (which is the case group_mask = lower triangle).
  Every query must see at least one key (a group mask row with no True is refused).
  """
  group_mask = np.asarray(group_mask, bool)
  g = q.shape[2]
  if group_mask.shape != (g, g):
    raise ValueError(f'group_mask has shape {group_mask.shape}, the groups hold {g} tokens')
  if not group_mask.any(axis=1).all():
    raise ValueError('group_mask: every group query must see at least one in-group key')
  with jax.named_scope('attention'):
    return _prefix_group(q, k_p, v_p, p_valid, k_g, v_g, group_mask)


def _prefix_group(q, k_p, v_p, p_valid, k_g, v_g, group_mask):
  scale = 1.0 / np.sqrt(q.shape[-1])
  f32 = jnp.float32
  logit_p = jnp.einsum('rcghd,rlhd->rchgl', q, k_p, preferred_element_type=f32) * scale
  logit_g = jnp.einsum('rcghd,rcmhd->rchgm', q, k_g, preferred_element_type=f32) * scale
  neg = jnp.finfo(f32).min
  logit_p = jnp.where(p_valid[:, None, None, None, :], logit_p, neg)
  logit_g = jnp.where(group_mask, logit_g, neg)
  w = jax.nn.softmax(jnp.concatenate([logit_p, logit_g], axis=-1), axis=-1)
  l_p = k_p.shape[1]
  out = (jnp.einsum('rchgl,rlhd->rcghd', w[..., :l_p].astype(v_p.dtype), v_p,
                    preferred_element_type=f32) +
         jnp.einsum('rchgm,rcmhd->rcghd', w[..., l_p:].astype(v_g.dtype), v_g,
                    preferred_element_type=f32))
  return out.astype(q.dtype)
