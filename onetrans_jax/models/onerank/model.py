"""OneRank (SPEC part B): multi-task ranking inside one Transformer, scored by matching.

Pipeline, R requests x C candidates x K tasks (K = schema.num_tasks):

  1. Tokens (B.2), all of width d:
     * contextual tokens: every request categorical feature (its embedding through a private linear
       map, stacked [F_u, e, d]) and every request numeric feature (x * w + b) is its own token;
     * interaction-history tokens: the behaviour sequences merged into one right-aligned list by
       ``UnifiedTokenizer``'s S side (SPEC A.2: per-sequence MLP, timestamp-aware merge with a type
       embedding, learned position counted from the most recent event, optional time-gap buckets),
       reused as is over OneRank's own embedding tables;
     * one candidate token c_i per candidate: its categorical embeddings and numeric embeddings
       concatenated, Dense -> SiLU -> Dense to d, no positional embedding;
     * K learned task tokens t_1..t_K shared by every candidate and request, no position.
     The preference anchors of B.2 are not part of the batch contract (schema.py) and are left out.
  2. Encoder (B.3): pre-norm Transformer blocks (RMSNorm, multi-head attention, FFN 4x SiLU, no
     biases), one weight set for all tokens, over
         [prefix: contextual tokens ; history tokens] [c_1, t_1..t_K] ... [c_C, t_1..t_K]
     prefix causal and blind to candidates; c_i reads the valid prefix and itself; t_k of
     candidate i reads the valid prefix, c_i and itself. Two layouts of the same computation:
       * request-level (default, ``request_level=True``): the prefix runs once per request
         ([R, P, d]) and leaves per-layer keys/values; the groups ([R, C, 1+K, d]) attend to them
         with ``attention.prefix_group_attention`` (einsum, the prefix never copied over C);
       * reference (``request_level=False``): the full [prefix ; all groups] list per request with
         the explicit boolean mask of ``onerank_mask`` and ``jax.nn.dot_product_attention``.
     r_k^i = the final (RMSNorm'd) state of t_k in group i, [R, C, K, d].
  3. Task channels (B.4, B.5; task_channels.py): h_k = situation discernment over this request's
     real candidates, z_k = controlled cross-task interaction with gradient detachment.
  4. Matching-based scoring (B.6): s_k^i = z_k . r_k^i / sqrt(d) + b_k, logits [R, C, K] float32:
     per-task logits of the *unconditional* labels over all impressions (click, cart, order each
     as observed, not conditioned on the parent task). ``aux=True`` adds the InfoNCE logits
     s * (1/tau): 1/tau = exp(log_inv_temperature), learned from ``inv_temperature_init`` (or
     held there, ``learn_temperature=False``). b_k starts at 0 here; ``config.data_init`` sets it
     to the logit of task k's base rate in the training data (``task_bias_init='base_rate'``).

Training: ``logits, aux = model.apply(..., aux=True)`` then ``losses.onerank_loss(logits,
aux['nce_logits'], batch['labels'], batch['cand']['mask'], bce_weight=.., nce_weight=..)``.

Padding candidates (cand/mask False) influence nothing real: groups never see each other, and the
task channels mask them out; their own logits are computed but meaningless (the loss drops them).

Ablation switches (module attributes; SPEC B.6 / C.6), each changing one part and keeping the
rest: ``task_tokens`` ('per_task' | 'shared'), ``scoring`` ('matching' | 'mlp': an MLP head on
[z_k ; r_k^i] in place of the inner product, task channels kept), ``situation`` ('attention' |
'mean' | 'constant_query' | 'off', task_channels.py), ``learn_temperature`` (bool),
``cross_task`` (bool), ``task_mask`` ('cascade' | 'parallel' | 'full' | 'hybrid' with
``task_edges``), ``detach`` and ``detach_kv_weights`` (bool). Every choice the SPEC leaves open is
marked [D] where it is made.

Deviations from the paper, each off by default and marked [deviation] where it acts (issue 21
probed them on the mechanism world's validation split; none closed the gap to OneTrans + PLE,
results/onerank_knob_probes/README.md): ``candidate_in_task_tokens`` (t_k of group i starts as
t_k + c_i), ``candidate_reads_context`` (c_i's MLP also reads the raw contextual features) and
``request_bias`` (s_k^i + u_k . z_k).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning as lp
from onetrans_jax.models.onetrans import tokenizer as tokenizer_lib
from onetrans_jax.models.layers.attention import (attend, attention_mask, prefix_group_attention,
                                                  tail_attention)
from onetrans_jax.models.layers.embeddings import FeatureEmbeddings, NumericEmbedding
from onetrans_jax.models.onerank.task_channels import (SITUATIONS, TASK_MASKS, CrossTaskInteraction,
                                                       SituationDiscernment, task_mask_matrix)
from onetrans_jax.schema import FeatureSchema

TASK_TOKENS = ('per_task', 'shared')
SCORINGS = ('matching', 'mlp')


def group_mask(num_task_tokens: int) -> np.ndarray:
  """In-group mask [1+K, 1+K] of [c_i, t_1..t_K]: c_i reads itself; t_k reads c_i and itself."""
  g = 1 + num_task_tokens
  m = np.eye(g, dtype=bool)
  m[:, 0] = True
  return m


def onerank_mask(prefix_valid: jnp.ndarray, num_candidates: int, in_group: np.ndarray
                 ) -> jnp.ndarray:
  """The joint mask over [prefix ; group_1 ; .. ; group_C], [R, 1, N, N] bool, N = P + C*G.

  Prefix rows: causal over the valid prefix keys (plus their own key, so a padding row is never
  empty; nothing real reads a padding row). Group rows: every valid prefix key, and the keys of
  their own group that ``in_group`` allows; never another group.
  """
  r, p = prefix_valid.shape
  g = in_group.shape[0]
  n_g = num_candidates * g
  prefix_rows = attention_mask(prefix_valid, p, causal=True)[:, 0]             # [R, P, P]
  prefix_rows = jnp.concatenate([prefix_rows, jnp.zeros((r, p, n_g), bool)], axis=-1)
  groups = np.kron(np.eye(num_candidates, dtype=bool), in_group).astype(bool)  # block diagonal
  group_rows = jnp.concatenate([jnp.broadcast_to(prefix_valid[:, None, :], (r, n_g, p)),
                                jnp.broadcast_to(groups, (r, n_g, n_g))], axis=-1)
  return jnp.concatenate([prefix_rows, group_rows], axis=1)[:, None]


class HistoryTokenizer(tokenizer_lib.UnifiedTokenizer):
  """UnifiedTokenizer's S side (SPEC A.2) reading the caller's embedding tables.

  OneRank keeps one ``FeatureEmbeddings`` for the history, the contextual features and the
  candidates, so a candidate's item id and the same item in the history share one table row (and
  the tables sit under the module ``embeddings``, the optimizer's sparse group).
  """

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], emb: FeatureEmbeddings
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-> history tokens [R, L_S, d] (right-aligned, padding zeroed) and their validity [R, L_S]."""
    ev = self.event_tokens(emb, batch)
    return self.order_features(ev['s'], ev['s_valid'], ev['s_time'], batch), ev['s_valid']


def _stream(x: jnp.ndarray) -> jnp.ndarray:
  """Sharding hint for a token stream [R, (C,) L, d]: requests over the batch axes."""
  return lp.constrain(x, (lp.BATCH,) + (None,) * (x.ndim - 3) + (lp.LENGTH, lp.ACT_EMBED))


def _heads(x: jnp.ndarray) -> jnp.ndarray:
  """Sharding hint for queries / keys / values [R, (C,) L, H, Dh]: heads over ``tensor``."""
  return lp.constrain(x, (lp.BATCH,) + (None,) * (x.ndim - 4) + (lp.LENGTH, lp.ACT_HEADS, None))


class OneRankBlock(nn.Module):
  """Pre-norm Transformer block shared by every token (SPEC B.3):
      Z = MHA(RMSNorm(X)) + X;   X' = W2 SiLU(W1 RMSNorm(Z)) + Z
  [D] no biases (as the OneTrans block, SPEC A.4), no dropout. Three entry points, one weight set:
  ``prefix`` (request-level stage 1), ``groups`` (stage 2) and ``joint`` (the explicit-mask
  reference over the whole list)."""
  width: int
  num_heads: int
  ffn_mult: int = 4
  dtype: Any = jnp.float32

  def setup(self):
    d = self.width
    self.attn_norm = nn.RMSNorm(epsilon=1e-6, dtype=self.dtype, **lp.norm(bias=False))
    self.qkv = nn.Dense(3 * d, use_bias=False, dtype=self.dtype, **lp.dense(lp.EMBED, lp.HEADS))
    self.out = nn.Dense(d, use_bias=False, dtype=self.dtype, **lp.dense(lp.HEADS, lp.EMBED))
    self.ffn_norm = nn.RMSNorm(epsilon=1e-6, dtype=self.dtype, **lp.norm(bias=False))
    self.ffn_in = nn.Dense(self.ffn_mult * d, use_bias=False, dtype=self.dtype,
                           **lp.dense(lp.EMBED, lp.MLP))
    self.ffn_out = nn.Dense(d, use_bias=False, dtype=self.dtype, **lp.dense(lp.MLP, lp.EMBED))

  def _qkv(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    y = self.qkv(self.attn_norm(x))
    y = y.reshape(x.shape[:-1] + (3, self.num_heads, self.width // self.num_heads))
    return _heads(y[..., 0, :, :]), _heads(y[..., 1, :, :]), _heads(y[..., 2, :, :])

  def _finish(self, x: jnp.ndarray, o: jnp.ndarray) -> jnp.ndarray:
    """Output projection, residual, then the residual FFN sub-block."""
    z = _stream(x + self.out(o.reshape(x.shape)).astype(x.dtype))  # whole features into ffn_in
    return _stream(z + self.ffn_out(nn.silu(self.ffn_in(self.ffn_norm(z)))).astype(z.dtype))

  def prefix(self, x: jnp.ndarray, valid: jnp.ndarray
             ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    """x [R, P, d], valid [R, P] -> (x' [R, P, d], the prefix keys/values [R, P, H, Dh])."""
    q, k, v = self._qkv(x)
    o = tail_attention(q, k, v, valid, causal=True)
    return self._finish(x, o), (k, v)

  def groups(self, g: jnp.ndarray, k_p: jnp.ndarray, v_p: jnp.ndarray, p_valid: jnp.ndarray,
             in_group: np.ndarray) -> jnp.ndarray:
    """g [R, C, G, d] against the request's prefix keys/values -> g' [R, C, G, d]."""
    q, k, v = self._qkv(g)
    return self._finish(g, prefix_group_attention(q, k_p, v_p, p_valid, k, v, in_group))

  def joint(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """x [R, N, d] with an explicit mask [R, 1, N, N] -> x' [R, N, d]."""
    q, k, v = self._qkv(x)
    return self._finish(x, attend(q, k, v, mask))


def _check_choice(value: Any, field: str, choices) -> None:
  if value not in choices:
    raise ValueError(f'OneRank.{field}={value!r}: choose one of {list(choices)}')


class OneRank(nn.Module):
  schema: FeatureSchema
  width: int = 128                # d [D] (SPEC B.7: unknown; d=128)
  num_heads: int = 4              # [D] encoder, situation and cross-task attention heads
  num_layers: int = 3             # [D] middle of the SPEC's 2-4
  ffn_mult: int = 4               # FFN expansion, encoder and cross-task FFN
  embed_dim: int = 16             # feature embedding width before the projections to d
  # interaction-history tokenizer (UnifiedTokenizer's S side, SPEC A.2)
  seq_merge: str = 'timestamp_aware'
  use_sep: bool = False
  seq_order: tuple[str, ...] | None = None
  time_gap_buckets: int = 0
  s_position: str = 'from_recent'
  # OneRank switches (SPEC B.3-B.6, ablations C.6)
  task_tokens: str = 'per_task'   # or 'shared': one task token whose state serves every task
  candidate_in_task_tokens: bool = False  # deviation (config.py): group i's t_k starts as t_k + c_i
  candidate_reads_context: bool = False  # deviation (config.py): c_i's MLP also reads s
  request_bias: bool = False      # deviation (config.py): s_k^i += u_k . z_k, a request offset
  scoring: str = 'matching'       # or 'mlp': per-task MLP towers on [z_k ; r_k^i]
  situation: str = 'attention'    # or 'mean', 'constant_query', 'off'
  cross_task: bool = True         # False: z_k = h_k (see _task_vectors)
  task_mask: str = 'cascade'      # or 'parallel', 'full', 'hybrid'
  task_edges: tuple[tuple[str, str], ...] = ()  # hybrid: (reader, read) task-name pairs
  detach: bool = True             # cross-task gradient detachment (B.5)
  detach_kv_weights: bool = False  # also stop the K/V weight gradient on the off-diagonal path
  head_hidden: int = 0            # mlp scoring: tower width; 0: d
  inv_temperature_init: float = 1.0  # InfoNCE 1/tau at step 0 (config.py's default: 3)
  learn_temperature: bool = True  # False: 1/tau stays at inv_temperature_init
  request_level: bool = True      # False: the explicit-mask reference layout (same numbers)
  embedding_row_multiple: int = 1  # embedding-table rows rounded up to a multiple (even splits)
  dtype: Any = jnp.float32

  # Top-level parameters of the task channels (everything after the shared encoder): gradient
  # diagnostics measure the tasks' agreement on the rest (SPEC C.6).
  TASK_PRIVATE = ('task_tokens', 'situation_discernment', 'cross_task_interaction', 'task_bias',
                  'request_bias',
                  'log_inv_temperature', 'tower_w1', 'tower_b1', 'tower_w2', 'tower_b2')

  # ------------------------------------------------------------------ construction
  def _check(self) -> np.ndarray:
    """Validates every switch (ValueError naming the attribute); returns the task mask A."""
    _check_choice(self.task_tokens, 'task_tokens', TASK_TOKENS)
    _check_choice(self.scoring, 'scoring', SCORINGS)
    _check_choice(self.situation, 'situation', SITUATIONS)
    _check_choice(self.task_mask, 'task_mask', TASK_MASKS)
    for field in ('cross_task', 'detach', 'detach_kv_weights', 'request_level',
                  'learn_temperature', 'candidate_in_task_tokens', 'candidate_reads_context',
                  'request_bias'):
      _check_choice(getattr(self, field), field, (True, False))
    if self.candidate_reads_context and not (self.schema.request_categorical or
                                             self.schema.request_numeric):
      raise ValueError('OneRank.candidate_reads_context=True: the schema has no request '
                       'features to read')
    if self.request_bias and self.scoring != 'matching':
      raise ValueError(f"OneRank.request_bias=True needs scoring='matching', got "
                       f'{self.scoring!r}')
    if not self.inv_temperature_init > 0:
      raise ValueError(f'OneRank.inv_temperature_init={self.inv_temperature_init} must be > 0')
    if self.width % self.num_heads:
      raise ValueError(f'OneRank.num_heads={self.num_heads} must divide OneRank.width={self.width}')
    return task_mask_matrix(self.task_mask, self.schema.task_names, self.task_edges, 'OneRank.')

  @property
  def num_task_tokens(self) -> int:
    return self.schema.num_tasks if self.task_tokens == 'per_task' else 1

  def setup(self):
    a = self._check()
    s, d, e, k = self.schema, self.width, self.embed_dim, self.schema.num_tasks
    self.embeddings = FeatureEmbeddings(  # the sparse group (optimizers.py)
        s, e, self.dtype, row_multiple=self.embedding_row_multiple)
    if s.sequences:
      self.history = HistoryTokenizer(
          s, d, 0, embed_dim=e, seq_merge=self.seq_merge, use_sep=self.use_sep,
          seq_order=self.seq_order, time_gap_buckets=self.time_gap_buckets,
          s_position=self.s_position, dtype=self.dtype)
    if s.request_categorical:
      # [D] a private linear map per contextual feature (stacked), so each is its own token and
      # needs no position embedding to be told apart.
      self.context_kernel = lp.param(self, 'context_kernel', init_lib.stacked_fan_in(),
                                     (len(s.request_categorical), e, d),
                                     (lp.TOKENS, lp.EMBED, lp.MLP))
      self.context_bias = lp.param(self, 'context_bias', nn.initializers.zeros,
                                   (len(s.request_categorical), d), (lp.TOKENS, lp.MLP))
    if s.request_numeric:
      self.context_numeric = NumericEmbedding(len(s.request_numeric), d, self.dtype)
    if s.candidate_numeric:
      self.candidate_numeric = NumericEmbedding(len(s.candidate_numeric), e, self.dtype)
    # [D] candidate projection Dense -> SiLU -> Dense, as the tokenizer's per-sequence MLPs.
    self.candidate_in = nn.Dense(d, dtype=self.dtype, **lp.dense(lp.EMBED, lp.MLP))
    self.candidate_out = nn.Dense(d, dtype=self.dtype, **lp.dense(lp.MLP, lp.EMBED))
    self.task_token_embedding = lp.param(self, 'task_tokens', nn.initializers.normal(0.02),
                                         (self.num_task_tokens, d), (lp.TASKS, lp.EMBED))
    self.blocks = [OneRankBlock(d, self.num_heads, self.ffn_mult, self.dtype, name=f'block_{i}')
                   for i in range(self.num_layers)]
    # Pre-norm blocks leave the residual stream unnormalised: one final RMSNorm [D].
    self.final_norm = nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32, **lp.norm(bias=False))
    # The task channels (B.4, B.5) serve both heads: 'mlp' replaces only the inner product.
    self.situation_discernment = SituationDiscernment(k, d, self.num_heads, self.situation,
                                                      self.dtype)
    if self.cross_task:
      self.cross_task_interaction = CrossTaskInteraction(
          k, d, self.num_heads, tuple(tuple(bool(x) for x in row) for row in a),
          detach=self.detach, detach_kv_weights=self.detach_kv_weights,
          ffn_mult=self.ffn_mult, dtype=self.dtype)
    if self.scoring == 'matching':
      self.task_bias = lp.param(self, 'task_bias', nn.initializers.zeros, (k,), (lp.TASKS,))
      if self.request_bias:
        # [deviation] u_k: zero at step 0, so the score starts as the paper's.
        self.request_bias_w = lp.param(self, 'request_bias', nn.initializers.zeros, (k, d),
                                       (lp.TASKS, lp.EMBED))
    else:
      # [D] the 'mlp' ablation's towers: Dense(hidden) -> SiLU -> Dense(1) per task, as
      # multitask.towers.TaskTowers, tower k reading [z_k ; r_k^i] (stacked [K, ...] weights):
      # the same inputs as the inner product, combined by an MLP.
      hid = self.head_hidden or d
      self.tower_w1 = lp.param(self, 'tower_w1', init_lib.stacked_fan_in(), (k, 2 * d, hid),
                               (lp.TASKS, lp.EMBED, lp.MLP))
      self.tower_b1 = lp.param(self, 'tower_b1', nn.initializers.zeros, (k, hid),
                               (lp.TASKS, lp.MLP))
      self.tower_w2 = lp.param(self, 'tower_w2', nn.initializers.normal(hid ** -0.5), (k, hid),
                               (lp.TASKS, lp.MLP))
      self.tower_b2 = lp.param(self, 'tower_b2', nn.initializers.zeros, (k,), (lp.TASKS,))
    # InfoNCE inverse temperature 1/tau = exp(log_inv_temperature); [D] one scalar for all tasks
    # (B.6 names a single tau); the log keeps it positive. Held fixed, it is no parameter.
    if self.learn_temperature:
      self.log_inv_temperature = lp.param(
          self, 'log_inv_temperature',
          nn.initializers.constant(float(np.log(self.inv_temperature_init))), (), ())

  def inverse_temperature(self) -> jnp.ndarray:
    """The InfoNCE inverse temperature 1/tau (a float32 scalar), e.g. for logging."""
    if not self.learn_temperature:
      return jnp.asarray(self.inv_temperature_init, jnp.float32)
    return jnp.exp(self.log_inv_temperature.astype(jnp.float32))

  # ------------------------------------------------------------------ tokens (B.2)
  def tokens(self, batch: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
    """-> prefix [R, P, d] (contextual tokens, then history), prefix_valid [R, P], groups
    [R, C, 1+K', d] ([c_i, t_1..t_K']), situation_input [R, D_s]."""
    s, dt = self.schema, self.dtype
    r, c = batch['cand']['mask'].shape
    d = self.width
    ctx, flat = [], []
    if s.request_categorical:
      cat = self.embeddings.request(batch)                                   # [R, F_u, e]
      ctx.append(jnp.einsum('rfe,fed->rfd', cat, self.context_kernel.astype(dt)) +
                 self.context_bias.astype(dt))
      flat.append(cat.reshape(r, -1))
    if s.request_numeric:
      ctx.append(self.context_numeric(batch['request']['num']))              # [R, N_u, d]
      flat.append(batch['request']['num'].astype(dt))
    context = jnp.concatenate(ctx, axis=1) if ctx else jnp.zeros((r, 0, d), dt)
    parts = [context]
    valid = [jnp.ones((r, context.shape[1]), bool)]
    if s.sequences:
      hist, hist_valid = self.history(batch, self.embeddings)
      parts.append(hist.astype(dt))
      valid.append(hist_valid)
    # [D] s = the raw contextual features flattened (categorical embeddings and numeric values),
    # the request's own description, independent of the encoder's prefix states.
    situation_input = jnp.concatenate(flat, axis=-1) if flat else jnp.zeros((r, 0), dt)
    cand = []
    if s.candidate_categorical:
      cand.append(self.embeddings.candidates(batch).reshape(r, c, -1))
    if s.candidate_numeric:
      cand.append(self.candidate_numeric(batch['cand']['num']).reshape(r, c, -1))
    if self.candidate_reads_context:   # _check: the schema has request features
      # [deviation] the candidate MLP also reads the request's raw contextual features (the
      # situation input s above), so c_i holds candidate x context interactions of its own, as
      # OneTrans's non-sequential tokens do; B.2 gives c_i the candidate's features only.
      cand.append(jnp.broadcast_to(situation_input[:, None],
                                   (r, c, situation_input.shape[-1])))
    cand_tok = self.candidate_out(nn.silu(self.candidate_in(jnp.concatenate(cand, axis=-1))))
    task = jnp.broadcast_to(self.task_token_embedding.astype(dt), (r, c, self.num_task_tokens, d))
    if self.candidate_in_task_tokens:
      # [deviation] B.3 keeps t_k's content candidate-free and lets it read c_i as one key among
      # the prefix's P; at initialisation that leaves r_k^i nearly equal across a request's
      # candidates (issue 21: cosine 0.966). Adding c_i to every task token of its group puts
      # the candidate in the residual stream the score reads. Masks and weights are unchanged.
      task = task + cand_tok[:, :, None].astype(dt)
    return {'prefix': _stream(jnp.concatenate(parts, axis=1)),
            'prefix_valid': jnp.concatenate(valid, 1),
            'groups': _stream(jnp.concatenate([cand_tok[:, :, None].astype(dt), task], axis=2)),
            'situation_input': situation_input}

  # ------------------------------------------------------------------ encoder (B.3), two layouts
  def encode(self, prefix: jnp.ndarray, prefix_valid: jnp.ndarray, groups: jnp.ndarray
             ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Request-level: prefix [R, P, d] once per request, groups [R, C, G, d] against its per-layer
    keys/values -> final (RMSNorm'd, float32) prefix [R, P, d] and groups [R, C, G, d]."""
    in_group = group_mask(self.num_task_tokens)
    for blk in self.blocks:
      # The groups read this layer's prefix keys/values, computed from the layer's prefix input.
      new_prefix, (k_p, v_p) = blk.prefix(prefix, prefix_valid)
      groups = blk.groups(groups, k_p, v_p, prefix_valid, in_group)
      prefix = new_prefix
    return self.final_norm(prefix.astype(jnp.float32)), self.final_norm(groups.astype(jnp.float32))

  def encode_reference(self, prefix: jnp.ndarray, prefix_valid: jnp.ndarray, groups: jnp.ndarray
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The same encoder over the full list [prefix ; group_1 ; .. ; group_C] with the explicit
    ``onerank_mask`` and ``jax.nn.dot_product_attention``: the test oracle of ``encode``."""
    r, c, g, d = groups.shape
    p = prefix.shape[1]
    mask = onerank_mask(prefix_valid, c, group_mask(self.num_task_tokens))
    x = jnp.concatenate([prefix, groups.reshape(r, c * g, d)], axis=1)
    for blk in self.blocks:
      x = blk.joint(x, mask)
    x = self.final_norm(x.astype(jnp.float32))
    return x[:, :p], x[:, p:].reshape(r, c, g, d)

  # ------------------------------------------------------------------ task channels and scores
  def _task_vectors(self, situation_input: jnp.ndarray, r: jnp.ndarray, cand_mask: jnp.ndarray
                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-> (h [R, K, d] after situation discernment, z [R, K, d] after cross-task interaction)."""
    h = self.situation_discernment(situation_input, r, cand_mask)
    if not self.cross_task:
      # [D] without cross-task interaction z_k = h_k (the whole B.5 layer, FFN included, is
      # dropped).
      return h, h
    return h, self.cross_task_interaction(h)

  def _mlp_scores(self, z: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    """Per-task towers on [z_k ; r_k^i]: z [R, K, d], r [R, C, K, d] -> [R, C, K]. The first
    layer is split into its z and r halves, so z is projected once per request, not per
    candidate."""
    dt, d = self.dtype, self.width
    w1 = self.tower_w1.astype(dt)
    hid = (jnp.einsum('rkd,kdh->rkh', z.astype(dt), w1[:, :d])[:, None] +
           jnp.einsum('rckd,kdh->rckh', r.astype(dt), w1[:, d:]) + self.tower_b1.astype(dt))
    return jnp.einsum('rckh,kh->rck', nn.silu(hid), self.tower_w2.astype(dt)) + \
        self.tower_b2.astype(dt)

  def __call__(self, batch: Mapping[str, Any], train: bool = False, aux: bool = False) -> Any:
    """Logits [R, C, K] float32; ``aux=True`` returns (logits, dict) with 'nce_logits' (logits x
    1/tau, for InfoNCE), 'inv_temperature', 'task_repr' (r [R, C, K, d]), 'prefix' (final prefix
    states [R, P, d]), 'situation' (h [R, K, d]) and 'task_vectors' (z [R, K, d])."""
    del train  # no dropout [D]
    tok = self.tokens(batch)
    encode = self.encode if self.request_level else self.encode_reference
    prefix, groups = encode(tok['prefix'], tok['prefix_valid'], tok['groups'])
    r = groups[:, :, 1:]                                         # [R, C, K', d]
    num_r, c = batch['cand']['mask'].shape
    k = self.schema.num_tasks
    r = jnp.broadcast_to(r, (num_r, c, k, self.width))           # 'shared': one state, K tasks
    h, z = self._task_vectors(tok['situation_input'], r, batch['cand']['mask'])
    z = z.astype(jnp.float32)
    if self.scoring == 'matching':
      logits = jnp.einsum('rkd,rckd->rck', z, r) / np.sqrt(self.width) + self.task_bias
      if self.request_bias:
        # [deviation] B.6's score moves a request's candidates together only through z_k . mean
        # (r_k^i), a cosine of RMS-normed states; u_k . z_k adds a request-level offset per task.
        logits = logits + jnp.einsum('rkd,kd->rk', z, self.request_bias_w)[:, None]
    else:
      logits = self._mlp_scores(z, r)
    logits = logits.astype(jnp.float32)
    if not aux:
      return logits
    inv_t = self.inverse_temperature()
    return logits, {'nce_logits': logits * inv_t, 'inv_temperature': inv_t, 'task_repr': r,
                    'prefix': prefix, 'situation': h, 'task_vectors': z}
