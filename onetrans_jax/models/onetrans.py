"""OneTrans (SPEC part A): one causal Transformer over [S tokens ; NS tokens].

Forward pass of a request batch (the reference "full" pass, one token list per candidate):
  tokenizer -> S tokens [R, L_S, d] (request-level), NS tokens [R, C, L_NS, d]
  -> each candidate gets [S ; NS_c]  (S broadcast: B = R*C token lists)
  -> pyramid of OneTransBlocks (layer i keeps the last schedule[i] tokens)
  -> final RMSNorm, mean of the final NS tokens -> task towers -> logits [R, C, T].
Layers differ in their static token counts, so they are unrolled (a scan needs equal shapes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onetrans_jax.models.heads import TaskTowers
from onetrans_jax.models.onetrans_block import OneTransBlock
from onetrans_jax.models.tokenizer import UnifiedTokenizer
from onetrans_jax.schema import FeatureSchema

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class OneTrans(nn.Module):
  schema: FeatureSchema
  width: int
  num_heads: int
  num_layers: int
  num_ns_tokens: int
  schedule: tuple[int, ...]       # queries per layer (see pyramid.py); all L for no pyramid
  embed_dim: int = 16
  ffn_mult: int = 4
  activation: str = 'silu'
  ns_tokenizer: str = 'auto_split'
  ns_groups: tuple[tuple[str, ...], ...] | None = None
  ns_hidden: int = 0
  seq_merge: str = 'timestamp_aware'
  use_sep: bool = False
  seq_order: tuple[str, ...] | None = None
  time_gap_buckets: int = 0
  shared_params: bool = False
  causal: bool = True
  attention_impl: str = 'xla'
  remat: str = 'none'
  head_hidden: int = 0            # 0: d
  dtype: Any = jnp.float32

  def setup(self):
    self.tokenizer = UnifiedTokenizer(
        self.schema, self.width, self.num_ns_tokens, embed_dim=self.embed_dim,
        ns_tokenizer=self.ns_tokenizer, ns_groups=self.ns_groups, ns_hidden=self.ns_hidden,
        seq_merge=self.seq_merge, use_sep=self.use_sep, seq_order=self.seq_order,
        time_gap_buckets=self.time_gap_buckets, dtype=self.dtype)
    block = OneTransBlock
    if REMAT_POLICIES[self.remat] is not None:
      block = nn.remat(OneTransBlock, policy=REMAT_POLICIES[self.remat], static_argnums=(4,))
    self.blocks = [
        block(self.width, self.num_heads, self.num_ns_tokens, ffn_mult=self.ffn_mult,
              activation=self.activation, shared=self.shared_params, causal=self.causal,
              attention_impl=self.attention_impl, dtype=self.dtype, name=f'block_{i}')
        for i in range(self.num_layers)
    ]
    # Pre-norm blocks leave the residual stream unnormalised: one final RMSNorm before the head.
    self.final_norm = nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32, name='final_norm')
    self.towers = TaskTowers(self.schema.num_tasks, self.head_hidden or self.width, self.dtype)

  def encode(self, s: jnp.ndarray, s_valid: jnp.ndarray, ns: jnp.ndarray,
             collect: bool = False) -> tuple[jnp.ndarray, list[dict[str, jnp.ndarray]]]:
    """The block stack on B token lists: s [B, L_S, d], ns [B, N, d] -> final NS [B, N, d].

    ``collect`` also returns every layer's output states (for the causality tests).
    """
    states = []
    for blk, queries in zip(self.blocks, self.schedule):
      s, ns = blk(s, s_valid, ns, queries - self.num_ns_tokens)
      s_valid = s_valid[:, s_valid.shape[1] - s.shape[1]:]
      if collect:
        states.append({'s': s, 'ns': ns})
    return ns, states

  def __call__(self, batch: Mapping[str, Any], train: bool = False,
               collect: bool = False) -> Any:
    del train  # no dropout (SPEC A.4 [D])
    tok = self.tokenizer(batch)
    r, c = batch['cand']['mask'].shape
    l_s, d = tok['s'].shape[1:]
    s = jnp.broadcast_to(tok['s'][:, None], (r, c, l_s, d)).reshape(r * c, l_s, d)
    s_valid = jnp.broadcast_to(tok['s_valid'][:, None], (r, c, l_s)).reshape(r * c, l_s)
    ns = tok['ns'].reshape(r * c, self.num_ns_tokens, d)
    ns, states = self.encode(s, s_valid, ns, collect)
    pooled = jnp.mean(self.final_norm(ns.astype(jnp.float32)), axis=1)
    logits = self.towers(pooled).reshape(r, c, -1)
    return (logits, states) if collect else logits
