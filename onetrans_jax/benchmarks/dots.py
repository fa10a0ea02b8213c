"""A training step's own matmuls, each timed alone: how fast the step could be at its shapes.

MFU compares a step with one large matmul (the suite's ceiling). A step made of small or thin dots
cannot reach that rate even with nothing else in it: a [48 x 32] x [32 x 168] attention block
contracts over 32 and runs far below a 2048-cube matmul. This module reads every ``dot_general``
of the trainer's step from its jaxpr (forward, backward and any in the update; one inside a
``scan`` counts ``length`` times), times each distinct one alone (a jitted ``lax.dot_general`` on
arrays of its shapes, median of ``repeats``) and adds them up:

- ``dot_flops``: the FLOPs the step's dots really compute (a cross-check of the analytic count,
  which counts attention over full rectangles where the blocked path skips masked blocks);
- ``dots_seconds``: the step's dots back to back, each alone; ``dots_flops_per_s`` over the
  ceiling is the MFU the step would have if everything but its dots cost nothing;
- per model component (``components.component`` of the dot's source path) and the slowest
  distinct dots.

Alone is not a strict bound: inside the step XLA may fuse a dot with its neighbours (the CPU's
YNN dot fusions), and each alone-call pays a dispatch (``dispatch_seconds``, measured on an empty
program, is reported beside the sum, not subtracted).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp
import ml_collections
import numpy as np

from onetrans_jax.benchmarks import steps
from onetrans_jax.reporting import or_dash as fmt
from onetrans_jax.benchmarks.components import component


@dataclasses.dataclass(frozen=True)
class Dot:
  """One distinct dot of a step and how many times the step runs it."""
  lhs: tuple[tuple[int, ...], str]   # (shape, dtype)
  rhs: tuple[tuple[int, ...], str]
  dimension_numbers: Any             # lax.dot_general's ((contract), (batch)) pairs
  preferred: str | None              # preferred_element_type, None: the operands'
  component: str
  count: int

  @property
  def flops(self) -> float:
    """2 x batch x M x N x K of one call."""
    (ca, cb), (ba, bb) = self.dimension_numbers
    a, b = self.lhs[0], self.rhs[0]
    k = np.prod([a[i] for i in ca], dtype=np.float64)
    batch = np.prod([a[i] for i in ba], dtype=np.float64)
    m = np.prod([a[i] for i in range(len(a)) if i not in ca and i not in ba], dtype=np.float64)
    n = np.prod([b[i] for i in range(len(b)) if i not in cb and i not in bb], dtype=np.float64)
    return float(2.0 * batch * m * n * k)


def _name_stack(eqn: Any) -> str:
  return str(getattr(eqn.source_info, 'name_stack', ''))


def jaxpr_dots(closed: Any, component: Any) -> list[Dot]:
  """Every dot_general of a closed jaxpr, sub-jaxprs included (a scan's body ``length`` times;
  a while loop's body once, since its trip count is not in the jaxpr), grouped into distinct
  (shapes, dimension numbers, component) with their counts."""
  counts: collections.Counter = collections.Counter()

  def walk(jaxpr: Any, times: int, outer: str) -> None:
    for eqn in jaxpr.eqns:
      path = '/'.join(p for p in (outer, _name_stack(eqn)) if p)
      if eqn.primitive.name == 'dot_general':
        a, b = (v.aval for v in eqn.invars)
        pref = eqn.params.get('preferred_element_type')
        counts[((tuple(a.shape), str(a.dtype)), (tuple(b.shape), str(b.dtype)),
                eqn.params['dimension_numbers'], None if pref is None else str(pref),
                component(path))] += times
      inner = times * (eqn.params['length'] if eqn.primitive.name == 'scan' else 1)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            walk(sub.jaxpr, inner, path)
          elif isinstance(sub, jax_core.Jaxpr):
            walk(sub, inner, path)

  walk(closed.jaxpr, 1, '')
  return [Dot(lhs, rhs, dn, pref, comp, n) for (lhs, rhs, dn, pref, comp), n in counts.items()]


def step_dots(config: ml_collections.ConfigDict) -> tuple[list[Dot], Any]:
  """The dots of ``config``'s training step (steps.build_step's step, traced, not compiled)
  and the step's parts (steps.Parts: schema, model, ...)."""
  parts = steps.step_parts(config)
  return jaxpr_dots(steps.trace_step(parts), component), parts


def time_dot(dot: Dot, repeats: int) -> float:
  """Median seconds of one call of ``dot`` alone (jitted, on arrays of its shapes)."""
  fn = jax.jit(lambda a, b: lax.dot_general(a, b, dot.dimension_numbers,
                                            preferred_element_type=dot.preferred))
  return steps.median_time(fn, jnp.ones(*dot.lhs), jnp.ones(*dot.rhs), repeats=repeats,
                           warmup=2)


def dispatch_seconds(repeats: int) -> float:
  """Median seconds of an empty jitted call: what each alone-call pays besides its dot."""
  return steps.median_time(jax.jit(lambda a: a + 1), jnp.ones((), jnp.float32),
                           repeats=repeats, warmup=2)


def dots_row(key: str, config: ml_collections.ConfigDict, ceiling_flops: float | None,
             repeats: int, analytic_flops: Any, top: int = 5) -> dict[str, Any]:
  """The suite's 'dots' row of one shape or workload (see the module docstring).
  ``analytic_flops(config, schema, model)``: the step's analytic count, for the cross-check."""
  dots, parts = step_dots(config)
  dispatch = dispatch_seconds(repeats)   # first: it also warms the runtime's threads
  timed = [(d, time_dot(d, repeats)) for d in dots]
  total_s = sum(d.count * s for d, s in timed)
  total_f = sum(d.count * d.flops for d in dots)
  by_comp: dict[str, dict[str, float]] = collections.defaultdict(
      lambda: {'seconds': 0.0, 'flops': 0.0, 'calls': 0})
  for d, s in timed:
    c = by_comp[d.component]
    c['seconds'] += d.count * s
    c['flops'] += d.count * d.flops
    c['calls'] += d.count
  slowest = sorted(timed, key=lambda t: -t[0].count * t[1])[:top]
  row = {
      'name': key, 'calls': sum(d.count for d in dots), 'distinct': len(dots),
      'dot_flops': total_f,
      'analytic_flops': float(analytic_flops(config, parts.schema, parts.model)),
      'dots_seconds': total_s, 'dots_flops_per_s': total_f / total_s,
      'dispatch_seconds': dispatch,
      'components': {k: dict(v) for k, v in sorted(by_comp.items(),
                                                   key=lambda kv: -kv[1]['seconds'])},
      'slowest': [{'lhs': list(d.lhs[0]), 'rhs': list(d.rhs[0]), 'dtype': d.lhs[1],
                   'dimension_numbers': [[list(x) for x in pair] for pair in
                                         d.dimension_numbers],
                   'component': d.component, 'count': d.count, 'seconds': s,
                   'flops_per_s': d.flops / s} for d, s in slowest],
  }
  row['dots_mfu'] = row['dots_flops_per_s'] / ceiling_flops if ceiling_flops else None
  return row


def table(rows: list[dict[str, Any]]) -> list[str]:
  """The suite's printed 'dots' table and, per row, its slowest components."""
  lines = [f"{'step':<27} {'dots':>5} {'GFLOP':>8} {'/analytic':>9} {'alone ms':>9} "
           f"{'GFLOP/s':>8} {'MFU':>6} {'step ms':>8} {'alone/step':>10}"]
  for r in rows:
    mfu = None if r['dots_mfu'] is None else 100 * r['dots_mfu']
    share = r['dots_seconds'] / r['step_seconds'] if r.get('step_seconds') else None
    step_ms = None if r.get('step_seconds') is None else r['step_seconds'] * 1e3
    lines.append(f"{r['name']:<27} {r['calls']:>5} {r['dot_flops'] / 1e9:>8.2f} "
                 f"{r['dot_flops'] / r['analytic_flops']:>9.3f} "
                 f"{r['dots_seconds'] * 1e3:>9.1f} {r['dots_flops_per_s'] / 1e9:>8.1f} "
                 f"{fmt(mfu, '5.1f'):>5}% "
                 f"{fmt(step_ms, '8.1f'):>8} {fmt(share, '9.2f'):>9}x")
  for r in rows:
    parts = [f"{k} {v['seconds'] * 1e3:.1f} ms at {v['flops'] / v['seconds'] / 1e9:.0f} GFLOP/s"
             for k, v in list(r['components'].items())[:4] if v['seconds'] > 0]
    lines.append(f"  {r['name']}: " + '; '.join(parts))
  return lines
