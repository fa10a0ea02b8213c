"""OneRank's task channels after the encoder (SPEC B.4, B.5): one request-level vector per task.

Every task k owns a channel: its task-token states r_k^i [R, C, K, d] (one per candidate, from the
encoder) are summarised into a request-level vector, which may read the other tasks' vectors, and
the result z_k is matched against r_k^i (onerank.py, SPEC B.6). Per-task weights are stacked
([K, ...]) and applied with one einsum each, never a Python loop over tasks.

  * ``SituationDiscernment`` (B.4): q_k = LayerNorm(f_k(s)) from the request's flattened contextual
    features s, then h_k = MHCA_k(q_k, {r_k^i over this request's real candidates}). Ablations,
    each removing one part and keeping the rest:
      - ``mode='constant_query'``: q_k a learned constant per task, not read from s (the
        candidates are still weighted, by what task k learned in general);
      - ``mode='mean'``: uniform weights over the real candidates, no query at all: h_k =
        W_o,k W_v,k mean_i r_k^i, the same value and output projections as the attention. [D] The
        projections are kept so that this row changes only the weighting: the bare mean (the
        paper's "without situation discernment" read literally) lies along every r_k^i, so
        z_k . r_k^i / sqrt(d) starts near sqrt(d) (BCE about 8 at step 0), a saturated start
        that confounds the comparison;
      - ``mode='off'``: no summary of the candidates: h_k is a learned vector per task, the same
        for every request (matching then scores r_k^i against a fixed direction, a linear head).
  * ``CrossTaskInteraction`` (B.5): masked multi-head self-attention over the K task vectors,
        h~_k = sum_j A[k][j]-masked softmax_j(q_k . k_j) v_j   (output projection)
        h^_k = LayerNorm(h~_k) + h_k
        z_k  = LayerNorm(FFN(h^_k)) + h^_k                     (FFN 4x, SiLU)
    with the task mask A from ``task_mask_matrix`` and cross-task gradient detachment: for task
    k's query every off-diagonal key/value is a *second* projection of stop_gradient(h_j) with the
    same weights (forward values unchanged, the shared K/V weights still learn from it); the
    diagonal (task k reading itself) stays live. ``detach_kv_weights`` also stops the gradient to
    the K/V weights on that off-diagonal path, so they learn only from each task reading itself.

Defaults the SPEC leaves open, each marked [D] where it is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning as lp
from onetrans_jax.models.layers.embeddings import masked_mean
from onetrans_jax.models.layers.norms import StackedLayerNorm

TASK_MASKS = ('cascade', 'parallel', 'full', 'hybrid')
SITUATIONS = ('attention', 'mean', 'constant_query', 'off')


def task_mask_matrix(kind: str, task_names: Sequence[str],
                     edges: Sequence[Sequence[str]] = (), where: str = 'OneRank.'
                     ) -> np.ndarray:
  """The static task mask A [K, K] bool: A[k][j] = task k may read task j; the diagonal is True.

  ``cascade``: j <= k (funnel tasks in schema order, e.g. click -> cart -> order; the default);
  ``parallel``: the identity; ``full``: all True; ``hybrid``: the identity plus the explicit
  (reader, read) task-name pairs of ``edges`` (SPEC B.5's "chain over a named subset" is its edge
  list, e.g. (('cart', 'click'), ('order', 'click'), ('order', 'cart')) for a chain over all
  three; an edge list also expresses any other pattern). ``where`` prefixes error messages with
  the caller's field names ('OneRank.' for the module, 'config.model.' for the config builder).
  """
  names = list(task_names)
  k = len(names)
  if kind not in TASK_MASKS:
    raise ValueError(f'{where}task_mask={kind!r}: choose one of {list(TASK_MASKS)}')
  edges = tuple(tuple(e) for e in edges)
  if edges and kind != 'hybrid':
    raise ValueError(f"{where}task_edges={edges} is set but {where}task_mask={kind!r}; the edges "
                     "are read only by task_mask='hybrid'")
  if kind == 'cascade':
    return np.tril(np.ones((k, k), bool))
  if kind == 'full':
    return np.ones((k, k), bool)
  a = np.eye(k, dtype=bool)
  if kind == 'parallel':
    return a
  if not edges:
    raise ValueError(f"{where}task_edges is empty: task_mask='hybrid' needs at least one "
                     "(reader, read) pair of task names, e.g. (('order', 'click'),); use "
                     "task_mask='parallel' for the identity")
  for edge in edges:
    if len(edge) != 2:
      raise ValueError(f'{where}task_edges: {edge!r} is not a (reader, read) pair of task names')
    for name in edge:
      if name not in names:
        raise ValueError(f'{where}task_edges: {edge!r} names task {name!r}, which the schema does '
                         f'not have; tasks: {names}')
    a[names.index(edge[0]), names.index(edge[1])] = True
  return a


class SituationDiscernment(nn.Module):
  """SPEC B.4: per task k, a request-level summary of this request's candidates as k sees them."""
  num_tasks: int
  width: int
  num_heads: int
  mode: str = 'attention'          # or 'mean', 'constant_query', 'off' (ablations)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s: jnp.ndarray, r: jnp.ndarray, cand_mask: jnp.ndarray) -> jnp.ndarray:
    """s [R, D_s] flattened contextual features; r [R, C, K, d]; cand_mask [R, C] -> h [R, K, d].

    Padding candidates are neither keys nor values (nor counted by the mean).
    """
    if self.mode not in SITUATIONS:
      raise ValueError(f'OneRank.situation={self.mode!r}: choose one of {list(SITUATIONS)}')
    k, d, heads = self.num_tasks, self.width, self.num_heads
    num_r = r.shape[0]
    if self.mode == 'off':
      # [D] unit-scale init: z . r / sqrt(d) then starts with a standard deviation of about 1.
      h = lp.param(self, 'task_vector', nn.initializers.normal(1.0), (k, d), (lp.TASKS, lp.EMBED))
      return jnp.broadcast_to(h.astype(self.dtype), (num_r, k, d))
    # MHCA_k: task-specific projections (stacked [K, d, d]; [D] no biases, as the encoder).
    proj = lambda n, axes: lp.param(self, n, init_lib.stacked_fan_in(), (k, d, d),
                                    axes).astype(self.dtype)
    value_axes, out_axes = (lp.TASKS, lp.EMBED, lp.HEADS), (lp.TASKS, lp.HEADS, lp.EMBED)
    if self.mode == 'mean':   # uniform attention: the mean of the values, no query
      mean = masked_mean(r.astype(jnp.float32), cand_mask, axis=1).astype(self.dtype)  # [R, K, d]
      v = jnp.einsum('rkd,kde->rke', mean, proj('mhca_value', value_axes))
      return jnp.einsum('rkd,kde->rke', v, proj('mhca_out', out_axes))
    if self.mode == 'constant_query':
      # [D] unit-scale init, the scale of the LayerNorm output it replaces.
      q = lp.param(self, 'query', nn.initializers.normal(1.0), (k, d), (lp.TASKS, lp.EMBED))
      q = jnp.broadcast_to(q.astype(self.dtype), (num_r, k, d))
    else:
      # f_k: a private linear map per task, one einsum over the stacked [K, D_s, d] kernels.
      # Its output is the width (EMBED), not a tensor-split MLP axis: q feeds mhca_query, an
      # (EMBED, HEADS) kernel, and jax/jaxlib 0.10.2's partitioner computes wrong gradients for
      # a (.., tensor)-split activation contracted with an (fsdp, tensor)-split kernel while the
      # batch is split over fsdp (tests/test_sharding.py::test_partitioner_bug_pattern).
      f = lp.param(self, 'f_bias', nn.initializers.zeros, (k, d), (lp.TASKS, lp.NORM))[None]
      if s.shape[-1]:  # a schema without request features leaves f_k its bias only
        w = lp.param(self, 'f_kernel', init_lib.stacked_fan_in(), (k, s.shape[-1], d),
                     (lp.TASKS, None, lp.EMBED))
        f = f + jnp.einsum('rs,ksd->rkd', s.astype(self.dtype), w.astype(self.dtype))
      q = StackedLayerNorm(k, dtype=self.dtype, name='q_norm')(jnp.broadcast_to(f, (num_r, k, d)))
    w_q = proj('mhca_query', (lp.TASKS, lp.EMBED, lp.HEADS))
    w_k = proj('mhca_key', (lp.TASKS, lp.EMBED, lp.HEADS))
    w_v, w_o = proj('mhca_value', value_axes), proj('mhca_out', out_axes)
    dh = d // heads
    qh = jnp.einsum('rkd,kde->rke', q, w_q).reshape(num_r, k, heads, dh)
    c = r.shape[1]
    r = r.astype(self.dtype)
    kh = jnp.einsum('rckd,kde->rcke', r, w_k).reshape(num_r, c, k, heads, dh)
    vh = jnp.einsum('rckd,kde->rcke', r, w_v).reshape(num_r, c, k, heads, dh)
    f32 = jnp.float32
    logits = jnp.einsum('rkhe,rckhe->rkhc', qh, kh, preferred_element_type=f32) / np.sqrt(dh)
    logits = jnp.where(cand_mask[:, None, None, :], logits, jnp.finfo(f32).min)
    att = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum('rkhc,rckhe->rkhe', att.astype(vh.dtype), vh,
                   preferred_element_type=f32).astype(self.dtype)
    return jnp.einsum('rkd,kde->rke', o.reshape(num_r, k, d), w_o)


class CrossTaskInteraction(nn.Module):
  """SPEC B.5: controlled cross-task attention over the task vectors, with gradient detachment.

  [D] The attention's Q/K/V/output projections are one weight set shared by all tasks (a standard
  multi-head self-attention over the task axis: the "shared K/V weights" of B.5); the two
  LayerNorms and the FFN are per task (stacked), so everything after the read stays in task k's
  channel. No biases in the projections (as the encoder); the FFN is 4x SiLU.
  ``detach_kv_weights`` also works without ``detach``: the off-diagonal reads then still pass
  gradient to h_j but not to the K/V weights.
  """
  num_tasks: int
  width: int
  num_heads: int
  mask: tuple[tuple[bool, ...], ...]   # A[k][j], from task_mask_matrix
  detach: bool = True
  detach_kv_weights: bool = False
  ffn_mult: int = 4
  dtype: Any = jnp.float32

  def setup(self):
    k, d = self.num_tasks, self.width
    a = np.asarray(self.mask, bool)
    if a.shape != (k, k) or not a.diagonal().all():
      raise ValueError(f'cross-task mask must be [{k}, {k}] with a true diagonal, got {a.tolist()}')
    self.w_q, self.w_k, self.w_v, self.w_o = (
        lp.param(self, n, init_lib.fan_in(), (d, d), axes)
        for n, axes in (('query', (lp.EMBED, lp.HEADS)), ('key', (lp.EMBED, lp.HEADS)),
                        ('value', (lp.EMBED, lp.HEADS)), ('out', (lp.HEADS, lp.EMBED))))
    self.attn_norm = StackedLayerNorm(k, dtype=self.dtype)
    self.ffn_norm = StackedLayerNorm(k, dtype=self.dtype)
    self.ffn_in = lp.param(self, 'ffn_in', init_lib.stacked_fan_in(), (k, d, self.ffn_mult * d),
                           (lp.TASKS, lp.EMBED, lp.MLP))
    self.ffn_out = lp.param(self, 'ffn_out', init_lib.stacked_fan_in(), (k, self.ffn_mult * d, d),
                            (lp.TASKS, lp.MLP, lp.EMBED))

  def _heads(self, x: jnp.ndarray) -> jnp.ndarray:
    return x.reshape(x.shape[:-1] + (self.num_heads, self.width // self.num_heads))

  def attend(self, h: jnp.ndarray) -> jnp.ndarray:
    """h [R, K, d] -> h~ [R, K, d]: the masked multi-head read, before the residual and the norm.

    Keys and values are laid out per (query task, key task) pair, [R, Kq, Kj, H, Dh]: the diagonal
    from the live h_k, the off-diagonal from a second application of the same projection to
    stop_gradient(h_j) (``detach``) with, under ``detach_kv_weights``, stop_gradient of the
    weights too. Without either flag both applications are the live one, so the forward pass is
    the same computation in every mode (bit-identical values).
    """
    dt = self.dtype
    h = h.astype(dt)
    w_k, w_v = self.w_k.astype(dt), self.w_v.astype(dt)
    q = self._heads(h @ self.w_q.astype(dt))
    k_live, v_live = self._heads(h @ w_k), self._heads(h @ w_v)
    if self.detach or self.detach_kv_weights:
      h_off = jax.lax.stop_gradient(h) if self.detach else h
      if self.detach_kv_weights:
        w_k, w_v = jax.lax.stop_gradient(w_k), jax.lax.stop_gradient(w_v)
      k_off, v_off = self._heads(h_off @ w_k), self._heads(h_off @ w_v)
    else:
      k_off, v_off = k_live, v_live
    diag = np.eye(self.num_tasks, dtype=bool)[None, :, :, None, None]
    keys = jnp.where(diag, k_live[:, None], k_off[:, None])     # [R, Kq, Kj, H, Dh]
    vals = jnp.where(diag, v_live[:, None], v_off[:, None])
    f32 = jnp.float32
    logits = jnp.einsum('rqhe,rqjhe->rhqj', q, keys, preferred_element_type=f32)
    logits = logits / np.sqrt(q.shape[-1])
    logits = jnp.where(np.asarray(self.mask, bool), logits, jnp.finfo(f32).min)
    att = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum('rhqj,rqjhe->rqhe', att.astype(dt), vals, preferred_element_type=f32)
    return o.reshape(h.shape).astype(dt) @ self.w_o.astype(dt)

  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    """h [R, K, d] (situation discernment) -> z [R, K, d]."""
    dt = self.dtype
    h = h.astype(dt)
    h_hat = self.attn_norm(self.attend(h)) + h
    y = nn.silu(jnp.einsum('rkd,kdf->rkf', h_hat, self.ffn_in.astype(dt)))
    y = jnp.einsum('rkf,kfd->rkd', y, self.ffn_out.astype(dt))
    return self.ffn_norm(y) + h_hat
