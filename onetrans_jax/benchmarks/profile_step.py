r"""Where a training step's time goes: one profiled step, grouped by model component.

  python -m onetrans_jax.benchmarks.profile_step                       # the CPU bench shape
  python -m onetrans_jax.benchmarks.profile_step --shape=onetrans_s    # on a GPU
  python -m onetrans_jax.benchmarks.profile_step --shape=onerank_mech  # a study's own run
  python -m onetrans_jax.benchmarks.profile_step --set=model.attention_impl=xla \
      --set=train.cpu_fused_dots=False
  python -m onetrans_jax.benchmarks.profile_step --shape=onerank_mech --component=other

Runs one step of ``onetrans_jax/benchmarks/suite.py``'s train section (the trainer's own step,
compiled as the trainer compiles it: ``suite.build_step``) under ``jax.profiler``, maps every
executed XLA op back to the model code through the HLO metadata (``op_name``: module path, forward
or ``transpose`` = backward) and prints the time per component (attention, FFN, projections, norms,
tokenizer, head, optimizer; for the baselines also interaction, sequence, embeddings; 'other':
the loss, layout copies and ops XLA left unnamed; benchmarks/components.py) and the
slowest ops; ``--component=NAME`` adds that component's time by source path.
``--set=section.field=value`` overrides a field of the shape's config. Profile first, then
optimize.
"""

from __future__ import annotations

import ast
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from absl import app, flags
import jax

from onetrans_jax import host_memory
from onetrans_jax.benchmarks import suite, workloads
from onetrans_jax.benchmarks.components import component

_CONTROL = ('while', 'call', 'conditional')

_SHAPE = flags.DEFINE_string('shape', 'cpu', 'A onetrans_jax/benchmarks/suite.py shape, or a '
                             'study workload of benchmarks/workloads.py (e.g. onetrans_s_mech).')
_TOP = flags.DEFINE_integer('top', 12, 'Slowest individual ops listed.')
_SET = flags.DEFINE_multi_string('set', [], 'section.field=value: override a config field.')
_COMPONENT = flags.DEFINE_string(
    'component', None, "Also list one component's time by source path (e.g. 'other': the loss, "
    'layout copies and ops XLA made without a source path, shown as "(no source path)").')


def hlo_op_names(hlo_text: str) -> tuple[dict[str, str], set[str]]:
  """instruction name -> op_name metadata, and the control-flow instructions (their time is
  their body's, which is listed op by op)."""
  names, control = {}, set()
  for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?\b(\w+)\(([^\n]*)$', hlo_text,
                       re.MULTILINE):
    inst, opcode, rest = m.group(1), m.group(2), m.group(3)
    meta = re.search(r'op_name="([^"]*)"', rest)
    names[inst] = meta.group(1) if meta else ''
    if opcode in _CONTROL:
      control.add(inst)
  return names, control


def profile(config) -> dict:
  step = suite.build_step(config)
  compiled, state, batch = step.compiled, step.state, step.batch
  names, control = hlo_op_names(compiled.as_text())
  for _ in range(2):  # warm
    state, _ = jax.block_until_ready(compiled(state, batch))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      t0 = time.perf_counter()
      state, _ = jax.block_until_ready(compiled(state, batch))
      wall = time.perf_counter() - t0
    trace = json.load(gzip.open(glob.glob(os.path.join(d, '**', '*.trace.json.gz'),
                                          recursive=True)[0]))
  per_op = collections.Counter()
  for e in trace['traceEvents']:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    inst = (e.get('args') or {}).get('hlo_op', e['name'])
    if inst in names and inst not in control:
      per_op[inst] += e['dur'] / 1e6
  groups = collections.Counter()
  for inst, sec in per_op.items():
    op_name = names[inst]
    direction = ('backward' if 'transpose(' in op_name else
                 'forward' if 'jvp(' in op_name or not op_name else 'update')
    groups[(component(op_name), direction)] += sec
  return {'wall': wall, 'per_op': per_op, 'groups': groups, 'names': names}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  config = (workloads.workload_config(_SHAPE.value) if _SHAPE.value in workloads.WORKLOADS
            else suite.shape_config(_SHAPE.value))
  for item in _SET.value:
    path, sep, raw = item.partition('=')
    section, _, field = path.partition('.')
    if not sep or section not in config or field not in config[section]:
      raise app.UsageError(f'--set={item!r}: expected section.field=value with a field of the '
                           f"'{_SHAPE.value}' config (e.g. model.attention_impl=xla)")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    config[section][field] = value
  res = profile(config)
  total = sum(res['groups'].values())
  print(f"{jax.devices()[0].device_kind}: one step of '{_SHAPE.value}' took "
        f"{res['wall'] * 1e3:.1f} ms; XLA ops account for {total * 1e3:.1f} ms (on several "
        'threads, ops may overlap)\n')
  print(f"{'component':<12} {'forward ms':>11} {'backward ms':>12} {'update ms':>10} {'share':>7}")
  phases = ('forward', 'backward', 'update')
  spent = lambda c: sum(res['groups'][(c, p)] for p in phases)
  for c in sorted({c for c, _ in res['groups']}, key=lambda c: -spent(c)):
    f, b, u = (res['groups'][(c, p)] for p in phases)
    print(f'{c:<12} {f * 1e3:>11.1f} {b * 1e3:>12.1f} {u * 1e3:>10.1f} '
          f'{100 * spent(c) / total:>6.1f}%')
  print(f'\nslowest {_TOP.value} ops:')
  for inst, sec in res['per_op'].most_common(_TOP.value):
    print(f'{sec * 1e3:9.1f} ms  {inst:<28} {res["names"][inst][-110:]}')
  if _COMPONENT.value:
    paths = by_source_path(res, _COMPONENT.value)
    print(f"\n'{_COMPONENT.value}' by source path ({sum(paths.values()) * 1e3:.1f} ms, the "
          f'{_TOP.value} largest):')
    for path, sec in paths.most_common(_TOP.value):
      print(f'{sec * 1e3:9.2f} ms  {path[-110:]}')


def by_source_path(res: dict, name: str) -> collections.Counter:
  """One component's op time summed by source path, the jit / jvp / transpose wrappers dropped
  (a forward op and its backward share a path)."""
  out: collections.Counter = collections.Counter()
  for inst, sec in res['per_op'].items():
    op_name = res['names'][inst]
    if component(op_name) == name:
      path = '/'.join(p for p in op_name.split('/')
                      if not p.startswith(('jit(', 'jvp(', 'transpose(')))
      out[path or '(no source path)'] += sec
  return out


if __name__ == '__main__':
  host_memory.enable()   # as the training programs run (host_memory.py)
  app.run(main)
