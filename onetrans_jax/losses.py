"""Multi-task binary cross-entropy (SPEC A.8), conditional or ESMM-style.

Models output one *conditional* logit per task: task t with a parent p (schema) predicts
P(t | p = 1), like the paper's CVR = P(conversion | click).
  * ``conditional`` (default): task t is trained on impressions whose parent label is 1;
  * ``esmm``: task t is trained on every impression against the joint probability
    P(t) = prod over t and its ancestors of P(a | parent(a)), e.g. pCTCVR = pCTR * pCVR, which
    removes the sample-selection bias of training CVR on clicks only;
  * ``joint``: the logits are unconditional, task t is trained on every impression against its
    own label (a cart label is 0 without a click): how the OneRank paper's tasks are defined.
Padding candidates never count. Each task's loss is a mean over its population and the total is a
weighted sum over tasks (equal weights by default).

OneRank (SPEC B.6) predicts unconditional labels and adds a list-wise InfoNCE per request:
``listwise_infonce`` and ``onerank_loss`` (BCE + InfoNCE, 1:1 by default) at the end of the file.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from onetrans_jax.schema import label_weights

BCE_MODES = ('conditional', 'esmm', 'joint')
# 'joint': every task's logit predicts its unconditional label over all impressions (the OneRank
# paper's setting, SPEC B.6-B.7); 'onerank': that BCE plus the list-wise InfoNCE (OneRank only).
LOSS_MODES = BCE_MODES + ('onerank',)


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
  elif mode == 'joint':
    weights = jnp.broadcast_to(cand_mask[..., None], labels.shape).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  elif mode == 'esmm':
    weights = jnp.broadcast_to(cand_mask[..., None], labels.shape).astype(jnp.float32)
    log_p = jnp.minimum(joint_log_probs(logits, task_parents), -1e-7)
    bce = -(labels * log_p + (1.0 - labels) * jnp.log(-jnp.expm1(log_p)))
  else:
    raise ValueError(f'loss mode {mode!r}: choose one of {BCE_MODES}')
  per_task = jnp.sum(bce * weights, axis=(0, 1)) / jnp.maximum(jnp.sum(weights, axis=(0, 1)), 1.0)
  total = jnp.sum(per_task * jnp.asarray(task_weights, jnp.float32))
  return total, per_task


# ---------------------------------------------------------------------- OneRank (SPEC B.6)
def listwise_infonce(nce_logits: jnp.ndarray, labels: jnp.ndarray, cand_mask: jnp.ndarray
                     ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """List-wise InfoNCE per task over the real candidates of each request.

  nce_logits, labels [R, C, T] (logits already multiplied by the inverse temperature 1/tau);
  cand_mask [R, C] -> (per-task loss [T], per-task number of positives [T]).

      L_k = sum_r sum_{i: y_k^{r,i} = 1} -log softmax_{j real in r}(nce_logits_k^{r,j})_i / P_k

  with P_k the number of real positives of task k in the batch. Padding candidates are in neither
  numerator nor denominator (whatever their logits or labels); a request without a positive for
  task k adds no term (and nothing to P_k); a task without any positive in the batch gives 0.
  [D] Normalisation by P_k, the batch's positive count, makes the term a mean over positives, on
  the scale of the per-task BCE mean and independent of the batch size and the positive rate.
  """
  logits = nce_logits.astype(jnp.float32)
  real = cand_mask[..., None]                                        # [R, C, 1]
  masked = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
  log_p = jax.nn.log_softmax(masked, axis=1)                         # over candidates
  pos = jnp.where(real, labels.astype(jnp.float32), 0.0)
  # where (not multiply): a padding slot's log-probability is about finfo.min and must not meet 0*.
  nll = jnp.where(pos > 0, -log_p, 0.0) * pos
  num_pos = jnp.sum(pos, axis=(0, 1))
  return jnp.sum(nll, axis=(0, 1)) / jnp.maximum(num_pos, 1.0), num_pos


def onerank_loss(logits: jnp.ndarray, nce_logits: jnp.ndarray, labels: jnp.ndarray,
                 cand_mask: jnp.ndarray, task_weights: Sequence[float] | None = None,
                 bce_weight: float = 1.0, nce_weight: float = 1.0
                 ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """OneRank's loss (SPEC B.6): per task BCE over every real candidate + list-wise InfoNCE.

  logits, nce_logits, labels [R, C, T]; cand_mask [R, C]. OneRank predicts the unconditional
  labels (each task over all impressions), so the BCE is ``multitask_bce`` with no parents: a mean
  over the real candidates per task. total = sum_k w_k (bce_weight * BCE_k + nce_weight * NCE_k),
  w_k = ``task_weights`` (default 1 each); bce_weight : nce_weight = 1 : 1 is the paper's best
  balance. -> (total, {'bce': [T], 'nce': [T], 'num_positives': [T]}).
  """
  num_tasks = labels.shape[-1]
  weights = jnp.asarray((1.0,) * num_tasks if task_weights is None else task_weights, jnp.float32)
  _, bce = multitask_bce(logits, labels, cand_mask, (-1,) * num_tasks, (1.0,) * num_tasks)
  nce, num_pos = listwise_infonce(nce_logits, labels, cand_mask)
  total = jnp.sum(weights * (bce_weight * bce + nce_weight * nce))
  return total, {'bce': bce, 'nce': nce, 'num_positives': num_pos}
