r"""Training speed against the machine's ceiling: one command, a printed table, a JSON record.

  python -m onetrans_jax.benchmarks.suite           # CPU: the 'cpu' bench shape; GPU: S and L
  python -m onetrans_jax.benchmarks.suite --shapes=onetrans_s --json=/tmp/s.json
  python -m onetrans_jax.benchmarks.suite --shapes=cpu --repeats=3 --sections=ceiling,train
  onetrans benchmark --shapes=cpu                   # installed: the same program

Sections (``--sections``):
  ceiling    the machine's own ceiling, measured in this run: a large matmul (fp32 on CPU, bf16 and
             fp32 on GPU) and a large copy (read + write bandwidth).
  attention  each layer-0 attention implementation of a shape (one token list per request),
             forward + backward, alone.
  train      one full training step per (shape, variant): the trainer's own step function
             (train.make_train_step: loss, gradients, the optimizer update), jitted as the trainer
             jits it (train.jit_train_step: state sharded and donated, its compiler options) on a
             one-device mesh. Step time (median of ``--repeats`` after a warm-up), examples/s,
             XLA's peak-memory estimate of the compiled step (arguments + outputs + temporaries -
             donated aliases) and the achieved FLOP/s from the analytic matmul count of the layout
             that ran (accounting.py: 3 x forward, attention over full rectangles, so skipping
             masked blocks counts as speed), over the ceiling (MFU).
  savings    the pyramid and request-level sharing (SPEC A.5, A.6): time and memory ratios from
             the train section beside the analytic FLOP ratio and the paper's reported savings
             (SPEC A.10, OneTrans_S, each optimization alone).
  workloads  the studies' own runs (benchmarks/workloads.py: the mechanism-world OneTrans_S,
             DCNv2 + DIN, RankMixer + Transformer, OneRank and OneTrans + PLE rows, and
             onetrans_s.py:small): compile time, the step alone, ``--workload_steps`` steps end to
             end through the trainer's iterator (examples/s with data loading), the iterator
             alone, and MFU. ``--workloads`` picks some.
  dots       each shape's default step and each workload's, as its matmuls alone
             (benchmarks/dots.py): every dot_general of the traced step timed alone and summed,
             the FLOPs they really compute beside the analytic count, and the MFU the step would
             have if nothing but its dots cost time; beside the step time of the same run.
``--variants`` keeps some rows of the train section (a name, or what follows 'attention=': e.g.
``--variants=default,cudnn``). The JSON is rewritten after every row, so a run stopped by a time
limit keeps what it measured ('complete': false until the end).
Shapes: 'cpu' (the fixed CPU bench shape: 256 token lists = 256 requests x 1 candidate, L_S=256,
L_NS=8, d=128, 4 heads, 4 layers, pyramid to 8 in multiples of 8, FFN x4, fp32);
'onetrans_s' / 'onetrans_l' (onetrans_jax/experiments/onetrans_{s,l}.py paper shapes, bf16, 128
requests x 16 candidates = the paper's 2048 per GPU); 'tiny' (seconds; for tests). Compare variants
by the ratios of one run: absolute times move with the machine's load.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from onetrans_jax import host_memory, reporting, xla_options
from onetrans_jax.benchmarks import dots, steps, workloads
from onetrans_jax.data import pipeline
from onetrans_jax.experiments import common, onetrans_l, onetrans_s
from onetrans_jax.models.layers.attention import resolve_implementation
from onetrans_jax.models.layers.attention import tail_attention
from onetrans_jax.models.onetrans import config as onetrans_config

SECTIONS = ('ceiling', 'attention', 'train', 'savings', 'workloads', 'dots')
# SPEC A.10: each optimization alone against unoptimized OneTrans_S (train time, train memory),
# and the FLOP ratio of the pyramid from the ablation table (2.64 vs 8.08 TFLOPs).
PAPER_SAVINGS = {'pyramid': {'time': -0.287, 'memory': -0.426, 'flops': 2.64 / 8.08 - 1},
                 'request_level': {'time': -0.302, 'memory': -0.584, 'flops': None}}

_SHAPES = flags.DEFINE_list('shapes', None, "Shapes to run (default: 'cpu' on a CPU backend, "
                            "'onetrans_s,onetrans_l' on an accelerator).")
_SECTIONS = flags.DEFINE_list('sections', list(SECTIONS), f'Any of {SECTIONS}.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per cell after one warm-up (median).')
_JSON = flags.DEFINE_string('json', 'benchmark_results.json', 'Where the results are written.')
_BATCH = flags.DEFINE_integer('requests', None, 'Override the requests per step of every shape.')
_VARIANTS = flags.DEFINE_list('variants', None, "Train-section rows to run (default: all), by "
                              "name or by the part after 'attention=' (e.g. default,cudnn).")
_WORKLOADS = flags.DEFINE_list('workloads', None, 'Study workloads to time (default: all of '
                               'benchmarks/workloads.WORKLOADS).')
_WORKLOAD_STEPS = flags.DEFINE_integer('workload_steps', 20, 'End-to-end steps per workload.')


# ---------------------------------------------------------------------------------- shapes
def shape_config(name: str) -> ml_collections.ConfigDict:
  """The experiment config of a bench shape (every candidate slot real, so examples = R x C)."""
  if name == 'cpu':
    model = onetrans_config.defaults(width=128, num_heads=4, num_layers=4, num_ns_tokens=8,
                                     embed_dim=16, ffn_mult=4, pyramid_multiple=8)
    data = common.synthetic_data(click_len=192, cart_len=40, order_len=24, num_candidates=1,
                                 min_candidates=1, batch_size=256)
    config = common.base_config(model, data)
  elif name == 'tiny':
    model = onetrans_config.defaults(width=32, num_heads=2, num_layers=2, num_ns_tokens=4,
                                     embed_dim=8, pyramid_multiple=8)
    data = common.synthetic_data(click_len=20, cart_len=8, order_len=4, num_candidates=2,
                                 min_candidates=2, batch_size=4, num_users=50, num_items=80)
    config = common.base_config(model, data)
  elif name in ('onetrans_s', 'onetrans_l'):
    config = (onetrans_s if name == 'onetrans_s' else onetrans_l).get_config()
    config.data.min_candidates = config.data.num_candidates
  else:
    raise app.UsageError(f'--shapes: unknown shape {name!r}; choose from cpu, onetrans_s, '
                         'onetrans_l, tiny')
  if _BATCH.value is not None:
    config.data.batch_size = _BATCH.value
  return config


def variants(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) rows of the train section: the default, every other attention path this
  backend runs, no pyramid, and request-level sharing on / off over the same examples grouped
  as requests of 16 candidates (with 1 candidate there is nothing to share)."""
  out = [('default', config)]
  default_impl = resolve_implementation(config.model.attention_impl)
  others = ['xla', 'blocked'] + (['cudnn'] if jax.default_backend() == 'gpu' else [])
  for impl in others:
    if impl != default_impl:
      if impl == 'cudnn' and config.model.dtype not in ('bfloat16', 'float16'):
        continue
      out.append((f'attention={impl}', _with(config, model={'attention_impl': impl})))
  if xla_options.compiler_options(config):
    out.append(('unfused dots', _with(config, train={'cpu_fused_dots': False})))
    # jax's own defaults: XLA's attention and XLA's default CPU dot emission (the 'before').
    out.append(('xla attn, unfused dots',
                _with(config, model={'attention_impl': 'xla'}, train={'cpu_fused_dots': False})))
  if jax.default_backend() == 'cpu':   # 'auto' runs token-first NS tokens here: the old layout
    out.append(('ns token-last', _with(config, model={'ns_layout': 'token_last'})))
  out.append(('no pyramid', _with(config, model={'pyramid': False})))
  r, c = config.data.batch_size, config.data.num_candidates
  grouped = config
  if c == 1 and r % 16 == 0:
    grouped = _with(config, data={'batch_size': r // 16, 'num_candidates': 16,
                                  'min_candidates': 16})
  if grouped.data.num_candidates > 1:
    if grouped is not config:
      out.append((f'{r // 16}x16 request-level', grouped))
    out.append((f'{grouped.data.batch_size}x{grouped.data.num_candidates} per candidate',
                _with(grouped, model={'request_level': False})))
  return out


def select_variants(rows: list[tuple[str, ml_collections.ConfigDict]], wanted: Sequence[str] | None,
                    shape: str) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The rows named in ``wanted`` (None: all): by name, or by the part after 'attention='; a name
  that matches no row of the shape is an error listing the rows it has."""
  if not wanted:
    return rows
  key = lambda name: {name, name.split('=', 1)[1]} if name.startswith('attention=') else {name}
  unknown = [w for w in wanted if not any(w in key(n) for n, _ in rows)]
  if unknown:
    raise app.UsageError(f'--variants: {unknown} match no train row of shape {shape!r} on this '
                         f'backend; its rows: {[n for n, _ in rows]}')
  return [(n, c) for n, c in rows if key(n) & set(wanted)]


def _with(config: ml_collections.ConfigDict, **sections: dict[str, Any]) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  for section, fields in sections.items():
    for k, v in fields.items():
      c[section][k] = v
  return c


step_flops = steps.onetrans_step_flops


# ---------------------------------------------------------------------------------- timing
def median_time(fn: Callable[..., Any], *args: Any, repeats: int | None = None,
                feed: Callable[[Any], Any] | None = None) -> float:
  """``steps.median_time`` with ``--repeats`` calls unless told otherwise."""
  return steps.median_time(fn, *args, repeats=repeats or _REPEATS.value, feed=feed)


def peak_bytes(compiled: Any) -> int:
  """XLA's memory estimate of a compiled program: what it holds at once, donations counted."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
             m.alias_size_in_bytes)


def ceiling(dtype_names: Sequence[str]) -> dict[str, float]:
  """Measured matmul FLOP/s per dtype and copy bandwidth (bytes/s) of this machine."""
  gpu = jax.default_backend() != 'cpu'
  n = 8192 if gpu else 2048
  out = {}
  for name in dtype_names:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), name)
    t = median_time(jax.jit(lambda x: x @ x), a)
    out[f'matmul_{name}'] = 2.0 * n ** 3 / t
  x = jnp.ones(((1 << 30) if gpu else (1 << 26),), jnp.float32)   # 4 GiB / 256 MiB
  nbytes = x.nbytes
  # Donated: the output reuses the input's buffer, so no page of it is freshly mapped per call.
  t = median_time(jax.jit(lambda x: x + 1.0, donate_argnums=0), x, feed=lambda y: y)
  out['copy_bytes_per_s'] = 2.0 * nbytes / t
  return out


# ---------------------------------------------------------------------------------- sections
def _guarded(failed: list[dict[str, str]], shape: str, what: str, fn: Callable[..., Any],
             *args: Any) -> Any:
  """``fn(*args)``, or None with the error recorded: one variant that does not fit the device
  (out of memory) or that a backend refuses (a cuDNN shape) must not lose the whole run."""
  try:
    return fn(*args)
  except Exception as e:  # noqa: BLE001  (XlaRuntimeError, ValueError from a backend, ...)
    message = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    failed.append({'shape': shape, 'what': what, 'error': message})
    print(f'  {shape} / {what}: FAILED: {message}', flush=True)
    return None


def attention_rows(name: str, config: ml_collections.ConfigDict, schema,
                   failed: list[dict[str, str]]) -> list[dict[str, Any]]:
  """Layer-0 attention of a shape alone, forward + backward, per implementation: one token list
  of L_S + L_NS tokens per request (what the request-level layout's S side runs; with one
  candidate per request, the whole model's)."""
  l_s, l_ns, _ = onetrans_config.layout(config.model, schema)
  m = config.model
  b = config.data.batch_size
  length, heads, dh = l_s + l_ns, m.num_heads, m.width // m.num_heads
  dtype = jnp.dtype(m.dtype)
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(b, length, heads, dh)), dtype) for _ in range(3))
  valid = jnp.asarray(np.arange(length)[None, :] >= rng.integers(0, l_s // 2, size=(b, 1)))
  names = ['xla', 'blocked']
  if jax.default_backend() == 'gpu' and dtype in (jnp.bfloat16, jnp.float16):
    names.append('cudnn')
  # Through the models' own dispatcher: the same mask and code path as a OneTrans block.
  impls = {impl: functools.partial(tail_attention, key_valid=valid, causal=True,
                                   implementation=impl) for impl in names}
  flops = 3.0 * 4 * b * heads * length * length * dh   # fwd + bwd, the full rectangle
  options = xla_options.compiler_options(config)
  runs = [(impl, f, options) for impl, f in impls.items()]
  if options:  # XLA's attention is also timed under XLA's default CPU dot emission
    runs.insert(1, ('xla, unfused dots', impls['xla'], None))
  rows = []
  for impl, f, opts in runs:
    step = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v).astype(jnp.float32)),
                            argnums=(0, 1, 2)), compiler_options=opts)
    t = _guarded(failed, name, f'attention {impl}', median_time, step, q, k, v)
    if t is None:
      continue
    print(f'  {name} / attention {impl}: {t * 1e3:.1f} ms', flush=True)
    rows.append({'shape': name, 'implementation': impl, 'batch': b, 'length': length,
                 'heads': heads, 'head_dim': dh, 'seconds': t, 'flops': flops,
                 'flops_per_s': flops / t})
  base = rows[0]['seconds'] if rows and rows[0]['implementation'] == 'xla' else None
  for row in rows:
    row['speedup_vs_xla'] = base / row['seconds'] if base else None
  return rows


build_step = steps.build_step   # profile_step.py's name for it


def train_row(name: str, variant: str, config: ml_collections.ConfigDict,
              ceiling_flops: float | None) -> dict[str, Any]:
  """The trainer's training step (donated state) of a config: time, memory, achieved FLOP/s."""
  step = build_step(config)
  schema, model = step.schema, step.model
  memory = peak_bytes(step.compiled)
  seconds = median_time(step.compiled, step.state, step.batch, feed=lambda out: out[0])
  flops = step_flops(config, schema, model.request_level)
  examples = config.data.batch_size * config.data.num_candidates
  row = {'shape': name, 'variant': variant, 'requests': config.data.batch_size,
         'candidates': config.data.num_candidates, 'examples': examples,
         'dtype': config.model.dtype,
         'attention_impl': resolve_implementation(config.model.attention_impl),
         'schedule': list(model.schedule),
         'seconds': seconds, 'compile_seconds': step.compile_seconds,
         'examples_per_s': examples / seconds,
         'peak_bytes': memory, 'flops': flops, 'flops_per_s': flops / seconds}
  row['mfu'] = row['flops_per_s'] / ceiling_flops if ceiling_flops else None
  return row


def savings_rows(train: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Pyramid and request-level sharing: measured ratios beside analytic and paper ones."""
  by = {(r['shape'], r['variant']): r for r in train}
  out = []
  for shape in dict.fromkeys(r['shape'] for r in train):
    pairs = [('pyramid', by.get((shape, 'default')), by.get((shape, 'no pyramid')))]
    shared = [r for r in train if r['shape'] == shape and r['variant'].endswith('request-level')]
    naive = [r for r in train if r['shape'] == shape and r['variant'].endswith('per candidate')]
    with_sharing = shared[0] if shared else by.get((shape, 'default'))
    if naive:
      pairs.append(('request_level', with_sharing, naive[0]))
    for what, on, off in pairs:
      if on is None or off is None:
        continue
      paper = PAPER_SAVINGS[what]
      out.append({'shape': shape, 'optimization': what,
                  'time_ratio': on['seconds'] / off['seconds'],
                  'memory_ratio': on['peak_bytes'] / off['peak_bytes'],
                  'flops_ratio': on['flops'] / off['flops'],
                  'paper_time_ratio': 1 + paper['time'], 'paper_memory_ratio': 1 + paper['memory'],
                  'paper_flops_ratio': None if paper['flops'] is None else 1 + paper['flops']})
  return out


# ---------------------------------------------------------------------------------- printing
_fmt = reporting.or_dash


def tables(result: dict[str, Any]) -> str:
  lines = [f"device: {result['machine']['device']} ({result['machine']['backend']}), "
           f"jax {result['machine']['jax']}, {result['machine']['cpu_count']} CPU cores",
           f"command: {result['command']}", '']
  ceil = result.get('ceiling')
  if ceil:
    parts = [f"{k[7:]} matmul {v / 1e9:.1f} GFLOP/s" for k, v in ceil.items()
             if k.startswith('matmul_')]
    lines += ['ceiling: ' + ', '.join(parts) +
              f", copy {ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s", '']
  if result.get('attention'):
    lines.append(f"{'shape':<11} {'attention (layer 0, fwd+bwd)':<38} {'ms':>9} {'GFLOP/s':>9} "
                 f"{'vs xla':>7}")
    for r in result['attention']:
      desc = f"{r['implementation']} B{r['batch']} L{r['length']} H{r['heads']}x{r['head_dim']}"
      lines.append(f"{r['shape']:<11} {desc:<38} {r['seconds'] * 1e3:>9.1f} "
                   f"{r['flops_per_s'] / 1e9:>9.1f} {_fmt(r['speedup_vs_xla'], '6.2f'):>6}x")
    lines.append('')
  if result.get('train'):
    lines.append(f"{'shape':<11} {'train step':<26} {'ms':>9} {'ex/s':>9} {'peak GB':>8} "
                 f"{'GFLOP':>8} {'GFLOP/s':>9} {'MFU':>6} {'time/def':>8} {'compile s':>9}")
    defaults = {r['shape']: r for r in result['train'] if r['variant'] == 'default'}
    for r in result['train']:
      rel = r['seconds'] / defaults[r['shape']]['seconds'] if r['shape'] in defaults else None
      lines.append(f"{r['shape']:<11} {r['variant']:<26} {r['seconds'] * 1e3:>9.1f} "
                   f"{r['examples_per_s']:>9.0f} {r['peak_bytes'] / 2**30:>8.2f} "
                   f"{r['flops'] / 1e9:>8.1f} {r['flops_per_s'] / 1e9:>9.1f} "
                   f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '5.1f'):>5}% "
                   f"{_fmt(rel, '7.2f'):>7}x {r['compile_seconds']:>9.1f}")
    lines.append('')
  if result.get('workloads'):
    lines += workloads.table(result['workloads']) + ['']
  if result.get('dots'):
    lines += dots.table(result['dots']) + ['']
  for f in result.get('failed', []):
    lines.append(f"FAILED {f['shape']} / {f['what']}: {f['error']}")
  if result.get('failed'):
    lines.append('')
  if result.get('savings'):
    lines.append(f"{'shape':<11} {'optimization':<14} {'time':>7} {'memory':>7} {'FLOPs':>7} "
                 f"{'paper time':>10} {'paper mem':>10} {'paper FLOPs':>11}   (ratios on/off)")
    for r in result['savings']:
      lines.append(f"{r['shape']:<11} {r['optimization']:<14} {r['time_ratio']:>7.3f} "
                   f"{r['memory_ratio']:>7.3f} {r['flops_ratio']:>7.3f} "
                   f"{r['paper_time_ratio']:>10.3f} {r['paper_memory_ratio']:>10.3f} "
                   f"{_fmt(r['paper_flops_ratio'], '11.3f'):>11}")
  return '\n'.join(lines)


def cpu_model() -> str:
  """The CPU's marketing name (/proc/cpuinfo on Linux; else the platform's processor string):
  a ceiling is only comparable between runs on the same kind of CPU."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
  dev = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device': getattr(dev, 'device_kind', str(dev)),
          'device_count': jax.device_count(), 'jax': jax.__version__,
          'cpu_count': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
          'cpu_model': cpu_model(), 'host_memory': host_memory.status()}


def write_json(result: dict[str, Any], path: str | None) -> None:
  """Atomic rewrite of the JSON record (after every row: a time limit loses nothing measured)."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(path + '.tmp', path)


def _keep(result: dict[str, Any], section: str, row: dict[str, Any] | None,
          json_path: str | None, describe: Callable[[dict[str, Any]], str]) -> None:
  """A measured row (None: it failed, ``_guarded`` recorded why) into ``result[section]``, its
  progress line with the compile time, and the JSON rewritten either way."""
  if row is not None:
    result[section].append(row)
    print(f"  {describe(row)}, compiled in {row['compile_seconds']:.1f} s", flush=True)
  write_json(result, json_path)


def run(shapes: Sequence[str], sections: Sequence[str], json_path: str | None = None,
        wanted_variants: Sequence[str] | None = None,
        wanted_workloads: Sequence[str] | None = None, workload_steps: int = 20
        ) -> dict[str, Any]:
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f'--sections: unknown {sorted(unknown)}; choose from {SECTIONS}')
  if workload_steps < 1:
    raise app.UsageError(f'--workload_steps must be >= 1, got {workload_steps}')
  for key in wanted_workloads or ():
    if key not in workloads.WORKLOADS and key != workloads.TEST_WORKLOAD:
      raise app.UsageError(f'--workloads: unknown {key!r}; choose from '
                           f'{", ".join(workloads.WORKLOADS)}')
  configs = {name: shape_config(name) for name in shapes}
  # Every selection is checked before the first (slow) measurement.
  runs = {name: select_variants(variants(config), wanted_variants, name)
          for name, config in configs.items()}
  result: dict[str, Any] = {'machine': machine(), 'command': ' '.join(sys.argv),
                            'repeats': _REPEATS.value, 'complete': False}
  dtypes = sorted({c.model.dtype for c in configs.values()} | {'float32'})
  ceil = ceiling(dtypes) if 'ceiling' in sections else {}
  result.update(ceiling=ceil, attention=[], train=[], workloads=[], dots=[], failed=[])
  write_json(result, json_path)
  for name, config in configs.items():
    if 'attention' in sections:
      schema = pipeline.build_dataset(config.data).schema
      result['attention'] += attention_rows(name, config, schema, result['failed'])
      write_json(result, json_path)
    if 'train' in sections or 'savings' in sections:
      peak = ceil.get(f'matmul_{config.model.dtype}')
      for variant, cfg in runs[name]:
        row = _guarded(result['failed'], name, variant, train_row, name, variant, cfg, peak)
        _keep(result, 'train', row, json_path, lambda r: (
            f"{name} / {variant}: {r['seconds'] * 1e3:.1f} ms, "
            f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s"))
  result['savings'] = savings_rows(result['train']) if 'savings' in sections else []
  if 'workloads' in sections:
    for key in wanted_workloads or list(workloads.WORKLOADS):
      cfg = (shape_config('tiny') if key == workloads.TEST_WORKLOAD else
             workloads.workload_config(key))
      peak = ceil.get(f"matmul_{cfg.model.get('dtype', 'float32')}")
      row = _guarded(result['failed'], key, 'workload', workloads.workload_row, key, cfg, peak,
                     workload_steps, _REPEATS.value)
      _keep(result, 'workloads', row, json_path, lambda r: (
          f"workload {key}: step {r['step_seconds'] * 1e3:.1f} ms, end to end "
          f"{r['e2e_examples_per_s']:,.0f} ex/s"))
  if 'dots' in sections:
    steps_by = {('shape', r['shape']): r['seconds'] for r in result['train']
                if r['variant'] == 'default'}
    steps_by.update({('workload', r['workload']): r['step_seconds']
                     for r in result['workloads']})
    todo = [('shape', name, cfg) for name, cfg in configs.items()]
    if 'workloads' in sections or wanted_workloads:
      todo += [('workload', key, shape_config('tiny') if key == workloads.TEST_WORKLOAD else
                workloads.workload_config(key))
               for key in wanted_workloads or list(workloads.WORKLOADS)]
    for kind, key, cfg in todo:
      peak = ceil.get(f"matmul_{cfg.model.get('dtype', 'float32')}")
      row = _guarded(result['failed'], key, 'dots', dots.dots_row, key, cfg, peak,
                     _REPEATS.value, workloads.step_flops)
      if row is not None:
        row['kind'] = kind
        row['step_seconds'] = steps_by.get((kind, key))
        result['dots'].append(row)
        print(f"  dots of {key}: {row['calls']} calls, alone {row['dots_seconds'] * 1e3:.1f} ms "
              f"({row['dots_flops_per_s'] / 1e9:.1f} GFLOP/s)", flush=True)
      write_json(result, json_path)
  result['complete'] = True
  write_json(result, json_path)
  return result


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  shapes = _SHAPES.value or (['cpu'] if jax.default_backend() == 'cpu'
                             else ['onetrans_s', 'onetrans_l'])
  result = run(shapes, _SECTIONS.value, _JSON.value, _VARIANTS.value, _WORKLOADS.value,
               _WORKLOAD_STEPS.value)
  print(tables(result))
  print(f'\nwritten: {_JSON.value}')


def cli(argv: list[str] | None = None) -> None:
  """``python -m onetrans_jax.benchmarks.suite`` / ``onetrans benchmark``: the flags in ``argv``
  (program name first; default sys.argv)."""
  if argv is None:  # this process's own command line: re-run it once with huge pages
    host_memory.enable()
  argv = list(sys.argv if argv is None else argv)
  sys.argv = argv  # the JSON record's command
  if __name__ != '__main__':  # absl's --help lists the flags of the module named by argv[0]
    for flag in flags.FLAGS.get_flags_for_module(__name__):
      flags.FLAGS.register_flag_by_module(argv[0], flag)
  app.run(main, argv=argv)


if __name__ == '__main__':
  cli()
