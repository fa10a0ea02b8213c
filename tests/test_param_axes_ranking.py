"""Every parameter of OneRank, the baselines and their modules carries logical axes.

``jax.eval_shape`` only (no compile): each config reachable through onerank.py, task_channels.py,
baselines.py, sequence_encoders.py and feature_interaction.py initialises to boxed parameters whose
every leaf is annotated, with one logical name per dimension, no name twice in one array, and names
that map through the default mesh rules.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax import models, sharding
from onetrans_jax.data import pipeline
from onetrans_jax.experiments import onerank_ablation, rq1_baselines
from onetrans_jax.models import build_model
from onetrans_jax.models.baselines import feature_interaction as fi
from onetrans_jax.models.baselines import sequence_encoders as se
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.onerank.config import defaults as onerank_model
from onetrans_jax.optimizers import count_params
from onetrans_jax.schema import dummy_batch
from tests.helpers import small_config, tiny_baseline


@pytest.fixture(scope='module')
def schema():
  return pipeline.build_dataset(small_config().data).schema


def _check(abstract) -> None:
  """No unannotated leaf; names valid, one per dimension, mappable by the default rules."""
  assert partitioning.unannotated(abstract) == []
  boxes = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes
  for box in boxes:
    names = tuple(box.names)
    assert len(names) == len(box.value.shape), (names, box.value.shape)
    assert all(n is None or n in partitioning.AXES for n in names), names
    nn.logical_to_mesh_axes(names, sharding.DEFAULT_RULES)  # raises on a repeated name


def _model_variants(variants):
  """The model-config overrides of an experiment's sweep (the ``model.*`` switches)."""
  for name, overrides in variants:
    yield name, {k.split('.', 1)[1]: v for k, v in overrides if k.startswith('model.')}


ONERANK = list(_model_variants(onerank_ablation.VARIANTS)) + [
    ('detach_kv_weights', dict(detach_kv_weights=True)),
    ('reference layout', dict(request_level=False)),
    ('no history time gaps', dict(time_gap_buckets=0)),
    ('timestamp-agnostic history', dict(seq_merge='timestamp_agnostic', time_gap_buckets=0)),
    ('mlp head, own width', dict(scoring='mlp', head_hidden=24)),
    ('mean, no cross-task', dict(situation='mean', cross_task=False)),
]


@pytest.mark.parametrize('name,overrides', ONERANK, ids=[n for n, _ in ONERANK])
def test_onerank_parameters_are_annotated_and_counted(schema, name, overrides):
  """... and onerank/config.py's analytic count is the module's, row by row (the table's
  Params column and the compute-matched rows rest on it)."""
  cfg = onerank_model(**{**dict(width=16, num_heads=2, num_layers=1, embed_dim=4,
                               time_gap_buckets=4), **overrides})
  model = build_model(cfg, schema)
  abstract = jax.eval_shape(model.init, jax.random.key(0), dummy_batch(schema, 1))
  _check(abstract)
  assert count_params(partitioning.unbox(abstract['params'])) == models.param_count(cfg, schema)


@pytest.mark.parametrize('name,sequence,interaction', rq1_baselines.BASELINES,
                         ids=[row[0] for row in rq1_baselines.BASELINES])
def test_baseline_parameters_are_annotated(schema, name, sequence, interaction):
  model = build_model(tiny_baseline(sequence, interaction), schema)
  _check(jax.eval_shape(model.init, jax.random.key(0), dummy_batch(schema, 1)))


def test_embedding_row_multiple_reaches_the_tables(schema):
  """The config builders pass ``embedding_row_multiple`` on to the embedding tables."""
  for cfg in (onerank_model(width=16, num_heads=2, num_layers=1, embed_dim=4),
              tiny_baseline('din', 'dcnv2')):
    cfg.embedding_row_multiple = 64
    model = build_model(cfg, schema)
    tables = partitioning.unbox(jax.eval_shape(
        model.init, jax.random.key(0), dummy_batch(schema, 1))['params']['embeddings'])
    assert all(t.shape[0] % 64 == 0 for t in jax.tree.leaves(tables)), cfg.name


R, C, L, D = 2, 3, 8, 8
EVENTS, MASK = jnp.zeros((R, L, D)), np.ones((R, L), bool)
TARGET, USER = jnp.zeros((R, C, D)), jnp.zeros((R, 5))
X = jnp.zeros((2, 3, 4, 8))                  # [R, C, N, D] feature tokens
MODULES = {
    'din': (se.DINAttention((12, 6)), (EVENTS, MASK, TARGET)),
    'stack_din': (se.StackDIN(2, (12, 6)), (EVENTS, MASK, TARGET)),
    'longer': (se.Longer(16, 2, 2, merge=2, num_recent=2), (EVENTS, MASK, TARGET, USER)),
    'longer_plain': (se.Longer(16, 2, 1, merge=4, num_recent=1, inner_trans=False,
                               positions=False), (EVENTS, MASK, TARGET, USER)),
    'transformer': (se.SequenceTransformer(16, 2, 2), (EVENTS, MASK)),
    'dcnv2': (fi.DCNv2(2, 'stacked', (16, 8)), (X,)),
    'dcnv2_low_rank_parallel': (fi.DCNv2(2, 'parallel', (16,), rank=3), (X,)),
    'wukong': (fi.Wukong(2, 3, 2, 2, (8,)), (X,)),
    'wukong_plain_fm': (fi.Wukong(1, 4, 0, None, ()), (X,)),
    'hiformer': (fi.HiFormer(2, 2, 4, 3), (X,)),
    'hiformer_full_rank': (fi.HiFormer(1, 2, 4, None, num_task_tokens=2), (X,)),
    'hiformer_heterogeneous': (fi.HiFormer(2, 2, 4, 3, 'heterogeneous', 0), (X,)),
    'rankmixer': (fi.RankMixer(2, 2), (X,)),
}


@pytest.mark.parametrize('name', sorted(MODULES))
def test_module_parameters_are_annotated(name):
  module, args = MODULES[name]
  _check(jax.eval_shape(module.init, jax.random.key(0), *args))
