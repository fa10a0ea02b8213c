"""Unified tokenizer (SPEC A.2): behaviour sequences -> S tokens, other features -> NS tokens.

S side (request-level, shared by every candidate): each event = item id + side features embedded
and concatenated, then the sequence's own MLP_i to width d. The sequences are merged into one
right-aligned list (padding left, the "most recent" token last, so the pyramid keeps it):
  * ``timestamp_aware``: all events interleaved by time, plus a learned sequence-type embedding;
  * ``timestamp_agnostic``: sequences concatenated in order of intent strength (``agnostic_order``,
    default: the schema's order reversed, e.g. order, cart, click), optionally with one learnable
    [SEP] token per boundary. Valid tokens are packed to the right, so padding never sits between
    two sequences.
Then the order features (``order_features``): a learned position embedding per slot counted from
the most recent event (``s_position='from_recent'``, SPEC A.2 [D]) and, optionally, a time-gap
bucket embedding of log2(request time - event time). Both change every old token when events are
appended, so the incremental user cache (SPEC A.6) needs ``s_position='none'`` and no time-gap
buckets: then a token depends on its own event only and the order is carried by the causal mask
(causal Transformers without positional encodings still learn position: Kazemnejad et al., "The
Impact of Positional Encoding on Length Generalization in Transformers", NeurIPS 2023).

NS side (per candidate): every categorical and numeric non-sequential feature embedded, then
  * ``auto_split``: concat -> one MLP -> split into L_NS tokens of width d;
  * ``group_wise``: feature groups g_1..g_{L_NS}; token j = MLP_j(concat(g_j)), the L_NS MLPs as
    stacked weights (groups zero-padded to the widest), applied with one einsum. Their hidden
    width is ``group_hidden`` (d by default), not the auto-split MLP's: the paper's group-wise
    row has fewer parameters than Auto-Split's (78M against 91M, SPEC A.10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from onetrans_jax.errors import ConfigError
from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.embeddings import EMBEDDINGS, FeatureEmbeddings, NumericEmbedding
from onetrans_jax.models.layers.partitioning import EMBED, MLP, TOKENS
from onetrans_jax.schema import FeatureSchema

NS_TOKENIZERS = ('auto_split', 'group_wise')
SEQ_MERGES = ('timestamp_aware', 'timestamp_agnostic')
S_POSITIONS = ('from_recent', 'none')


def ns_feature_names(schema: FeatureSchema) -> list[str]:
  """All non-sequential features in token order: request cat, request num, cand cat, cand num."""
  return ([f.name for f in schema.request_categorical] + [f.name for f in schema.request_numeric] +
          [f.name for f in schema.candidate_categorical] +
          [f.name for f in schema.candidate_numeric])


def default_groups(schema: FeatureSchema, num_groups: int) -> tuple[tuple[str, ...], ...]:
  """[D] contiguous, near-equal groups of the NS features in schema order (user, context, item)."""
  names = ns_feature_names(schema)
  if num_groups > len(names):
    raise ConfigError(f'group-wise tokenizer: config.model.num_ns_tokens={num_groups} exceeds the '
                      f'{len(names)} non-sequential features; use fewer tokens or auto_split')
  return tuple(tuple(g.tolist()) for g in np.array_split(np.array(names, dtype=object), num_groups))


def agnostic_order(schema: FeatureSchema, order: Sequence[str] | None) -> tuple[int, ...]:
  """Indices of the schema's sequences in concatenation order for the timestamp-agnostic merge."""
  names = [s.name for s in schema.sequences]
  if order is None:
    return tuple(reversed(range(len(names))))
  order = tuple(order)
  if sorted(order) != sorted(names):
    raise ConfigError(f'config.model.agnostic_order={order} must list each sequence once: {names}')
  return tuple(names.index(n) for n in order)


def merged_length(schema: FeatureSchema, seq_merge: str, use_sep: bool) -> int:
  """L_S: the number of S tokens after merging (static)."""
  n = sum(s.max_len for s in schema.sequences)
  if seq_merge == 'timestamp_agnostic' and use_sep:
    n += len(schema.sequences) - 1
  return n


class UnifiedTokenizer(nn.Module):
  schema: FeatureSchema
  width: int
  num_ns_tokens: int
  embed_dim: int = 16
  ns_tokenizer: str = 'auto_split'
  ns_groups: tuple[tuple[str, ...], ...] | None = None
  ns_hidden: int = 0              # auto-split MLP hidden width; 0: L_NS * d
  group_hidden: int = 0           # group-wise: each group MLP's hidden width; 0: d
  seq_merge: str = 'timestamp_aware'
  use_sep: bool = False
  seq_order: tuple[str, ...] | None = None
  time_gap_buckets: int = 0       # 0: no time-gap embedding
  s_position: str = 'from_recent'  # or 'none': append-stable S tokens (incremental user cache)
  dtype: Any = jnp.float32
  embedding_row_multiple: int = 1  # embedding tables padded to a multiple of this many rows

  @property
  def num_s_tokens(self) -> int:
    return merged_length(self.schema, self.seq_merge, self.use_sep)

  # ------------------------------------------------------------------ S side
  def event_tokens(self, emb: FeatureEmbeddings, batch: Mapping[str, Any]
                   ) -> dict[str, jnp.ndarray]:
    """The merged S list before order features, right-aligned.

    -> {'s' [R, L, d], 's_valid' [R, L], 's_time' [R, L], 's_kind' [R, L] (index of the event's
    sequence in the schema; -1 for a [SEP] token)}. L is the batch's own merged length, so a
    handful of newly arrived events tokenizes the same way as a whole history.
    """
    s, d = self.schema, self.width
    toks, valid, times, kinds = [], [], [], []
    aware = self.seq_merge == 'timestamp_aware'
    type_emb = (partitioning.param(self, 'sequence_type', nn.initializers.normal(0.02),
                                   (len(s.sequences), d), (TOKENS, EMBED))
                if aware else None)  # the agnostic merge marks boundaries with [SEP] instead
    for i, seq in enumerate(s.sequences):  # sequences differ in width: one MLP_i each
      ev = emb.sequence(batch, seq.name)
      r, l = ev.shape[:2]
      x = ev.reshape(r, l, -1)
      x = nn.Dense(d, dtype=self.dtype, name=f'seq_mlp_{seq.name}_0',
                   **partitioning.dense(EMBED, MLP))(x)
      x = nn.Dense(d, dtype=self.dtype, name=f'seq_mlp_{seq.name}_1',
                   **partitioning.dense(MLP, EMBED))(nn.silu(x))
      if aware:
        x = x + type_emb[i].astype(x.dtype)
      toks.append(x)
      valid.append(batch['seq'][seq.name]['mask'])
      times.append(batch['seq'][seq.name]['time'])
      kinds.append(jnp.full((r, l), i, jnp.int32))
    r = toks[0].shape[0]
    if aware:
      tok, val, tim, kind = (jnp.concatenate(x, axis=1) for x in (toks, valid, times, kinds))
      # Padding first (key -1), then events by time; a stable sort keeps ties in schema order.
      key = jnp.where(val, tim, -1)
    else:
      order = agnostic_order(s, self.seq_order)
      sep = (partitioning.param(self, 'sep', nn.initializers.normal(0.02), (len(order) - 1, d),
                                (TOKENS, EMBED))
             if self.use_sep else None)
      parts = ([], [], [], [])
      for pos, i in enumerate(order):
        if pos and sep is not None:
          for part, x in zip(parts, (
              jnp.broadcast_to(sep[pos - 1].astype(toks[i].dtype), (r, 1, d)),
              jnp.ones((r, 1), bool),
              batch['request']['time'][:, None],  # gap 0: a separator, not an event
              jnp.full((r, 1), -1, jnp.int32))):
            part.append(x)
        for part, x in zip(parts, (toks[i], valid[i], times[i], kinds[i])):
          part.append(x)
      tok, val, tim, kind = (jnp.concatenate(x, axis=1) for x in parts)
      key = jnp.where(val, jnp.arange(val.shape[1])[None, :], -1)
    perm = jnp.argsort(key, axis=1, stable=True)
    tok = jnp.take_along_axis(tok, perm[..., None], axis=1)
    val, tim, kind = (jnp.take_along_axis(x, perm, axis=1) for x in (val, tim, kind))
    return {'s': jnp.where(val[..., None], tok, 0).astype(self.dtype), 's_valid': val,
            's_time': tim, 's_kind': kind}

  def order_features(self, tok: jnp.ndarray, valid: jnp.ndarray, time: jnp.ndarray,
                     batch: Mapping[str, Any]) -> jnp.ndarray:
    """Adds the slot position (counted from the most recent) and the request-time gap buckets."""
    if self.s_position not in S_POSITIONS:
      raise ConfigError(f'config.model.s_position={self.s_position!r}: choose one of '
                        f'{list(S_POSITIONS)}')
    if self.s_position == 'from_recent':
      # Slot j is the (L_S - 1 - j)-th most recent token: a learned embedding per slot.
      pos = partitioning.param(self, 'position', nn.initializers.normal(0.02),
                               (tok.shape[1], self.width), (TOKENS, EMBED))
      tok = tok + pos.astype(tok.dtype)
    if self.time_gap_buckets:
      gap = jnp.maximum(batch['request']['time'][:, None] - time, 0).astype(jnp.float32)
      bucket = jnp.clip(jnp.floor(jnp.log2(gap + 1.0)), 0, self.time_gap_buckets - 1)
      bucket = jnp.where(valid, bucket.astype(jnp.int32) + 1, 0)
      table = partitioning.param(self, 'time_gap', nn.initializers.normal(0.02),
                                 (self.time_gap_buckets + 1, self.width), (TOKENS, EMBED))
      tok = tok + jnp.take(table, bucket, axis=0).astype(tok.dtype)
    return jnp.where(valid[..., None], tok, 0).astype(self.dtype)

  # ------------------------------------------------------------------ NS side
  def ns_tokens(self, emb: FeatureEmbeddings, batch: Mapping[str, Any]) -> jnp.ndarray:
    """-> NS tokens [R, C, L_NS, d]."""
    s, d, n = self.schema, self.width, self.num_ns_tokens
    r, c = batch['cand']['mask'].shape
    req = [emb.request(batch)]                       # [R, F_u, e]
    if s.request_numeric:
      req.append(NumericEmbedding(len(s.request_numeric), self.embed_dim, self.dtype,
                                  name='request_numeric')(batch['request']['num']))
    cand = [emb.candidates(batch)]                   # [R, C, F_c, e]
    if s.candidate_numeric:
      cand.append(NumericEmbedding(len(s.candidate_numeric), self.embed_dim, self.dtype,
                                   name='candidate_numeric')(batch['cand']['num']))
    req_f = jnp.concatenate(req, axis=1)             # [R, F_req, e] in ns_feature_names order
    cand_f = jnp.concatenate(cand, axis=2)           # [R, C, F_cand, e]
    if self.ns_tokenizer == 'auto_split':
      hidden = self.ns_hidden or n * d
      # First layer split into request and candidate parts: the request part runs once per
      # request and is broadcast, the same result as one Dense over the per-candidate concat.
      h_req = nn.Dense(hidden, dtype=self.dtype, name='auto_split_request',
                       **partitioning.dense(EMBED, MLP))(req_f.reshape(r, -1))
      h_cand = nn.Dense(hidden, use_bias=False, dtype=self.dtype, name='auto_split_candidate',
                        **partitioning.dense(EMBED, MLP))(cand_f.reshape(r, c, -1))
      hid = nn.silu(h_req[:, None] + h_cand)
      out = nn.Dense(n * d, dtype=self.dtype, name='auto_split_out',
                     **partitioning.dense(MLP, EMBED))(hid)
      return out.reshape(r, c, n, d)
    groups = self.ns_groups or default_groups(s, n)
    names = ns_feature_names(s)
    feats = jnp.concatenate([jnp.broadcast_to(req_f[:, None], (r, c) + req_f.shape[1:]), cand_f],
                            axis=2)                  # [R, C, F, e]
    width = max(len(g) for g in groups) * self.embed_dim
    cols = []
    for g in groups:  # static gather of each group's features (layout, not compute)
      idx = [names.index(f) for f in g]
      x = feats[:, :, idx].reshape(r, c, -1)
      cols.append(jnp.pad(x, ((0, 0), (0, 0), (0, width - x.shape[-1]))))
    x = jnp.stack(cols, axis=2)                      # [R, C, L_NS, width]
    hid = self.group_hidden or d
    w1 = partitioning.param(self, 'group_w1', init_lib.stacked_fan_in(), (n, width, hid),
                            (TOKENS, EMBED, MLP))
    b1 = partitioning.param(self, 'group_b1', nn.initializers.zeros, (n, hid), (TOKENS, MLP))
    w2 = partitioning.param(self, 'group_w2', init_lib.stacked_fan_in(), (n, hid, d),
                            (TOKENS, MLP, EMBED))
    b2 = partitioning.param(self, 'group_b2', nn.initializers.zeros, (n, d), (TOKENS, EMBED))
    h = nn.silu(jnp.einsum('rcnw,nwh->rcnh', x, w1.astype(self.dtype)) + b1.astype(self.dtype))
    return jnp.einsum('rcnh,nhd->rcnd', h, w2.astype(self.dtype)) + b2.astype(self.dtype)

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], part: str = 'all') -> dict[str, jnp.ndarray]:
    """``part``: 'all'; 'user' (S tokens only, no candidate features read); 'candidates' (NS
    tokens only, no sequence read): the two stages of cached serving (SPEC A.6). The S side also
    returns each slot's event time and sequence index (``s_time``, ``s_kind``), which the
    incremental user cache keeps to merge later events."""
    if part not in ('all', 'user', 'candidates'):
      raise ValueError(f"tokenizer part {part!r}: choose 'all', 'user' or 'candidates'")
    emb = FeatureEmbeddings(self.schema, self.embed_dim, self.dtype,
                            row_multiple=self.embedding_row_multiple, name=EMBEDDINGS)
    out = {}
    if part != 'candidates':
      out = self.event_tokens(emb, batch)
      out['s'] = self.order_features(out['s'], out['s_valid'], out['s_time'], batch)
    if part != 'user':
      out['ns'] = self.ns_tokens(emb, batch)
    return out


def check_groups(schema: FeatureSchema, groups: Sequence[Sequence[str]], num_tokens: int) -> None:
  names = ns_feature_names(schema)
  if len(groups) != num_tokens:
    raise ConfigError(f'config.model.ns_groups has {len(groups)} groups for '
                      f'config.model.num_ns_tokens={num_tokens}')
  for g in groups:
    if not g:
      raise ConfigError('config.model.ns_groups has an empty group')
    for f in g:
      if f not in names:
        raise ConfigError(f'config.model.ns_groups names {f!r}, not a non-sequential feature; '
                          f'known: {names}')
