"""The paper's baselines (SPEC A.11) as composite models: training, accounting, config errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from onetrans_jax import accounting
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.experiments import rq1_baselines
from onetrans_jax.models import build_model
from onetrans_jax.models.baselines import config as baselines_config
from onetrans_jax.models.baselines.model import BaselineRanker, num_feature_tokens
from onetrans_jax.models.layers import partitioning
from onetrans_jax.schema import dummy_batch
from onetrans_jax.train import train_and_evaluate
from tests.helpers import TINY, small_config, tiny_baseline


def _schema(cfg=None):
  return pipeline.build_dataset((cfg or small_config()).data).schema


# ~25-60 s each on 2 CPU cores: DCNv2 + DIN in the default run, the other six in the slow step.
@pytest.mark.parametrize('name,sequence,interaction', [
    row if row[0] == 'DCNv2 + DIN' else pytest.param(*row, marks=pytest.mark.slow)
    for row in rq1_baselines.BASELINES])
def test_each_baseline_trains_and_beats_the_constant_predictor(tmp_path, name, sequence,
                                                               interaction):
  """Every row of the RQ1 table learns the synthetic funnel: click AUC well above chance and a
  logloss below the constant predictor's (the population's positive rate)."""
  c = small_config()
  c.model = tiny_baseline(sequence, interaction)
  c.optimizer.dense.learning_rate = 0.002
  c.data.batch_size = 32
  c.data.num_eval_requests = 512
  c.train.total_steps = 120
  c.train.log_every = 60
  c.train.checkpoint_every = 0
  final = train_and_evaluate(c, str(tmp_path))['final']
  click = final['click']
  assert click['auc'] > 0.6, (name, final)
  assert click['logloss'] < click['const_logloss'] - 0.005, (name, final)
  assert np.isfinite(final['cart']['logloss']), name


def _init(model_cfg, schema, num_requests=2):
  model = build_model(model_cfg, schema)
  batch = dummy_batch(schema, num_requests)
  params = partitioning.unbox(
      jax.eval_shape(lambda: model.init(jax.random.key(0), batch)['params']))
  return model, batch, params


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# The default run covers DIN, StackDIN and three backbones; the rest (and every module alone, in
# test_sequence_encoders.py / test_feature_interaction.py) in the slow step.
@pytest.mark.parametrize('name,sequence,interaction', [
    row if row[0] in ('DCNv2 + DIN', 'HiFormer + DIN', 'RankMixer + StackDIN')
    else pytest.param(*row, marks=pytest.mark.slow) for row in rq1_baselines.BASELINES])
def test_analytic_flops_match_xla(name, sequence, interaction):
  """The analytic count (request work once + C x candidate work) against XLA's compiled count."""
  schema = _schema()
  mcfg = tiny_baseline(sequence, interaction)
  model, batch, shapes = _init(mcfg, schema, num_requests=1)
  params = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
  xla = accounting.xla_flops(lambda p, b: model.apply({'params': p}, b), params, batch)
  f = baselines_config.forward_flops(mcfg, schema)
  analytic = f['sequence_request'] + schema.num_candidates * (f['total'] - f['sequence_request'])
  assert 0.9 < xla / analytic < 1.5, (name, xla, analytic)
  assert accounting.batch_tflops(mcfg, schema) == pytest.approx(
      3 * f['total'] * accounting.PAPER_BATCH / 1e12)


def test_parameter_counts_scale_with_depth_and_width():
  """RankMixer + DIN: each extra layer adds exactly one layer's per-token FFNs and norms; the
  re-tokenizer and FFNs scale with the token width d as their shapes say."""
  schema = _schema()
  def dense(**rm):
    m = tiny_baseline('din', 'rankmixer')
    m.rankmixer.update(rm)
    return accounting.dense_params(m, schema)['dense']
  t, k = TINY['rankmixer']['num_tokens'], TINY['rankmixer']['ffn_mult']
  for d in (32, 64):
    per_layer = t * (2 * d * k * d + k * d + d) + 2 * 2 * d   # FFNs [T,...] + two LayerNorms
    assert dense(width=d, num_layers=3) - dense(width=d, num_layers=1) == 2 * per_layer
  n = num_feature_tokens(schema, 'din', TINY['din'], 8)
  chunk = -(-n * 8 // t)
  one_layer = lambda d: t * (2 * d * k * d + k * d + d) + 4 * d
  # width 32 -> 64 changes the re-tokenizer, one layer and the towers' input.
  towers_in = lambda d: schema.num_tasks * d * 16
  expected = (t * chunk * 32 + t * 32 + one_layer(64) - one_layer(32) +
              towers_in(64) - towers_in(32))
  assert dense(width=64) - dense(width=32) == expected
  # DCNv2's cross layers: one more full-rank layer adds (N e)^2 + N e.
  def dcn(layers):
    m = tiny_baseline('din', 'dcnv2')
    m.dcnv2.num_cross_layers = layers
    return accounting.dense_params(m, schema)['dense']
  x0 = n * 8
  assert dcn(3) - dcn(2) == x0 * x0 + x0


def test_token_layout_and_target_columns():
  """DIN's target is the candidate's own item-id (and side) embeddings: with the candidate's
  item id copied into the history, the summary differs from a history of other items."""
  schema = _schema()
  mcfg = tiny_baseline('din', 'dcnv2')
  model, batch, _ = _init(mcfg, schema)
  params = partitioning.unbox(jax.jit(model.init)(jax.random.key(1), batch)['params'])
  assert set(params) >= {'embeddings', 'seq_click', 'seq_cart', 'seq_order', 'interaction',
                         'towers'}
  # N = request + candidate features + (1 + side) tokens per sequence.
  sides = sum(1 + len(s.side_features) for s in schema.sequences)
  assert num_feature_tokens(schema, 'din', {}, 8) == schema.num_ns_features + sides
  assert model.apply({'params': params}, batch).shape == (2, schema.num_candidates,
                                                          schema.num_tasks)


@pytest.mark.parametrize('edit,match', [
    (dict(sequence='gru'), r"config.model.sequence='gru': choose one of"),
    (dict(interaction='fm'), r"config.model.interaction='fm': choose one of"),
    (dict(embed_dim=0), r'config.model.embed_dim=0: must be a positive integer'),
])
def test_bad_top_level_fields(edit, match):
  m = tiny_baseline('din', 'dcnv2')
  m.update(edit)
  with pytest.raises(ConfigError, match=match):
    build_model(m, _schema())


def test_bad_module_fields():
  schema = _schema()
  m = tiny_baseline('longer', 'rankmixer')
  m.longer.width = 20
  with pytest.raises(ConfigError, match=r'config.model.longer.width=20: must be a multiple of '
                                        r'config.model.embed_dim=8'):
    build_model(m, schema)
  m = tiny_baseline('din', 'rankmixer')
  m.rankmixer.num_tokens = 3
  with pytest.raises(ConfigError, match=r'config.model.rankmixer.num_tokens=3: must divide'):
    build_model(m, schema)
  m = tiny_baseline('din', 'dcnv2')
  m.dcnv2.mlp_hidden = ()
  with pytest.raises(ConfigError, match=r'config.model.dcnv2.mlp_hidden=\(\): must be a '
                                        r'non-empty tuple'):
    build_model(m, schema)
  m = tiny_baseline('din', 'dcnv2')
  del m['din']
  with pytest.raises(ConfigError, match=r"config.model.din is missing: the 'din' module needs"):
    build_model(m, schema)
  m = tiny_baseline('din', 'dcnv2')
  m.din.heads = 2
  with pytest.raises(ConfigError, match=r"config.model.din has unknown fields \['heads'\]"):
    build_model(m, schema)


def test_din_needs_the_candidate_item_vocabulary():
  import dataclasses
  schema = _schema()
  cand = tuple(f for f in schema.candidate_categorical if f.vocab != 'item')
  other = dataclasses.replace(schema, candidate_categorical=cand)
  with pytest.raises(ConfigError, match=r"no candidate categorical feature uses the vocabulary "
                                        r"'item' of sequence 'click'"):
    build_model(tiny_baseline('din', 'dcnv2'), other)
  # Target-agnostic summaries need no item match.
  assert isinstance(build_model(tiny_baseline('transformer', 'rankmixer'), other),
                    BaselineRanker)


def test_rq1_experiment_rows():
  c = rq1_baselines.get_config('quick')
  names = [n for n, _ in c.sweep.variants]
  assert names[0] == c.sweep.reference == 'DCNv2 + DIN'
  assert names[-2:] == ['OneTrans_S', 'OneTrans_L'] and len(names) == 9
  schema = _schema(c)
  for name, overrides in c.sweep.variants:
    model = dict(overrides)['model']
    assert accounting.dense_params(model, schema)['dense'] > 0, name
    assert np.isfinite(accounting.batch_tflops(model, schema)), name
