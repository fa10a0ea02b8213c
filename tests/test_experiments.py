"""Every experiment file's :quick variant builds and plans end to end (the dry run: configs,
variant overrides, fingerprints, the time estimate); the slow step trains each one."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess

import pytest

from onetrans_jax.sweep import run_sweep
from tests.helpers import ROOT

SWEEPS = ('onerank_main', 'onerank_ablation', 'rq1_baselines', 'onetrans_rq2_ablation',
          'movielens_100k', 'movielens_study', 'onetrans_rq3_scaling')
ML100K = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')
ML1M = os.path.join(ROOT, '..', 'shared', 'data', 'ml-1m-users1-2998')


def _quick(name: str):
  c = importlib.import_module(f'onetrans_jax.experiments.{name}').get_config('quick')
  if name.startswith('movielens'):
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
  if c.sweep.get('scaling', ()):   # RQ3: the slopes, the claims and the three-panel plot
    for f in ('scaling.md', 'scaling.json', 'scaling.png'):
      assert (tmp_path / f).stat().st_size > 0, f
    assert len(json.loads((tmp_path / 'scaling.json').read_text())['claims']) == 3


def test_rq3_scaling_points_move_one_axis_at_a_time():
  from onetrans_jax.experiments import onetrans_rq3_scaling as rq3
  c = rq3.get_config()
  rows = {r[0]: r[1:] for r in c.sweep.scaling}
  assert len(rows) == 16 and len(c.sweep.seeds) == 3 and c.sweep.study == 'rq3_scaling'
  assert rows['OneTrans | base'] == ('OneTrans', 1.0, 2, 32)
  assert rows['RankMixer + Transformer | length 0.125'] == ('RankMixer + Transformer', 0.125, 2, 32)
  assert rows['OneTrans | width 64'] == ('OneTrans', 1.0, 2, 64)
  overrides = dict(c.sweep.variants)
  deep = dict(overrides['RankMixer + Transformer | depth 4'])['model']
  assert deep.transformer.num_layers == 4 and deep.rankmixer.num_layers == 4
  wide = dict(overrides['OneTrans | width 64'])
  assert wide['model'].width == 64 and wide['data.history_fraction'] == 1.0
  assert c.data.click_len == 64 and c.train.early_stopping.metric == 'valid/click/auc'
  with pytest.raises(ValueError, match='unknown variant'):
    rq3.get_config('huge')


@pytest.mark.parametrize('name, arg', [('onetrans_rq2_ablation', 'mechanisms'),
                                       ('rq1_baselines', 'mechanisms'),
                                       ('movielens_study', '100k'), ('movielens_study', '1m'),
                                       ('movielens_study', '100k_rq2'),
                                       ('movielens_study', '1m_rq2'),
                                       ('onetrans_rq3_scaling', None)])
def test_study_sweeps_plan_and_commit(name, arg, tmp_path):
  """Each study of issue 20 plans every (row, seed), commits its records under results/<study>/
  and trains to convergence: a validation split, early stopping on it, the hold-out never used."""
  c = importlib.import_module(f'onetrans_jax.experiments.{name}').get_config(arg)
  if name == 'movielens_study':
    path = ML100K if arg.startswith('100k') else ML1M
    if not os.path.isdir(path):
      pytest.skip(f'MovieLens data not found at {path}')
    c.data.path = path
  assert c.sweep.results_dir == f'results/{c.sweep.study}/runs'
  assert c.data.valid_fraction > 0 and c.train.eval_every > 0
  assert c.train.early_stopping.metric.startswith('valid/')
  assert len(c.sweep.seeds) >= (5 if c.sweep.study == 'rq2_mechanisms' else 3)
  c.sweep.dry_run = True
  c.sweep.results_dir = str(tmp_path / 'runs')
  out = run_sweep(c, str(tmp_path / 'work'))
  assert len({r.fingerprint for r in out['plan']}) == len(out['plan'])


@pytest.mark.parametrize('args, message', [
    (['--lanes', 'x'], "--lanes 'x': give a whole number of lanes >= 1"),
    (['--lanes', '0'], "--lanes '0': give a whole number of lanes >= 1"),
    (['--lanes', '4096'], '--lanes 4096 needs 4096 CPU cores, this process may use'),
    (['--plan', '--measure', 'five'], "--measure 'five': give a whole number of timed steps"),
    (['--measure=5'], "--measure times steps for --plan's estimate; add --plan"),
])
def test_the_study_queue_refuses_bad_options_before_anything_runs(tmp_path, args, message):
  out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'study_queue.sh'), *args,
                        str(tmp_path / 'root')], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and message in out.stderr
  assert not (tmp_path / 'root').exists()


def test_the_study_queue_names_only_experiments_and_variants_that_exist():
  text = open(os.path.join(ROOT, 'tools', 'study_queue.sh'), encoding='utf-8').read()
  found = re.findall(r'--config \$E/(\w+)\.py(?::(\w+))?', text)
  assert len(found) >= 12
  for module, arg in found:
    m = importlib.import_module(f'onetrans_jax.experiments.{module}')
    assert m.get_config(arg or None).sweep.study   # a sweep with a study name: it commits
