"""Every parameter of OneTrans (each tokenizer, merge, ablation, predictor) and of the pooled MLP
carries logical axes, one name per dimension, and ``embedding_row_multiple`` pads the tables."""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.embeddings import EMBEDDINGS
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config, small_config

ONETRANS = {
    'auto_split': dict(),
    'group_wise': dict(ns_tokenizer='group_wise'),
    'agnostic_sep': dict(seq_merge='timestamp_agnostic'),
    'agnostic_group': dict(seq_merge='timestamp_agnostic', use_sep=False,
                           ns_tokenizer='group_wise'),
    'time_gap': dict(time_gap_buckets=6, s_position='none'),
    'shared': dict(param_sharing='shared'),
    'shared_agnostic': dict(param_sharing='shared', seq_merge='timestamp_agnostic'),
    'no_pyramid': dict(pyramid=False),
    'full_attention': dict(attention='full'),
    'remat': dict(remat='full'),
    'shared_bottom': dict(predictor='shared_bottom'),
    'mmoe': dict(predictor='mmoe'),
    'ple': dict(predictor='ple'),
}


def _pooled_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name='pooled_mlp', embed_dim=4, hidden=(16, 8),
                                        activation='relu', dtype='float32', **overrides))


CONFIGS = {**{k: lambda v=v: onetrans_model_config(**v) for k, v in ONETRANS.items()},
           'pooled_mlp': _pooled_config}


@pytest.fixture(scope='module')
def schema():
  return pipeline.build_dataset(small_config().data).schema


def _abstract(mcfg, schema):
  model = build_model(mcfg, schema)
  return jax.eval_shape(model.init, jax.random.key(0), dummy_batch(schema, 1))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_parameter_has_logical_axes(schema, name):
  variables = _abstract(CONFIGS[name](), schema)
  assert partitioning.unannotated(variables) == []
  boxes = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes
  for box in boxes:  # one known name (or None) per dimension
    assert len(box.names) == box.value.ndim, (box.names, box.value.shape)
    assert all(n is None or n in partitioning.AXES for n in box.names), box.names


def _tables(params):
  """The embedding tables (the ``embeddings`` subtree, at the top or under the tokenizer)."""
  return params[EMBEDDINGS] if EMBEDDINGS in params else params['tokenizer'][EMBEDDINGS]


@pytest.mark.parametrize('name', ['auto_split', 'pooled_mlp'])
def test_embedding_row_multiple_pads_tables(schema, name):
  make = CONFIGS[name]
  plain = _tables(partitioning.unbox(_abstract(make(), schema)['params']))
  cfg = make()
  cfg.embedding_row_multiple = 8
  padded = _tables(_abstract(cfg, schema)['params'])
  for v in schema.vocabularies:
    assert plain[v.name].shape == (v.size, plain[v.name].shape[1])
    rows = padded[v.name].value.shape[0]
    assert rows % 8 == 0 and v.size <= rows < v.size + 8, (v.name, v.size, rows)
    assert padded[v.name].names == (partitioning.VOCAB, partitioning.EMBED)
  model = build_model(cfg, schema)
  batch = dummy_batch(schema, 2)
  logits = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), batch), batch)
  assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize('bad', [0, -2, 1.5])
def test_embedding_row_multiple_validated(schema, bad):
  for make in (CONFIGS['auto_split'], _pooled_config):
    cfg = make()
    if 'embedding_row_multiple' in cfg and not isinstance(bad, int):
      # The experiment configs declare the field as an int: ConfigDict refuses a float at once.
      with pytest.raises(TypeError, match="field 'embedding_row_multiple'"):
        cfg.embedding_row_multiple = bad
      continue
    cfg.embedding_row_multiple = bad
    with pytest.raises(ConfigError, match='config.model.embedding_row_multiple'):
      build_model(cfg, schema)
