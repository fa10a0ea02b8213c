"""Per-task towers over the pooled final NS tokens (SPEC A.8 [D]), as stacked weights.

One tower per task (CTR, CVR, ...): Dense(hidden) -> SiLU -> Dense(1), the T towers held as
[T, ...] parameter stacks and applied with one einsum each, never a loop over tasks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models import partitioning
from onetrans_jax.models.partitioning import EMBED, MLP, TASKS


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
    w1, b1, w2, b2 = tower_params(self, init, t, d, h)
    x = partitioning.whole_features(x)
    hid = nn.silu(jnp.einsum('...d,tdh->...th', x.astype(self.dtype), w1.astype(self.dtype)) +
                  b1.astype(self.dtype))
    out = jnp.einsum('...th,th->...t', hid, w2[..., 0].astype(self.dtype)) + b2.astype(self.dtype)
    return out.astype(jnp.float32)


def tower_params(module: nn.Module, init: Any, t: int, d: int, h: int) -> tuple[jnp.ndarray, ...]:
  """The stacked tower weights w1 [T, d, h], b1 [T, h], w2 [T, h, 1], b2 [T] with logical axes
  (the hidden layer an up projection, the logit a down projection to one output)."""
  return (partitioning.param(module, 'w1', init, (t, d, h), (TASKS, EMBED, MLP)),
          partitioning.param(module, 'b1', nn.initializers.zeros, (t, h), (TASKS, MLP)),
          partitioning.param(module, 'w2', init, (t, h, 1), (TASKS, MLP, None)),
          partitioning.param(module, 'b2', nn.initializers.zeros, (t,), (TASKS,)))
