"""Every experiment file's :quick variant builds and plans end to end (the dry run: configs,
variant overrides, fingerprints, the time estimate); the slow step trains each one."""

from __future__ import annotations

import importlib
import os

import pytest

from onetrans_jax.sweep import run_sweep
from tests.helpers import ROOT

SWEEPS = ('onerank_main', 'onerank_ablation', 'rq1_baselines', 'onetrans_rq2_ablation',
          'movielens_100k')
ML100K = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')


def _quick(name: str):
  c = importlib.import_module(f'experiments.{name}').get_config('quick')
  if name == 'movielens_100k':
    if not os.path.isdir(ML100K):
      pytest.skip(f'MovieLens 100K not found at {ML100K}')
    c.data.path = ML100K
  return c


@pytest.mark.parametrize('name', SWEEPS)
def test_quick_sweeps_plan(name, tmp_path):
  c = _quick(name)
  assert c.sweep.results_dir == ''          # :quick never writes into the committed results
  c.sweep.dry_run = True
  out = run_sweep(c, str(tmp_path))
  assert len(out['plan']) == len(c.sweep.variants) * len(c.sweep.seeds)
  assert all(r.action == 'train' for r in out['plan'])
  assert len({r.fingerprint for r in out['plan']}) == len(out['plan'])   # every run distinct
  assert all(s > 0 for s in out['estimate_seconds'].values())
  assert not list(tmp_path.iterdir())      # a dry run trains and writes nothing


@pytest.mark.slow
@pytest.mark.parametrize('name', SWEEPS)
def test_quick_sweeps_run(name, tmp_path):
  c = _quick(name)
  out = run_sweep(c, str(tmp_path))
  rows = out['summary']['rows']
  assert [r['variant'] for r in rows] == [v[0] for v in c.sweep.variants]
  for row in rows:
    for task, _ in c.sweep.tasks:
      assert 0.0 < row['metrics'][f'{task}/auc']['mean'] < 1.0, (row['variant'], task)
  for f in ('report.md', 'summary.json', 'sweep_table.txt', 'learning_curves.png', 'deltas.png'):
    assert (tmp_path / f).stat().st_size > 0, f
