"""The multi-task predictor's config: defaults, validation, builder, parameter and FLOP counts.

The predictor is not a model of its own: OneTrans (and any encoder) puts it over its pooled
representation, and its fields live in that model's ``config.model`` (``defaults()`` below).
Counts are per example (one x [d]); FLOPs are matmul FLOPs (2 per multiply-add), elementwise work
(biases, SiLU, softmax) left out.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from onetrans_jax.models import fields
from onetrans_jax.models.multitask.predictors import MMoE, PLE, SharedBottom
from onetrans_jax.models.multitask.towers import TaskTowers

PREDICTORS = ('towers', 'shared_bottom', 'mmoe', 'ple')


def defaults() -> ml_collections.ConfigDict:
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


_DEFAULTS = defaults()
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
  """(predictor, its validated fields); missing fields take ``defaults()``. Fields the chosen
  predictor does not read are not checked (a bad PLE size does not stop an MMoE run)."""
  kind = fields.check('predictor', cfg.get('predictor', 'towers'), PREDICTORS)
  return kind, {f: fields.check(f, cfg.get(f, _DEFAULTS[f]), 'int' if f in _COUNTS else 'width',
                                f' (read by config.model.predictor={kind!r})')
                for f in _FIELDS[kind]}


def from_config(cfg: ml_collections.ConfigDict, num_tasks: int, dtype: Any = jnp.float32,
                width: int | None = None) -> nn.Module:
  """The predictor named by ``cfg.predictor`` (default 'towers').

  ``width`` (default ``cfg.width``) is the input width d: only 'towers' needs it, to resolve
  ``head_hidden=0`` (the other heads resolve 0 from their input).
  """
  kind, s = _sizes(cfg)
  tower = s['head_hidden']
  if kind == 'towers':
    width = width if width is not None else cfg.get('width', None)
    if not tower and not width:
      raise fields.ModelConfigError(
          'config.model.head_hidden=0 means the input width, but neither config.model.width '
          'nor a width argument gives it')
    return TaskTowers(num_tasks, tower or width, dtype)
  if kind == 'shared_bottom':
    return SharedBottom(num_tasks, s['predictor_bottom_hidden'], tower, dtype)
  if kind == 'mmoe':
    return MMoE(num_tasks, s['predictor_experts'], s['predictor_expert_hidden'], tower, dtype)
  return PLE(num_tasks, s['predictor_levels'], s['predictor_shared_experts'],
             s['predictor_task_experts'], s['predictor_expert_hidden'], tower, dtype)


# ---------------------------------------------------------------------------------- counts
def _tower_params(t: int, d_in: int, h: int) -> int:
  return t * (d_in * h + h + h + 1)


def _tower_flops(t: int, d_in: int, h: int) -> float:
  return 2.0 * t * (d_in * h + h)


def param_count(cfg: ml_collections.ConfigDict, d: int, t: int) -> int:
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


def forward_flops(cfg: ml_collections.ConfigDict, d: int, t: int) -> float:
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
