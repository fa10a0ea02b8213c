"""Mixed parameterization (SPEC A.4): one weight set shared by all S tokens, one per NS position.

Activations travel as a pair: ``s`` [B, Ls, ...] and ``ns`` [B, N, ...], or [R, C, N, ...] when a
request's C candidates share one S side (each side may then be computed alone). The S weights apply
with one einsum; the N stacked NS weights apply with one batched einsum ('...nd,nde->...ne'), never
a loop over tokens. ``shared=True`` is the paper's "shared params for all tokens" ablation: the NS
tokens then use the S weights and the stacked weights do not exist. The matching per-token RMSNorm
is ``norms.MixedRMSNorm``.
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
        s_out = jnp.einsum('...ld,de->...le', s.astype(self.dtype), w_s.astype(self.dtype))
    if ns is not None:
      if self.shared:
        ns_out = jnp.einsum('...nd,de->...ne', ns.astype(self.dtype), w_s.astype(self.dtype))
      else:
        # Stack of per-token kernels: init each slice like an independent [d_in, features] kernel.
        w_ns = partitioning.param(self, 'ns_kernel', _stacked(init),
                                  (self.num_ns, ns.shape[-1], self.features),
                                  (TOKENS, *self.axes), self.param_dtype)
        spec = 'n...d,nde->n...e' if token_first else '...nd,nde->...ne'
        ns_out = jnp.einsum(spec, ns.astype(self.dtype), w_ns.astype(self.dtype))
    return s_out, ns_out


def _stacked(init: Init) -> Init:
  def f(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return f
