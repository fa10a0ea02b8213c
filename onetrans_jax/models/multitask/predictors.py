r"""Multi-task predictors over a pooled representation: the OneRank paper's baselines (SPEC B.7).

Each head maps x [..., D] (any leading dims, e.g. the pooled final NS tokens [R, C, D]) to logits
[..., T] float32. ``dtype`` is the compute dtype; parameters stay float32. Experts, gates and
towers are stacked parameters ([E, ...], [T, ...]) applied with one einsum each, never a Python
loop over tasks or experts (PLE loops over its levels only: their input widths differ).

  * ``SharedBottom``: one shared MLP layer, then per-task towers.
  * ``MMoE`` (Ma et al., KDD 2018): E shared experts f_e; per task k a gate
    g_k(x) = softmax(W_k x) over the experts and a tower over sum_e g_k(x)_e f_e(x).
  * ``PLE`` (Tang et al., RecSys 2020): a stack of CGC levels. Level l holds per task k a set of
    task experts E_k and one set of shared experts E_s. Task k's gate mixes E_k and E_s (from task
    k's input); at every level but the last, a shared gate mixes all experts (from the shared
    input) into the next level's shared input. The last level's task outputs feed the towers.
    One level is CGC.

An expert (and the shared bottom) is Dense -> SiLU; a tower is Dense -> SiLU -> Dense(1), as
``towers.TaskTowers``. Gates are bias-free linear maps followed by a float32 softmax, as in the
MMoE and PLE papers. Every width set to 0 means D, the head's input width ([D]).

Config fields (``config.model``; ``multitask.config.defaults()`` gives them with defaults):
  predictor                 'towers' | 'shared_bottom' | 'mmoe' | 'ple'
  head_hidden               hidden width of each task tower (all predictors)
  predictor_bottom_hidden   shared_bottom: width of the shared bottom layer
  predictor_experts         mmoe: number of shared experts E
  predictor_expert_hidden   mmoe, ple: output width of every expert
  predictor_levels          ple: number of CGC levels (1: CGC)
  predictor_task_experts    ple: experts per task per level
  predictor_shared_experts  ple: shared experts per level

``multitask/config.py`` builds them from the config (``from_config``) and counts their parameters
and forward matmul FLOPs per example (``param_count``, ``forward_flops``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onetrans_jax.models.layers import initializers as init_lib
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.partitioning import EMBED, EXPERTS, MLP, TASKS
from onetrans_jax.models.multitask.towers import PerTaskTowers, TaskTowers


def _gate(logits: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last (expert) axis, in float32 whatever the compute dtype."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


class SharedBottom(nn.Module):
  """x [..., D] -> SiLU(x W + b) [..., B] -> per-task towers -> logits [..., T]."""
  num_tasks: int
  bottom_hidden: int = 0          # B; 0: D
  tower_hidden: int = 0           # 0: D
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, return_gates: bool = False) -> Any:
    """``return_gates`` returns (logits, {}): a shared bottom has no gates."""
    d = x.shape[-1]
    b = self.bottom_hidden or d
    w = partitioning.param(self, 'bottom_w', init_lib.fan_in(), (d, b), (EMBED, MLP))
    bias = partitioning.param(self, 'bottom_b', nn.initializers.zeros, (b,), (MLP,))
    dt = self.dtype
    x = partitioning.whole_features(x)
    z = nn.silu(jnp.einsum('...d,dh->...h', x.astype(dt), w.astype(dt)) + bias.astype(dt))
    logits = TaskTowers(self.num_tasks, self.tower_hidden or d, dt, name='towers')(z)
    return (logits, {}) if return_gates else logits


class MMoE(nn.Module):
  """Multi-gate mixture of experts: E shared experts, one softmax gate and one tower per task."""
  num_tasks: int
  num_experts: int
  expert_hidden: int = 0          # H; 0: D
  tower_hidden: int = 0           # 0: D
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, return_gates: bool = False) -> Any:
    """x [..., D] -> logits [..., T]; ``return_gates`` adds {'task': gates [..., T, E]}."""
    d, t, e = x.shape[-1], self.num_tasks, self.num_experts
    h = self.expert_hidden or d
    dt = self.dtype
    w = partitioning.param(self, 'expert_w', init_lib.stacked_fan_in(), (e, d, h),
                           (EXPERTS, EMBED, MLP))
    b = partitioning.param(self, 'expert_b', nn.initializers.zeros, (e, h), (EXPERTS, MLP))
    wg = partitioning.param(self, 'gate_w', init_lib.stacked_fan_in(), (t, d, e),
                            (TASKS, EMBED, EXPERTS))
    x = partitioning.whole_features(x.astype(dt))
    experts = nn.silu(jnp.einsum('...d,edh->...eh', x, w.astype(dt)) + b.astype(dt))
    gates = _gate(jnp.einsum('...d,tde->...te', x, wg.astype(dt)))
    mixed = jnp.einsum('...te,...eh->...th', gates.astype(dt), experts)
    logits = PerTaskTowers(self.tower_hidden or d, dt, name='towers')(mixed)
    return (logits, {'task': gates}) if return_gates else logits


class CGCLevel(nn.Module):
  """One PLE level (a CGC layer with an optional shared gate).

  Inputs: task_in [..., T, D_l] (None at the first level: every task reads shared_in) and
  shared_in [..., D_l]. Returns (task_out [..., T, H], shared_out [..., H] or None, gates) with
  gates['task'] [..., T, Et + Es] (task k's own experts first, then the shared ones) and, when
  ``shared_gate``, gates['shared'] [..., T * Et + Es] (all task experts task-major, then shared).
  """
  num_tasks: int
  task_experts: int
  shared_experts: int
  expert_hidden: int
  shared_gate: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, task_in: jnp.ndarray | None, shared_in: jnp.ndarray) -> Any:
    t, et, es, h = self.num_tasks, self.task_experts, self.shared_experts, self.expert_hidden
    d = shared_in.shape[-1]
    dt = self.dtype
    wt = partitioning.param(self, 'task_expert_w', init_lib.stacked_fan_in((0, 1)), (t, et, d, h),
                            (TASKS, EXPERTS, EMBED, MLP))
    bt = partitioning.param(self, 'task_expert_b', nn.initializers.zeros, (t, et, h),
                            (TASKS, EXPERTS, MLP))
    ws = partitioning.param(self, 'shared_expert_w', init_lib.stacked_fan_in(), (es, d, h),
                            (EXPERTS, EMBED, MLP))
    bs = partitioning.param(self, 'shared_expert_b', nn.initializers.zeros, (es, h),
                            (EXPERTS, MLP))
    wgt = partitioning.param(self, 'task_gate_w', init_lib.stacked_fan_in(), (t, d, et + es),
                             (TASKS, EMBED, EXPERTS))
    shared_in = partitioning.whole_features(shared_in.astype(dt))
    if task_in is None:           # first level: one input for every task
      task_exp = jnp.einsum('...d,tedh->...teh', shared_in, wt.astype(dt))
      task_gate = _gate(jnp.einsum('...d,tde->...te', shared_in, wgt.astype(dt)))
    else:
      task_in = partitioning.whole_features(task_in.astype(dt))
      task_exp = jnp.einsum('...td,tedh->...teh', task_in, wt.astype(dt))
      task_gate = _gate(jnp.einsum('...td,tde->...te', task_in, wgt.astype(dt)))
    task_exp = nn.silu(task_exp + bt.astype(dt))                                  # [..., T, Et, H]
    shared_exp = nn.silu(jnp.einsum('...d,edh->...eh', shared_in, ws.astype(dt)) +
                         bs.astype(dt))                                           # [..., Es, H]
    g = task_gate.astype(dt)
    task_out = (jnp.einsum('...te,...teh->...th', g[..., :et], task_exp) +
                jnp.einsum('...te,...eh->...th', g[..., et:], shared_exp))
    gates = {'task': task_gate}
    shared_out = None
    if self.shared_gate:
      wgs = partitioning.param(self, 'shared_gate_w', init_lib.fan_in(), (d, t * et + es),
                               (EMBED, EXPERTS))
      shared_gate = _gate(jnp.einsum('...d,de->...e', shared_in, wgs.astype(dt)))
      gs = shared_gate.astype(dt)
      own = gs[..., :t * et].reshape(gs.shape[:-1] + (t, et))
      shared_out = (jnp.einsum('...te,...teh->...h', own, task_exp) +
                    jnp.einsum('...e,...eh->...h', gs[..., t * et:], shared_exp))
      gates['shared'] = shared_gate
    return task_out, shared_out, gates


class PLE(nn.Module):
  """Progressive Layered Extraction: ``num_levels`` CGC levels, then per-task towers."""
  num_tasks: int
  num_levels: int
  shared_experts: int
  task_experts: int
  expert_hidden: int = 0          # H; 0: D
  tower_hidden: int = 0           # 0: D
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, return_gates: bool = False) -> Any:
    """x [..., D] -> logits [..., T]; ``return_gates`` adds a tuple of each level's gates."""
    d = x.shape[-1]
    h = self.expert_hidden or d
    task_in, shared_in, all_gates = None, x, []
    for level in range(self.num_levels):
      task_in, shared_in, gates = CGCLevel(
          self.num_tasks, self.task_experts, self.shared_experts, h,
          shared_gate=level < self.num_levels - 1, dtype=self.dtype,
          name=f'level_{level}')(task_in, shared_in)
      all_gates.append(gates)
    logits = PerTaskTowers(self.tower_hidden or d, self.dtype, name='towers')(task_in)
    return (logits, tuple(all_gates)) if return_gates else logits
