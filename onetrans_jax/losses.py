"""Multi-task binary cross-entropy on each task's own population (SPEC A.8).

A conditional task (a ``parent`` in the schema, e.g. CVR = P(conversion | click)) is trained only on
impressions whose parent label is 1; padding candidates never count. Each task's loss is a mean
over its population, and the total is a weighted sum over tasks (equal weights by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import optax

from onetrans_jax.schema import label_weights


def multitask_bce(logits: jnp.ndarray, labels: jnp.ndarray, cand_mask: jnp.ndarray,
                  task_parents: Sequence[int],
                  task_weights: Sequence[float]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """logits, labels [R, C, T]; cand_mask [R, C] -> (total loss, per-task mean BCE [T]).

  A task with an empty population in this batch (no clicks for CVR, say) contributes 0.
  """
  logits = logits.astype(jnp.float32)
  weights = label_weights(labels, cand_mask, task_parents)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  per_task = jnp.sum(bce * weights, axis=(0, 1)) / jnp.maximum(jnp.sum(weights, axis=(0, 1)), 1.0)
  total = jnp.sum(per_task * jnp.asarray(task_weights, jnp.float32))
  return total, per_task
