"""The studies' own training runs, timed as the trainer runs them (the suite's 'workloads' rows).

The bench shapes of ``suite.py`` measure OneTrans at fixed sizes; the hours of the studies go to
other configs: the mechanism-world rows of RQ1 / RQ2 (``onetrans_s.py:small`` sizes, the
encode-then-interact baselines) and OneRank. Each workload is one study row's resolved config
(seed 0), and its row reports:

- the compiled step alone (the trainer's step on one batch, median of ``repeats``);
- end to end: ``steps`` steps pulling batches through the trainer's own iterator
  (``pipeline.make_iterator`` with the config's threads and workers), onto the mesh and through
  the step, dispatched as the trainer dispatches them (no wait per step), so the examples/s
  include data loading;
- the iterator alone over as many batches (what input can feed at most);
- the analytic training FLOPs of the step's layout and the MFU against the run's matmul ceiling.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from onetrans_jax import models, records, reporting, sharding
from onetrans_jax.benchmarks import steps
from onetrans_jax.data import pipeline

# key -> (experiment module, its variant argument, the sweep row; None: the config as is).
WORKLOADS: dict[str, tuple[str, str | None, str | None]] = {
    'onetrans_s_mech': ('onetrans_rq2_ablation', 'mechanisms', 'OneTrans_S'),
    'dcnv2_din_mech': ('rq1_baselines', 'mechanisms', 'DCNv2 + DIN'),
    'rankmixer_transformer_mech': ('rq1_baselines', 'mechanisms', 'RankMixer + Transformer'),
    'onerank_mech': ('onerank_main', 'mechanisms', 'OneRank'),
    'onetrans_ple_mech': ('onerank_main', 'mechanisms', 'OneTrans + PLE'),
    'onetrans_s_small': ('onetrans_s', 'small', None),
}
TEST_WORKLOAD = 'tiny'   # suite.py's tiny shape as a workload (seconds; for tests)


def workload_config(key: str) -> ml_collections.ConfigDict:
  """The resolved run config of one study workload (seed 0), as its study would train it."""
  if key not in WORKLOADS:
    raise ValueError(f'--workloads: unknown workload {key!r}; choose from '
                     f'{", ".join(WORKLOADS)}')
  module, arg, row = WORKLOADS[key]
  config = importlib.import_module(f'onetrans_jax.experiments.{module}').get_config(arg)
  if row is None:
    if 'sweep' in config:
      with config.unlocked():
        del config['sweep']
    return config
  variants = dict(config.sweep.variants)
  if row not in variants:
    raise ValueError(f'workload {key!r}: {module}.py:{arg} has no row {row!r}')
  return records.variant_config(config, variants[row], seed=0)


def step_flops(config: ml_collections.ConfigDict, schema: Any, model: Any) -> float:
  """Analytic training FLOPs of one step in the layout that runs
  (``models.training_flops_per_request``): OneTrans counts its request-level sharing, the
  encode-then-interact baselines their sequence encoders once per request; the other families'
  per-impression count covers the batch's R x C candidate slots (padding slots are computed
  too). benchmarks/dots.py checks each against the FLOPs of the dots the step really runs."""
  del model   # the config says how it runs; ``model`` is dots_row's analytic_flops interface
  r, c = config.data.batch_size, config.data.num_candidates
  return r * models.training_flops_per_request(config.model, schema, c)


def _real_examples(host_batch: Any) -> int:
  return int(np.asarray(host_batch['cand']['mask']).sum())


def workload_row(key: str, config: ml_collections.ConfigDict, ceiling_flops: float | None,
                 num_steps: int, repeats: int) -> dict[str, Any]:
  """Times one workload (see the module docstring); ``num_steps`` end-to-end steps after the
  step-alone timing, then the iterator alone over ``num_steps`` more batches."""
  data = pipeline.build_dataset(config.data)
  c = config
  iterator = pipeline.make_iterator(
      data, data.train_range, global_batch_size=c.data.batch_size, shuffle=c.data.shuffle,
      seed=c.seed, repeat=True, validate=c.data.validate, num_threads=c.data.num_threads,
      worker_count=c.data.worker_count)
  first = next(iterator)
  step = steps.trainer_step(c, data.schema, first)
  state = step.state
  times = []
  for i in range(repeats + 1):       # the step alone, on one batch (the first call warms up)
    t0 = time.perf_counter()
    state, _ = step.compiled(state, step.batch)
    jax.block_until_ready(state)
    if i:
      times.append(time.perf_counter() - t0)
  step_seconds = float(np.median(times))
  examples = 0
  t0 = time.perf_counter()
  for _ in range(num_steps):         # end to end, dispatched as the trainer dispatches
    host = next(iterator)
    examples += _real_examples(host)
    state, _ = step.compiled(state, sharding.put_batch(host, step.mesh))
  jax.block_until_ready(state)
  e2e = time.perf_counter() - t0
  data_examples = 0
  t0 = time.perf_counter()
  for _ in range(num_steps):         # what the input pipeline delivers alone
    data_examples += _real_examples(next(iterator))
  data_seconds = time.perf_counter() - t0
  flops = step_flops(c, data.schema, step.model)
  slots = c.data.batch_size * c.data.num_candidates
  name = c.model.name
  if name == 'baseline':   # the encode-then-interact family: its two halves
    name = f'{c.model.interaction} + {c.model.sequence}'
  row = {'workload': key, 'model': name, 'requests': c.data.batch_size,
         'candidates': c.data.num_candidates, 'dtype': c.model.get('dtype', 'float32'),
         'compile_seconds': step.compile_seconds, 'step_seconds': step_seconds,
         'step_slots_per_s': slots / step_seconds,
         'e2e_steps': num_steps, 'e2e_seconds_per_step': e2e / num_steps,
         'e2e_examples_per_s': examples / e2e,
         'data_examples_per_s': data_examples / max(data_seconds, 1e-9),
         'input_share': max(0.0, 1.0 - step_seconds * num_steps / e2e),
         'flops': flops, 'flops_per_s': flops / step_seconds}
  row['mfu'] = row['flops_per_s'] / ceiling_flops if ceiling_flops else None
  return row


def table(rows: list[dict[str, Any]]) -> list[str]:
  """The workloads' printed table (the suite's ``tables``)."""
  fmt = reporting.or_dash
  lines = [f"{'workload':<27} {'R x C':>7} {'compile s':>9} {'step ms':>8} {'GFLOP/s':>8} "
           f"{'MFU':>6} {'e2e ms':>8} {'e2e ex/s':>9} {'input ex/s':>10} {'input %':>7}"]
  for r in rows:
    lines.append(
        f"{r['workload']:<27} {r['requests']:>3}x{r['candidates']:<3} "
        f"{r['compile_seconds']:>9.1f} {r['step_seconds'] * 1e3:>8.1f} "
        f"{r['flops_per_s'] / 1e9:>8.1f} "
        f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], '5.1f'):>5}% "
        f"{r['e2e_seconds_per_step'] * 1e3:>8.1f} {r['e2e_examples_per_s']:>9.0f} "
        f"{r['data_examples_per_s']:>10.0f} {100 * r['input_share']:>6.1f}%")
  return lines
