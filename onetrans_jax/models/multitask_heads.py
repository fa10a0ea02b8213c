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
``heads.TaskTowers``. Gates are bias-free linear maps followed by a float32 softmax, as in the
MMoE and PLE papers. Every width set to 0 means D, the head's input width ([D]).

Config fields (``config.model``; ``predictor_defaults()`` gives them with defaults):
  predictor                 'towers' | 'shared_bottom' | 'mmoe' | 'ple'
  head_hidden               hidden width of each task tower (all predictors)
  predictor_bottom_hidden   shared_bottom: width of the shared bottom layer
  predictor_experts         mmoe: number of shared experts E
  predictor_expert_hidden   mmoe, ple: output width of every expert
  predictor_levels          ple: number of CGC levels (1: CGC)
  predictor_task_experts    ple: experts per task per level
  predictor_shared_experts  ple: shared experts per level

``head_params`` and ``head_flops`` count parameters and forward matmul FLOPs per example (2 per
multiply-add, as accounting.py), elementwise work (biases, SiLU, softmax) left out.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from onetrans_jax.errors import ConfigError
from onetrans_jax.models import partitioning
from onetrans_jax.models.heads import TaskTowers, tower_params
from onetrans_jax.models.partitioning import EMBED, EXPERTS, MLP, TASKS

PREDICTORS = ('towers', 'shared_bottom', 'mmoe', 'ple')


def _init(*batch_axes: int) -> nn.initializers.Initializer:
  """Fan-in truncated normal over the last two axes; leading (stack) axes are batch axes."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=-2,
                                          out_axis=-1, batch_axis=batch_axes)


def _gate(logits: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last (expert) axis, in float32 whatever the compute dtype."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


class PerTaskTowers(nn.Module):
  """``TaskTowers`` whose input is already per task: x [..., T, H] -> logits [..., T].

  Same parameter names and shapes as ``TaskTowers`` (w1 [T, H, h], b1, w2 [T, h, 1], b2).
  """
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    t, d, h = x.shape[-2], x.shape[-1], self.hidden
    w1, b1, w2, b2 = tower_params(self, _init(0), t, d, h)
    dt = self.dtype
    x = partitioning.whole_features(x)
    hid = nn.silu(jnp.einsum('...td,tdh->...th', x.astype(dt), w1.astype(dt)) + b1.astype(dt))
    out = jnp.einsum('...th,th->...t', hid, w2[..., 0].astype(dt)) + b2.astype(dt)
    return out.astype(jnp.float32)


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
    w = partitioning.param(self, 'bottom_w', _init(), (d, b), (EMBED, MLP))
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
    w = partitioning.param(self, 'expert_w', _init(0), (e, d, h), (EXPERTS, EMBED, MLP))
    b = partitioning.param(self, 'expert_b', nn.initializers.zeros, (e, h), (EXPERTS, MLP))
    wg = partitioning.param(self, 'gate_w', _init(0), (t, d, e), (TASKS, EMBED, EXPERTS))
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
    wt = partitioning.param(self, 'task_expert_w', _init(0, 1), (t, et, d, h),
                            (TASKS, EXPERTS, EMBED, MLP))
    bt = partitioning.param(self, 'task_expert_b', nn.initializers.zeros, (t, et, h),
                            (TASKS, EXPERTS, MLP))
    ws = partitioning.param(self, 'shared_expert_w', _init(0), (es, d, h), (EXPERTS, EMBED, MLP))
    bs = partitioning.param(self, 'shared_expert_b', nn.initializers.zeros, (es, h),
                            (EXPERTS, MLP))
    wgt = partitioning.param(self, 'task_gate_w', _init(0), (t, d, et + es),
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
      wgs = partitioning.param(self, 'shared_gate_w', _init(), (d, t * et + es),
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


# ---------------------------------------------------------------------------------- config
def predictor_defaults() -> ml_collections.ConfigDict:
  """The predictor fields of ``config.model`` with their [D] defaults (sized for CPU)."""
  c = ml_collections.ConfigDict()
  c.predictor = 'towers'          # or 'shared_bottom', 'mmoe', 'ple' (SPEC B.7 baselines)
  c.head_hidden = 0               # task tower hidden width; 0: d (the head's input width)
  c.predictor_bottom_hidden = 0   # shared_bottom: shared layer width; 0: d
  c.predictor_experts = 4         # mmoe: shared experts
  c.predictor_expert_hidden = 0   # mmoe, ple: expert output width; 0: d
  c.predictor_levels = 2          # ple: CGC levels (1: CGC); the shared gate runs on all but last
  c.predictor_task_experts = 1    # ple: experts per task per level
  c.predictor_shared_experts = 2  # ple: shared experts per level
  return c


_DEFAULTS = predictor_defaults()
PREDICTOR_FIELDS = tuple(f for f in _DEFAULTS if f != 'head_hidden')  # besides the tower width
_FIELDS = {
    'towers': ('head_hidden',),
    'shared_bottom': ('predictor_bottom_hidden', 'head_hidden'),
    'mmoe': ('predictor_experts', 'predictor_expert_hidden', 'head_hidden'),
    'ple': ('predictor_levels', 'predictor_task_experts', 'predictor_shared_experts',
            'predictor_expert_hidden', 'head_hidden'),
}
_COUNTS = ('predictor_experts', 'predictor_levels', 'predictor_task_experts',
           'predictor_shared_experts')   # >= 1; every other field is a width (>= 0, 0: d)


def _sizes(cfg: ml_collections.ConfigDict) -> tuple[str, dict[str, int]]:
  """(predictor, its validated fields); missing fields take ``predictor_defaults()``."""
  kind = cfg.get('predictor', 'towers')
  if kind not in PREDICTORS:
    raise ConfigError(f'config.model.predictor={kind!r}: choose one of {list(PREDICTORS)}')
  out = {}
  for field in _FIELDS[kind]:
    value = cfg.get(field, _DEFAULTS[field])
    low = 1 if field in _COUNTS else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      what = 'a positive integer' if low else 'a non-negative integer (0: the input width d)'
      raise ConfigError(f'config.model.{field} must be {what} for '
                        f'config.model.predictor={kind!r}, got {value!r}')
    out[field] = value
  return kind, out


def predictor_from_config(cfg: ml_collections.ConfigDict, num_tasks: int,
                          dtype: Any = jnp.float32, width: int | None = None) -> nn.Module:
  """The predictor named by ``cfg.predictor`` (default 'towers').

  ``width`` (default ``cfg.width``) is the input width d: only 'towers' needs it, to resolve
  ``head_hidden=0`` (the other heads resolve 0 from their input).
  """
  kind, s = _sizes(cfg)
  tower = s['head_hidden']
  if kind == 'towers':
    width = width if width is not None else cfg.get('width', None)
    if not tower and not width:
      raise ConfigError('config.model.head_hidden=0 means the input width, but neither '
                        'config.model.width nor a width argument gives it')
    return TaskTowers(num_tasks, tower or width, dtype)
  if kind == 'shared_bottom':
    return SharedBottom(num_tasks, s['predictor_bottom_hidden'], tower, dtype)
  if kind == 'mmoe':
    return MMoE(num_tasks, s['predictor_experts'], s['predictor_expert_hidden'], tower, dtype)
  return PLE(num_tasks, s['predictor_levels'], s['predictor_shared_experts'],
             s['predictor_task_experts'], s['predictor_expert_hidden'], tower, dtype)


# ---------------------------------------------------------------------------------- accounting
def _tower_params(t: int, d_in: int, h: int) -> int:
  return t * (d_in * h + h + h + 1)


def _tower_flops(t: int, d_in: int, h: int) -> float:
  return 2.0 * t * (d_in * h + h)


def head_params(cfg: ml_collections.ConfigDict, d: int, t: int) -> int:
  """Parameters of the configured predictor on inputs of width ``d`` with ``t`` tasks."""
  kind, s = _sizes(cfg)
  h_tower = s['head_hidden'] or d
  if kind == 'towers':
    return _tower_params(t, d, h_tower)
  if kind == 'shared_bottom':
    b = s['predictor_bottom_hidden'] or d
    return d * b + b + _tower_params(t, b, h_tower)
  h = s['predictor_expert_hidden'] or d
  if kind == 'mmoe':
    e = s['predictor_experts']
    return e * (d * h + h) + t * d * e + _tower_params(t, h, h_tower)
  et, es, levels = (s['predictor_task_experts'], s['predictor_shared_experts'],
                    s['predictor_levels'])
  total, d_in = 0, d
  for level in range(levels):
    total += (t * et + es) * (d_in * h + h) + t * d_in * (et + es)
    if level < levels - 1:
      total += d_in * (t * et + es)
    d_in = h
  return total + _tower_params(t, h, h_tower)


def head_flops(cfg: ml_collections.ConfigDict, d: int, t: int) -> float:
  """Forward matmul FLOPs per example (one x [d]) of the configured predictor.

  Experts, gate logits and towers are matmuls; the gate-weighted sums of expert outputs are
  contractions too (2 x gate entries x H each) and are counted.
  """
  kind, s = _sizes(cfg)
  h_tower = s['head_hidden'] or d
  if kind == 'towers':
    return _tower_flops(t, d, h_tower)
  if kind == 'shared_bottom':
    b = s['predictor_bottom_hidden'] or d
    return 2.0 * d * b + _tower_flops(t, b, h_tower)
  h = s['predictor_expert_hidden'] or d
  if kind == 'mmoe':
    e = s['predictor_experts']
    return 2.0 * (e * d * h + t * d * e + t * e * h) + _tower_flops(t, h, h_tower)
  et, es, levels = (s['predictor_task_experts'], s['predictor_shared_experts'],
                    s['predictor_levels'])
  total, d_in = 0.0, d
  for level in range(levels):
    total += 2.0 * ((t * et + es) * d_in * h          # experts
                    + t * d_in * (et + es)            # task gates
                    + t * (et + es) * h)              # task mixtures
    if level < levels - 1:
      total += 2.0 * (d_in + h) * (t * et + es)       # shared gate and shared mixture
    d_in = h
  return total + _tower_flops(t, h, h_tower)
