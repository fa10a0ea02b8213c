"""Sweeps: train several variants of one config on the same data, steps and seeds; print a table.

An experiment file opts in with ``config.sweep``:
  sweep.reference  name of the row the others are compared with (relative %, as the paper prints)
  sweep.variants   tuple of (name, ((dotted.field, value), ...)) overrides, the reference included
  sweep.seeds      training seeds; each variant runs once per seed (mean +- std over seeds)
  sweep.tasks      (task, label) pairs for the table's metric columns, e.g. (('click', 'CTR'), ...)
  sweep.relative   optional, default True: other rows relative % to the reference; False: all
                   absolute (the OneRank paper's layout)
  sweep.metric_labels  optional column names of (auc, uauc), default ('AUC', 'UAUC'); the OneRank
                   paper's GAUC is our UAUC (per-user AUC weighted by impressions)
Each run has its own workdir ``<workdir>/<variant>/seed_<s>`` and resumes or is skipped when
already finished, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from onetrans_jax import accounting, reporting
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError

METRICS = ('auc', 'uauc')


def _slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')


def variant_config(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]],
                   seed: int) -> ml_collections.ConfigDict:
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    del cfg['sweep']
    for path, value in overrides:
      node = cfg
      *parents, leaf = path.split('.')
      for p in parents:
        if p not in node:
          raise ConfigError(f'config.sweep.variants: override {path!r} names no config field')
        node = node[p]
      if leaf not in node:
        raise ConfigError(f'config.sweep.variants: override {path!r} names no config field')
      node[leaf] = value
    cfg.seed = seed
  return cfg


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  from onetrans_jax.train import train_and_evaluate  # local: keeps this module light to import
  sw = config.sweep
  names = [v[0] for v in sw.variants]
  if sw.reference not in names:
    raise ConfigError(f'config.sweep.reference={sw.reference!r} is not one of the variants {names}')
  if not sw.seeds:
    raise ConfigError('config.sweep.seeds is empty')
  results: dict[str, Any] = {}
  for name, overrides in sw.variants:
    runs = []
    for seed in sw.seeds:
      cfg = variant_config(config, overrides, seed)
      run_dir = os.path.join(workdir, _slug(name), f'seed_{seed}')
      done = os.path.join(run_dir, 'final_metrics.json')
      if os.path.exists(done):
        with open(done, encoding='utf-8') as f:
          final = json.load(f)['metrics']
        reporting.log(f'[sweep] {name} seed {seed}: already finished, read {done}')
      else:
        reporting.log(f'[sweep] {name} seed {seed}: training in {run_dir}')
        final = train_and_evaluate(cfg, run_dir)['final']
      runs.append(final)
    schema = pipeline.build_dataset(cfg.data).schema
    results[name] = {'runs': runs, 'params': accounting.dense_params(cfg.model, schema)['dense'],
                     'tflops': accounting.batch_tflops(cfg.model, schema)}
  table = format_sweep_table(results, names, sw.reference, tuple(tuple(t) for t in sw.tasks),
                             relative=sw.get('relative', True),
                             metric_labels=tuple(sw.get('metric_labels', ('AUC', 'UAUC'))))
  reporting.log(table)
  with open(os.path.join(workdir, 'sweep_table.txt'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  with open(os.path.join(workdir, 'sweep_results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1, default=float)
  return {'results': results, 'table': table}


def _stats(runs: Sequence[Mapping[str, Mapping[str, float]]], task: str,
           metric: str) -> tuple[float, float]:
  vals = np.array([r[task][metric] for r in runs], np.float64)
  return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else float('nan')


def format_sweep_table(results: Mapping[str, Any], names: Sequence[str], reference: str,
                       tasks: Sequence[tuple[str, str]], relative: bool = True,
                       metric_labels: Sequence[str] = ('AUC', 'UAUC')) -> str:
  """The paper's layout: the reference row absolute, the others relative % to it, +- seed std
  (``relative=False``: every row absolute)."""
  n_seeds = len(results[reference]['runs'])
  header = ['variant'] + [f'{label} {m}' for _, label in tasks for m in metric_labels]
  header += ['params (M)', 'TFLOPs']
  rows = [header]
  for name in names:
    res = results[name]
    row = [name]
    for task, _ in tasks:
      for m in METRICS:
        mean, std = _stats(res['runs'], task, m)
        ref, _ = _stats(results[reference]['runs'], task, m)
        if name == reference or not relative:
          cell = f'{mean:.5f}'
          if not math.isnan(std):
            cell += f' ±{std:.5f}'
        else:
          cell = f'{100 * (mean - ref) / ref:+.2f}%'
          if not math.isnan(std):
            cell += f' ±{100 * std / ref:.2f}'
        row.append(cell)
    tflops = '—' if math.isnan(res['tflops']) else f'{res["tflops"]:.3f}'
    row += [f'{res["params"] / 1e6:.3f}', tflops]
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  seeds = f'{n_seeds} seed' + ('s' if n_seeds != 1 else '')
  layout = (f'{reference} absolute, other rows relative to it' if relative else
            'absolute values')
  lines = [f'{layout} (mean ± std over {seeds}; TFLOPs: analytic training FLOPs per batch of '
           '2048, — where the model has no analytic count)']
  for i, r in enumerate(rows):
    lines.append('  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0:
      lines.append('  '.join('-' * w for w in widths))
  return '\n'.join(lines)
