"""The model registry and the families' config modules: one API, one validation style, one set of
defaults that builders and experiment files share."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from onetrans_jax import accounting, models
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.experiments import default, onerank_main, onetrans_s, pooled_mlp, rq1_baselines
from onetrans_jax.models import fields
from onetrans_jax.models.baselines import config as baselines_config
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.onerank import config as onerank_config
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.models.pooled_mlp import config as pooled_mlp_config
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config, small_config, tiny_baseline


@pytest.fixture(scope='module')
def schema():
  return pipeline.build_dataset(small_config().data).schema


def test_every_family_has_the_registry_api():
  assert sorted(models.FAMILIES) == ['baseline', 'onerank', 'onetrans', 'pooled_mlp']
  for name, family in models.FAMILIES.items():
    assert family.NAME == name
    for fn in ('defaults', 'from_config', 'param_count', 'forward_flops',
               'training_flops_per_example'):
      assert callable(getattr(family, fn)), (name, fn)
    assert family.defaults().name == name


def test_unknown_model_name_lists_the_known_ones(schema):
  with pytest.raises(ConfigError, match=r"config.model.name='onetranz': not a known model; "
                                        r"choose one of \['baseline', 'onerank', 'onetrans', "
                                        r"'pooled_mlp'\]"):
    models.build_model(ml_collections.ConfigDict({'name': 'onetranz'}), schema)


def test_experiment_files_start_from_the_family_defaults():
  """The experiment files restate no default: their model configs are the family's defaults plus
  the fields they study."""
  assert pooled_mlp.get_config().model.to_dict() == pooled_mlp_config.defaults().to_dict()
  small = onetrans_s.get_config('small').model.to_dict()
  assert small == onetrans_config.defaults(pyramid_multiple=8).to_dict()
  assert default.get_config().model.to_dict() == small   # the default job is onetrans_s:small
  onerank = onerank_main.get_config()
  assert onerank.model.time_gap_buckets is None                   # the family's default:
  schema = pipeline.build_dataset(onerank.data).schema
  assert models.build_model(onerank.model, schema).time_gap_buckets == 16  # 16 when aware


def test_a_missing_field_takes_the_family_default(schema):
  """Builders and experiment files read one set of defaults (time_gap_buckets was 16 in the
  experiment files but 0 in the builder when absent)."""
  full = onetrans_model_config()
  partial = ml_collections.ConfigDict(full.to_dict())
  with partial.unlocked():
    del partial['time_gap_buckets']
    del partial['predictor_levels']
  assert onetrans_config.defaults().time_gap_buckets is None   # 16 when timestamp-aware
  a, b = models.build_model(full, schema), models.build_model(partial, schema)
  assert a.time_gap_buckets == b.time_gap_buckets == 16
  assert a.predictor == b.predictor


def test_an_unknown_field_is_refused_with_the_known_ones(schema):
  cfg = ml_collections.ConfigDict(dict(onetrans_model_config().to_dict(), num_layer=2))
  with pytest.raises(ConfigError, match=r"config.model has unknown field\(s\) \['num_layer'\] "
                                        r"for config.model.name='onetrans'; known: \["):
    models.build_model(cfg, schema)


@pytest.mark.parametrize('field, value, kind, message', [
    ('width', 0, 'int', "config.model.width=0: must be a positive integer"),
    ('width', True, 'int', "config.model.width=True: must be a positive integer"),
    ('ns_hidden', -1, 'int0', "config.model.ns_hidden=-1: must be an integer >= 0"),
    ('group_hidden', -1, 'int0', "config.model.group_hidden=-1: must be an integer >= 0"),
    ('time_gap_buckets', 'x', 'int0', "config.model.time_gap_buckets='x': must be an integer"),
    ('hidden', (), 'ints', r"config.model.hidden=\(\): must be a non-empty tuple"),
    ('rank', 0, 'rank', "config.model.rank=0: must be None \\(full rank\\) or a positive"),
    ('detach', 1, 'bool', r"config.model.detach=1: choose one of \[True, False\]"),
    ('scoring', 'dot', ('matching', 'mlp'), r"config.model.scoring='dot': choose one of "
                                           r"\['matching', 'mlp'\]"),
    ('dtype', 'float16', 'dtype', r"config.model.dtype='float16': choose one of "
                                  r"\['bfloat16', 'float32'\]"),
])
def test_one_message_form_names_field_value_and_allowed(field, value, kind, message):
  with pytest.raises(fields.ModelConfigError, match=message):
    fields.check(field, value, kind)


def test_check_returns_the_normalised_value():
  assert fields.check('hidden', [4, np.int64(2)], 'ints') == (4, 2)
  assert fields.check('width', np.int32(8), 'int') == 8 and type(
      fields.check('width', np.int32(8), 'int')) is int
  assert fields.check('dtype', 'bfloat16', 'dtype') == fields.DTYPES['bfloat16']
  assert fields.check('detach', False, 'bool') is False
  assert fields.check('rank', None, 'rank') is None


@pytest.mark.parametrize('hidden', [(32,), (24, 8)])
def test_pooled_mlp_analytic_counts_match_the_model(schema, hidden):
  cfg = pooled_mlp_config.defaults(embed_dim=4, hidden=hidden, embedding_row_multiple=8)
  assert pooled_mlp_config.param_count(cfg, schema) == accounting.dense_params(cfg, schema)
  model = models.build_model(cfg, schema)
  batch = dummy_batch(schema, 3)
  params = partitioning.unbox(model.init(jax.random.key(0), batch)['params'])
  xla = accounting.xla_flops(lambda p, b: model.apply({'params': p}, b), params, batch)
  per_candidate = pooled_mlp_config.forward_flops(cfg, schema)['total']
  r, c = batch['cand']['mask'].shape
  # XLA counts the dense layers' matmuls (2 per multiply-add) plus elementwise work around them.
  assert per_candidate * r * c <= xla <= 1.25 * per_candidate * r * c


def test_registry_counts_match_the_built_models(schema):
  """Every experiment model's analytic count (the registry) equals its parameter shapes."""
  cfgs = [pooled_mlp.get_config().model, onetrans_s.get_config('small').model]
  cfgs += [dict(v).get('model', onerank_main.get_config().model)
           for _, v in onerank_main.get_config().sweep.variants]
  cfgs += [dict(v)['model'] for _, v in rq1_baselines.get_config().sweep.variants]
  for cfg in cfgs:
    assert models.param_count(cfg, schema) == accounting.dense_params(cfg, schema), cfg.name


def test_accounting_reads_the_registry(schema):
  for name, model_cfg in [('default', default.get_config().model),
                          ('pooled_mlp', pooled_mlp.get_config().model),
                          ('rq1', rq1_baselines.get_config().model),
                          ('onerank', onerank_main.get_config().model)]:
    family = models.family(model_cfg)
    assert accounting.batch_tflops(model_cfg, schema) == pytest.approx(
        family.training_flops_per_example(model_cfg, schema) * accounting.PAPER_BATCH / 1e12), name


@pytest.mark.parametrize('overrides', [
    {}, dict(pyramid=False), dict(param_sharing='shared'), dict(ns_tokenizer='group_wise'),
    dict(seq_merge='timestamp_agnostic'), dict(seq_merge='timestamp_agnostic', use_sep=False),
    dict(s_position='none', time_gap_buckets=0, ns_hidden=24, embedding_row_multiple=8),
    dict(predictor='ple', head_hidden=12), dict(num_layers=2, pyramid_schedule=(20, 4)),
])
def test_onetrans_analytic_params_match_the_model(schema, overrides):
  cfg = onetrans_model_config(**overrides)
  assert onetrans_config.param_count(cfg, schema) == accounting.dense_params(cfg, schema)


@pytest.mark.parametrize('overrides', [
    {}, dict(task_tokens='shared'), dict(scoring='mlp', head_hidden=12),
    dict(situation='mean'), dict(situation='constant_query'), dict(cross_task=False),
    dict(seq_merge='timestamp_agnostic', s_position='none', time_gap_buckets=0),
    dict(embedding_row_multiple=8, ffn_mult=2),
    dict(candidate_reads_context=True, candidate_in_task_tokens=True, request_bias=True),
])
def test_onerank_analytic_params_match_the_model(schema, overrides):
  cfg = onerank_config.defaults(width=16, num_heads=2, num_layers=2, embed_dim=8, **overrides)
  assert onerank_config.param_count(cfg, schema) == accounting.dense_params(cfg, schema)


@pytest.mark.parametrize('sequence', ['din', 'stack_din', 'longer', 'transformer'])
@pytest.mark.parametrize('interaction', ['dcnv2', 'wukong', 'hiformer', 'rankmixer'])
def test_baseline_analytic_params_match_the_model(schema, sequence, interaction):
  cfg = tiny_baseline(sequence, interaction)
  assert baselines_config.param_count(cfg, schema) == accounting.dense_params(cfg, schema)


@pytest.mark.parametrize('interaction, options', [
    ('dcnv2', dict(rank=4, structure='parallel')), ('wukong', dict(fm_rank=None)),
    ('wukong', dict(num_lcb_tokens=0, num_fm_tokens=3)), ('hiformer', dict(rank=None)),
])
def test_baseline_analytic_params_cover_the_variants(schema, interaction, options):
  cfg = tiny_baseline('din', interaction, embedding_row_multiple=8)
  cfg[interaction].update(options)
  assert baselines_config.param_count(cfg, schema) == accounting.dense_params(cfg, schema)
