"""The OneTrans paper's baselines (SPEC A.10, A.11): encode-then-interact rankers, one template.

Every baseline of the paper's comparison table is a sequence module + a feature-interaction
backbone + per-task towers over the shared feature schema and batch contract:

  1. Feature tokens, all of width e (``embed_dim``), [R, C, N, e]: every request and candidate
     categorical embedding and every numeric feature (x * w + b) is a token, and each behaviour
     sequence adds the tokens of its summary (below). The request tokens are computed once per
     request and broadcast over its candidates.
  2. Sequence summaries (sequence_encoders.py), one module per behaviour sequence [D]:
       'din', 'stack_din'  target attention: the target e_t is the candidate's embeddings in the
                           sequence's own columns (its item id, then each side feature, matched by
                           vocabulary; a side column the candidate lacks is a zero slot [D]); the
                           summary [(1+S) e] is split back into its 1+S column tokens;
       'longer'            LONGER with the target (candidate tokens) and user (request tokens)
                           global tokens; its [width] output is width / e tokens;
       'transformer'       a target-agnostic encoder whose P pooled states [P, width] are
                           P * width / e extra tokens ("RankMixer + Transformer").
  3. Feature interaction (feature_interaction.py) over the tokens: 'dcnv2' and 'wukong' and
     'hiformer' read the N e-wide tokens as they are; 'rankmixer' first re-tokenizes them the
     RankMixer way (Zhu et al. 2025, Sec. 3.2: the feature vector concatenated, split into T
     equal chunks, each chunk projected to width d by its own weights, one einsum).
  4. ``TaskTowers`` (one MLP per task) on the backbone's output -> logits [R, C, T].

``model.name='baseline'`` with ``model.sequence`` and ``model.interaction``; each module's
hyperparameters sit in a sub-config of the same name (``model.din.hidden``, ``model.rankmixer.
num_tokens`` ...; baselines/config.defaults has every field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models.baselines import feature_interaction as fi
from onetrans_jax.models.baselines import sequence_encoders as se
from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning as lp
from onetrans_jax.models.layers.embeddings import EMBEDDINGS, FeatureEmbeddings, NumericEmbedding
from onetrans_jax.models.multitask.towers import TaskTowers
from onetrans_jax.schema import FeatureSchema, SequenceFeature


def sequence_columns(schema: FeatureSchema, seq: SequenceFeature) -> list[int | None]:
  """For each column of ``seq`` (item id, then side features) the index of the candidate
  categorical feature in the same vocabulary (the first one), or None when the candidate has none.
  """
  cand = [f.vocab for f in schema.candidate_categorical]
  vocabs = [seq.item_vocab] + [v for _, v in seq.side_features]
  return [cand.index(v) if v in cand else None for v in vocabs]


def _options(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
  return dict(pairs)


def interaction_module(kind: str, options: Mapping[str, Any], dtype: Any = jnp.float32,
                       name: str | None = None) -> nn.Module:
  """The backbone ``kind`` from its hyperparameters (also unbound, for its output width and
  FLOPs)."""
  o = options
  if kind == 'dcnv2':
    return fi.DCNv2(num_cross_layers=o['num_cross_layers'], structure=o['structure'],
                    mlp_hidden=tuple(o['mlp_hidden']), rank=o['rank'], dtype=dtype, name=name)
  if kind == 'wukong':
    return fi.Wukong(num_layers=o['num_layers'], num_fm_tokens=o['num_fm_tokens'],
                     num_lcb_tokens=o['num_lcb_tokens'], fm_rank=o['fm_rank'],
                     mlp_hidden=tuple(o['mlp_hidden']), dtype=dtype, name=name)
  if kind == 'hiformer':
    return fi.HiFormer(num_layers=o['num_layers'], num_heads=o['num_heads'],
                       head_dim=o['head_dim'], rank=o['rank'], ffn_mult=o['ffn_mult'],
                       dtype=dtype, name=name)
  return fi.RankMixer(num_layers=o['num_layers'], ffn_mult=o['ffn_mult'], dtype=dtype, name=name)


class BaselineRanker(nn.Module):
  """Sequence module + feature interaction + task towers (module docstring)."""
  schema: FeatureSchema
  sequence: str = 'din'
  interaction: str = 'dcnv2'
  embed_dim: int = 16
  sequence_options: tuple[tuple[str, Any], ...] = ()     # the sequence module's hyperparameters
  interaction_options: tuple[tuple[str, Any], ...] = ()  # the backbone's hyperparameters
  head_hidden: int = 64
  dtype: Any = jnp.float32
  embedding_row_multiple: int = 1  # embedding-table rows rounded up to a multiple (even splits)

  # ------------------------------------------------------------------ pieces
  def _sequence_module(self, seq: SequenceFeature) -> nn.Module:
    o, dt, name = _options(self.sequence_options), self.dtype, f'seq_{seq.name}'
    if self.sequence == 'din':
      return se.DINAttention(hidden=tuple(o['hidden']), dtype=dt, name=name)
    if self.sequence == 'stack_din':
      return se.StackDIN(num_layers=o['num_layers'], hidden=tuple(o['hidden']), dtype=dt,
                         name=name)
    if self.sequence == 'longer':
      # [D] num_recent is capped at the sequence's merged length: one setting serves sequences of
      # different lengths (the synthetic order history has only 3 merged tokens).
      return se.Longer(width=o['width'], num_heads=o['num_heads'], num_layers=o['num_layers'],
                       merge=o['merge'], num_recent=min(o['num_recent'],
                                                        -(-seq.max_len // o['merge'])),
                       ffn_mult=o['ffn_mult'], dtype=dt, name=name)
    return se.SequenceTransformer(width=o['width'], num_heads=o['num_heads'],
                                  num_layers=o['num_layers'], ffn_mult=o['ffn_mult'], dtype=dt,
                                  name=name)

  def _rankmixer_tokens(self, x: jnp.ndarray) -> jnp.ndarray:
    """[R, C, N, e] -> T tokens [R, C, T, d]: the flattened features split into T equal chunks
    (zero-padded at the end), chunk t through its own linear map (stacked [T, chunk, d])."""
    o = _options(self.interaction_options)
    t, d = o['num_tokens'], o['width']
    flat = x.reshape(x.shape[:-2] + (-1,))
    chunk = -(-flat.shape[-1] // t)
    flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, t * chunk - flat.shape[-1])])
    w = lp.param(self, 'token_kernel', init_lib.stacked_fan_in(), (t, chunk, d),
                 (lp.TOKENS, lp.EMBED, lp.MLP))
    b = lp.param(self, 'token_bias', nn.initializers.zeros, (t, d), (lp.TOKENS, lp.MLP))
    chunks = flat.reshape(flat.shape[:-1] + (t, chunk)).astype(self.dtype)
    return jnp.einsum('...tc,tcd->...td', chunks, w.astype(self.dtype)) + b.astype(self.dtype)

  # ------------------------------------------------------------------ forward
  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool = False) -> jnp.ndarray:
    """-> logits [R, C, T] float32 (task t's conditional logit for every candidate)."""
    del train  # no dropout or batch statistics [D]
    s, e, dt = self.schema, self.embed_dim, self.dtype
    r, c = batch['cand']['mask'].shape
    emb = FeatureEmbeddings(s, e, dt, row_multiple=self.embedding_row_multiple, name=EMBEDDINGS)
    user = [emb.request(batch)]                                              # [R, F_u, e]
    if s.request_numeric:
      user.append(NumericEmbedding(len(s.request_numeric), e, dt, name='request_numeric')(
          batch['request']['num']))
    user = jnp.concatenate(user, axis=1)
    cand_cat = emb.candidates(batch)                                         # [R, C, F_c, e]
    cand = [cand_cat]
    if s.candidate_numeric:
      cand.append(NumericEmbedding(len(s.candidate_numeric), e, dt, name='candidate_numeric')(
          batch['cand']['num']))
    cand = jnp.concatenate(cand, axis=2)
    tokens = [jnp.broadcast_to(user[:, None], (r, c) + user.shape[1:]), cand]
    for seq in s.sequences:
      events = emb.sequence(batch, seq.name)                                 # [R, L, 1+S, e]
      mask = batch['seq'][seq.name]['mask']
      flat_events = events.reshape(r, seq.max_len, -1)
      module = self._sequence_module(seq)
      if self.sequence in ('din', 'stack_din'):
        cols = [jnp.zeros((r, c, e), dt) if j is None else cand_cat[:, :, j]
                for j in sequence_columns(s, seq)]
        out = module(flat_events, mask, jnp.concatenate(cols, axis=-1))     # [R, C, (1+S) e]
      elif self.sequence == 'longer':
        out = module(flat_events, mask, cand.reshape(r, c, -1), user.reshape(r, -1))
      else:
        pooled = module(flat_events, mask).reshape(r, -1)                    # [R, P * width]
        out = jnp.broadcast_to(pooled[:, None], (r, c, pooled.shape[-1]))
      tokens.append(out.reshape(r, c, -1, e).astype(dt))
    x = jnp.concatenate(tokens, axis=2)                                      # [R, C, N, e]
    if self.interaction == 'rankmixer':
      x = self._rankmixer_tokens(x)
    x = lp.constrain(x, (lp.BATCH, None, lp.LENGTH, lp.ACT_EMBED))
    y = interaction_module(self.interaction, _options(self.interaction_options), dt,
                           'interaction')(x)
    return TaskTowers(s.num_tasks, self.head_hidden, dt, name='towers')(y)


# ---------------------------------------------------------------------- layout
def num_feature_tokens(schema: FeatureSchema, sequence: str, options: Mapping[str, Any],
                       embed_dim: int) -> int:
  """N: the e-wide feature tokens the interaction reads (before RankMixer's re-tokenization)."""
  n = (len(schema.request_categorical) + len(schema.request_numeric) +
       len(schema.candidate_categorical) + len(schema.candidate_numeric))
  for seq in schema.sequences:
    if sequence in ('din', 'stack_din'):
      n += 1 + len(seq.side_features)
    elif sequence == 'longer':
      n += options['width'] // embed_dim
    else:
      n += se.SequenceTransformer.NUM_POOLED * options['width'] // embed_dim
  return n
