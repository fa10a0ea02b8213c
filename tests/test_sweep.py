"""Sweeps: variants x seeds on the same data, the paper-format table with paired CIs, runs keyed
by fingerprint (reused, redone or resumed), the dry-run plan, the report."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from onetrans_jax import models, records, reporting, stats, study_report
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.sweep import format_sweep_table, run_sweep, variant_config
from tests.helpers import sweep_config


def test_variant_config_applies_overrides():
  c = sweep_config()
  v = variant_config(c, (('model.hidden', (48,)), ('data.batch_size', 8)), seed=5)
  assert v.model.hidden == (48,) and v.data.batch_size == 8 and v.seed == 5
  assert 'sweep' not in v and c.model.hidden == (32,)
  with pytest.raises(ConfigError, match="override 'model.hiden' names no config field"):
    variant_config(c, (('model.hiden', 1),), seed=0)


def test_run_sweep_table_and_resume(tmp_path):
  c = sweep_config()
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


# ---------------------------------------------------------------------------------- fingerprints
def _one_run_config(tmp_path, **model):
  c = sweep_config()
  c.sweep.variants = (('base', ()),)
  c.sweep.seeds = (0,)
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  c.model.update(model)
  return c


def test_a_changed_config_is_redone_and_says_why(tmp_path):
  work = str(tmp_path / 'work')
  first = run_sweep(_one_run_config(tmp_path), work)
  assert [r.action for r in first['plan']] == ['train']
  rec = first['results']['base']['records'][0]
  assert len(rec['fingerprint']) == 64 and rec['step'] == 3 and rec['wall_seconds'] > 0
  assert rec['machine']['jax'] and rec['config']['model.hidden'] == [32]
  # The code it ran: this checkout's commit (read when the process started; HEAD may have
  # moved since), or none for an installed copy that is no git checkout.
  assert rec['code'] == records.CODE
  if os.path.isdir(os.path.join(os.path.dirname(records.__file__), '..', '.git')):
    assert len(rec['code']['commit']) == 40 and int(rec['code']['commit'], 16) >= 0
    assert isinstance(rec['code']['dirty'], bool)
  # Logging more often computes the same thing: still reused.
  same = _one_run_config(tmp_path)
  same.train.log_every = 1
  assert [r.action for r in run_sweep(same, work)['plan']] == ['reuse']
  # A wider model is another run: redone, the reason names the field, nothing is deleted.
  changed = run_sweep(_one_run_config(tmp_path, hidden=(40,)), work)
  run = changed['plan'][0]
  assert run.action == 'train' and 'model.hidden [32] -> [40]' in run.reason
  assert (tmp_path / 'work' / 'base' / 'seed_0.stale' / 'final_metrics.json').exists()
  assert changed['results']['base']['records'][0]['fingerprint'] != rec['fingerprint']
  kept = sorted(os.listdir(tmp_path / 'study' / 'runs' / 'base'))   # both runs kept
  assert [n.endswith('.json') for n in kept] == [True, False, True, False], kept
  assert {n.split('.')[0] for n in kept} == {f'seed_0-{fp[:12]}' for fp in (
      rec['fingerprint'], changed['results']['base']['records'][0]['fingerprint'])}


def test_a_committed_record_is_reused_on_another_machine(tmp_path):
  run_sweep(_one_run_config(tmp_path), str(tmp_path / 'first'))
  # A fresh workdir (another machine) with the committed records: nothing is trained.
  again = run_sweep(_one_run_config(tmp_path), str(tmp_path / 'second'))
  assert [r.action for r in again['plan']] == ['reuse']
  assert 'study/runs/base/seed_0-' in again['plan'][0].reason
  assert not (tmp_path / 'second' / 'base' / 'seed_0' / 'checkpoints').exists()
  assert (json.loads((tmp_path / 'second' / 'summary.json').read_text())['rows'][0]['variant']
          == 'base')
  # The study's committed copy of the report sits beside its run records.
  for name in ('summary.json', 'report.md', 'sweep_table.txt'):
    assert (tmp_path / 'study' / name).exists(), name
  code = records.CODE['commit']
  assert ('- code: ' + (f'{code[:12]}' if code else 'package')
          in (tmp_path / 'study' / 'report.md').read_text())


def test_a_run_committed_by_another_study_is_reused_and_copied(tmp_path):
  """The same (config, data, seed) in two tables (OneTrans_S of RQ2 and of RQ1) trains once: the
  second study reuses the first's committed record and predictions under its own variant name."""
  first = _one_run_config(tmp_path)
  first.sweep.results_dir = str(tmp_path / 'rq2' / 'runs')
  trained = run_sweep(first, str(tmp_path / 'w2'))['results']['base']['records'][0]
  second = _one_run_config(tmp_path)
  second.sweep.results_dir = str(tmp_path / 'rq1' / 'runs')
  second.sweep.variants = (('OneTrans', ()),)
  second.sweep.reference = 'OneTrans'
  out = run_sweep(second, str(tmp_path / 'w1'))
  assert [r.action for r in out['plan']] == ['reuse']
  assert 'another study' in out['plan'][0].reason and 'rq2/runs/base/' in out['plan'][0].reason
  stem = f'seed_0-{trained["fingerprint"][:12]}'
  copied = json.loads((tmp_path / 'rq1' / 'runs' / 'OneTrans' / f'{stem}.json').read_text())
  assert copied['variant'] == 'OneTrans' and copied['metrics'] == trained['metrics']
  assert ((tmp_path / 'rq1' / 'runs' / 'OneTrans' / f'{stem}.predictions.npz').read_bytes() ==
          (tmp_path / 'rq2' / 'runs' / 'base' / f'{stem}.predictions.npz').read_bytes())
  assert not (tmp_path / 'w1' / 'OneTrans' / 'seed_0' / 'checkpoints').exists()
  # Another seed is another run: never taken from the other study.
  second.sweep.seeds = (1,)
  second.sweep.dry_run = True
  assert [r.action for r in run_sweep(second, str(tmp_path / 'w1'))['plan']] == ['train']


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
  c = sweep_config()
  c.sweep.dry_run = True
  out = run_sweep(c, str(tmp_path))
  assert len(out['plan']) == 4 and all(r.action == 'train' for r in out['plan'])
  assert all(s > 0 for s in out['estimate_seconds'].values())
  printed = capsys.readouterr().out + capsys.readouterr().err
  assert 'sweep plan: 4 runs (0 reused, 0 resumed, 4 to train); estimated' in printed
  assert not (tmp_path / 'base').exists()


def test_a_measured_plan_times_each_variant_once_and_says_so(tmp_path, capsys, monkeypatch):
  """sweep.measure_steps: each variant without a finished run is timed (its seeds share the
  measurement) and estimated as start-up + step cap x its step; a real measurement of the tiny
  config is positive and well under a second a step."""
  from onetrans_jax import sweep
  real = sweep.measured_step_seconds(sweep_config(), 2)
  assert 0 < real < 1
  calls = []

  def fake(cfg, n):
    calls.append((tuple(cfg.model.hidden), n))
    return 0.5 if cfg.model.hidden == (48,) else 0.25

  monkeypatch.setattr(sweep, 'measured_step_seconds', fake)
  c = sweep_config()
  c.sweep.dry_run = True
  c.sweep.measure_steps = 4
  out = run_sweep(c, str(tmp_path))
  assert sorted(calls) == [((32,), 4), ((48,), 4)]       # once per variant, not per seed
  est = out['estimate_seconds']
  assert est[('base', 0)] == est[('base', 1)] == sweep.STARTUP_SECONDS + 3 * 0.25
  assert est[('wide', 1)] == sweep.STARTUP_SECONDS + 3 * 0.5
  assert 'measured wide: 500.0 ms a step' in capsys.readouterr().out
  for bad in (-1, 2.5, True):
    c = sweep_config()
    c.sweep.dry_run = True
    c.sweep.measure_steps = bad
    with pytest.raises(ConfigError, match='sweep.measure_steps'):
      run_sweep(c, str(tmp_path))


def test_shards_split_a_sweep_without_overlap_and_a_final_sweep_reuses_them(tmp_path):
  """Two lanes (sweep.shard 0/2, 1/2) on one workdir train disjoint runs that together cover the
  sweep, write records and no report; the unsharded sweep then trains nothing and reports."""
  c = sweep_config()
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  c.sweep.shard = '0/2'
  first = run_sweep(c, str(tmp_path / 'w'))
  c.sweep.shard = '1/2'
  second = run_sweep(c, str(tmp_path / 'w'))
  # Positions 0, 2 and 1, 3 of [(base, 0), (base, 1), (wide, 0), (wide, 1)].
  assert [(r.variant, r.seed) for r in first['plan']] == [('base', 0), ('wide', 0)]
  assert [(r.variant, r.seed) for r in second['plan']] == [('base', 1), ('wide', 1)]
  assert all(r.action == 'train' for r in first['plan'] + second['plan'])
  assert 'table' not in first and not (tmp_path / 'w' / 'report.md').exists()
  c.sweep.shard = ''
  whole = run_sweep(c, str(tmp_path / 'w'))
  assert [r.action for r in whole['plan']] == ['reuse'] * 4
  assert (tmp_path / 'w' / 'report.md').exists()
  runs = whole['results']['base']['runs'] + whole['results']['wide']['runs']
  assert runs == [r['metrics'] for r in (first['records']['base'] + second['records']['base']
                                         + first['records']['wide'] + second['records']['wide'])]


@pytest.mark.parametrize('bad', ['2/2', '1', 'a/b', '-1/2', '0/0'])
def test_a_bad_shard_names_the_field_before_anything_runs(tmp_path, bad):
  c = sweep_config()
  c.sweep.shard = bad
  with pytest.raises(ConfigError, match=r'config.sweep.shard=.*use "i/n" with 0 <= i < n'):
    run_sweep(c, str(tmp_path))
  assert not (tmp_path / 'base').exists()


def test_data_files_are_part_of_the_fingerprint(tmp_path):
  (tmp_path / 'u.data').write_bytes(b'1\t2\t3\t4\n' * 100)
  data = ml_collections.ConfigDict({'name': 'movielens_100k', 'path': str(tmp_path)})
  before = records.data_identity(data)
  assert before['files'][0]['file'] == 'u.data' and before['files'][0]['bytes'] == 800
  (tmp_path / 'u.data').write_bytes(b'1\t2\t3\t5\n' * 100)   # same size, other content
  assert records.data_identity(data) != before
  assert records.data_identity(ml_collections.ConfigDict({'name': 'synthetic'})) == {
      'kind': 'config-defined'}


def test_the_same_data_elsewhere_is_the_same_run(tmp_path):
  """Another machine's checkout keeps the data at another path: the fingerprint follows the
  files' content, so its committed records are reused there."""
  for d in ('a', 'b'):
    (tmp_path / d).mkdir()
    (tmp_path / d / 'u.data').write_bytes(b'1\t2\t3\t4\n' * 100)
  cfg = lambda d: ml_collections.ConfigDict({'data': {'name': 'movielens_100k',
                                                      'path': str(tmp_path / d)}})
  fp_a, flat_a = records.fingerprint(cfg('a'))
  assert records.fingerprint(cfg('b'))[0] == fp_a
  assert flat_a['data.path'] == str(tmp_path / 'a')    # still in the record's config
  (tmp_path / 'b' / 'u.data').write_bytes(b'1\t2\t3\t5\n' * 100)
  assert records.fingerprint(cfg('b'))[0] != fp_a


def test_summary_cells_are_the_paired_statistics(tmp_path):
  c = sweep_config()
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  out = run_sweep(c, str(tmp_path / 'w'))
  summary = json.loads((tmp_path / 'w' / 'summary.json').read_text())
  assert summary['reference'] == 'base' and summary['seeds'] == [0, 1]
  assert summary['tasks'] == ['click', 'cart']
  wide = next(r for r in summary['rows'] if r['variant'] == 'wide')
  cell = wide['metrics']['click/auc']
  runs = out['results']
  a = [r['click']['auc'] for r in runs['wide']['runs']]
  b = [r['click']['auc'] for r in runs['base']['runs']]
  p = stats.paired_difference(a, b)
  assert cell['n'] == 2 and cell['mean'] == pytest.approx(np.mean(a))
  assert cell['delta_vs_ref'] == pytest.approx(np.mean(a) - np.mean(b))
  assert cell['ci95'] == pytest.approx([p.ci_low, p.ci_high])
  assert wide['params'] > 0 and wide['train_flops_per_example'] > 0
  for name in ('report.md', 'learning_curves.png', 'deltas.png'):
    assert (tmp_path / 'w' / name).stat().st_size > 0, name
  assert 'CTR AUC 95% CI' in out['table']


def test_one_seed_comparisons_bootstrap_over_users(tmp_path):
  c = _one_run_config(tmp_path)
  c.sweep.variants = (('base', ()), ('wide', (('model.hidden', (48,)),)))
  c.sweep.bootstrap = 50
  out = run_sweep(c, str(tmp_path / 'w'))
  with np.load(tmp_path / 'w' / 'wide' / 'seed_0' / 'eval_predictions.npz') as z:
    labels, users = z['click.labels'], z['click.user_ids']
    assert labels.shape == z['click.probs'].shape == users.shape and labels.size > 0
  cell = json.loads((tmp_path / 'w' / 'summary.json').read_text())['rows'][1]['metrics'][
      'click/auc']
  assert cell['n'] == 1 and cell['ci_method'].startswith('bootstrap over ')
  lo, hi = cell['ci95']
  assert lo <= hi and np.isfinite([lo, hi]).all()
  assert json.loads((tmp_path / 'w' / 'summary.json').read_text())['rows'][1]['metrics'][
      'click/uauc']['ci95'] is None   # no interval where there is none to compute
  wide_row = next(l for l in out['table'].splitlines() if l.startswith('wide'))
  ref_auc = out['results']['base']['runs'][0]['click']['auc']
  assert f'[{100 * lo / ref_auc:+.2f}, {100 * hi / ref_auc:+.2f}]%' in wide_row
  assert "paired bootstrap over the hold-out's users" in out['table'].splitlines()[0]


def test_an_unfinished_run_resumes_across_logging_only_changes(tmp_path):
  """A run directory without a record (interrupted) resumes when only fields that change no
  result differ (logging cadence, the learning-curve plot); a result field starts it over."""
  work = str(tmp_path / 'work')
  run_sweep(_one_run_config(tmp_path), work)
  run_dir = tmp_path / 'work' / 'base' / 'seed_0'
  for rec in [run_dir / 'record.json', *(tmp_path / 'study' / 'runs' / 'base').glob('*.json')]:
    rec.unlink()                       # as if killed before its record was written
  c = _one_run_config(tmp_path)
  c.train.log_every, c.train.plot_curves = 1, True
  c.sweep.dry_run = True
  assert [r.action for r in run_sweep(c, work)['plan']] == ['resume']
  c.model.hidden = (40,)
  assert [r.action for r in run_sweep(c, work)['plan']] == ['train']


def test_a_resumed_run_records_the_time_of_every_invocation(tmp_path, monkeypatch):
  """An invocation stopped part-way (SIGTERM at a session's end) keeps its seconds: the record of
  the run that resumes says the time of both pieces, so the plan's estimate is not 'the last
  piece only'."""
  import time as time_mod
  from onetrans_jax import train as train_mod
  real = train_mod.train_and_evaluate

  def interrupted(cfg, workdir):   # as train.py does first: the config beside the run
    os.makedirs(workdir, exist_ok=True)
    (tmp_path / 'work' / 'base' / 'seed_0' / 'config.json').write_text(cfg.to_json())
    time_mod.sleep(1.5)
    raise KeyboardInterrupt('stopped at the end of a session')
  monkeypatch.setattr(train_mod, 'train_and_evaluate', interrupted)
  with pytest.raises(KeyboardInterrupt):
    run_sweep(_one_run_config(tmp_path), str(tmp_path / 'work'))
  saved = json.loads((tmp_path / 'work' / 'base' / 'seed_0' / 'wall_time.json').read_text())
  assert saved['invocations'] == 1 and saved['seconds'] >= 1.5
  monkeypatch.setattr(train_mod, 'train_and_evaluate', real)
  rec = run_sweep(_one_run_config(tmp_path), str(tmp_path / 'work'))['results']['base'][
      'records'][0]
  assert rec['invocations'] == 2 and rec['wall_seconds'] >= saved['seconds'] + 0.1


def test_a_study_finished_elsewhere_keeps_its_one_seed_bootstrap(tmp_path):
  """The committed predictions travel with the records: a fresh workdir that reuses every
  committed run (another machine) reports the same bootstrap interval as the workdir that
  trained them."""
  c = _one_run_config(tmp_path)
  c.sweep.variants = (('base', ()), ('wide', (('model.hidden', (48,)),)))
  c.sweep.bootstrap = 50
  run_sweep(c, str(tmp_path / 'trained'))
  committed = sorted((tmp_path / 'study' / 'runs').glob('*/*.predictions.npz'))
  assert [p.parent.name for p in committed] == ['base', 'wide']
  for p in committed:   # beside its record, byte for byte the run's own file
    assert p.with_name(p.name.replace('.predictions.npz', '.json')).exists()
    own = tmp_path / 'trained' / p.parent.name / 'seed_0' / 'eval_predictions.npz'
    assert p.read_bytes() == own.read_bytes()
  again = run_sweep(c, str(tmp_path / 'elsewhere'))
  assert [r.action for r in again['plan']] == ['reuse', 'reuse']
  assert not (tmp_path / 'elsewhere' / 'wide' / 'seed_0' / 'eval_predictions.npz').exists()
  cells = [json.loads((tmp_path / w / 'summary.json').read_text())['rows'][1]['metrics'][
      'click/auc'] for w in ('trained', 'elsewhere')]
  assert cells[0]['ci_method'].startswith('bootstrap over ')
  assert cells[0]['ci95'] == cells[1]['ci95'] and cells[0]['ci_method'] == cells[1]['ci_method']
  for p in committed:   # without the committed predictions there is no interval to compute
    p.unlink()
  run_sweep(c, str(tmp_path / 'third'))
  cell = json.loads((tmp_path / 'third' / 'summary.json').read_text())['rows'][1]['metrics'][
      'click/auc']
  assert cell['ci95'] is None and cell['ci_method'] is None


def test_a_reused_record_never_sits_beside_another_configs_run(tmp_path):
  run_sweep(_one_run_config(tmp_path), str(tmp_path / 'a'))                 # X, committed
  run_sweep(_one_run_config(tmp_path, hidden=(40,)), str(tmp_path / 'b'))   # Y in workdir b
  again = run_sweep(_one_run_config(tmp_path), str(tmp_path / 'b'))         # X in workdir b
  assert [r.action for r in again['plan']] == ['reuse']
  assert (tmp_path / 'b' / 'base' / 'seed_0.stale' / 'config.json').exists()
  rec = json.loads((tmp_path / 'b' / 'base' / 'seed_0' / 'record.json').read_text())
  assert rec['config']['model.hidden'] == [32]


def test_a_nan_metric_gets_no_interval_and_stops_nothing():
  """A task without both classes in a tiny hold-out has a NaN AUC: the report of a finished
  study still comes out, with that cell's mean NaN and no interval."""
  runs = lambda *a: [{'click': {'auc': x, 'uauc': x, 'logloss': 0.5}} for x in a]
  res = {'ref': {'runs': runs(0.70, 0.71)}, 'x': {'runs': runs(float('nan'), 0.72)}}
  cmp = study_report.compare(res, ['ref', 'x'], 'ref', ['click'])
  assert np.isnan(cmp['x']['click/auc']['mean']) and cmp['x']['click/auc']['ci95'] is None
  assert cmp['x']['click/logloss']['ci95'] == [0.0, 0.0]   # finite metrics keep their interval


def test_study_runs_checkpoint_on_evaluation_steps_without_changing_their_fingerprint():
  """A study run lasts hours and a killed session gets no SIGTERM: the protocol checkpoints every
  other evaluation (so the saved early-stopping state is an evaluation's), and since how often
  it saves changes no result, the committed mechanism-world records keep matching."""
  from onetrans_jax.experiments import onetrans_rq2_ablation
  c = onetrans_rq2_ablation.get_config('mechanisms')
  assert c.train.checkpoint_every == 2 * c.train.eval_every == 1000
  name, overrides = c.sweep.variants[0]
  fp, _ = records.fingerprint(variant_config(c, overrides, 0))
  committed = os.path.join(os.path.dirname(__file__), '..', 'results', 'rq2_mechanisms', 'runs',
                           'OneTrans_S', f'seed_0-{fp[:12]}.json')
  assert name == 'OneTrans_S' and os.path.exists(committed), fp[:12]
  c.train.checkpoint_every = 0
  assert records.fingerprint(variant_config(c, overrides, 0))[0] == fp


def _conv_record(step: int, best_step: int, curve: list[float], cap: int = 1000) -> dict:
  cfg = {'train.total_steps': cap, 'train.eval_every': 100, 'train.early_stopping.patience': 3,
         'train.early_stopping.metric': 'valid/click/auc'}
  return {'config': cfg, 'step': step, 'best_step': best_step,
          'valid_curve': [{'step': 100 * (i + 1), 'click': {'auc': v}}
                          for i, v in enumerate(curve)]}


def test_convergence_counts_runs_at_the_cap_and_their_last_window_gain():
  stopped = _conv_record(600, 300, [0.60, 0.65, 0.70, 0.69, 0.69, 0.68])
  # Still rising at the cap: best 0.80 at step 1000, 0.74 one window (300 steps) before the end.
  rising = _conv_record(1000, 1000, [0.5, 0.6, 0.65, 0.7, 0.72, 0.73, 0.74, 0.76, 0.78, 0.80])
  conv = study_report.convergence({'a': [stopped, rising], 'b': [stopped]})
  a = conv['a']
  assert (a['runs'], a['stopped_early'], a['at_cap'], a['at_cap_best_last']) == (2, 1, 1, 1)
  assert a['cap'] == 1000 and a['window'] == 300 and a['mean_step'] == 800
  assert a['mean_best_step'] == 650
  assert a['at_cap_gain_mean'] == pytest.approx(0.80 - 0.74)
  assert conv['b']['at_cap'] == 0 and conv['b']['at_cap_gain_mean'] is None
  text = '\n'.join(study_report.convergence_markdown(conv))
  assert '2 of 3 runs stopped early' in text and '1 reached the step cap' in text
  assert '+0.0600' in text
  # A record without the protocol's fields (an old or hand-made one) is left out, not guessed.
  assert study_report.convergence({'c': [{'step': 5, 'config': {}}]}) == {}


def _estimated_plan(tmp_path, monkeypatch, results_dir: str = ''):
  """The dry-run plan of sweep_config's two rows at seed 0 (the matmul rate pinned to 1 GFLOP/s),
  its uncalibrated estimate (the analytic step time at the cap plus the start-up cost) and each
  row's analytic seconds per step."""
  from onetrans_jax import sweep as sweep_lib
  monkeypatch.setattr(sweep_lib, '_matmul_rate', lambda: 1e9)
  c = sweep_config()
  c.sweep.seeds = (0,)
  c.sweep.dry_run = True
  c.sweep.results_dir = results_dir
  plan = run_sweep(c, str(tmp_path / 'work'))['plan']
  raw = sweep_lib.estimate_seconds(plan)
  steps = int(c.train.total_steps)
  analytic = {r.variant: (raw[(r.variant, 0)] - sweep_lib.STARTUP_SECONDS) / steps for r in plan}
  return plan, raw, analytic


def _other_studys_record(tmp_path, run, seconds: float) -> tuple[str, dict]:
  """Another study's committed record of ``run``'s config at seed 7 (so not the plan's own run),
  which took ``seconds`` for its 3 steps: (its path, the record)."""
  rec = {'fingerprint': 'f' * 64, 'metrics': {}, 'config': dict(run.flat, seed=7),
         'wall_seconds': seconds, 'step': 3, 'finished': '2026-12-06T00:00:00+00:00'}
  path = str(tmp_path / 'results' / 'other' / 'runs' / 'base' / 'seed_7-ffffffffffff.json')
  records.write_record(path, rec)
  return path, rec


def test_the_estimate_is_calibrated_by_a_finished_run_of_the_same_family(tmp_path, monkeypatch):
  import dataclasses
  from onetrans_jax import sweep as sweep_lib
  plan, raw, analytic = _estimated_plan(tmp_path, monkeypatch)
  base, wide = plan
  # 'base' finished at 4x its analytic step time: 'wide' (same family) is scaled by that 4x.
  done = dataclasses.replace(base, action='reuse', record={
      'wall_seconds': 4 * analytic['base'] * 3, 'step': 3})
  est = sweep_lib.estimate_seconds([done, wide])
  assert est[('base', 0)] == 0.0
  assert est[('wide', 0)] == pytest.approx(4 * analytic['wide'] * 3)
  # With no finished run of its own family, another family's calibrates it, by that family's
  # measured / analytic ratio (the next test: the median of several).
  other = dataclasses.replace(done, config=done.config.copy_and_resolve_references())
  from onetrans_jax.models.baselines import config as baselines_config
  other.config.model = baselines_config.defaults('transformer', 'rankmixer')
  untimed = dataclasses.replace(other, action='train', record=None)
  other_analytic = (sweep_lib.estimate_seconds([untimed])[('base', 0)]
                    - sweep_lib.STARTUP_SECONDS) / 3
  ratio = 4 * analytic['base'] / other_analytic
  assert sweep_lib.estimate_seconds([other, wide])[('wide', 0)] == pytest.approx(
      ratio * analytic['wide'] * 3)


def test_the_estimate_charges_a_shared_sequence_encoder_once_per_request(tmp_path, monkeypatch):
  """Uncalibrated, a run costs its step's FLOPs as the model runs them: an encode-then-interact
  baseline's sequence encoder once per request, not once per candidate (the per-impression
  count put the mechanism world's RankMixer + LONGER at 41 hours a run against ~1 measured)."""
  import dataclasses
  from onetrans_jax import sweep as sweep_lib
  from onetrans_jax.models.baselines import config as baselines_config
  monkeypatch.setattr(sweep_lib, '_matmul_rate', lambda: 1e9)
  c = sweep_config()
  c.sweep.seeds = (0,)
  c.sweep.dry_run = True
  c.model = baselines_config.defaults('transformer', 'rankmixer')
  c.sweep.variants = (('base', ()),)
  (run,) = run_sweep(c, str(tmp_path))['plan']
  schema = pipeline.build_dataset(run.config.data).schema
  cands, batch = schema.num_candidates, run.config.data.batch_size
  assert cands > 1
  per_request = models.training_flops_per_request(run.config.model, schema, cands)
  per_impression = models.training_flops_per_example(run.config.model, schema)
  assert per_request < 0.9 * cands * per_impression   # the encoder's share is not repeated
  seconds = sweep_lib.estimate_seconds([run])[('base', 0)]
  steps = int(run.config.train.total_steps)
  assert seconds == pytest.approx(sweep_lib.STARTUP_SECONDS + steps * batch * per_request /
                                  (1e9 * sweep_lib.ASSUMED_MFU))
  # A family without a shared side is charged C x its per-impression count.
  mlp = dataclasses.replace(run, config=sweep_config())
  mlp_schema = pipeline.build_dataset(mlp.config.data).schema
  assert models.training_flops_per_request(mlp.config.model, mlp_schema, cands) == (
      cands * models.training_flops_per_example(mlp.config.model, mlp_schema))


def test_the_plan_states_the_total_early_stopping_implies(tmp_path, monkeypatch):
  """The caps' total, then the total if the runs left stop where the finished ones did."""
  import dataclasses
  from onetrans_jax import sweep as sweep_lib
  monkeypatch.setattr(sweep_lib, '_matmul_rate', lambda: 1e9)
  c = sweep_config()
  c.sweep.seeds = (0, 1)
  c.sweep.dry_run = True
  plan = run_sweep(c, str(tmp_path))['plan']
  assert sweep_lib.stop_fraction(plan) is None   # nothing finished: the caps' total alone
  assert 'if the rest stop' not in sweep_lib.format_plan(plan, sweep_lib.estimate_seconds(plan))
  cap = int(plan[0].config.train.total_steps)
  assert cap == 3
  # Two finished runs, stopped at 1/3 and 2/3 of the cap: median 50%.
  plan[0] = dataclasses.replace(plan[0], action='reuse', record={'wall_seconds': 6.0, 'step': 1})
  plan[1] = dataclasses.replace(plan[1], action='reuse', record={'wall_seconds': 6.0, 'step': 2})
  assert sweep_lib.stop_fraction(plan) == (pytest.approx(0.5), 2)
  est = sweep_lib.estimate_seconds(plan)
  text = sweep_lib.format_plan(plan, est)
  total = sum(est.values())
  assert f'estimated {reporting.hms(total)} at the step caps; ' in text
  assert (f'{reporting.hms(0.5 * total)} if the rest stop where the 2 finished run(s) did '
          '(median at 50% of the cap)') in text


def test_a_study_without_finished_runs_is_calibrated_by_another_studys_records(tmp_path,
                                                                                 monkeypatch):
  """No finished run in the plan: the same family's records on the same data set, committed by
  another study beside this one, scale the analytic estimate; another data set's do not."""
  from onetrans_jax import sweep as sweep_lib
  mine = str(tmp_path / 'results' / 'mine' / 'runs')
  plan, raw, analytic = _estimated_plan(tmp_path, monkeypatch, mine)
  base, _ = plan
  assert sweep_lib.estimate_seconds(plan, results_dir=mine) == raw  # none yet
  # Another study's 'base' run (another seed, so not this plan's run) took 4x its analytic time.
  other, rec = _other_studys_record(tmp_path, base, 4 * analytic['base'] * 3)
  est = sweep_lib.estimate_seconds(plan, results_dir=mine)
  assert est[('base', 0)] == pytest.approx(4 * analytic['base'] * 3)
  assert est[('wide', 0)] == pytest.approx(4 * analytic['wide'] * 3)
  # The same record on another data set calibrates nothing.
  records.write_record(other, dict(rec, config=dict(base.flat, **{'data.name': 'elsewhere'})))
  assert sweep_lib.estimate_seconds(plan, results_dir=mine) == raw


def test_the_report_names_the_code_of_its_runs():
  sha = 'a' * 40
  recs = [{'code': {'commit': sha, 'dirty': False}}, {'code': {'commit': sha, 'dirty': False}},
          {'code': {'commit': 'b' * 40, 'dirty': True}}, {},
          {'code': {'commit': None, 'dirty': None, 'package': '0.1.0'}}]
  assert study_report.code_line(recs) == (
      'aaaaaaaaaaaa (2 runs); bbbbbbbbbbbb +edits (1 run); runs recorded before records named '
      'their code (1 run); package 0.1.0 (1 run)')
  assert study_report.code_line([]) == 'no run records'


def test_a_diverged_run_does_not_stop_the_runs_after_it(tmp_path, monkeypatch):
  """A run that fails on its own (NaN loss) is logged; the runs after it still train and write
  their records, and the sweep then fails naming it (a queue lane's other runs keep their turn)."""
  from onetrans_jax import train as train_mod
  from onetrans_jax.errors import NonFiniteLossError
  real = train_mod.train_and_evaluate

  def diverges_for_base_seed_0(cfg, workdir):
    if workdir.endswith(os.path.join('base', 'seed_0')):
      raise NonFiniteLossError('loss is NaN/inf at step 2')
    return real(cfg, workdir)
  monkeypatch.setattr(train_mod, 'train_and_evaluate', diverges_for_base_seed_0)
  with pytest.raises(NonFiniteLossError,
                     match=r'1 of 4 runs failed \(base seed 0\).*NaN/inf at step 2'):
    run_sweep(sweep_config(), str(tmp_path))
  for name, seed in (('base', 1), ('wide', 0), ('wide', 1)):
    assert (tmp_path / name / f'seed_{seed}' / 'record.json').exists()
  assert not (tmp_path / 'base' / 'seed_0' / 'record.json').exists()
  monkeypatch.setattr(train_mod, 'train_and_evaluate', real)
  out = run_sweep(sweep_config(), str(tmp_path))   # the next invocation trains only that one
  assert [r.action for r in out['plan']] == ['train', 'reuse', 'reuse', 'reuse']


def test_a_record_says_how_many_cpus_its_run_could_use():
  """A lane pinned to one core trains on one XLA thread, which changes the run's rounding: the
  record keeps the CPUs the process could use beside the machine's count."""
  mach = records.machine()
  assert mach['cpus_usable'] == len(os.sched_getaffinity(0))
  assert 1 <= mach['cpus_usable'] <= mach['cpu_count']


def test_a_run_directory_another_process_trains_in_is_never_moved_aside(tmp_path):
  """A second sweep over a workdir whose lanes still train (another config's run in it, its lock
  held by a live process) leaves that directory alone and says why, instead of renaming it under
  the process that writes into it."""
  import datetime
  import socket
  import subprocess
  import sys
  from onetrans_jax import workdir as workdir_lib
  from onetrans_jax.errors import WorkdirError
  work = tmp_path / 'work'
  run_sweep(_one_run_config(tmp_path), str(work))
  run_dir = work / 'base' / 'seed_0'
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    (run_dir / workdir_lib.LOCK_FILE).write_text(json.dumps({
        'pid': holder.pid, 'host': socket.gethostname(),
        'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}))
    with pytest.raises(WorkdirError, match=rf'1 of 1 runs failed \(base seed 0\).*in use by '
                                           rf'another run \(pid {holder.pid}'):
      run_sweep(_one_run_config(tmp_path, hidden=(40,)), str(work))
    assert (run_dir / 'final_metrics.json').exists()
    assert not (work / 'base' / 'seed_0.stale').exists()
  finally:
    holder.kill()
    holder.wait()


def _hold(lock_dir, pid: int) -> None:
  """Writes a run.lock in ``lock_dir`` held by ``pid`` on this host (another live process)."""
  import datetime
  import socket
  from onetrans_jax import workdir as workdir_lib
  os.makedirs(lock_dir, exist_ok=True)
  (lock_dir / workdir_lib.LOCK_FILE).write_text(json.dumps({
      'pid': pid, 'host': socket.gethostname(),
      'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}))


def test_lanes_that_claim_runs_share_a_study_and_skip_what_another_holds(tmp_path, capsys):
  """sweep.claim: a lane walks the whole list, longest estimate first (the wider model), skips
  the run another live process has claimed, writes records and no report; once that process is
  gone its claim is stale and the next lane trains only that run; the whole sweep then reports."""
  import subprocess
  import sys
  from onetrans_jax.sweep import CLAIMS_DIR
  c = sweep_config()
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  c.sweep.claim = True
  work = tmp_path / 'w'
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    _hold(work / CLAIMS_DIR / 'wide' / 'seed_1', holder.pid)
    first = run_sweep(c, str(work))
  finally:
    holder.kill()
    holder.wait()
  assert [(r.variant, r.seed) for r in first['executed']] == [('wide', 0), ('base', 0),
                                                              ('base', 1)]
  assert 'wide seed 1: claimed by another process, skipped' in capsys.readouterr().out
  assert not (work / 'wide' / 'seed_1').exists() and not (work / 'report.md').exists()
  assert not (work / CLAIMS_DIR / 'base' / 'seed_0' / 'run.lock').exists()   # released
  second = run_sweep(c, str(work))
  assert sorted((r.variant, r.seed, r.action) for r in second['plan']) == [
      ('base', 0, 'reuse'), ('base', 1, 'reuse'), ('wide', 0, 'reuse'), ('wide', 1, 'train')]
  assert 'taking over the stale lock' in capsys.readouterr().out
  assert (work / 'wide' / 'seed_1' / 'record.json').exists()
  c.sweep.claim = False
  whole = run_sweep(c, str(work))
  assert [r.action for r in whole['plan']] == ['reuse'] * 4
  assert (work / 'report.md').exists()


def test_a_claimed_run_recorded_after_the_plan_is_reused_not_trained_again(tmp_path,
                                                                           monkeypatch):
  """A lane plans its study, then another lane finishes one of the runs: under its claim the
  lane plans that run again and reuses the record instead of training it a second time."""
  from onetrans_jax import sweep as sweep_mod
  from onetrans_jax import train as train_mod
  c = sweep_config()
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  work = str(tmp_path / 'w')
  stale = sweep_mod.plan_run(c, work, 'base', (), 0)
  assert stale.action == 'train'
  c.sweep.only = ('base',)
  other_lane = run_sweep(c, work)['records']['base'][0]

  def must_not_train(cfg, workdir):
    raise AssertionError(f'trained {workdir} again')
  monkeypatch.setattr(train_mod, 'train_and_evaluate', must_not_train)
  got = sweep_mod.execute_claimed(c, work, stale, ())
  assert got['fingerprint'] == stale.fingerprint and got['metrics'] == other_lane['metrics']


def test_a_claiming_lane_leaves_a_run_directory_in_use_by_a_process_without_claims(tmp_path,
                                                                                   capsys):
  """A run whose directory a process outside the claims trains in (its run.lock held) is skipped
  by a claiming lane, not counted as a failure and not moved."""
  import subprocess
  import sys
  c = _one_run_config(tmp_path)
  c.sweep.claim = True
  work = tmp_path / 'w'
  (work / 'base' / 'seed_0').mkdir(parents=True)
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    _hold(work / 'base' / 'seed_0', holder.pid)
    out = run_sweep(c, str(work))
  finally:
    holder.kill()
    holder.wait()
  assert out['executed'] == []
  assert (f'base seed 0: its run directory {work / "base" / "seed_0"} is in use by another '
          'process, skipped') in capsys.readouterr().out
  assert not (work / 'base' / 'seed_0.stale').exists()


@pytest.mark.parametrize('claim, shard, message', [
    ('yes', '', r"config.sweep.claim='yes': use True"),
    (True, '0/2', r"config.sweep.claim=True and config.sweep.shard='0/2' both split")])
def test_bad_claim_settings_name_the_field_before_anything_runs(tmp_path, claim, shard, message):
  c = sweep_config()
  c.sweep.claim = claim
  c.sweep.shard = shard
  with pytest.raises(ConfigError, match=message):
    run_sweep(c, str(tmp_path))
  assert not (tmp_path / 'base').exists()


def test_claiming_lanes_take_interrupted_runs_first_then_the_longest():
  """An interrupted run's checkpoint exists on this machine only: it goes first; then the
  longest estimates, ties in the list's order; reused runs (0 s) last."""
  from onetrans_jax.sweep import PlannedRun, claim_order

  def run(name, action):
    return PlannedRun(name, 0, ml_collections.ConfigDict(), name, {}, name, action, '', None)
  plan = [run('a', 'reuse'), run('b', 'train'), run('c', 'train'), run('d', 'resume'),
          run('e', 'train')]
  estimate = {('a', 0): 0.0, ('b', 0): 10.0, ('c', 0): 30.0, ('d', 0): 5.0, ('e', 0): 10.0}
  assert [r.variant for r in claim_order(plan, estimate)] == ['d', 'c', 'b', 'e', 'a']


def test_a_family_without_records_is_calibrated_by_the_other_families(tmp_path, monkeypatch):
  """A family with no record anywhere takes the median measured / analytic ratio of the other
  families (the plan's finished runs first, else other studies' records on the same data): a
  matmul timed beside busy lanes no longer sets its estimate alone."""
  import dataclasses as dc
  from onetrans_jax import sweep as sweep_lib
  # Two families: the rows' FFN widths stand in for two model families.
  monkeypatch.setattr(sweep_lib, '_family', lambda m: (str(tuple(m.hidden)),))
  mine = str(tmp_path / 'results' / 'mine' / 'runs')
  plan, raw, analytic = _estimated_plan(tmp_path, monkeypatch, mine)
  base, wide = plan
  # The plan's own finished 'base' run took 5x its analytic time: 'wide' is scaled by 5 too.
  done = dc.replace(base, action='reuse', record={'wall_seconds': 5 * analytic['base'] * 3,
                                                  'step': 3})
  est = sweep_lib.estimate_seconds([done, wide], results_dir=mine)
  assert est[('base', 0)] == 0.0
  assert est[('wide', 0)] == pytest.approx(5 * analytic['wide'] * 3)
  # No finished run in the plan: another study's 'base' record (4x) calibrates both families.
  _other_studys_record(tmp_path, base, 4 * analytic['base'] * 3)
  est = sweep_lib.estimate_seconds(plan, results_dir=mine)
  assert est[('base', 0)] == pytest.approx(4 * analytic['base'] * 3)
  assert est[('wide', 0)] == pytest.approx(4 * analytic['wide'] * 3)
