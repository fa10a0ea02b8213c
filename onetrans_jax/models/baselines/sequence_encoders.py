"""Behaviour-sequence encoders of the baselines (SPEC A.11): DIN, StackDIN, LONGER, Transformer.

Each is the sequence half of an encode-then-interaction baseline; a composite model feeds its
output to a feature-interaction module (RankMixer, DCNv2, ...). Shapes: R requests, C candidates
per request, L events. Events are right-aligned: padding on the left, position L - 1 is the most
recent event; ``mask`` [R, L] marks valid events and may be all False (a user without history:
every module then returns finite values). Padded events never reach an output: they are zeroed
on entry, so even inf/NaN padding is harmless.

Work is split the way request-level sharing (SPEC A.6) splits it: what depends only on the user
side runs once per request ([R, ...]) and each candidate pays only for its own part; the FLOP
functions at the end count the two parts separately ({'request': .., 'candidate': ..}, forward
matmul FLOPs, 2 per multiply-add, elementwise work left out, as accounting.py counts).

Parameters are float32; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning as lp
from onetrans_jax.models.layers.activations import ACTIVATIONS
from onetrans_jax.models.layers.attention import attend, prefix_group_attention


def _dense(features: int, in_axis: str | None, out_axis: str | None, dtype: Any,
           name: str) -> nn.Dense:
  """A biased Dense with the fan-in truncated-normal kernel and logical axes [in, out]."""
  return nn.Dense(features, dtype=dtype, name=name,
                  **lp.dense(in_axis, out_axis, kernel_init=init_lib.fan_in()))


def _stream(x: jnp.ndarray) -> jnp.ndarray:
  """Sharding hint for a token stream [B, (C,) T, W]: the leading axis over the batch axes."""
  return lp.constrain(x, (lp.BATCH,) + (None,) * (x.ndim - 3) + (lp.LENGTH, lp.ACT_EMBED))


def _check_events(owner: str, events: jnp.ndarray, mask: jnp.ndarray) -> None:
  if events.ndim != 3:
    raise ValueError(f'{owner}: events must be [R, L, D], got shape {events.shape}')
  if mask.shape != events.shape[:2]:
    raise ValueError(f'{owner}: mask must be [R, L] = {events.shape[:2]} like events, got '
                     f'{mask.shape}')


def _zero_padding(events: jnp.ndarray, mask: jnp.ndarray, dtype: Any) -> jnp.ndarray:
  """Padded events -> exact zeros (a where, not a product, so inf/NaN padding cannot leak)."""
  return jnp.where(mask[..., None], events, 0).astype(dtype)


def _positive(owner: str, **values: int) -> None:
  for name, v in values.items():
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f'{owner}.{name} must be a positive integer, got {v!r}')


# ============================================================================ DIN
class DINAttention(nn.Module):
  """DIN's local activation unit (Zhou et al., KDD 2018, "Deep Interest Network", §4.3, Eq. 3).

      w_j = a(e_j, e_t) = MLP([e_j, e_t, e_j - e_t, e_j * e_t])      a scalar per event
      v   = sum_j w_j e_j                                              over valid events only

  As the paper insists, the weights are NOT softmax-normalised: sum_j w_j is kept as "the
  intensity of activated user interests", so v grows with the number of matching events (sum
  pooling). The MLP input is the concatenation above (SPEC A.11; the paper's Fig. 2 draws it as
  inputs + "out product" + concat); its hidden layers are Dense -> PReLU and the output is a linear
  scalar. The kernel of the first layer is stored as one [4D, H1] matrix in that concat order.

  [D] PReLU, not Dice. Dice (§5.2) gates each unit by sigmoid((s - E[s]) / sqrt(Var[s] + eps))
  with mini-batch statistics (moving averages at inference): a candidate's weights would then
  depend on the other candidates and requests in the batch and on the padding ratio, breaking the
  per-candidate independence that request-level sharing and cached serving rely on, and it needs a
  mutable batch-stats collection. Fig. 2 names "PReLU/Dice" as the unit's activation, so PReLU is
  the paper's own deterministic alternative. [D] one learnable slope per hidden unit, init 0.25
  (He et al., 2015), like Dice's per-unit alpha.

  Computation without per-candidate copies of the events: the first layer splits as
      [e_j, e_t, e_j - e_t, e_j * e_t] W = e_j (W_a + W_c) + e_t (W_b - W_c) + (e_j * e_t) W_d,
  the first term once per request [R, L, H1], the second once per candidate [R, C, H1], and the
  product term as e_j . (diag(e_t) W_d) with diag(e_t) W_d [R, C, D, H1] per candidate: the only
  [R, C, L, .] tensors are the MLP's own hidden activations.
  """
  hidden: tuple[int, ...] = (64, 32)
  dtype: Any = jnp.float32

  def _check(self, events, mask, target) -> None:
    _check_events(type(self).__name__, events, mask)
    if not self.hidden:
      raise ValueError(f'{type(self).__name__}.hidden is empty: the activation unit needs at '
                       'least one hidden layer, e.g. hidden=(64, 32)')
    _positive(type(self).__name__, **{f'hidden[{i}]': h for i, h in enumerate(self.hidden)})
    if target.ndim != 3 or target.shape[0] != events.shape[0]:
      raise ValueError(f'{type(self).__name__}: target must be [R, C, D] with R = '
                       f'{events.shape[0]} like events, got shape {target.shape}')
    if target.shape[-1] != events.shape[-1]:
      raise ValueError(f'{type(self).__name__}: target width {target.shape[-1]} != event width '
                       f'{events.shape[-1]}; the unit takes e_j - e_t and e_j * e_t, so project '
                       'both to one width first')

  @nn.compact
  def __call__(self, events: jnp.ndarray, mask: jnp.ndarray, target: jnp.ndarray,
               return_weights: bool = False):
    """events [R, L, D], mask [R, L], target [R, C, D] -> v [R, C, D] (and w [R, C, L])."""
    self._check(events, mask, target)
    mask = mask.astype(bool)
    d, dt = events.shape[-1], self.dtype
    e = lp.whole_features(_zero_padding(events, mask, dt))
    t = lp.whole_features(target.astype(dt))
    sizes = (4 * d,) + tuple(self.hidden)
    kernels, biases, slopes = [], [], []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
      axes = lp.chain_axes(i)
      kernels.append(lp.param(self, f'kernel_{i}', init_lib.fan_in(), (n_in, n_out),
                              axes).astype(dt))
      biases.append(lp.param(self, f'bias_{i}', nn.initializers.zeros, (n_out,),
                             axes[1:]).astype(dt))
      # The PReLU slopes scale the hidden units: laid out like the bias.
      slopes.append(lp.param(self, f'prelu_{i}', nn.initializers.constant(0.25), (n_out,),
                             axes[1:]).astype(dt))
    # The scalar output [H, 1]: the last hidden layer's units in, one unit out (not split).
    w_out = lp.param(self, 'out_kernel', init_lib.fan_in(), (sizes[-1], 1),
                     (lp.chain_axes(len(sizes) - 1)[0], None)).astype(dt)
    b_out = lp.param(self, 'out_bias', nn.initializers.zeros, (1,), (None,)).astype(dt)

    def prelu(z, a):
      return jnp.where(z >= 0, z, a * z)

    w_e, w_t, w_diff, w_prod = jnp.split(kernels[0], 4, axis=0)        # each [D, H1]
    z_req = jnp.einsum('rld,dh->rlh', e, w_e + w_diff)                 # once per request
    z_cand = jnp.einsum('rcd,dh->rch', t, w_t - w_diff) + biases[0]    # once per candidate
    scaled = t[..., :, None] * w_prod                                  # [R, C, D, H1]
    z = (jnp.einsum('rld,rcdh->rclh', e, scaled) + z_req[:, None] + z_cand[:, :, None])
    h = prelu(z, slopes[0])
    for k, b, a in zip(kernels[1:], biases[1:], slopes[1:]):
      h = prelu(h @ k + b, a)
    w = (h @ w_out)[..., 0] + b_out[0]                                 # [R, C, L], linear
    w = jnp.where(mask[:, None, :], w, 0)
    v = jnp.einsum('rcl,rld->rcd', w, e)
    return (v, w) if return_weights else v


class StackDIN(nn.Module):
  """Several DIN layers, each refining the query (OneTrans, Zhang et al. 2025, §4.1.3, Table 1
  "RankMixer + StackDIN"; the paper names the baseline and gives no equations).

      q_1 = e_t;   v_l = DIN_l(events, q_l);   q_{l+1} = q_l + LayerNorm_l(v_l);   output v_N

  [D] the stacking rule, for want of a published one, is the multi-hop residual query update of
  End-to-End Memory Networks (Sukhbaatar et al., 2015, §2.2: u^{k+1} = u^k + o^k): each layer
  re-reads the same events with a query that already holds what the previous layers found. The
  LayerNorm on v_l is there because DIN's sum pooling makes |v_l| grow with the number of matching
  events; without it a long history would swamp the target part of the next query (and the
  e_j * q product). The output is the last layer's unnormalised v_N, so num_layers=1 is exactly
  DIN and the final interest keeps DIN's intensity. [D] each layer has its own activation unit
  (no weight sharing), and the events are not transformed between layers.
  """
  num_layers: int = 2
  hidden: tuple[int, ...] = (64, 32)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, events: jnp.ndarray, mask: jnp.ndarray, target: jnp.ndarray,
               return_weights: bool = False):
    """events [R, L, D], mask [R, L], target [R, C, D] -> v_N [R, C, D] (and the last layer's
    weights [R, C, L])."""
    _positive(type(self).__name__, num_layers=self.num_layers)
    q = target.astype(self.dtype)
    v = w = None
    for l in range(self.num_layers):
      v, w = DINAttention(self.hidden, self.dtype, name=f'din_{l}')(events, mask, q,
                                                                     return_weights=True)
      if l < self.num_layers - 1:
        q = q + nn.LayerNorm(dtype=self.dtype, name=f'query_norm_{l}', **lp.norm())(v)
    return (v, w) if return_weights else v


# ============================================================================ Transformer blocks
class _Block(nn.Module):
  """Pre-norm Transformer block, its halves callable apart so queries can be a subset of rows:

      y = LN(x);  q = y_rows W_q;  (k, v) = y W_kv;  z = x_rows + Attn(q, k, v) W_o
      out = z + W_2 act(W_1 LN(z))

  Biases and LayerNorm everywhere, as the vanilla Transformer whose 12 d^2 + 13 d parameters
  LONGER's efficiency analysis counts (Chai et al. 2025, Token Merge section).
  """
  width: int
  num_heads: int
  ffn_mult: int
  activation: str
  dtype: Any

  def setup(self):
    w, dt = self.width, self.dtype
    self.attn_norm = nn.LayerNorm(dtype=dt, **lp.norm())
    self.q = _dense(w, lp.EMBED, lp.HEADS, dt, 'q')
    self.kv = _dense(2 * w, lp.EMBED, lp.HEADS, dt, 'kv')
    self.out = _dense(w, lp.HEADS, lp.EMBED, dt, 'out')
    self.ffn_norm = nn.LayerNorm(dtype=dt, **lp.norm())
    self.ffn_in = _dense(self.ffn_mult * w, lp.EMBED, lp.MLP, dt, 'ffn_in')
    self.ffn_out = _dense(w, lp.MLP, lp.EMBED, dt, 'ffn_out')

  def _heads(self, x: jnp.ndarray) -> jnp.ndarray:
    """[B, (C,) T, W] -> [B, (C,) T, H, Dh], heads over ``tensor`` under a mesh."""
    y = x.reshape(x.shape[:-1] + (self.num_heads, self.width // self.num_heads))
    return lp.constrain(y, (lp.BATCH,) + (None,) * (y.ndim - 4) + (lp.LENGTH, lp.ACT_HEADS, None))

  def norm(self, x: jnp.ndarray) -> jnp.ndarray:
    return self.attn_norm(x)

  def queries(self, y: jnp.ndarray) -> jnp.ndarray:
    """Normed rows [..., T, W] -> [..., T, H, Dh]."""
    return self._heads(self.q(y))

  def keys_values(self, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    kv = self.kv(y)
    return self._heads(kv[..., :self.width]), self._heads(kv[..., self.width:])

  def finish(self, x: jnp.ndarray, o: jnp.ndarray) -> jnp.ndarray:
    """x [..., T, W] the query rows' inputs, o [..., T, H, Dh] their attention output."""
    z = _stream(x + self.out(o.reshape(x.shape)).astype(x.dtype))  # whole features into ffn_in
    act = ACTIVATIONS[self.activation]
    return _stream(z + self.ffn_out(act(self.ffn_in(self.ffn_norm(z)))).astype(x.dtype))

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, impl: str = 'xla') -> jnp.ndarray:
    """Self-attention over x [B, T, W] with mask [B, 1, T, T]."""
    y = self.norm(x)
    k, v = self.keys_values(y)
    return self.finish(x, attend(self.queries(y), k, v, mask, impl))


def _check_block(owner: str, width: int, num_heads: int, num_layers: int, ffn_mult: int,
                 activation: str) -> None:
  _positive(owner, width=width, num_heads=num_heads, num_layers=num_layers, ffn_mult=ffn_mult)
  if width % num_heads:
    raise ValueError(f'{owner}.width={width} is not divisible by num_heads={num_heads}')
  if activation not in ACTIVATIONS:
    raise ValueError(f'{owner}.activation={activation!r}: choose one of {sorted(ACTIVATIONS)}')


def _recency_positions(module: nn.Module, length: int, dim: int) -> jnp.ndarray:
  """[L, dim] learned absolute positions counted from the most recent event (row 0), flipped to
  the right-aligned layout, so an event's position does not depend on how much padding precedes
  it. [D] learned absolute, added to the event (LONGER adds an absolute position embedding)."""
  table = lp.param(module, 'positions', nn.initializers.normal(0.02), (length, dim),
                   (lp.TOKENS, lp.EMBED))
  return table[::-1].astype(module.dtype)


# ============================================================================ LONGER
def _request_mask(key_valid: jnp.ndarray, num_queries: int) -> jnp.ndarray:
  """key_valid [R, T] (key 0: the user token) -> [R, 1, Q, T] for the request-side rows.

  Query 0 is the user global token: it sees every valid key (a global token's full receptive
  field). Query r >= 1 is the sequence token at key position T - Q + r: it sees the user token and
  the valid sequence tokens up to its own position (causal). The user key is always valid, so no
  row is empty, even for an empty history.
  """
  t = key_valid.shape[1]
  static = np.ones((num_queries, t), bool)
  for r in range(1, num_queries):
    static[r, t - num_queries + r + 1:] = False
  return key_valid[:, None, None, :] & static[None, None]


class Longer(nn.Module):
  """LONGER (Chai et al., RecSys 2025, arXiv 2505.04421, "LONGER: Scaling Up Long Sequence
  Modeling in Industrial Recommenders"; its Global Tokens, Token Merge, Hybrid Attention and KV
  cache serving sections): global tokens + token merge + hybrid attention.

    1. Sequence tokens: e_j + a learned absolute position. Token merge: every
       ``merge`` adjacent events form one token, their concat [merge * D_e] projected to ``width``
       (the paper keeps the K d concat as the token; the projection lets width be chosen; set
       width = merge * D_e for the paper's sizes). With ``inner_trans`` a one-block Transformer
       first runs inside each group (InnerTrans, M_i = TransformerBlock([e_i^1..e_i^K])), the
       variant with the best AUC in the paper's ablation (Table 2).
    2. Global tokens: the target candidate and the user, each projected to ``width``,
       prepended to the sequence.
    3. Hybrid attention: layer 1 is cross-causal: queries O = [G; H_S], the global tokens
       and the ``num_recent`` most recent merged tokens (recent-k was the best sampling in the
       ablation), keys/values all tokens R = [G; H]; layers 2..N are causal self-attention over
       those 2 + num_recent tokens. Pre-norm blocks with FFNs. Output: the target token's final
       state (after a final LayerNorm) [R, C, width].

  Mask [D] (the paper fixes it only up to "causal" and "global tokens see everything"): the
  target token sees every valid token and itself; the user token sees every valid token except
  the target; a sequence token sees the user token and the valid sequence tokens up to its own
  position, never the target. Hiding the target from every other token is what makes the
  paper's KV-cache serving (user-sequence keys/values computed once, then per candidate
  only the candidate's global token attends) exact, and it is how this module computes: the user
  side ([R, 1 + n] tokens) runs once per request with ``jax.nn.dot_product_attention``; each
  candidate's target token attends to the request's keys plus its own key
  (``prefix_group_attention``: the request keys are never copied per candidate). Candidates are
  therefore independent of each other. In the last layer only the target row is needed, so the
  request side computes only its keys and values there.

  [D] L not divisible by ``merge``: the sequence is left-padded with invalid events (the padding
  side of right-aligned sequences), so the most recent group is always full. A merged token is
  valid when any of its events is; padded events are zeros inside it (and, with inner_trans, are
  masked out as keys and zeroed after the block). ``num_recent`` may not exceed the number of
  merged tokens ceil(L / merge) (a ValueError). [D] InnerTrans: single head at width D_e, full
  attention within the group, same FFN multiplier and activation. [D] blocks: pre-norm with
  LayerNorm, biases, GELU FFN (ffn_mult 4), a final LayerNorm on the output; linear projections
  of target and user to ``width``. [D] only the target and user global tokens: the paper's
  examples also include a learnable [CLS] token and user-item cross features, which the composite
  does not supply.
  """
  width: int
  num_heads: int
  num_layers: int
  merge: int
  num_recent: int
  ffn_mult: int = 4
  activation: str = 'gelu'
  inner_trans: bool = True
  positions: bool = True
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  def _check(self, events, mask, target, user) -> int:
    name = type(self).__name__
    _check_block(name, self.width, self.num_heads, self.num_layers, self.ffn_mult,
                 self.activation)
    _positive(name, merge=self.merge)
    _check_events(name, events, mask)
    r, l = mask.shape
    if target.ndim != 3 or target.shape[0] != r:
      raise ValueError(f'{name}: target must be [R, C, D_t] with R = {r}, got {target.shape}')
    if user.ndim != 2 or user.shape[0] != r:
      raise ValueError(f'{name}: user must be [R, D_u] with R = {r}, got {user.shape}')
    n = -(-l // self.merge)
    if not isinstance(self.num_recent, (int, np.integer)) or not 0 <= self.num_recent <= n:
      raise ValueError(f'{name}.num_recent={self.num_recent!r} must lie in [0, {n}]: the '
                       f'L={l} events make ceil(L / merge={self.merge}) = {n} merged tokens; '
                       'lower num_recent or merge')
    return n

  def _merge_tokens(self, events, mask, n):
    """[R, L, D_e] -> merged tokens [R, n, width] and their validity [R, n]."""
    r, l, d_e = events.shape
    k = self.merge
    pad = n * k - l
    if pad:
      events = jnp.pad(events, ((0, 0), (pad, 0), (0, 0)))
      mask = jnp.pad(mask, ((0, 0), (pad, 0)))
    x = events.astype(self.dtype)
    if self.positions:
      x = x + _recency_positions(self, n * k, d_e)
    x = jnp.where(mask[..., None], x, 0).reshape(r * n, k, d_e)
    m = mask.reshape(r * n, k)
    if self.inner_trans:
      block = _Block(d_e, 1, self.ffn_mult, self.activation, self.dtype, name='inner_trans')
      inner = m[:, None, None, :] | np.eye(k, dtype=bool)[None, None]   # own key: no empty row
      x = jnp.where(m[..., None], block(x, inner, self.attention_impl), 0)
    tokens = _dense(self.width, lp.EMBED, lp.MLP, self.dtype, 'merge_proj')(
        x.reshape(r, n, k * d_e))
    return lp.whole_features(tokens), m.reshape(r, n, k).any(-1)

  @nn.compact
  def __call__(self, events: jnp.ndarray, mask: jnp.ndarray, target: jnp.ndarray,
               user: jnp.ndarray) -> jnp.ndarray:
    """events [R, L, D_e], mask [R, L], target [R, C, D_t], user [R, D_u] -> [R, C, width]."""
    n = self._check(events, mask, target, user)
    mask = mask.astype(bool)
    dense = lambda name: _dense(self.width, lp.EMBED, lp.MLP, self.dtype, name)
    seq, seq_valid = self._merge_tokens(events, mask, n)
    u = dense('user_proj')(user.astype(self.dtype))[:, None]             # [R, 1, W]
    t = dense('target_proj')(target.astype(self.dtype))[:, :, None]      # [R, C, 1, W]
    x = jnp.concatenate([u, seq], axis=1)                                # request side [R, T, W]
    valid = jnp.concatenate([jnp.ones_like(seq_valid[:, :1]), seq_valid], axis=1)
    own = np.ones((1, 1), bool)
    k = self.num_recent
    for layer in range(self.num_layers):
      block = _Block(self.width, self.num_heads, self.ffn_mult, self.activation, self.dtype,
                     name=f'layer_{layer}')
      y = block.norm(x)
      k_r, v_r = block.keys_values(y)
      # Per candidate: the target token over [request keys ; its own key].
      yt = block.norm(t)
      k_t, v_t = block.keys_values(yt)
      o_t = prefix_group_attention(block.queries(yt), k_r, v_r, valid, k_t, v_t, own)
      t = block.finish(t, o_t)
      if layer < self.num_layers - 1:
        # Once per request: the user token and the k most recent tokens keep going
        # (layer 1: cross-causal over all tokens; later layers: causal self-attention).
        rows = lambda a: jnp.concatenate([a[:, :1], a[:, a.shape[1] - k:]], axis=1)
        o_r = attend(block.queries(rows(y)), k_r, v_r, _request_mask(valid, 1 + k),
                     self.attention_impl)
        x, valid = block.finish(rows(x), o_r), rows(valid)
    return nn.LayerNorm(dtype=self.dtype, name='final_norm', **lp.norm())(t[:, :, 0])


# ============================================================================ Transformer
class SequenceTransformer(nn.Module):
  """A target-agnostic Transformer encoder over the behaviour sequence whose pooled states enter
  RankMixer as extra tokens (the "RankMixer + Transformer" baseline of OneTrans, Zhang et al.
  2025, §4.1.3; SPEC A.11).

      x_j = e_j W_in + p_j;   N pre-norm blocks (bidirectional attention over valid events);
      LayerNorm;  pool -> [R, P, width]

  [D] P = 2 pooled tokens: the masked mean of the final states (the whole history) and the state
  of the most recent event (position L - 1 of the right-aligned sequence; the short-term
  interest). An empty history gives zeros for both. [D] input projection D_e -> width always
  (also when equal), learned absolute positions counted from the most recent event, full
  (bidirectional) attention: the encoder sees no candidate, so it runs once per request and
  nothing about it needs to be causal. A padded query sees only itself (so no softmax row is
  empty); its state is discarded by the pooling.
  """
  width: int
  num_heads: int
  num_layers: int
  ffn_mult: int = 4
  activation: str = 'gelu'
  positions: bool = True
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  NUM_POOLED = 2

  @property
  def num_pooled(self) -> int:
    """P, the number of output tokens."""
    return self.NUM_POOLED

  @nn.compact
  def __call__(self, events: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """events [R, L, D_e], mask [R, L] -> [R, P, width] (mean, most recent)."""
    name = type(self).__name__
    _check_block(name, self.width, self.num_heads, self.num_layers, self.ffn_mult,
                 self.activation)
    _check_events(name, events, mask)
    mask = mask.astype(bool)
    l = events.shape[1]
    x = _dense(self.width, lp.EMBED, lp.MLP, self.dtype, 'input_proj')(
        _zero_padding(events, mask, self.dtype))
    if self.positions:
      x = x + _recency_positions(self, l, self.width)
    x = _stream(x)
    attn_mask = mask[:, None, None, :] | np.eye(l, dtype=bool)[None, None]
    for layer in range(self.num_layers):
      x = _Block(self.width, self.num_heads, self.ffn_mult, self.activation, self.dtype,
                 name=f'layer_{layer}')(x, attn_mask, self.attention_impl)
    x = nn.LayerNorm(dtype=self.dtype, name='final_norm', **lp.norm())(x)
    m = mask.astype(x.dtype)[..., None]
    mean = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    last = x[:, -1] * m[:, -1]
    return jnp.stack([mean, last], axis=1)


# ============================================================================ FLOPs
def _flops(request: float, candidate: float) -> dict[str, float]:
  return {'request': float(request), 'candidate': float(candidate)}


def din_flops(L: int, D: int, hidden: Sequence[int]) -> dict[str, float]:
  """Forward matmul FLOPs of DINAttention on L events of width D.

  request: e_j (W_a + W_c), 2 L D H1 (the weight sum W_a + W_c is a per-step constant, left out).
  candidate: e_t (W_b - W_c) 2 D H1; the product term 2 L D H1 (scaling W_d by e_t is elementwise);
  the later layers 2 L H_{i-1} H_i; the scalar output 2 L H_last; the weighted sum 2 L D.
  A naive MLP on the 4D-wide concat per (candidate, event) would cost 8 L D H1 per candidate in
  the first layer instead of 2 L D H1 + 2 D H1 (+ 2 L D H1 per request).
  """
  h = list(hidden)
  cand = 2 * D * h[0] + 2 * L * D * h[0]
  cand += sum(2 * L * a * b for a, b in zip(h[:-1], h[1:]))
  cand += 2 * L * h[-1] + 2 * L * D
  return _flops(2 * L * D * h[0], cand)


def stack_din_flops(num_layers: int, L: int, D: int, hidden: Sequence[int]) -> dict[str, float]:
  """num_layers DIN layers (the query LayerNorms are elementwise)."""
  one = din_flops(L, D, hidden)
  return _flops(num_layers * one['request'], num_layers * one['candidate'])


def _block_row_flops(width: int, ffn_mult: int) -> float:
  """A query row's Q and output projections and FFN (its K/V counted with the keys)."""
  return 2.0 * (2 * width * width + 2 * ffn_mult * width * width)


def longer_flops(L: int, D_e: int, D_t: int, D_u: int, width: int, num_layers: int, merge: int,
                 num_recent: int, ffn_mult: int = 4, inner_trans: bool = True
                 ) -> dict[str, float]:
  """Forward matmul FLOPs of Longer; attention scores over the full query x key rectangle.

  request: InnerTrans on the n * merge (left-padded) events; the merge projection; the user
  projection; per layer the K/V of the request tokens (1 + n in layer 1, 1 + k after) and, except
  in the last layer, the 1 + k request query rows (Q, scores, AV, output, FFN).
  candidate: the target projection; per layer the target's Q/K/V/output/FFN and its scores over
  the request keys plus its own.
  """
  n = -(-L // merge)
  k, w = num_recent, width
  req = 2.0 * D_u * w + 2.0 * n * merge * D_e * w
  if inner_trans:
    # per event: its K/V, its Q/output/FFN row, scores and AV over the merge keys of its group
    req += n * merge * (2.0 * 2 * D_e * D_e + _block_row_flops(D_e, ffn_mult) + 4.0 * merge * D_e)
  cand = 2.0 * D_t * w
  keys = 1 + n
  for layer in range(num_layers):
    req += 2.0 * keys * w * 2 * w
    cand += 2.0 * 2 * w * w + _block_row_flops(w, ffn_mult) + 4.0 * (keys + 1) * w
    if layer < num_layers - 1:
      req += (1 + k) * (_block_row_flops(w, ffn_mult) + 4.0 * keys * w)
    keys = 1 + k
  return _flops(req, cand)


def sequence_transformer_flops(L: int, D_e: int, width: int, num_layers: int,
                               ffn_mult: int = 4) -> dict[str, float]:
  """Forward matmul FLOPs of SequenceTransformer: all of it once per request."""
  w = width
  per_layer = L * (2.0 * 2 * w * w + _block_row_flops(w, ffn_mult)) + 4.0 * L * L * w
  return _flops(2.0 * L * D_e * w + num_layers * per_layer, 0.0)
