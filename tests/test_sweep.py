"""Sweeps: variants x seeds on the same data, the paper-format table, resumable."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from onetrans_jax.errors import ConfigError
from onetrans_jax.sweep import format_sweep_table, run_sweep, variant_config
from tests.helpers import small_config


def _sweep_config():
  c = small_config()
  c.train.total_steps = 3
  c.train.log_every = 3
  c.train.checkpoint_every = 0
  c.data.num_eval_requests = 64
  c.sweep = ml_collections.ConfigDict()
  c.sweep.reference = 'base'
  c.sweep.variants = (('base', ()), ('wide', (('model.hidden', (48,)),)))
  c.sweep.seeds = (0, 1)
  c.sweep.tasks = (('click', 'CTR'), ('cart', 'CVR'))
  return c


def test_variant_config_applies_overrides():
  c = _sweep_config()
  v = variant_config(c, (('model.hidden', (48,)), ('data.batch_size', 8)), seed=5)
  assert v.model.hidden == (48,) and v.data.batch_size == 8 and v.seed == 5
  assert 'sweep' not in v and c.model.hidden == (32,)
  with pytest.raises(ConfigError, match="override 'model.hiden' names no config field"):
    variant_config(c, (('model.hiden', 1),), seed=0)


def test_run_sweep_table_and_resume(tmp_path):
  c = _sweep_config()
  out = run_sweep(c, str(tmp_path))
  res = out['results']
  assert set(res) == {'base', 'wide'} and len(res['base']['runs']) == 2
  assert res['wide']['params'] > res['base']['params']
  table = out['table']
  lines = table.splitlines()
  assert 'CTR AUC' in lines[1] and 'CVR UAUC' in lines[1] and 'params (M)' in lines[1]
  assert lines[3].startswith('base') and '±' in lines[3]
  assert lines[4].startswith('wide') and '%' in lines[4]
  assert (tmp_path / 'sweep_table.txt').read_text().strip() == table
  assert json.loads((tmp_path / 'sweep_results.json').read_text())['base']['params'] > 0
  # Seeds differ, so the runs differ.
  assert res['base']['runs'][0]['click']['auc'] != res['base']['runs'][1]['click']['auc']
  # A finished sweep is read back, not retrained.
  mtime = os.path.getmtime(tmp_path / 'base' / 'seed_0' / 'final_metrics.json')
  again = run_sweep(c, str(tmp_path))
  assert again['table'] == table
  assert os.path.getmtime(tmp_path / 'base' / 'seed_0' / 'final_metrics.json') == mtime


def test_relative_numbers():
  runs = lambda a: [{'click': {'auc': a, 'uauc': a}, 'cart': {'auc': a, 'uauc': a}}]
  res = {'ref': {'runs': runs(0.8), 'params': 2e6, 'tflops': 1.0},
         'x': {'runs': runs(0.804), 'params': 1e6, 'tflops': 0.5}}
  table = format_sweep_table(res, ['ref', 'x'], 'ref', (('click', 'CTR'), ('cart', 'CVR')))
  assert '0.80000' in table and '+0.50%' in table and '2.000' in table and '0.500' in table
