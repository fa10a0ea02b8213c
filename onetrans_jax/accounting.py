r"""Parameter and FLOP accounting, as the paper counts (SPEC A.8, A.9): a thin reader of the
model registry (each family's config.py owns its analytic FLOP count).

"Params" = dense parameters (embedding tables excluded), counted from the parameter shapes
(``jax.eval_shape``: nothing is allocated). FLOPs are analytic matmul FLOPs (2 per multiply-add)
of the reference per-candidate pass; training = 3 x forward (forward, plus two matmuls of the
same size per weight in the backward pass). The paper's own FLOP convention is unknown (SPEC
A.9): compare ratios and orderings, not absolute TFLOPs. ``xla_flops`` gives XLA's count of the
compiled computation beside it.

  python -m onetrans_jax.accounting --config onetrans_jax/experiments/onetrans_s.py
  python -m onetrans_jax.accounting --config onetrans_jax/experiments/onetrans_rq2_ablation.py:paper
  onetrans accounting --config onetrans_s.py        # installed: the same, a built-in by name

A sweep's experiment file gets a table of its rows, beside the paper's figures where it has them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from onetrans_jax import experiment_files, models, records
from onetrans_jax.data import pipeline
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.optimizers import count_params
from onetrans_jax.schema import FeatureSchema, dummy_batch

PAPER_BATCH = 2048  # "TFLOPs = training compute for a batch of 2048" (SPEC A.8)


def dense_params(model_cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Dense and embedding parameter counts from shapes alone (no memory is allocated); a
  classical floor row's (onetrans_jax/floors) from its config, as it has no Flax module."""
  if models.is_floor(model_cfg):
    return models.param_count(model_cfg, schema)
  model = models.build_model(model_cfg, schema)
  params = jax.eval_shape(lambda: partitioning.unbox(
      model.init(jax.random.key(0), dummy_batch(schema, 1))['params']))
  return count_params(params)


def batch_tflops(model_cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training TFLOPs for a batch of PAPER_BATCH examples (the registry's analytic count)."""
  return models.training_flops_per_example(model_cfg, schema) * PAPER_BATCH / 1e12


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
  """XLA's FLOP count of ``fn`` compiled for ``args`` (cost analysis of the optimised HLO)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def report(config: ml_collections.ConfigDict) -> str:
  """Parameters, FLOPs per example and per paper batch; OneTrans adds its pyramid schedule and
  request-level split."""
  schema = pipeline.build_dataset(config.data).schema
  counts = dense_params(config.model, schema)
  lines = [f'model {config.model.name}: dense params {counts["dense"] / 1e6:.2f}M, '
           f'embedding params {counts["sparse"] / 1e6:.2f}M']
  f = models.family(config.model).forward_flops(config.model, schema)
  if config.model.name == onetrans_config.NAME:
    _, _, sched = onetrans_config.layout(config.model, schema)
    lines.append(f'pyramid schedule {sched}')
  lines.append('forward GFLOPs per example: ' + ', '.join(
      f'{k} {v / 1e9:.3f}' for k, v in f.items()))
  lines.append(f'training TFLOPs per batch of {PAPER_BATCH}: '
               f'{batch_tflops(config.model, schema):.2f}')
  if config.model.name == onetrans_config.NAME:
    split = onetrans_config.shared_forward_flops(config.model, schema)
    c = schema.num_candidates
    ratio = c * f['total'] / (split['user'] + c * split['candidate'])
    lines.append(f'request-level sharing: forward GFLOPs {split["user"] / 1e9:.3f} per request + '
                 f'{split["candidate"] / 1e9:.3f} per candidate; {ratio:.2f}x fewer than '
                 f'per-candidate passes at C={c}')
  return '\n'.join(lines)


def sweep_report(config: ml_collections.ConfigDict) -> str:
  """A markdown table of every sweep row's dense params and training TFLOPs per batch of
  PAPER_BATCH, and, where the experiment gives the paper's figures (``config.sweep.paper``:
  (row, params M, TFLOPs) triples, SPEC A.10), each row's ratio to them and the FLOP ratio to the
  reference row beside the paper's: the paper's FLOP convention is unknown (SPEC A.9), so the
  ratios within a table are what compare."""
  sw = config.sweep
  paper = {name: (float(p), float(t)) for name, p, t in (sw.get('paper', None) or ())}
  schemas: dict[str, FeatureSchema] = {}
  rows = []
  for name, overrides in sw.variants:
    cfg = records.variant_config(config, overrides, 0)
    key = cfg.data.to_json_best_effort(sort_keys=True)
    if key not in schemas:
      schemas[key] = pipeline.build_dataset(cfg.data).schema
    schema = schemas[key]
    rows.append((name, dense_params(cfg.model, schema)['dense'] / 1e6,
                 batch_tflops(cfg.model, schema)))
  ref = dict((n, t) for n, _, t in rows)[sw.reference]
  head = '| row | params (M) | TFLOPs | FLOPs / ref |'
  rule = '|---|---|---|---|'
  if paper:
    head += ' paper params | paper TFLOPs | params / paper | paper FLOPs / ref |'
    rule += '---|---|---|---|'
  lines = [f'{sw.study}: dense params and training TFLOPs per batch of {PAPER_BATCH}', '',
           head, rule]
  for name, params_m, tflops in rows:
    line = f'| {name} | {params_m:.2f} | {tflops:.2f} | {tflops / ref:.2f}x |'
    if paper:
      if name in paper:
        p_m, p_t = paper[name]
        line += (f' {p_m:g} | {p_t:g} | {params_m / p_m:.2f} | '
                 f'{p_t / paper[sw.reference][1]:.2f}x |')
      else:
        line += ' | | | |'
    lines.append(line)
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  from absl import flags
  config = flags.FLAGS.config
  print(sweep_report(config) if 'sweep' in config else report(config))


def cli(argv: list[str] | None = None) -> None:
  """``python -m onetrans_jax.accounting`` / ``onetrans accounting``: flags in ``argv``
  (program name first; default sys.argv), ``--config`` resolved as for training."""
  from absl import app, flags
  from ml_collections import config_flags
  argv = list(sys.argv if argv is None else argv)
  sys.argv = argv
  argv = experiment_files.resolve_argv(argv)
  holder = config_flags.DEFINE_config_file(
      'config', None, 'Experiment file, or the name of a built-in one (onetrans_s.py).',
      sys_argv=argv)
  if __name__ != '__main__':  # absl's --help lists the flags of the module named by argv[0]
    flags.FLAGS.register_flag_by_module(argv[0], flags.FLAGS[holder.name])
  flags.mark_flag_as_required('config')
  app.run(main, argv=argv)


if __name__ == '__main__':
  cli()
