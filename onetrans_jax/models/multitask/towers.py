"""Per-task towers over the pooled final NS tokens (SPEC A.8 [D]), as stacked weights.

One tower per task (CTR, CVR, ...): Dense(hidden) -> SiLU -> Dense(1), the T towers held as
[T, ...] parameter stacks and applied with one einsum each, never a loop over tasks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.partitioning import EMBED, MLP, TASKS


class TaskTowers(nn.Module):
  num_tasks: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., d] -> logits [..., T]."""
    d, t, h = x.shape[-1], self.num_tasks, self.hidden
    w1, b1, w2, b2 = tower_params(self, init_lib.stacked_fan_in(), t, d, h)
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


class PerTaskTowers(nn.Module):
  """``TaskTowers`` whose input is already per task: x [..., T, H] -> logits [..., T].

  Same parameter names and shapes as ``TaskTowers`` (w1 [T, H, h], b1, w2 [T, h, 1], b2).
  """
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    t, d, h = x.shape[-2], x.shape[-1], self.hidden
    w1, b1, w2, b2 = tower_params(self, init_lib.stacked_fan_in(), t, d, h)
    dt = self.dtype
    x = partitioning.whole_features(x)
    hid = nn.silu(jnp.einsum('...td,tdh->...th', x.astype(dt), w1.astype(dt)) + b1.astype(dt))
    out = jnp.einsum('...th,th->...t', hid, w2[..., 0].astype(dt)) + b2.astype(dt)
    return out.astype(jnp.float32)
