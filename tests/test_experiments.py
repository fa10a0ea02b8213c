"""Every experiment file's :quick variant builds and plans end to end (the dry run: configs,
variant overrides, fingerprints, the time estimate); the slow step trains each one."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

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


_FAKE_PYTHON = r'''#!/usr/bin/env bash
# Stands in for python: -c snippets run for real; launch.py logs its arguments and, for a dry run,
# prints a plan whose runs are all recorded (fingerprints from $FAKE_FP). The ML-1M and OneRank
# tunings' choices read as missing (the studies that wait for them are skipped, without jax).
if [ "$1" = -c ] && [[ "$2" == *TUNED* ]]; then exit 1; fi
if [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi
shift
echo "$*" >> "$FAKE_LOG"
if [[ "$*" == *dry_run=True* ]]; then
  echo "sweep plan: 2 runs (2 reused, 0 resumed, 0 to train); estimated 0:00:00"
  echo "  row seed 0: reuse    0:00:00  ${FAKE_FP}aaaa  matching record"
  echo "  row seed 1: reuse    0:00:00  ${FAKE_FP}bbbb  matching record"
fi
exit 0
'''


def _run_queue(tmp_path, lanes: str, fp: str) -> list[str]:
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / 'python').write_text(_FAKE_PYTHON)
  (bin_dir / 'python').chmod(0o755)
  log = tmp_path / 'launches.log'
  log.write_text('')
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_LOG=str(log),
             FAKE_FP=fp, REAL_PYTHON=sys.executable)
  out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'study_queue.sh'), '--lanes', lanes,
                        str(tmp_path / 'root')], capture_output=True, text=True, timeout=300,
                       env=env)
  assert out.returncode == 0, out.stdout + out.stderr
  # The studies that wait for a tuning's hand-copied choices say so and are not launched.
  for name, where in (('onerank_mech', 'onerank_main.py is empty'),
                      ('onerank_ablation_mech', 'onerank_main.py is empty'),
                      ('ml1m_rq1', 'movielens_study.py is empty')):
    assert f'skip {name}: ' in out.stdout and where in out.stdout
  return log.read_text().splitlines()


def _reports(launches: list[str]) -> list[str]:
  """The launches that would write a report: neither sharded nor claiming, not dry runs."""
  return [a for a in launches
          if 'sweep.shard' not in a and 'sweep.claim' not in a and 'dry_run' not in a]


def test_the_study_queue_writes_no_report_from_a_one_seed_pass(tmp_path):
  """One lane: every first-pass (one-seed) launch is a shard 0/1 sweep, which writes records and
  no report; the second pass's launches are whole sweeps, which write the reports."""
  launches = _run_queue(tmp_path, '1', 'fp1')
  assert [a for a in launches if 'seeds=(0,)' in a]
  assert all('--config.sweep.shard=0/1' in a for a in launches if 'seeds=(0,)' in a)
  assert not [a for a in _reports(launches) if 'seeds=(0,)' in a]
  assert any('onerank_main.py:tune' in a for a in _reports(launches))
  assert not [a for a in launches if 'onerank_main.py:mechanisms' in a
              or 'onerank_ablation.py:mechanisms' in a]
  # OneRank's tuning runs right after RQ3, before issue 20's mechanism-world studies.
  order = [a.split('--config ')[1].split()[0] for a in launches if 'dry_run' not in a]
  assert order.index('onetrans_jax/experiments/onerank_main.py:tune') < order.index(
      'onetrans_jax/experiments/rq1_baselines.py:mechanisms')


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='two lanes need two CPU cores')
def test_the_study_queue_reports_each_study_once_per_runs_and_code(tmp_path):
  """Two lanes: the last lane to finish a study writes its report, never from a one-seed pass;
  a second queue over the same records and code writes none, and one whose runs have other
  fingerprints (a study retrained under a changed config, same counts) writes them again."""
  launches = _run_queue(tmp_path, '2', 'fp1')
  training = [a for a in launches if 'dry_run' not in a and a not in _reports(launches)]
  # Each lane's training launches share the study's runs (claims), none takes a fixed shard.
  assert training and all('--config.sweep.claim=True' in a and 'sweep.shard' not in a
                          for a in training)
  first = _reports(launches)
  assert first and not [a for a in first if 'seeds=(0,)' in a]
  assert len(first) == len(set(first))   # one report per study, not one per lane
  assert _reports(_run_queue(tmp_path, '2', 'fp1')) == []
  assert sorted(_reports(_run_queue(tmp_path, '2', 'fp2'))) == sorted(first)
