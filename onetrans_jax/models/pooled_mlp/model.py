"""The plain encode-then-interact baseline: mean-pooled sequences + feature embeddings -> MLP.

The weakest reasonable ranker (YouTube-DNN style), kept as the reference that every stronger model
must beat on the same data path. The user side (profile, context and the pooled sequences) is
computed once per request and broadcast to the request's candidates, which gives exactly the
point-wise model on flattened candidates at 1/C of the user-side cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.activations import ACTIVATIONS
from onetrans_jax.models.layers.embeddings import (EMBEDDINGS, FeatureEmbeddings, NumericEmbedding,
                                                   masked_mean)
from onetrans_jax.models.layers.partitioning import TASKS
from onetrans_jax.schema import FeatureSchema


class PooledMLP(nn.Module):
  schema: FeatureSchema
  embed_dim: int = 16
  hidden: Sequence[int] = (256, 128)
  activation: str = 'relu'
  dtype: Any = jnp.float32
  embedding_row_multiple: int = 1  # embedding tables padded to a multiple of this many rows

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool = False) -> jnp.ndarray:
    """Returns logits [R, C, T]: task t's conditional logit for every candidate."""
    del train  # no dropout or batch statistics: train and eval forward passes are identical
    s = self.schema
    emb = FeatureEmbeddings(s, self.embed_dim, self.dtype,
                            row_multiple=self.embedding_row_multiple, name=EMBEDDINGS)(batch)
    r, c = batch['cand']['mask'].shape
    user_parts = [emb['request'].reshape(r, -1)]
    if s.request_numeric:
      num = NumericEmbedding(len(s.request_numeric), self.embed_dim, self.dtype,
                             name='request_numeric')(batch['request']['num'])
      user_parts.append(num.reshape(r, -1))
    for seq in s.sequences:
      events = emb['seq'][seq.name].reshape(r, seq.max_len, -1)
      user_parts.append(masked_mean(events, batch['seq'][seq.name]['mask'], axis=1))
    user = jnp.concatenate(user_parts, axis=-1)

    cand_parts = [emb['cand'].reshape(r, c, -1)]
    if s.candidate_numeric:
      num = NumericEmbedding(len(s.candidate_numeric), self.embed_dim, self.dtype,
                             name='candidate_numeric')(batch['cand']['num'])
      cand_parts.append(num.reshape(r, c, -1))
    cand = jnp.concatenate(cand_parts, axis=-1)

    x = jnp.concatenate([jnp.broadcast_to(user[:, None], (r, c, user.shape[-1])), cand], axis=-1)
    act = ACTIVATIONS[self.activation]
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=self.dtype, name=f'mlp_{i}',
                       **partitioning.dense(*partitioning.chain_axes(i)))(x))
    logits = nn.Dense(s.num_tasks, dtype=self.dtype, name='task_logits',
                      **partitioning.dense(partitioning.chain_axes(len(self.hidden))[0], TASKS))(x)
    return logits.astype(jnp.float32)
