"""Feature-interaction backbones of the baselines in the OneTrans comparison table (SPEC A.11).

Each module maps feature tokens x [..., N, D] (N tokens of width D, already embedded; any leading
axes, e.g. [R, C]) to one vector [..., D_out] for the task towers. ``output_width(N, D)`` gives
D_out before any parameter exists, so the caller can size the towers; ``flops(N, D)`` gives the
analytic forward matmul FLOPs per example, also available as plain functions of the
hyperparameters (``dcnv2_flops`` ...). The sequence modules and towers around them live elsewhere.

  * ``DCNv2``     Wang et al., WWW 2021: cross layers x_{l+1} = x0 * (x_l W_l + b_l) + x_l on the
                  flattened tokens, stacked with or parallel to an MLP.
  * ``Wukong``    Zhang et al., ICML 2024: stacked Factorization-Machine blocks + linear
                  compression blocks, residual + LayerNorm.
  * ``HiFormer``  Gui et al., KDD 2023: heterogeneous attention (token-specific Q/K/V) and the
                  Hiformer composite projection (Q/K/V read all tokens), low rank.
  * ``RankMixer`` Zhu et al., 2025: parameter-free multi-head token mixing + per-token FFNs.

Token-specific weights are stacked parameters [N, ...] applied with one einsum, never a Python
loop over tokens. Params are float32; ``dtype`` is the compute dtype. FLOPs count 2 per
multiply-add of every matmul/einsum; elementwise work (norms, softmax, activations, biases) is
left out, as in accounting.py. Every choice the papers leave open is marked [D].
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning as lp

Init = Any


def _dense(features: int, in_axis: str | None, out_axis: str | None, dtype: Any,
           name: str) -> nn.Dense:
  """A biased Dense with the fan-in truncated-normal kernel and logical axes [in, out]."""
  return nn.Dense(features, dtype=dtype, name=name,
                  **lp.dense(in_axis, out_axis, kernel_init=init_lib.fan_in()))


def _tokens_hint(x: jnp.ndarray) -> jnp.ndarray:
  """Sharding hint for feature tokens [B, ..., N, D]: the leading axis over the batch axes."""
  if x.ndim < 3:
    return x
  return lp.constrain(x, (lp.BATCH,) + (None,) * (x.ndim - 3) + (lp.LENGTH, lp.ACT_EMBED))


def _positive(owner: str, field: str, value: Any, minimum: int = 1) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{owner}.{field}={value!r} must be an integer >= {minimum}')


def _rank(owner: str, field: str, value: Any) -> None:
  if value is not None:
    _positive(owner, field, value)


def _widths(owner: str, field: str, value: Any) -> None:
  if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in value):
    raise ValueError(f'{owner}.{field}={tuple(value)!r} must hold positive integer widths')


def _tokens(owner: str, x: jnp.ndarray) -> tuple[int, int]:
  if x.ndim < 2:
    raise ValueError(f'{owner} takes feature tokens [..., N, D], got shape {x.shape}')
  return x.shape[-2], x.shape[-1]


def _mlp_flops(d_in: int, widths: Sequence[int]) -> float:
  total = 0.0
  for w in widths:
    total += 2.0 * d_in * w
    d_in = w
  return total


def _token_ffn(module: nn.Module, t: int, d: int, f: int, prefix: str = 'ffn_'
               ) -> tuple[jnp.ndarray, ...]:
  """Per-token FFN weights w1 [t, d, f], b1 [t, f], w2 [t, f, d], b2 [t, d] (in this order)."""
  init = init_lib.stacked_fan_in()
  return (lp.param(module, f'{prefix}w1', init, (t, d, f), (lp.TOKENS, lp.EMBED, lp.MLP)),
          lp.param(module, f'{prefix}b1', nn.initializers.zeros, (t, f), (lp.TOKENS, lp.MLP)),
          lp.param(module, f'{prefix}w2', init, (t, f, d), (lp.TOKENS, lp.MLP, lp.EMBED)),
          lp.param(module, f'{prefix}b2', nn.initializers.zeros, (t, d), (lp.TOKENS, lp.EMBED)))


# ================================================================================== DCN-V2
def cross_layer(x0: jnp.ndarray, x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray
                ) -> jnp.ndarray:
  """One DCN-V2 cross layer, x_{l+1} = x0 * (x_l W + b) + x_l (Wang et al. 2021, Eq. 1).

  Row-vector form of the paper's x0 ⊙ (W x_l + b) + x_l: ``kernel`` [d, d] is W transposed.
  The elementwise product with x0 raises the polynomial degree by one per layer (bounded-degree
  explicit crosses); the residual keeps every lower degree.
  """
  return x0 * (x @ kernel + bias) + x


class CrossLayer(nn.Module):
  """A DCN-V2 cross layer with full-rank W [d, d] (the paper's default) or W = U V^T of rank r.

  The low-rank form is the paper's cost-saving variant (Wang et al. 2021, section "cost-effective
  mixture of low-rank DCN"): x_l V [d, r] then U^T [r, d]; the mixture of several low-rank experts
  with gating and the extra nonlinearity of that section is not implemented [D].
  """
  rank: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x0: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """x0, x [..., d] -> x' [..., d]."""
    d = x.shape[-1]
    x = lp.whole_features(x)
    # The bias takes the output axis of the last kernel: W [in, out], or U^T [rank, d].
    # [D] The full-rank W's output is x's own width (multiplied into x0), so it is not split over
    # ``tensor``: split (EMBED, MLP), the gradient reaching x0 came out wrong on (2,2,2)
    # (partitioner bug, onetrans_jax/sharding_check.py); W is split over fsdp only.
    b = lp.param(self, 'bias', nn.initializers.zeros, (d,),
                 (lp.NORM if self.rank is None else lp.EMBED,)).astype(self.dtype)
    if self.rank is None:
      w = lp.param(self, 'kernel', init_lib.fan_in(), (d, d), (lp.EMBED, None)).astype(self.dtype)
      return cross_layer(x0, x, w, b)
    v = lp.param(self, 'v', init_lib.fan_in(), (d, self.rank),                # V: project down
                 (lp.EMBED, lp.MLP)).astype(self.dtype)
    u = lp.param(self, 'u', init_lib.fan_in(), (self.rank, d),                # U^T: back up
                 (lp.MLP, lp.EMBED)).astype(self.dtype)
    return x0 * ((x @ v) @ u + b) + x


DCN_STRUCTURES = ('stacked', 'parallel')


class DCNv2(nn.Module):
  """DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network ...", WWW 2021, Sec. 3).

  x0 = the N tokens flattened [N*D] (the paper's concatenated embeddings); L cross layers
  (``CrossLayer``); a deep network of ReLU Dense layers. ``stacked``: x0 -> cross -> deep, the
  output is the last deep layer (the cross output when ``mlp_hidden`` is empty: the cross
  network alone). ``parallel``: cross and deep both read x0, the output is [x_L, h_L]
  concatenated. The paper finds neither structure better everywhere; ``stacked`` [D].
  """
  num_cross_layers: int = 3                 # [D]
  structure: str = 'stacked'                # [D] or 'parallel'
  mlp_hidden: tuple[int, ...] = (256, 128)  # [D] deep network widths (ReLU, the paper's)
  rank: int | None = None                   # None: full-rank W_l (paper default); r: U_l V_l^T
  dtype: Any = jnp.float32

  def _check(self) -> None:
    _positive('DCNv2', 'num_cross_layers', self.num_cross_layers)
    if self.structure not in DCN_STRUCTURES:
      raise ValueError(f'DCNv2.structure={self.structure!r}: choose one of {list(DCN_STRUCTURES)}')
    _widths('DCNv2', 'mlp_hidden', self.mlp_hidden)
    if self.structure == 'parallel' and not self.mlp_hidden:
      raise ValueError("DCNv2.structure='parallel' needs a deep network: set DCNv2.mlp_hidden, "
                       "or use structure='stacked' for the cross network alone")
    _rank('DCNv2', 'rank', self.rank)

  def output_width(self, num_tokens: int, width: int) -> int:
    self._check()
    d0 = num_tokens * width
    if self.structure == 'parallel':
      return d0 + self.mlp_hidden[-1]
    return self.mlp_hidden[-1] if self.mlp_hidden else d0

  def flops(self, num_tokens: int, width: int) -> float:
    self._check()
    return dcnv2_flops(num_tokens, width, self.num_cross_layers, self.mlp_hidden, self.rank)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., N, D] -> [..., output_width(N, D)]."""
    self._check()
    n, d = _tokens('DCNv2', x)
    x0 = x.reshape(x.shape[:-2] + (n * d,)).astype(self.dtype)
    xl = x0
    for i in range(self.num_cross_layers):
      xl = CrossLayer(self.rank, self.dtype, name=f'cross_{i}')(x0, xl)
    h = x0 if self.structure == 'parallel' else xl
    for i, w in enumerate(self.mlp_hidden):
      h = nn.relu(_dense(w, *lp.chain_axes(i), self.dtype, f'deep_{i}')(h))
    if self.structure == 'parallel':
      return jnp.concatenate([xl, h], axis=-1)
    return h


def dcnv2_flops(num_tokens: int, width: int, num_cross_layers: int,
                mlp_hidden: Sequence[int], rank: int | None = None) -> float:
  """Forward matmul FLOPs per example. Both structures feed the deep network N*D inputs, so the
  count does not depend on ``structure``."""
  d0 = num_tokens * width
  per_cross = 2.0 * d0 * d0 if rank is None else 4.0 * d0 * rank
  return num_cross_layers * per_cross + _mlp_flops(d0, mlp_hidden)


# ================================================================================== Wukong
class WukongLayer(nn.Module):
  """One Wukong interaction layer (Zhang et al. 2024, Sec. 3):

      X_{i+1} = LN(concat(FMB(X_i), LCB(X_i)) + residual(X_i))
      FMB(X)  = reshape(MLP(LN(flatten(FM(X)))), [n_F, D])
      FM(X)   = X X^T [n, n], or the optimised X (X^T Y) [n, k] with a learned Y [n, k]
      LCB(X)  = W_L X,  W_L [n_L, n]   (recombines tokens, no new interaction order)

  FM raises the interaction order (stacking l layers reaches order 2^l); LCB keeps the lower
  orders flowing. The optimised FM is used where it applies, k < n (it is then both cheaper,
  4nkD vs 2n^2 D, and narrower); Y is a learned static projection [D]. The residual is the
  identity when n_F + n_L = n, else a learned token recombination [n_F + n_L, n] [D]. The MLP is
  ReLU Dense layers then a linear layer to n_F * D [D]; LayerNorms carry scale and bias.
  """
  num_fm_tokens: int
  num_lcb_tokens: int
  fm_rank: int | None
  mlp_hidden: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., n, D] -> [..., n_F + n_L, D]."""
    n, d = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    n_f, n_l = self.num_fm_tokens, self.num_lcb_tokens
    if self.fm_rank is not None and self.fm_rank < n:
      # Y [n, k] contracts the token axis (no width axis): tokens in, rank out, kept whole.
      y = lp.param(self, 'fm_projection', init_lib.fan_in(), (n, self.fm_rank),
                   (lp.TOKENS, None)).astype(self.dtype)
      xty = jnp.einsum('...nd,nk->...dk', x, y)          # X^T Y [D, k] first: O(nkD)
      fm = jnp.einsum('...nd,...dk->...nk', x, xty)      # X (X^T Y) [n, k]
    else:
      fm = jnp.einsum('...nd,...md->...nm', x, x)        # X X^T [n, n]
    h = nn.LayerNorm(dtype=self.dtype, name='fm_norm', **lp.norm())(fm.reshape(lead + (-1,)))
    for i, w in enumerate(self.mlp_hidden):
      h = nn.relu(_dense(w, *lp.chain_axes(i), self.dtype, f'fm_mlp_{i}')(h))
    # Back to n_F tokens of D, the stack's next (alternating) layer.
    h = _dense(n_f * d, *lp.chain_axes(len(self.mlp_hidden)), self.dtype, 'fm_out')(h)
    parts = [h.reshape(lead + (n_f, d))]
    if n_l:
      # Token recombinations [n_out, n_in]: the input token axis is TOKENS, the output unnamed.
      w_l = lp.param(self, 'lcb', init_lib.token_mix_fan_in(), (n_l, n), (None, lp.TOKENS))
      parts.append(jnp.einsum('...nd,ln->...ld', x, w_l.astype(self.dtype)))
    out = jnp.concatenate(parts, axis=-2)
    if n_f + n_l == n:
      res = x
    else:
      w_r = lp.param(self, 'residual_projection', init_lib.token_mix_fan_in(), (n_f + n_l, n),
                     (None, lp.TOKENS))
      res = jnp.einsum('...nd,on->...od', x, w_r.astype(self.dtype))
    return nn.LayerNorm(dtype=self.dtype, name='norm', **lp.norm())(out + res)


class Wukong(nn.Module):
  """Wukong (Zhang et al., "Wukong: Towards a Scaling Law for Large-Scale Recommendation",
  ICML 2024, Sec. 3): ``num_layers`` stacked ``WukongLayer``s; the output is the final
  n_F + n_L tokens flattened [(n_F + n_L) * D] (the paper's final MLP is the caller's tower).
  """
  num_layers: int = 2
  num_fm_tokens: int = 8            # n_F [D]
  num_lcb_tokens: int = 8           # n_L [D]; 0 drops the LCB (the paper's "w/o LCB" ablation)
  fm_rank: int | None = 8           # k of the optimised FM [D]; None: always the plain X X^T
  mlp_hidden: tuple[int, ...] = (256,)  # FMB MLP hidden widths [D]; its output layer is n_F * D
  dtype: Any = jnp.float32

  def _check(self) -> None:
    _positive('Wukong', 'num_layers', self.num_layers)
    _positive('Wukong', 'num_fm_tokens', self.num_fm_tokens)
    _positive('Wukong', 'num_lcb_tokens', self.num_lcb_tokens, minimum=0)
    _rank('Wukong', 'fm_rank', self.fm_rank)
    _widths('Wukong', 'mlp_hidden', self.mlp_hidden)

  def output_width(self, num_tokens: int, width: int) -> int:
    self._check()
    return (self.num_fm_tokens + self.num_lcb_tokens) * width

  def flops(self, num_tokens: int, width: int) -> float:
    self._check()
    return wukong_flops(num_tokens, width, self.num_layers, self.num_fm_tokens,
                        self.num_lcb_tokens, self.fm_rank, self.mlp_hidden)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., N, D] -> [..., (n_F + n_L) * D]."""
    self._check()
    _tokens('Wukong', x)
    x = x.astype(self.dtype)
    for i in range(self.num_layers):
      x = WukongLayer(self.num_fm_tokens, self.num_lcb_tokens, self.fm_rank,
                      tuple(self.mlp_hidden), self.dtype, name=f'layer_{i}')(x)
    return x.reshape(x.shape[:-2] + (-1,))


def wukong_flops(num_tokens: int, width: int, num_layers: int, num_fm_tokens: int,
                 num_lcb_tokens: int, fm_rank: int | None, mlp_hidden: Sequence[int]) -> float:
  """Forward matmul FLOPs per example: FM, FMB MLP, LCB and residual projection of each layer."""
  n, d, total = num_tokens, width, 0.0
  n_out = num_fm_tokens + num_lcb_tokens
  for _ in range(num_layers):
    if fm_rank is not None and fm_rank < n:
      total += 4.0 * n * d * fm_rank                    # X^T Y, then X (X^T Y)
      fm_width = n * fm_rank
    else:
      total += 2.0 * n * n * d                          # X X^T
      fm_width = n * n
    total += _mlp_flops(fm_width, tuple(mlp_hidden) + (num_fm_tokens * d,))
    total += 2.0 * num_lcb_tokens * n * d               # LCB
    if n_out != n:
      total += 2.0 * n_out * n * d                      # residual projection
    n = n_out
  return total


# ================================================================================== HiFormer
HIFORMER_PROJECTIONS = ('composite', 'heterogeneous')


class HiFormerLayer(nn.Module):
  """One Hiformer layer over n tokens; queries for the last ``num_queries`` tokens (all if None).

  Attention: softmax_j(q_i . k_j / sqrt(d_h)) v_j per head, where
    * ``heterogeneous``: q_i = x_i Q_i, k_j = x_j K_j, v_j = x_j V_j, token-specific stacked
      kernels [n, D, H*d_h] (Gui et al.'s heterogeneous attention layer: the interaction of
      features i and j gets its own projections instead of one shared semantic space);
    * ``composite`` (the Hiformer layer): [q_1 .. q_n] = concat(x_1 .. x_n) Q^ with Q^
      [n*D, n*H*d_h], likewise K^ and V^, so every token's query/key/value reads all features;
      with ``rank`` r each is factorised as down [n, D, r] (reads all tokens) then a token-specific
      up [n, r, H*d_h] (the paper's low-rank approximation); None keeps the full [n, D, n, H*d_h].
  Then a token-specific output projection [n, H*d_h, D] and a token-specific FFN (ReLU), each in a
  post-norm residual z = LN(x + attn), y = LN(z + FFN(z)) as the vanilla Transformer the paper
  starts from [D: placement, token-specific output/FFN, ReLU, no projection biases, one ``rank``
  shared by Q, K and V]. With
  ``num_queries`` = t only the last t rows get a query, an output projection and an FFN: the
  paper's pruning of the last layer, whose non-task outputs nobody reads.
  """
  num_heads: int
  head_dim: int
  rank: int | None
  projection: str
  ffn_mult: int
  num_queries: int | None = None
  dtype: Any = jnp.float32

  def _project(self, name: str, x: jnp.ndarray, rows: int) -> jnp.ndarray:
    """Q/K/V of the last ``rows`` tokens of x [..., n, D] -> [..., rows, H*d_h]."""
    n, d = x.shape[-2], x.shape[-1]
    e = self.num_heads * self.head_dim
    if self.projection == 'heterogeneous':
      w = lp.param(self, name, init_lib.stacked_fan_in(), (rows, d, e),
                   (lp.TOKENS, lp.EMBED, lp.HEADS))
      return jnp.einsum('...nd,nde->...ne', x[..., n - rows:, :], w.astype(self.dtype))
    # Composite: the input token axis is part of the fan-in (unnamed: one name per array, and
    # TOKENS marks the per-output-token axis).
    if self.rank is None:
      w = lp.param(self, name, init_lib.stacked_fan_in((), in_axis=(0, 1), out_axis=(2, 3)),
                   (n, d, rows, e), (None, lp.EMBED, lp.TOKENS, lp.HEADS))
      return jnp.einsum('...md,mdne->...ne', x, w.astype(self.dtype))
    down = lp.param(self, f'{name}_down',
                    init_lib.stacked_fan_in((), in_axis=(0, 1), out_axis=2),
                    (n, d, self.rank), (lp.TOKENS, lp.EMBED, None))
    up = lp.param(self, f'{name}_up', init_lib.stacked_fan_in(in_axis=1, out_axis=2),
                  (rows, self.rank, e), (lp.TOKENS, None, lp.HEADS))
    u = jnp.einsum('...md,mdr->...r', x, down.astype(self.dtype))   # concat(x) L: reads all
    return jnp.einsum('...r,nre->...ne', u, up.astype(self.dtype))

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., n, D] -> [..., t, D] (t = num_queries, or n)."""
    if self.projection not in HIFORMER_PROJECTIONS:
      raise ValueError(f'HiFormerLayer.projection={self.projection!r}: choose one of '
                       f'{list(HIFORMER_PROJECTIONS)}')
    n, d = x.shape[-2], x.shape[-1]
    t = n if self.num_queries is None else self.num_queries
    h, dh = self.num_heads, self.head_dim
    x = _tokens_hint(x)
    heads = lambda a: a.reshape(a.shape[:-1] + (h, dh))
    q = heads(self._project('q', x, t))
    k = heads(self._project('k', x, n))
    v = heads(self._project('v', x, n))
    logits = jnp.einsum('...qhc,...khc->...hqk', q, k).astype(jnp.float32) / jnp.sqrt(dh)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    o = jnp.einsum('...hqk,...khc->...qhc', attn, v).reshape(q.shape[:-2] + (h * dh,))
    w_o = lp.param(self, 'out', init_lib.stacked_fan_in(), (t, h * dh, d),
                   (lp.TOKENS, lp.HEADS, lp.EMBED))
    z = x[..., n - t:, :] + jnp.einsum('...ne,ned->...nd', o, w_o.astype(self.dtype))
    z = nn.LayerNorm(dtype=self.dtype, name='attn_norm', **lp.norm())(z)
    f = self.ffn_mult * d
    w1, b1, w2, b2 = _token_ffn(self, t, d, f)
    y = nn.relu(jnp.einsum('...nd,ndf->...nf', z, w1.astype(self.dtype)) + b1.astype(self.dtype))
    y = jnp.einsum('...nf,nfd->...nd', y, w2.astype(self.dtype)) + b2.astype(self.dtype)
    return nn.LayerNorm(dtype=self.dtype, name='ffn_norm', **lp.norm())(z + y)


class HiFormer(nn.Module):
  """Hiformer (Gui et al., "Hiformer: Heterogeneous Feature Interactions Learning with
  Transformers for Recommender Systems", KDD 2023; sections on the heterogeneous attention layer,
  the Hiformer composite projection, and low-rank approximation + model pruning).

  ``num_task_tokens`` learned task embeddings join the N feature tokens (appended [D]; with
  token-specific weights the position is only a label), as in the paper, whose prediction reads
  the task embeddings' final states. The output is those states flattened [T*D], and the last
  layer computes only their rows (the paper's pruning: exact, the other rows are never read).
  ``num_task_tokens=0`` keeps the N feature tokens to the end and flattens them [N*D] [D]. Task
  embeddings start from N(0, 0.02^2) [D].
  """
  num_layers: int = 2
  num_heads: int = 2
  head_dim: int = 16                 # d_k = d_v [D]
  rank: int | None = 64              # composite low rank r [D]; None: full-rank composite
  projection: str = 'composite'      # the Hiformer layer; 'heterogeneous': its block-diagonal
                                     # special case (rank then unused)
  num_task_tokens: int = 1           # [D] one per task tower in the paper; 1 feeds all towers
  ffn_mult: int = 4                  # [D]
  dtype: Any = jnp.float32

  def _check(self) -> None:
    for field in ('num_layers', 'num_heads', 'head_dim', 'ffn_mult'):
      _positive('HiFormer', field, getattr(self, field))
    _rank('HiFormer', 'rank', self.rank)
    _positive('HiFormer', 'num_task_tokens', self.num_task_tokens, minimum=0)
    if self.projection not in HIFORMER_PROJECTIONS:
      raise ValueError(f'HiFormer.projection={self.projection!r}: choose one of '
                       f'{list(HIFORMER_PROJECTIONS)}')

  def output_width(self, num_tokens: int, width: int) -> int:
    self._check()
    return (self.num_task_tokens or num_tokens) * width

  def flops(self, num_tokens: int, width: int) -> float:
    self._check()
    return hiformer_flops(num_tokens, width, self.num_layers, self.num_heads, self.head_dim,
                          self.rank, self.projection, self.num_task_tokens, self.ffn_mult)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., N, D] -> [..., T*D] (the task tokens), or [..., N*D] when num_task_tokens=0."""
    self._check()
    _, d = _tokens('HiFormer', x)
    x = x.astype(self.dtype)
    t = self.num_task_tokens
    if t:
      task = lp.param(self, 'task_tokens', nn.initializers.normal(0.02), (t, d),
                      (lp.TASKS, lp.EMBED)).astype(self.dtype)
      x = jnp.concatenate([x, jnp.broadcast_to(task, x.shape[:-2] + (t, d))], axis=-2)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = HiFormerLayer(self.num_heads, self.head_dim, self.rank, self.projection, self.ffn_mult,
                        t if (last and t) else None, self.dtype, name=f'layer_{i}')(x)
    return x.reshape(x.shape[:-2] + (-1,))     # the pruned last layer kept the task rows only


def hiformer_flops(num_tokens: int, width: int, num_layers: int, num_heads: int, head_dim: int,
                   rank: int | None = 64, projection: str = 'composite', num_task_tokens: int = 1,
                   ffn_mult: int = 4) -> float:
  """Forward matmul FLOPs per example over the N + T tokens, the last layer pruned to T rows."""
  n, d, e = num_tokens + num_task_tokens, width, num_heads * head_dim

  def proj(rows: int) -> float:
    if projection == 'heterogeneous':
      return 2.0 * rows * d * e
    if rank is None:
      return 2.0 * n * d * rows * e
    return 2.0 * n * d * rank + 2.0 * rank * rows * e

  total = 0.0
  for i in range(num_layers):
    rows = num_task_tokens if (i == num_layers - 1 and num_task_tokens) else n
    total += proj(rows) + 2 * proj(n)                   # Q for the query rows, K and V for all
    total += 4.0 * rows * n * e                         # scores and attention-weighted values
    total += 2.0 * rows * e * d                         # output projection
    total += 4.0 * rows * d * ffn_mult * d              # FFN
  return total


# ================================================================================== RankMixer
def token_mixing(x: jnp.ndarray, num_heads: int | None = None) -> jnp.ndarray:
  """RankMixer's multi-head token mixing (Zhu et al. 2025, Sec. 3.3.1): parameter-free.

  Every token x_t [D] is split into H heads x_t^(h) [D/H]; new token h is the concatenation of
  head h of every token, s^h = [x_1^(h) || .. || x_T^(h)]: x [..., T, D] -> [..., H, T*D/H].
  With H = T (RankMixer's choice, so the residual lines up) it is a transpose of the [T, H]
  grid of D/T-wide blocks: a pure rearrangement, and its own inverse.
  """
  t, d = x.shape[-2], x.shape[-1]
  h = t if num_heads is None else num_heads
  if d % h:
    raise ValueError(f'token_mixing: width D={d} must be divisible by the number of heads H={h}')
  blocks = x.reshape(x.shape[:-2] + (t, h, d // h))
  return jnp.swapaxes(blocks, -3, -2).reshape(x.shape[:-2] + (h, t * d // h))


def token_mixing_token_first(x: jnp.ndarray) -> jnp.ndarray:
  """``token_mixing`` with H = T on tokens held first, x [T, ..., D] -> [T, ..., D]."""
  t, d = x.shape[0], x.shape[-1]
  if d % t:
    raise ValueError(f'token_mixing: width D={d} must be divisible by the number of heads H={t}')
  blocks = x.reshape(x.shape[:-1] + (t, d // t))         # [T, ..., H, D/H]
  return jnp.swapaxes(blocks, 0, -2).reshape(x.shape)    # [H, ..., T, D/H] -> [H, ..., D]


class RankMixerLayer(nn.Module):
  """S = LN(TokenMixing(X) + X); X' = LN(PFFN(S) + S), per-token FFN weights stacked [T, ...].

  ``token_first``: x is [T, ..., D] instead of [..., T, D]. The per-token FFN's token axis is a
  batch axis of its two einsums, which XLA's dots want first: held in the middle, XLA copies the
  [B, T, kD] activations (and their gradients) into [T, B, kD] and back around every einsum.
  ``RankMixer`` moves the tokens first once for its whole stack; the parameters are the same.
  """
  ffn_mult: int
  dtype: Any = jnp.float32
  token_first: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., T, D] -> [..., T, D] ([T, ..., D] -> [T, ..., D] when ``token_first``)."""
    t, d = (x.shape[0] if self.token_first else x.shape[-2]), x.shape[-1]
    f = self.ffn_mult * d
    w1, b1, w2, b2 = _token_ffn(self, t, d, f, prefix='pffn_')
    w1, w2 = w1.astype(self.dtype), w2.astype(self.dtype)
    if self.token_first:
      mixed = token_mixing_token_first(x)
      b1, b2 = (b.astype(self.dtype).reshape((t,) + (1,) * (x.ndim - 2) + b.shape[-1:])
                for b in (b1, b2))
      dot1, dot2 = 't...d,tdf->t...f', 't...f,tfd->t...d'
    else:
      x = _tokens_hint(x)
      mixed = token_mixing(x)
      b1, b2 = b1.astype(self.dtype), b2.astype(self.dtype)
      dot1, dot2 = '...td,tdf->...tf', '...tf,tfd->...td'
    s = nn.LayerNorm(dtype=self.dtype, name='mix_norm', **lp.norm())(mixed + x)
    y = nn.gelu(jnp.einsum(dot1, s, w1) + b1)
    y = jnp.einsum(dot2, y, w2) + b2
    return nn.LayerNorm(dtype=self.dtype, name='ffn_norm', **lp.norm())(y + s)


class RankMixer(nn.Module):
  """RankMixer (Zhu et al., "RankMixer: Scaling Up Ranking Models in Industrial Recommenders",
  arXiv 2507.15551, 2025, Sec. 3.3, Eq. 1), over T feature tokens x [..., T, D]:

      S  = LN(TokenMixing(X) + X)          H = T heads, no parameters (``token_mixing``)
      X' = LN(PFFN(S) + S)                 PFFN_t(s) = GELU(s W1_t + b1_t) W2_t + b2_t

  with per-token FFNs W1 [T, D, kD], W2 [T, kD, D] (Sec. 3.3.2; one einsum each): each feature
  subspace keeps its own parameters instead of one shared FFN. The output is the mean-pooled
  final tokens [D], as in the paper. The Sparse-MoE PFFN variant is not implemented; GELU is
  flax's tanh approximation [D]. D must be divisible by T.
  """
  num_layers: int = 2
  ffn_mult: int = 4                  # k, the PFFN hidden ratio
  dtype: Any = jnp.float32

  def _check(self, num_tokens: int | None = None, width: int | None = None) -> None:
    _positive('RankMixer', 'num_layers', self.num_layers)
    _positive('RankMixer', 'ffn_mult', self.ffn_mult)
    if num_tokens is not None and width % num_tokens:
      raise ValueError(f'RankMixer: width D={width} must be divisible by the number of tokens '
                       f'T={num_tokens} (token mixing splits every token into T heads); change '
                       'the token count or the width')

  def output_width(self, num_tokens: int, width: int) -> int:
    self._check(num_tokens, width)
    return width

  def flops(self, num_tokens: int, width: int) -> float:
    self._check(num_tokens, width)
    return rankmixer_flops(num_tokens, width, self.num_layers, self.ffn_mult)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., T, D] -> [..., D]."""
    t, d = _tokens('RankMixer', x)
    self._check(t, d)
    lead = x.shape[:-2]
    # [T, B, D]: tokens first (see the layer) and one row axis, so a weight gradient contracts
    # over a single axis and XLA transposes nothing for it either.
    x = jnp.moveaxis(_tokens_hint(x.astype(self.dtype)), -2, 0).reshape(t, -1, d)
    for i in range(self.num_layers):
      x = RankMixerLayer(self.ffn_mult, self.dtype, token_first=True, name=f'layer_{i}')(x)
    return jnp.mean(x, axis=0).reshape(lead + (d,))


def rankmixer_flops(num_tokens: int, width: int, num_layers: int, ffn_mult: int = 4) -> float:
  """Forward matmul FLOPs per example: the per-token FFNs only (the mixing is a reshape)."""
  return num_layers * 4.0 * num_tokens * width * ffn_mult * width
