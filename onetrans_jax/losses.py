"""Multi-task binary cross-entropy (SPEC A.8), conditional or ESMM-style.

Models output one *conditional* logit per task: task t with a parent p (schema) predicts
P(t | p = 1), like the paper's CVR = P(conversion | click).
  * ``conditional`` (default): task t is trained on impressions whose parent label is 1;
  * ``esmm``: task t is trained on every impression against the joint probability
    P(t) = prod over t and its ancestors of P(a | parent(a)), e.g. pCTCVR = pCTR * pCVR, which
    removes the sample-selection bias of training CVR on clicks only.
Padding candidates never count. Each task's loss is a mean over its population and the total is a
weighted sum over tasks (equal weights by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from onetrans_jax.schema import label_weights

LOSS_MODES = ('conditional', 'esmm')


def ancestor_matrix(task_parents: Sequence[int]) -> np.ndarray:
  """A[t, a] = 1 if a is t or one of its ancestors (static, from the schema)."""
  t = len(task_parents)
  a = np.eye(t, dtype=np.float32)
  for i, p in enumerate(task_parents):  # parents come before children (schema check)
    if p >= 0:
      a[i] += a[p]
  return a


def joint_log_probs(logits: jnp.ndarray, task_parents: Sequence[int]) -> jnp.ndarray:
  """log P(task and all its ancestors) from conditional logits: one einsum over the chain."""
  return jnp.einsum('...a,ta->...t', jax.nn.log_sigmoid(logits.astype(jnp.float32)),
                    ancestor_matrix(task_parents))


def multitask_bce(logits: jnp.ndarray, labels: jnp.ndarray, cand_mask: jnp.ndarray,
                  task_parents: Sequence[int], task_weights: Sequence[float],
                  mode: str = 'conditional') -> tuple[jnp.ndarray, jnp.ndarray]:
  """logits, labels [R, C, T]; cand_mask [R, C] -> (total loss, per-task mean BCE [T]).

  A task with an empty population in this batch (no clicks for CVR, say) contributes 0.
  """
  logits = logits.astype(jnp.float32)
  if mode == 'conditional':
    weights = label_weights(labels, cand_mask, task_parents)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  elif mode == 'esmm':
    weights = jnp.broadcast_to(cand_mask[..., None], labels.shape).astype(jnp.float32)
    log_p = jnp.minimum(joint_log_probs(logits, task_parents), -1e-7)
    bce = -(labels * log_p + (1.0 - labels) * jnp.log(-jnp.expm1(log_p)))
  else:
    raise ValueError(f'loss mode {mode!r}: choose one of {LOSS_MODES}')
  per_task = jnp.sum(bce * weights, axis=(0, 1)) / jnp.maximum(jnp.sum(weights, axis=(0, 1)), 1.0)
  total = jnp.sum(per_task * jnp.asarray(task_weights, jnp.float32))
  return total, per_task
