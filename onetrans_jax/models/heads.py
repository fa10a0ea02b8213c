"""Per-task towers over the pooled final NS tokens (SPEC A.8 [D]), as stacked weights.

One tower per task (CTR, CVR, ...): Dense(hidden) -> SiLU -> Dense(1), the T towers held as
[T, ...] parameter stacks and applied with one einsum each, never a loop over tasks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class TaskTowers(nn.Module):
  num_tasks: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., d] -> logits [..., T]."""
    d, t, h = x.shape[-1], self.num_tasks, self.hidden
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=-2,
                                            out_axis=-1, batch_axis=(0,))
    w1 = self.param('w1', init, (t, d, h))
    b1 = self.param('b1', nn.initializers.zeros, (t, h))
    w2 = self.param('w2', init, (t, h, 1))
    b2 = self.param('b2', nn.initializers.zeros, (t,))
    hid = nn.silu(jnp.einsum('...d,tdh->...th', x.astype(self.dtype), w1.astype(self.dtype)) +
                  b1.astype(self.dtype))
    out = jnp.einsum('...th,th->...t', hid, w2[..., 0].astype(self.dtype)) + b2.astype(self.dtype)
    return out.astype(jnp.float32)
