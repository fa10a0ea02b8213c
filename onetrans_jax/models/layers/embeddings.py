"""Feature embeddings shared by every model: one table per vocabulary, numeric projections.

All embedding tables live under the top-level module name ``embeddings`` (``EMBEDDINGS``): the
optimizer gives that subtree the sparse optimizer (Adagrad, SPEC A.8) and the parameter count
leaves it out ("Params = dense parameters, no embedding tables").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models import fields
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.partitioning import EMBED, TOKENS, VOCAB
from onetrans_jax.schema import FeatureSchema

EMBEDDINGS = 'embeddings'


def padded_rows(size: int, row_multiple: int) -> int:
  """Rows of a table of ``size`` ids: ``size`` rounded up to a multiple of ``row_multiple``."""
  check_row_multiple(row_multiple)
  return -(-size // row_multiple) * row_multiple


def check_row_multiple(row_multiple: Any) -> int:
  """``config.model.embedding_row_multiple`` validated (a positive integer)."""
  return fields.check('embedding_row_multiple', row_multiple, 'int')


def table_params(schema: FeatureSchema, dim: int, row_multiple: int = 1) -> int:
  """Parameters of ``FeatureEmbeddings``' tables (one per vocabulary, padded rows)."""
  return sum(padded_rows(v.size, row_multiple) * dim for v in schema.vocabularies)


class FeatureEmbeddings(nn.Module):
  """Embedding tables keyed by vocabulary; features that share a vocabulary share its table.

  ``row_multiple`` pads every table to a multiple of that many rows (ids never reach the extra
  rows), so a table split over devices along its rows (``VOCAB``) divides evenly. With 1 (the
  default) a table has exactly its vocabulary's size.
  """
  schema: FeatureSchema
  dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  row_multiple: int = 1

  def setup(self):
    init = nn.initializers.normal(stddev=0.05)
    self.tables = {
        v.name: partitioning.param(self, v.name, init,
                                   (padded_rows(v.size, self.row_multiple), self.dim),
                                   (VOCAB, EMBED), self.param_dtype)
        for v in self.schema.vocabularies
    }

  def _lookup(self, ids: jnp.ndarray, vocabs: list[str]) -> jnp.ndarray:
    """ids [..., n] with column j in vocabulary vocabs[j] -> [..., n, dim]."""
    cols = [jnp.take(self.tables[v], ids[..., j], axis=0) for j, v in enumerate(vocabs)]
    return jnp.stack(cols, axis=-2).astype(self.dtype)

  def request(self, batch: Mapping[str, Any]) -> jnp.ndarray:
    """[R, F_u, dim] user and context categorical features."""
    return self._lookup(batch['request']['cat'], [f.vocab for f in self.schema.request_categorical])

  def candidates(self, batch: Mapping[str, Any]) -> jnp.ndarray:
    """[R, C, F_c, dim] candidate categorical features."""
    return self._lookup(batch['cand']['cat'], [f.vocab for f in self.schema.candidate_categorical])

  def sequence(self, batch: Mapping[str, Any], name: str) -> jnp.ndarray:
    """[R, L, 1 + S, dim]: the item id and the side features of every event."""
    s = self.schema.sequence(name)
    return self._lookup(batch['seq'][name]['ids'], [s.item_vocab] + [v for _, v in s.side_features])

  def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    return {
        'request': self.request(batch),
        'cand': self.candidates(batch),
        'seq': {s.name: self.sequence(batch, s.name) for s in self.schema.sequences},
    }


class NumericEmbedding(nn.Module):
  """Numeric feature i -> x_i * w_i + b_i, a width-``dim`` token per feature (stacked weights).

  A per-feature affine map keeps each numeric feature its own token, like a categorical one,
  without bucket boundaries to choose. Inputs should be of order-one scale: the synthetic world's
  are normal draws of order one, the event-log loaders give counts as log1p and rates in
  [0, 1] (z-scored with ``data.stats_scale='zscore'``).
  """
  num_features: int
  dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., n] -> [..., n, dim]."""
    w = partitioning.param(self, 'w', nn.initializers.normal(0.05),
                           (self.num_features, self.dim), (TOKENS, EMBED), self.param_dtype)
    b = partitioning.param(self, 'b', nn.initializers.zeros, (self.num_features, self.dim),
                           (TOKENS, EMBED), self.param_dtype)
    x = x.astype(self.dtype)
    return x[..., None] * w.astype(self.dtype) + b.astype(self.dtype)


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Mean over ``axis`` of the valid entries; an all-padding (empty) sequence gives zeros, not
  NaN."""
  m = mask.astype(x.dtype)
  while m.ndim < x.ndim:
    m = m[..., None]
  total = jnp.sum(x * m, axis=axis)
  count = jnp.sum(m, axis=axis)
  return total / jnp.maximum(count, 1.0)
