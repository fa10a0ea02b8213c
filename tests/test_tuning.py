"""The light tuning budget: a tuning sweep chooses each family's setting on validation (never on
the hold-out), a partial sweep (``sweep.only``) runs a subset, and the studies use the committed
choices."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from onetrans_jax import tuning
from onetrans_jax.errors import ConfigError
from onetrans_jax.experiments import movielens_study
from onetrans_jax.sweep import run_sweep
from tests.helpers import small_config



def _record(name: str, points: list[tuple[int, float]], best: int, seed: int = 0) -> dict:
  return {'variant': name, 'seed': seed, 'best_step': best,
          'valid_curve': [{'step': s, 'click': {'auc': v, 'logloss': 1 - v}} for s, v in points]}


def test_select_reads_the_best_steps_validation_value_per_family():
  recs = {
      'A @ lr 0.1': [_record('A @ lr 0.1', [(50, 0.70), (100, 0.74)], best=100)],
      # The curve's later 0.80 is not the kept step (e.g. a min_delta rule): 0.72 is its score.
      'A @ lr 0.02': [_record('A @ lr 0.02', [(50, 0.72), (100, 0.80)], best=50)],
      'B @ lr 0.1': [_record('B @ lr 0.1', [(50, 0.60)], best=50),
                     _record('B @ lr 0.1', [(50, 0.70)], best=50, seed=1)],
      'B @ lr 0.02': [_record('B @ lr 0.02', [(50, 0.66)], best=50)],
  }
  sel = tuning.select(recs, 'valid/click/auc')
  assert sel['families']['A'] == {'scores': {'lr 0.1': 0.74, 'lr 0.02': 0.72}, 'chosen': 'lr 0.1'}
  assert sel['families']['B']['scores']['lr 0.1'] == pytest.approx(0.65)  # mean over seeds
  assert sel['families']['B']['chosen'] == 'lr 0.02'
  low = tuning.select(recs, 'valid/click/logloss', mode='min')
  assert low['families']['A']['chosen'] == 'lr 0.1'   # logloss 0.26 < 0.28
  table = tuning.format_selection(sel)
  assert '| A | **0.7400** | 0.7200 | lr 0.1 |' in table
  assert '| B | 0.6500 | **0.6600** | lr 0.02 |' in table


def test_select_errors_name_the_row_and_the_fix():
  with pytest.raises(ConfigError, match="tuning row 'A' is not named"):
    tuning.select({'A': [_record('A', [(1, 0.5)], 1)]}, 'valid/click/auc')
  with pytest.raises(ValueError, match="'A @ x' seed 0 has no validation curve.*valid_fraction"):
    tuning.select({'A @ x': [{'variant': 'A @ x', 'seed': 0, 'best_step': None,
                              'valid_curve': None}]}, 'valid/click/auc')


def _tiny_sweep(tmp_path, variants, **sweep) -> ml_collections.ConfigDict:
  c = small_config()
  c.train.total_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  c.train.eval_every = 2
  c.data.valid_fraction = 0.002
  c.data.num_eval_requests = 64
  c.train.early_stopping.metric = 'valid/click/auc'
  c.sweep = ml_collections.ConfigDict()
  c.sweep.reference = variants[0][0]
  c.sweep.variants = variants
  c.sweep.seeds = (0,)
  c.sweep.tasks = (('click', 'CTR'), ('cart', 'CVR'))
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  c.sweep.only = ()
  c.sweep.select = ''
  c.sweep.update(sweep)
  return c


def test_a_tuning_sweep_split_with_only_then_selects_on_validation(tmp_path):
  variants = (('m @ hidden 32', ()), ('m @ hidden 48', (('model.hidden', (48,)),)))
  work = str(tmp_path / 'work')
  part = run_sweep(_tiny_sweep(tmp_path, variants, only=('m @ hidden 48',),
                               select='valid/click/auc'), work)
  assert [(r.variant, r.action) for r in part['plan']] == [('m @ hidden 48', 'train')]
  assert not os.path.exists(os.path.join(work, 'summary.json'))  # a partial sweep: no report
  assert os.listdir(tmp_path / 'study' / 'runs' / 'm_hidden_48')  # its record is committed
  full = run_sweep(_tiny_sweep(tmp_path, variants, select='valid/click/auc'), work)
  assert [r.action for r in full['plan']] == ['train', 'reuse']
  sel = json.loads((tmp_path / 'work' / 'selection.json').read_text())
  scores = {name.split(' @ ')[1]: tuning.valid_score(res['records'][0], 'valid/click/auc')
            for name, res in full['results'].items()}
  assert sel['families']['m']['scores'] == pytest.approx(scores)
  assert sel['families']['m']['chosen'] == max(scores, key=scores.get)
  assert (tmp_path / 'study' / 'selection.md').read_text().startswith('# Tuning selection')


def test_only_and_select_are_checked_before_anything_runs(tmp_path):
  variants = (('m @ a', ()), ('m @ b', (('model.hidden', (48,)),)))
  with pytest.raises(ConfigError, match=r"sweep.only names \['m @ c'\], not variants"):
    run_sweep(_tiny_sweep(tmp_path, variants, only=('m @ c',)), str(tmp_path / 'w'))
  with pytest.raises(ConfigError, match="sweep.select='click/auc': use valid/<task>/"):
    run_sweep(_tiny_sweep(tmp_path, variants, select='click/auc'), str(tmp_path / 'w'))
  with pytest.raises(ConfigError, match="tuning row 'plain' is not named"):
    run_sweep(_tiny_sweep(tmp_path, (('plain', ()),), select='valid/click/auc'),
              str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_the_tuning_config_gives_every_neural_family_the_same_grid():
  c = movielens_study.get_config('100k_tune')
  names = [n for n, _ in c.sweep.variants]
  families = {tuning.split_name(n)[0] for n in names}
  assert len(families) == 9 and len(names) == 9 * len(movielens_study.SPARSE_LRS)
  assert not any('rate' in f or 'LightGBM' in f or 'logistic' in f for f in families)
  for name, overrides in c.sweep.variants:
    lr = dict(overrides)['optimizer.sparse.learning_rate']
    assert name.endswith(f'sparse lr {lr}')
  assert c.sweep.select == 'valid/like/auc' and c.sweep.seeds == (0,)
  assert c.sweep.reference in names


def test_the_studies_use_each_familys_tuned_rate(monkeypatch):
  monkeypatch.setitem(movielens_study.TUNED_SPARSE_LR, '100k', {'OneTrans_S': 0.02})
  rq1 = dict(movielens_study.get_config('100k').sweep.variants)
  assert dict(rq1['OneTrans_S'])['optimizer.sparse.learning_rate'] == 0.02
  assert 'optimizer.sparse.learning_rate' not in dict(rq1['DCNv2 + DIN'])
  rq2 = movielens_study.get_config('100k_rq2').sweep.variants
  assert all(dict(o)['optimizer.sparse.learning_rate'] == 0.02 for _, o in rq2)


@pytest.mark.parametrize('dataset', ['100k', '1m'])
def test_the_tuned_rates_are_the_committed_selection(dataset):
  path = os.path.join(os.path.dirname(__file__), '..', 'results', f'ml{dataset}_tune',
                      'selection.json')
  if not os.path.exists(path):
    pytest.skip(f'no committed tuning selection at {path} yet')
  with open(path, encoding='utf-8') as f:
    sel = json.load(f)
  chosen = {fam: float(v['chosen'].split()[-1]) for fam, v in sel['families'].items()}
  assert movielens_study.TUNED_SPARSE_LR[dataset] == chosen


def test_the_onerank_studies_train_each_family_at_its_tuned_setting(monkeypatch):
  """onerank_main.TUNED (copied from onerank_tune's selection) reaches every mechanism-world
  OneRank row and the OneTrans + PLE row; the compute-matched rows keep their own width, the
  other configs (quick, MovieLens) are untouched; empty TUNED changes nothing."""
  from onetrans_jax.experiments import onerank_ablation, onerank_main
  from onetrans_jax.records import variant_config
  before = {n: o for n, o in onerank_main.get_config('mechanisms').sweep.variants}
  assert dict(before['OneRank']) == {}
  monkeypatch.setattr(onerank_main, 'TUNED', {
      'OneRank': onerank_main.tuned_settings('OneRank', 'dense lr 0.002, width 128'),
      'OneTrans + PLE': onerank_main.tuned_settings('OneTrans + PLE', 'dense lr 0.001, width 64')})
  c = onerank_main.get_config('mechanisms')
  cfgs = {n: variant_config(c, o, 0) for n, o in c.sweep.variants}
  assert cfgs['OneRank'].model.width == 128
  assert cfgs['OneTrans + PLE'].model.predictor == 'ple'
  assert cfgs['OneTrans + PLE'].model.predictor_expert_hidden == 64
  assert cfgs['OneTrans + PLE'].optimizer.dense.learning_rate == 0.001
  matched = cfgs['OneRank, 1.2x the FLOPs of OneTrans + PLE']
  assert (matched.model.width, matched.model.num_layers) == (128, 6)
  assert cfgs['OneRank, the dense params of OneTrans + PLE'].model.width == 144
  for name in ('OneRank', 'OneRank, 1.2x the FLOPs of OneTrans + PLE',
               'OneRank, the dense params of OneTrans + PLE'):
    assert cfgs[name].optimizer.dense.learning_rate == 0.002
  ablation = onerank_ablation.get_config('mechanisms')
  for name, o in ablation.sweep.variants:
    cfg = variant_config(ablation, o, 0)
    assert (cfg.model.width, cfg.optimizer.dense.learning_rate) == (128, 0.002), name
  assert dict(dict(onerank_main.get_config('quick').sweep.variants)['OneRank']) == {}
  with pytest.raises(ValueError, match=r"'OneRank' @ 'sparse lr 0.1' is not a setting"):
    onerank_main.tuned_settings('OneRank', 'sparse lr 0.1')


def test_onerank_tuned_settings_are_the_committed_selection():
  from onetrans_jax.experiments import onerank_main
  path = os.path.join(os.path.dirname(__file__), '..', 'results', 'onerank_tune', 'selection.json')
  if not os.path.exists(path):
    assert onerank_main.TUNED == {}   # nothing may be copied before the study is committed
    pytest.skip(f'no committed OneRank tuning selection at {path} yet')
  with open(path, encoding='utf-8') as f:
    sel = json.load(f)
  assert onerank_main.TUNED == {fam: onerank_main.tuned_settings(fam, v['chosen'])
                                for fam, v in sel['families'].items()}
