"""``pooled_mlp``'s config: defaults, validation, builder, analytic parameter and FLOP counts."""

from __future__ import annotations

import ml_collections

from onetrans_jax.models import fields
from onetrans_jax.models.layers.activations import ACTIVATIONS
from onetrans_jax.models.layers.embeddings import check_row_multiple, table_params
from onetrans_jax.models.pooled_mlp.model import PooledMLP
from onetrans_jax.schema import FeatureSchema

NAME = 'pooled_mlp'


def defaults(**overrides) -> ml_collections.ConfigDict:
  """The plain baseline of onetrans_jax/experiments/pooled_mlp.py (the fast model of the tests)."""
  m = ml_collections.ConfigDict()
  m.name = NAME
  m.embed_dim = 16                # every feature's embedding width
  m.hidden = (256, 128)           # MLP widths over [user ; candidate] features
  m.activation = 'relu'           # or 'silu', 'gelu'
  m.dtype = 'float32'             # compute dtype; 'bfloat16' keeps float32 parameters
  m.embedding_row_multiple = 1    # embedding-table rows rounded up to a multiple of this
  m.update(overrides)
  return m


def from_config(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> PooledMLP:
  """``config.model`` -> PooledMLP; every bad field raises a ModelConfigError naming it."""
  cfg = fields.with_defaults(cfg, defaults())
  return PooledMLP(schema, embed_dim=fields.check('embed_dim', cfg.embed_dim, 'int'),
                   hidden=fields.check('hidden', cfg.hidden, 'ints'),
                   activation=fields.check('activation', cfg.activation, ACTIVATIONS),
                   dtype=fields.check('dtype', cfg.dtype, 'dtype'),
                   embedding_row_multiple=check_row_multiple(cfg.embedding_row_multiple))


def _input_width(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> int:
  """[user ; candidate] width: every categorical and numeric feature e wide, each sequence's mean
  event (item id and side features) (1 + S) e wide."""
  n = (len(schema.request_categorical) + len(schema.request_numeric) +
       len(schema.candidate_categorical) + len(schema.candidate_numeric) +
       sum(1 + len(seq.side_features) for seq in schema.sequences))
  return n * cfg.embed_dim


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Dense parameters (MLP, numeric-feature maps) and embedding-table parameters."""
  cfg = fields.with_defaults(cfg, defaults())
  widths = (_input_width(cfg, schema),) + tuple(cfg.hidden) + (schema.num_tasks,)
  dense = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
  dense += 2 * (len(schema.request_numeric) + len(schema.candidate_numeric)) * cfg.embed_dim
  return {'dense': dense,
          'sparse': table_params(schema, cfg.embed_dim, cfg.embedding_row_multiple)}


def forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, float]:
  """Forward matmul FLOPs per candidate: the MLP (embeddings and means are no matmuls)."""
  cfg = fields.with_defaults(cfg, defaults())
  widths = (_input_width(cfg, schema),) + tuple(cfg.hidden) + (schema.num_tasks,)
  mlp = sum(2.0 * a * b for a, b in zip(widths[:-1], widths[1:]))
  return {'mlp': mlp, 'total': mlp}


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Training FLOPs per impression (3 x forward)."""
  return 3.0 * forward_flops(cfg, schema)['total']
