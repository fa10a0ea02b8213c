"""OneTrans (SPEC part A): one causal Transformer over [S tokens ; NS tokens].

tokenizer -> S tokens [R, L_S, d] (request-level), NS tokens [R, C, L_NS, d] -> pyramid of
OneTransBlocks (layer i keeps the last schedule[i] tokens) -> final RMSNorm, mean of the final NS
tokens -> task towers -> logits [R, C, T]. Two exact layouts of the block stack:
  * request-level sharing (SPEC A.6, the default under the causal mask): the S side runs once per
    request and leaves per-layer keys/values (the *user cache*); every candidate's NS tokens attend
    to it. ``user_cache`` / ``score_with_cache`` expose the two stages for cached serving.
  * per candidate (``request_level=False``, required by full attention): S broadcast to B = R*C
    token lists, each run whole: the paper's naive formulation and the test oracle.
Layers differ in their static token counts, so they are unrolled (a scan needs equal shapes).

Across requests a user's behaviour only grows: ``user_state`` / ``extend_user_state`` keep the user
cache with the merged S window and update it when events arrive, recomputing only the rows that
can have changed (SPEC A.6; see ``extend_user_state``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.multitask import config as predictor_config
from onetrans_jax.models.onetrans.block import OneTransBlock
from onetrans_jax.models.onetrans.tokenizer import UnifiedTokenizer
from onetrans_jax.schema import FeatureSchema

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


UserCache = dict[str, tuple[jnp.ndarray, ...]]  # 'k', 'v' [R, Ls_i, H, Dh], 'valid' [R, Ls_i]
# The incremental user state: the merged S window ('tokens' [R, L_S, d], 'valid', 'time', 'kind'
# [R, L_S]), every layer's kept S outputs ('kept': [R, q_i, d] per layer) and the user cache.
UserState = dict[str, Any]


def require_user_cache(model: OneTrans) -> None:
  """Cached serving needs a candidate-independent S side: a request-level (causal) OneTrans."""
  if not model.request_level:
    raise ValueError('cached serving needs config.model.attention=\'causal\' and '
                     'config.model.request_level left on: with full attention the S tokens read '
                     'each candidate, so there is no candidate-independent user cache')


def require_incremental(model: OneTrans) -> None:
  """An appendable user cache needs S tokens that do not move when later events arrive."""
  require_user_cache(model)
  if model.seq_merge != 'timestamp_aware':
    raise ValueError('the incremental user cache needs config.model.seq_merge=\'timestamp_aware\': '
                     'with the timestamp-agnostic merge a new event lands mid-sequence (SPEC A.6)')
  if not model.tokenizer_append_stable:
    raise ValueError('the incremental user cache needs append-stable S tokens: set '
                     'config.model.s_position=\'none\' and config.model.time_gap_buckets=0 (the '
                     'slot position counted from the most recent event and the gap to the request '
                     'time change every cached token when events are appended)')


def _shift_merge(old: jnp.ndarray, tail: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
  """Row r of the result: old[j + shift[r]] for the first n - t slots, then the t tail rows.

  old [R, n, ...] is a window before ``shift[r]`` events were appended to row r; tail [R, t, ...]
  holds freshly computed values for the window's last t slots (t >= every shift).
  """
  n, t = old.shape[1], tail.shape[1]
  idx = jnp.arange(n - t)[None, :] + shift[:, None]
  idx = idx.reshape(idx.shape + (1,) * (old.ndim - 2))
  return jnp.concatenate([jnp.take_along_axis(old, idx, axis=1), tail.astype(old.dtype)], axis=1)


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
  group_hidden: int = 0
  seq_merge: str = 'timestamp_aware'
  use_sep: bool = False
  seq_order: tuple[str, ...] | None = None
  time_gap_buckets: int = 0
  s_position: str = 'from_recent'
  shared_params: bool = False
  causal: bool = True
  request_level: bool = True      # share the S side across a request's candidates (causal only)
  attention_impl: str = 'auto'
  remat: str = 'none'
  ns_token_first: bool = False    # the candidate side holds NS tokens [N, R, C, d] (ns_layout)
  head_hidden: int = 0            # 0: d
  # The multi-task predictor over the pooled NS tokens (SPEC B.7 baselines): ('predictor', kind)
  # and its size fields as (name, value) pairs, hashable for the module; () = per-task towers.
  predictor: tuple[tuple[str, Any], ...] = ()
  dtype: Any = jnp.float32
  embedding_row_multiple: int = 1  # embedding tables padded to a multiple of this many rows

  # Top-level parameters that belong to one task: gradient diagnostics leave them out of the
  # shared encoder.
  TASK_PRIVATE = ('towers',)

  def setup(self):
    if self.request_level and not self.causal:
      raise ValueError('request-level sharing needs causal attention: under full attention S '
                       'tokens read the candidate\'s NS tokens')
    self.tokenizer = UnifiedTokenizer(
        self.schema, self.width, self.num_ns_tokens, embed_dim=self.embed_dim,
        ns_tokenizer=self.ns_tokenizer, ns_groups=self.ns_groups, ns_hidden=self.ns_hidden,
        group_hidden=self.group_hidden,
        seq_merge=self.seq_merge, use_sep=self.use_sep, seq_order=self.seq_order,
        time_gap_buckets=self.time_gap_buckets, s_position=self.s_position, dtype=self.dtype,
        embedding_row_multiple=self.embedding_row_multiple)
    block = OneTransBlock
    if REMAT_POLICIES[self.remat] is not None:
      block = nn.remat(OneTransBlock, policy=REMAT_POLICIES[self.remat],
                       methods=['__call__', 'user_side', 'candidate_side'])
    self.blocks = [
        block(self.width, self.num_heads, self.num_ns_tokens, queries - self.num_ns_tokens,
              ffn_mult=self.ffn_mult, activation=self.activation, shared=self.shared_params,
              causal=self.causal, attention_impl=self.attention_impl, dtype=self.dtype,
              ns_token_first=self.ns_token_first, name=f'block_{i}')
        for i, queries in enumerate(self.schedule)
    ]
    # Pre-norm blocks leave the residual stream unnormalised: one final RMSNorm before the head.
    self.final_norm = nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32, name='final_norm',
                                 **partitioning.norm(bias=False))
    head_cfg = ml_collections.ConfigDict(dict(self.predictor, head_hidden=self.head_hidden))
    self.towers = predictor_config.from_config(head_cfg, self.schema.num_tasks, self.dtype,
                                               self.width)

  @property
  def tokenizer_append_stable(self) -> bool:
    """S tokens depend on their own event only (see tokenizer.py): usable outside ``apply``."""
    return self.s_position == 'none' and not self.time_gap_buckets

  # ------------------------------------------------------------------ block stack, two layouts
  def encode(self, s: jnp.ndarray, s_valid: jnp.ndarray, ns: jnp.ndarray,
             collect: bool = False) -> tuple[jnp.ndarray, list[dict[str, jnp.ndarray]]]:
    """Per token list: s [B, L_S, d], ns [B, N, d] -> final NS [B, N, d].

    ``collect`` also returns every layer's output states (for the causality tests).
    """
    states = []
    for blk in self.blocks:
      s, ns = blk(s, s_valid, ns)
      s_valid = s_valid[:, s_valid.shape[1] - s.shape[1]:]
      if collect:
        states.append({'s': s, 'ns': ns})
    return ns, states

  def encode_user(self, s: jnp.ndarray, s_valid: jnp.ndarray
                  ) -> tuple[UserCache, list[jnp.ndarray]]:
    """Stage I, once per request: s [R, L_S, d] -> (user cache, each layer's kept S states)."""
    cache: dict[str, list[jnp.ndarray]] = {'k': [], 'v': [], 'valid': []}
    kept = []
    for blk in self.blocks:
      out, (k, v) = blk.user_side(s, s_valid)
      for name, x in (('k', k), ('v', v), ('valid', s_valid)):
        cache[name].append(x)
      s, s_valid = out, s_valid[:, s_valid.shape[1] - out.shape[1]:]
      kept.append(s)
    return {name: tuple(x) for name, x in cache.items()}, kept

  def encode_candidates(self, ns: jnp.ndarray, cache: UserCache
                        ) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """Stage II: ns [R, C, N, d] against the user cache -> (final NS, each layer's NS states)."""
    states = []
    if self.ns_token_first:   # one transpose in and out instead of around every NS einsum
      ns = jnp.moveaxis(ns, -2, 0)
    for blk, k, v, valid in zip(self.blocks, cache['k'], cache['v'], cache['valid']):
      ns = blk.candidate_side(ns, k, v, valid)
      states.append(jnp.moveaxis(ns, 0, -2) if self.ns_token_first else ns)
    return states[-1] if states else ns, states

  def _logits(self, ns: jnp.ndarray) -> jnp.ndarray:
    """Final NS tokens [..., N, d] -> logits [..., T]."""
    return self.towers(jnp.mean(self.final_norm(ns.astype(jnp.float32)), axis=-2))

  # ------------------------------------------------------------------ entry points
  def __call__(self, batch: Mapping[str, Any], train: bool = False,
               collect: bool = False) -> Any:
    """Logits [R, C, T]; ``collect`` adds each layer's states, laid out per candidate
    ([R*C, ...], S broadcast) whichever layout ran, so the two layouts compare directly."""
    del train  # no dropout (SPEC A.4 [D])
    tok = self.tokenizer(batch)
    r, c = batch['cand']['mask'].shape
    if self.request_level:
      cache, kept = self.encode_user(tok['s'], tok['s_valid'])
      ns, ns_states = self.encode_candidates(tok['ns'], cache)
      logits = self._logits(ns)
      if not collect:
        return logits
      flat = lambda x: x.reshape((r * c,) + x.shape[2:])
      states = [{'s': flat(jnp.broadcast_to(s[:, None], (r, c) + s.shape[1:])), 'ns': flat(n)}
                for s, n in zip(kept, ns_states)]
      return logits, states
    l_s, d = tok['s'].shape[1:]
    s = jnp.broadcast_to(tok['s'][:, None], (r, c, l_s, d)).reshape(r * c, l_s, d)
    s_valid = jnp.broadcast_to(tok['s_valid'][:, None], (r, c, l_s)).reshape(r * c, l_s)
    ns, states = self.encode(s, s_valid, tok['ns'].reshape(r * c, self.num_ns_tokens, d),
                             collect)
    logits = self._logits(ns).reshape(r, c, -1)
    return (logits, states) if collect else logits

  def user_cache(self, batch: Mapping[str, Any]) -> UserCache:
    """Serving stage I: reads only the request's sequences (``batch['seq']``, request time)."""
    require_user_cache(self)
    tok = self.tokenizer(batch, part='user')
    return self.encode_user(tok['s'], tok['s_valid'])[0]

  def score_with_cache(self, batch: Mapping[str, Any], cache: UserCache) -> jnp.ndarray:
    """Serving stage II: request features and candidates (no sequences) -> logits [R, C, T]."""
    require_user_cache(self)
    tok = self.tokenizer(batch, part='candidates')
    return self._logits(self.encode_candidates(tok['ns'], cache)[0])

  # ------------------------------------------------------------------ incremental user cache
  def user_state(self, batch: Mapping[str, Any]) -> UserState:
    """Stage I keeping what later appends need: the S window and every layer's kept outputs."""
    require_incremental(self)
    tok = self.tokenizer(batch, part='user')
    cache, kept = self.encode_user(tok['s'], tok['s_valid'])
    return {'tokens': tok['s'], 'valid': tok['s_valid'], 'time': tok['s_time'],
            'kind': tok['s_kind'], 'cache': cache, 'kept': tuple(kept)}

  def extend_user_state(self, state: UserState, events: Mapping[str, Any], kv_layers: int,
                        out_layers: int) -> UserState:
    """Appends newly arrived events (``events['seq']``, later than everything in ``state``).

    The result equals ``user_state`` of the whole history (each sequence truncated to its
    ``max_len``). What is reused, from static counts the caller derives from the data
    (``serving.plan_append``):
      * S tokens and layer-0 keys/values of every surviving event: exact always, since a token
        depends on its own event only (append-stable tokenizer) and a key on its own token;
      * layer i's kept outputs for old events, for i < ``out_layers``: exact while layer i's input
        window still holds the user's whole (not evicted) history, because causal queries see only
        earlier tokens, which did not change; new events' rows (the last K slots) are computed;
      * layer i's keys/values, for 0 < i < ``kv_layers`` (<= out_layers + 1): exact when the
        previous layer's outputs are; only the last K rows are projected.
    Every other layer is recomputed over its (tail) window: once the history overflows a pyramid
    layer's window, that window slides and its old rows see a different prefix (SPEC A.6 caveat).
    The appended events are padded to a static width K (their merged length), and a reused layer
    recomputes its last min(K, window) rows: batch appends at the width they need.
    """
    require_incremental(self)
    n_layers = len(self.blocks)
    if not 0 <= out_layers <= kv_layers <= min(out_layers + 1, n_layers):
      raise ValueError(f'extend_user_state: need 0 <= out_layers ({out_layers}) <= kv_layers '
                       f'({kv_layers}) <= min(out_layers + 1, {n_layers})')
    new = self.tokenizer(events, part='user')
    l_s = state['tokens'].shape[1]
    num_new = new['s'].shape[1]
    # Merge [window ; new events] and keep each sequence's last max_len events, oldest first.
    both = {k: jnp.concatenate([state[k], new['s_' + k if k != 'tokens' else 's']], axis=1)
            for k in ('tokens', 'valid', 'time', 'kind')}
    kinds = len(self.schema.sequences)
    onehot = (both['kind'][..., None] == jnp.arange(kinds)) & both['valid'][..., None]
    later = jnp.flip(jnp.cumsum(jnp.flip(onehot, 1), axis=1), 1) - onehot  # same-kind events after
    max_len = jnp.asarray([q.max_len for q in self.schema.sequences])
    keep = both['valid'] & jnp.sum(onehot * (later < max_len), axis=-1).astype(bool)
    key = jnp.where(keep, jnp.arange(l_s + num_new)[None, :], -1)
    perm = jnp.argsort(key, axis=1, stable=True)[:, num_new:]          # [R, L_S]
    window = {k: jnp.take_along_axis(v, perm.reshape(perm.shape + (1,) * (v.ndim - 2)), axis=1)
              for k, v in both.items()}
    window['valid'] = jnp.take_along_axis(keep, perm, axis=1)
    shift = jnp.sum(new['s_valid'], axis=1)   # slots every old event moved (without eviction)
    x, valid = window['tokens'], window['valid']
    cache = {'k': [], 'v': [], 'valid': []}
    kept = []
    for i, blk in enumerate(self.blocks):
      n, q = x.shape[1], blk.num_s_queries
      if i == 0 and kv_layers:
        k_new, v_new = blk.s_kv(new['s'])
        gather = perm[..., None, None]
        k, v = (jnp.take_along_axis(jnp.concatenate([old, fresh], axis=1), gather, axis=1)
                for old, fresh in ((state['cache']['k'][0], k_new),
                                   (state['cache']['v'][0], v_new)))
      elif i < kv_layers:
        t = min(num_new, n)
        k_t, v_t = blk.s_kv(x[:, n - t:])
        k = _shift_merge(state['cache']['k'][i], k_t, shift)
        v = _shift_merge(state['cache']['v'][i], v_t, shift)
      else:
        k, v = blk.s_kv(x)
      if i < out_layers and q:
        t = min(num_new, q)
        out = _shift_merge(state['kept'][i], blk.s_rows(x[:, n - t:], k, v, valid), shift)
      else:
        out = blk.s_rows(x[:, n - q:], k, v, valid)
      for name, val in (('k', k), ('v', v), ('valid', valid)):
        cache[name].append(val)
      kept.append(out)
      x, valid = out, valid[:, n - q:]
    return {'tokens': window['tokens'], 'valid': window['valid'], 'time': window['time'],
            'kind': window['kind'], 'cache': {k: tuple(v) for k, v in cache.items()},
            'kept': tuple(kept)}
