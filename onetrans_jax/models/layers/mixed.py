"""Mixed parameterization (SPEC A.4): one weight set shared by all S tokens, one per NS position.

Activations travel as a pair: ``s`` [B, Ls, ...] and ``ns`` [B, N, ...], or [R, C, N, ...] when a
request's C candidates share one S side (each side may then be computed alone). The S weights apply
with one matmul over the flattened rows; the N stacked NS weights apply with one batched matmul
over N ('nmd,nde->nme'), never a loop over tokens. ``shared=True`` is the paper's "shared params
for all tokens" ablation: the NS tokens then use the S weights and the stacked weights do not
exist. The matching per-token RMSNorm is ``norms.MixedRMSNorm``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.partitioning import EMBED, MLP, TOKENS

Init = Any


class MixedLinear(nn.Module):
  """y_s = x_s W_S;  y_ns[:, j] = x_ns[:, j] W_NS[j]  (no biases, SPEC A.4 [D]).

  ``axes``: the logical axes (input, output) of a kernel; the S kernel [d_in, features] takes them
  as they are, the NS stack [N, d_in, features] as (TOKENS, *axes).
  """
  features: int
  num_ns: int
  shared: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Init | None = None
  axes: tuple[str, str] = (EMBED, MLP)

  @nn.compact
  def __call__(self, s: jnp.ndarray | None, ns: jnp.ndarray | None, token_first: bool = False
               ) -> tuple[jnp.ndarray | None, jnp.ndarray | None]:
    """Either side may be None (request-level sharing runs the S and NS sides separately).

    A kernel is created on the first call that needs it: a layer whose S side never runs (the
    last pyramid layer queries NS tokens only) has no S kernel, so no weight is left without a
    gradient. ``ns`` may carry extra leading axes ([R, C, N, d] for candidates of a request);
    ``token_first``: ``ns`` is [N, ..., d] instead, the layout XLA's batched dot wants.
    """
    init = self.kernel_init or init_lib.fan_in()
    s_out = ns_out = None
    if s is not None or self.shared:
      d_in = (s if s is not None else ns).shape[-1]
      w_s = partitioning.param(self, 's_kernel', init, (d_in, self.features), self.axes,
                               self.param_dtype)
      if s is not None:
        s_out = rows_dot(s.astype(self.dtype), w_s.astype(self.dtype))
    if ns is not None:
      if self.shared:
        ns_out = rows_dot(ns.astype(self.dtype), w_s.astype(self.dtype))
      else:
        # Stack of per-token kernels: init each slice like an independent [d_in, features] kernel.
        w_ns = partitioning.param(self, 'ns_kernel', _stacked(init),
                                  (self.num_ns, ns.shape[-1], self.features),
                                  (TOKENS, *self.axes), self.param_dtype)
        ns_out = stacked_rows_dot(ns.astype(self.dtype), w_ns.astype(self.dtype), token_first)
    return s_out, ns_out


def rows_dot(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """x [..., d] @ w [d, e] -> [..., e], as one 2-D matmul over the flattened rows.

  The same product as ``einsum('...d,de->...e')``, but the weight gradient then contracts over
  one row axis instead of several. Given several (e.g. batch and tokens), XLA's CPU dot
  canonicalization transposed the [B, L, 4d] FFN activation gradient to put them last: at the
  CPU bench shape that copy alone took 106 ms of a 3.4 s step, and the FFN's forward + backward
  ran 2.9x faster flattened (1347 -> 461 ms, the same gradients bit for bit).
  """
  lead = x.shape[:-1]
  return (x.reshape(-1, x.shape[-1]) @ w).reshape(*lead, w.shape[-1])


def stacked_rows_dot(x: jnp.ndarray, w: jnp.ndarray, token_first: bool) -> jnp.ndarray:
  """The N stacked NS kernels w [N, d, e] on x [N, ..., d] (``token_first``) or [..., N, d]:
  one batched matmul over N with the other axes flattened into rows (see ``rows_dot``)."""
  n, d = w.shape[0], x.shape[-1]
  if token_first:
    y = jnp.einsum('nmd,nde->nme', x.reshape(n, -1, d), w)
    return y.reshape(*x.shape[:-1], w.shape[-1])
  y = jnp.einsum('mnd,nde->mne', x.reshape(-1, n, d), w)
  return y.reshape(*x.shape[:-1], w.shape[-1])


def _stacked(init: Init) -> Init:
  def f(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return f
