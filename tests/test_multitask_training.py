"""The multi-task comparison wired end to end: OneRank and the OneTrans predictors in the one
training program, the joint task definition, the stability diagnostics, the experiment files."""

from __future__ import annotations

import importlib
import json

import jax
import numpy as np
import optax
import pytest

from onetrans_jax import accounting, losses, records
from onetrans_jax.errors import ConfigError
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.multitask import config as predictor_config
from onetrans_jax.models.onerank import config as onerank_config
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.schema import dummy_batch
from onetrans_jax.train import _host_eval_arrays, train_and_evaluate
from tests.helpers import onetrans_model_config, small_config


def _tiny_onerank_config():
  c = small_config()
  c.model = onerank_config.defaults(width=16, num_heads=2, num_layers=2, embed_dim=8)
  c.loss.mode = 'onerank'
  c.train.total_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  c.train.diagnostics_every = 2
  c.data.num_eval_requests = 64
  return c


def test_onerank_trains_with_infonce_and_logs_diagnostics(tmp_path, capsys):
  c = _tiny_onerank_config()
  c.model.task_bias_init = 'base_rate'
  result = train_and_evaluate(c, str(tmp_path))
  printed = capsys.readouterr()
  assert "tasks' base rates on the training range (the initial output biases): click 0." in (
      printed.out + printed.err)
  assert set(result['final']) == {'click', 'cart', 'order'}
  for task, m in result['final'].items():
    assert 0.0 < m['auc'] < 1.0, task
    # Unconditional tasks: every real impression counts, for the child tasks too.
    assert m['count'] == result['final']['click']['count']
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  diag = [r for r in records if r['split'] == 'diagnostics']
  assert [r['step'] for r in diag] == [2, 4]
  for key in ('grad_cos/click__cart', 'grad_cos/click__order', 'grad_cos/cart__order'):
    assert all(-1.0 <= r[key] <= 1.0 for r in diag), key
  # The loss variance is over the samples seen so far: 0 after one, > 0 after two.
  assert diag[0]['loss_var/click'] == 0.0 and diag[1]['loss_var/click'] > 0.0
  train = [r for r in records if r['split'] == 'train']
  assert all(np.isfinite(r['loss']) for r in train)
  # The stability signal reads each task's BCE alone (one loss definition for every row): under
  # the 'onerank' loss the training loss adds the InfoNCE term on top of it.
  assert all(0.0 < r[f'bce_{t}'] < r[f'loss_{t}'] for r in train for t in ('click', 'cart'))


def test_a_resumed_run_logs_the_diagnostics_of_an_uninterrupted_one(tmp_path):
  """The loss window is refilled from the logged BCEs on resume, so a run stopped at step 4 and
  resumed logs the same detrended variances (and cosines) as one that ran straight, and its
  result carries that series for the run record."""
  c = _tiny_onerank_config()
  c.train.total_steps = 8
  c.train.diagnostics_every = 1
  c.train.diagnostics_window = 3
  straight = train_and_evaluate(c, str(tmp_path / 'straight'))
  train_and_evaluate(c, str(tmp_path / 'resumed'), stop_at_step=4)
  resumed = train_and_evaluate(c, str(tmp_path / 'resumed'))
  a, b = straight['diagnostics'], resumed['diagnostics']
  assert [p['step'] for p in a] == [p['step'] for p in b] == list(range(1, 9))
  assert set(a[0]) == {'step', 'loss_var/click', 'loss_var/cart', 'loss_var/order',
                       'grad_cos/click__cart', 'grad_cos/click__order', 'grad_cos/cart__order'}
  for pa, pb in zip(a, b):
    for key in pa:
      assert pb[key] == pytest.approx(pa[key], rel=1e-4, abs=1e-9), (pa['step'], key)
  # Steps 5-6 read the window the interrupted invocation filled (a fresh one would hold 1-2).
  assert b[4]['loss_var/click'] > 0.0


@pytest.mark.parametrize('model,mode,match', [
    ('onetrans', 'onerank', "the 'onerank' loss \\(BCE \\+ InfoNCE\\) needs the OneRank model"),
    ('onerank', 'conditional', "trains with config.loss.mode='onerank' or 'joint'"),
    ('onerank', 'esmm', "trains with config.loss.mode='onerank' or 'joint'"),
])
def test_loss_and_model_must_agree(tmp_path, model, mode, match):
  c = _tiny_onerank_config()
  if model == 'onetrans':
    c.model = onetrans_model_config()
  c.loss.mode = mode
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(c, str(tmp_path))


def test_joint_bce_counts_every_real_impression():
  logits = np.array([[[0.5, -1.0], [2.0, 0.3], [9.0, 9.0]]], np.float32)   # [1, 3, 2]
  labels = np.array([[[1, 0], [0, 0], [1, 1]]], np.float32)
  mask = np.array([[True, True, False]])
  _, per_task = losses.multitask_bce(logits, labels, mask, (-1, 0), (1.0, 1.0), 'joint')
  want = [np.mean(optax.sigmoid_binary_cross_entropy(logits[0, :2, t], labels[0, :2, t]))
          for t in range(2)]
  np.testing.assert_allclose(per_task, want, rtol=1e-6)
  # 'conditional' would drop the second impression from task 1 (its parent label is 0).
  _, cond = losses.multitask_bce(logits, labels, mask, (-1, 0), (1.0, 1.0), 'conditional')
  np.testing.assert_allclose(cond[1], optax.sigmoid_binary_cross_entropy(np.float32(-1.0),
                                                                     np.float32(0.0)), rtol=1e-6)


def test_oracle_probabilities_follow_the_task_definition():
  out = {'probs': np.full((1, 1, 3), 0.5, np.float32), 'labels': np.zeros((1, 1, 3), np.float32),
         'cand_mask': np.ones((1, 1), bool), 'user_id': np.array([7]),
         'true_prob': np.array([[[0.5, 0.4, 0.25]]], np.float32)}
  conditional = _host_eval_arrays(out, (-1, 0, 1))
  np.testing.assert_allclose(conditional['true_probs'], [[0.5, 0.4, 0.25]])
  joint = _host_eval_arrays(out, (-1, -1, -1), chain=(-1, 0, 1))
  np.testing.assert_allclose(joint['true_probs'], [[0.5, 0.2, 0.05]], rtol=1e-6)


@pytest.mark.parametrize('predictor', ['shared_bottom', 'mmoe', 'ple'])
def test_onetrans_predictors_replace_the_towers(data, predictor):
  schema, batch = data
  towers = onetrans_model_config()
  other = onetrans_model_config(predictor=predictor)
  model = build_model(other, schema)
  params = partitioning.unbox(model.init(jax.random.key(0), dummy_batch(schema, 1))['params'])
  logits = model.apply({'params': params}, batch)
  assert logits.shape == batch['labels'].shape and np.all(np.isfinite(logits))
  d, t = towers.width, schema.num_tasks
  # Only the head differs, by exactly the analytic head sizes.
  dense = lambda cfg: accounting.dense_params(cfg, schema)['dense']
  assert dense(other) - dense(towers) == (predictor_config.param_count(other, d, t) -
                                          predictor_config.param_count(towers, d, t))
  flops = lambda cfg: onetrans_config.forward_flops(cfg, schema)['head']
  assert flops(other) == predictor_config.forward_flops(other, d, t) > 0
  with pytest.raises(ConfigError, match='config.model.predictor'):
    build_model(onetrans_model_config(predictor='moe'), schema)


@pytest.mark.parametrize('name,rows', [('onerank_main', 6), ('onerank_ablation', 16)])
def test_experiment_files_load_and_every_variant_builds(data, name, rows):
  from onetrans_jax.sweep import variant_config
  schema, _ = data
  module = importlib.import_module(f'onetrans_jax.experiments.{name}')
  for arg in (None, 'quick', 'mechanisms'):
    c = module.get_config(arg)
    # the mechanism study of onerank_main keeps PLE and the OneRank rows only
    assert len(c.sweep.variants) == (4 if (name, arg) == ('onerank_main', 'mechanisms') else
                                     rows) and c.sweep.reference == 'OneRank'
    assert len(c.sweep.seeds) == {'quick': 1, 'mechanisms': 5}.get(arg, 3)
    names = [v for v, _ in c.sweep.variants]
    assert len(set(names)) == len(names)
    base = variant_config(c, (), seed=0)
    for variant, overrides in c.sweep.variants:
      cfg = variant_config(c, overrides, seed=0)
      build_model(cfg.model, schema)  # every variant is a valid model config
      # OneRank rows keep OneRank's loss (the loss rows change its weights); the OneTrans rows
      # train the same unconditional tasks with BCE.
      assert cfg.loss.mode == ('onerank' if cfg.model.name == 'onerank' else 'joint'), variant
      if name == 'onerank_ablation' and overrides:  # one thing changes, and it does change
        changed = {k for k, v in records.flat_config(cfg).items()
                   if records.flat_config(base).get(k) != v}
        assert changed == {k for k, _ in overrides}, (variant, changed)
  with pytest.raises(ValueError, match=f'onetrans_jax/experiments/{name}.py: unknown variant'):
    module.get_config('paper')


@pytest.mark.slow  # ~30-50 s; test_onerank.py checks every switch at module level
def test_ablation_switches_change_the_model(data):
  """Each ablation row of onetrans_jax/experiments/onerank_ablation.py changes OneRank's logits."""
  from onetrans_jax.experiments import onerank_ablation
  from onetrans_jax.sweep import variant_config
  schema, batch = data
  c = onerank_ablation.get_config('quick')
  outs = {}
  for variant, overrides in c.sweep.variants:
    cfg = variant_config(c, overrides, seed=0)
    for f, v in dict(width=16, num_heads=2, num_layers=1, embed_dim=8).items():
      cfg.model[f] = v
    model = build_model(cfg.model, schema)
    params = partitioning.unbox(model.init(jax.random.key(0), dummy_batch(schema, 1))['params'])
    outs[variant] = np.asarray(model.apply({'params': params}, batch))
  ref = outs.pop('OneRank')
  # Rows that change the backward pass or the loss only keep the scores at init.
  same_forward = {v for v, o in c.sweep.variants if o and all(
      k.startswith('loss.') or k in ('model.detach', 'model.learn_temperature') for k, _ in o)}
  assert len(same_forward) == 6     # detachment, temperature, InfoNCE / BCE only, 2 weights
  for variant, logits in outs.items():
    if variant in same_forward:
      np.testing.assert_allclose(logits, ref, atol=1e-6, err_msg=variant)
    else:
      assert np.max(np.abs(logits - ref)) > 1e-4, variant


def test_base_rate_init_sets_each_tasks_bias_to_the_logit_of_its_rate():
  """task_bias_init='base_rate': b_k (or the 'mlp' head's output bias) starts at logit(rate of
  task k over the real candidates of the training range); 'zero' never measures the data."""
  from onetrans_jax import models
  from onetrans_jax.data import pipeline
  c = _tiny_onerank_config()
  ds = pipeline.build_dataset(c.data)
  rates = pipeline.task_positive_rates(ds, (0, 40))             # every request of a small range
  reqs = [ds.source[i] for i in range(40)]
  pos = sum(np.asarray(q['labels'])[np.asarray(q['cand']['mask'])].sum(0) for q in reqs)
  n = sum(int(np.asarray(q['cand']['mask']).sum()) for q in reqs)
  np.testing.assert_allclose(rates, pos / n, rtol=1e-6)
  assert 0 < rates[2] < rates[1] < rates[0] < 1                # the funnel: click > cart > order
  sample = pipeline.task_positive_rates(ds, ds.train_range, max_requests=256)
  np.testing.assert_allclose(sample, pipeline.task_positive_rates(ds, ds.train_range, 256))

  def never():
    raise AssertionError('the zero init must not read the data')
  for scoring, name in (('matching', 'task_bias'), ('mlp', 'tower_b2')):
    c.model.scoring = scoring
    model = build_model(c.model, ds.schema)
    params = partitioning.unbox(model.init(jax.random.key(0), dummy_batch(ds.schema, 1))['params'])
    c.model.task_bias_init = 'zero'
    assert models.data_init(c.model, params, never) is params
    c.model.task_bias_init = 'base_rate'
    out = models.data_init(c.model, params, lambda: rates)
    np.testing.assert_allclose(np.asarray(out[name]), np.log(rates / (1 - rates)), rtol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(out[name]), rates, rtol=1e-5)
    assert all(out[k] is params[k] for k in params if k != name)
    c.model.task_bias_init = 'zero'
  with pytest.raises(ConfigError, match=r"config.model.task_bias_init='mean': choose one of"):
    c.model.task_bias_init = 'mean'
    build_model(c.model, ds.schema)


def test_the_tuning_sweep_gives_both_families_the_same_budget(data):
  """onerank_main:tune: OneRank and OneTrans + PLE each get the same 2 x 2 grid (dense lr x
  width), one seed, the study's protocol, chosen on validation click AUC."""
  from onetrans_jax import tuning
  from onetrans_jax.experiments import onerank_main
  from onetrans_jax.sweep import variant_config
  schema, _ = data
  c = onerank_main.get_config('tune')
  assert c.sweep.select == 'valid/click/auc' and c.sweep.seeds == (0,)
  assert c.data.valid_fraction > 0 and c.train.early_stopping.metric == 'valid/click/auc'
  families = {}
  for name, overrides in c.sweep.variants:
    family, _ = tuning.split_name(name)
    cfg = variant_config(c, overrides, seed=0)
    build_model(cfg.model, schema)
    families.setdefault(family, []).append((cfg.optimizer.dense.learning_rate,
                                            cfg.model.name, cfg.loss.mode))
  assert {f: len(v) for f, v in families.items()} == {'OneRank': 4, 'OneTrans + PLE': 4}
  assert {m for _, m, _ in families['OneRank']} == {'onerank'}
  assert {(m, l) for _, m, l in families['OneTrans + PLE']} == {('onetrans', 'joint')}
  assert sorted(lr for lr, _, _ in families['OneRank']) == [0.001, 0.001, 0.002, 0.002]


@pytest.mark.parametrize('arg', ['ml100k', 'ml1m'])
def test_the_movielens_variants_compare_ple_and_onerank_under_the_studies_protocol(arg):
  """onerank_main:ml100k / :ml1m: OneTrans + PLE and the three OneRank rows on like / love, the
  MovieLens studies' protocol; with the real ML-100K files present every row builds on them."""
  import os
  from onetrans_jax.data import pipeline
  from onetrans_jax.experiments import onerank_main
  from onetrans_jax.sweep import variant_config
  from tests.helpers import ROOT
  c = onerank_main.get_config(arg)
  assert [v for v, _ in c.sweep.variants] == [
      'OneTrans + PLE', 'OneRank', 'OneRank, 1.2x the FLOPs of OneTrans + PLE',
      'OneRank, the dense params of OneTrans + PLE']
  assert c.sweep.tasks == (('like', 'like'), ('love', 'love')) and len(c.sweep.seeds) == 3
  assert c.data.name == f'movielens_{arg[2:]}' and c.data.history_stats
  assert c.train.early_stopping.metric == 'valid/like/auc' and c.data.valid_fraction == 0.1
  assert c.optimizer.sparse.learning_rate == (0.02 if arg == 'ml100k' else 0.1)
  real = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')
  if arg != 'ml100k' or not os.path.isdir(real):
    return
  c.data.path = real
  schema = pipeline.build_dataset(c.data).schema
  assert schema.task_names == ('like', 'love')
  for _, overrides in c.sweep.variants:
    cfg = variant_config(c, overrides, seed=0)
    build_model(cfg.model, schema)
    assert cfg.loss.mode == ('onerank' if cfg.model.name == 'onerank' else 'joint')
