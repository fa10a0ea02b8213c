"""Loss populations and the sparse/dense optimizer split (SPEC A.8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from onetrans_jax.errors import ConfigError
from onetrans_jax.losses import multitask_bce
from onetrans_jax.optimizers import count_params, make_optimizer, param_labels


def _bce(z, y):
  p = 1 / (1 + np.exp(-z))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_multitask_bce_populations():
  logits = np.array([[[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]]], np.float32)
  labels = np.array([[[1, 1], [0, 0], [1, 0]]], np.float32)
  mask = np.array([[True, True, False]])  # the third candidate is padding
  total, per_task = multitask_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask),
                                  (-1, 0), (1.0, 2.0))
  ctr = (_bce(0.5, 1) + _bce(2.0, 0)) / 2          # all real impressions
  cvr = _bce(-1.0, 1)                               # clicked impressions only
  np.testing.assert_allclose(per_task, [ctr, cvr], rtol=1e-5)
  np.testing.assert_allclose(total, ctr + 2 * cvr, rtol=1e-5)
  # No clicked impression: the conditional task contributes 0, not NaN.
  _, per_task = multitask_bce(jnp.asarray(logits), jnp.zeros_like(labels), jnp.asarray(mask),
                              (-1, 0), (1.0, 1.0))
  assert float(per_task[1]) == 0.0


def _opt_config(**dense):
  c = ml_collections.ConfigDict()
  c.clip_global_norm = None
  c.sparse = ml_collections.ConfigDict(dict(name='adagrad', learning_rate=0.1,
                                            initial_accumulator_value=1.0))
  c.dense = ml_collections.ConfigDict(dict(name='rmsprop', learning_rate=0.005, decay=0.99999,
                                           initial_scale=0.0, bias_correction=True, **dense))
  return c


def test_embeddings_get_adagrad_dense_gets_rmsprop():
  params = {'embeddings': {'item': jnp.ones((3, 2))}, 'mlp_0': {'kernel': jnp.ones((2, 2))}}
  assert param_labels(params) == {'embeddings': {'item': 'sparse'}, 'mlp_0': {'kernel': 'dense'}}
  tx = make_optimizer(_opt_config())
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adagrad, lr 0.1, accumulator 1.0: -0.1 * 0.5 / sqrt(1 + 0.25).
  np.testing.assert_allclose(updates['embeddings']['item'], -0.1 * 0.5 / np.sqrt(1.25), rtol=1e-5)
  # RMSProp with bias correction: first step moves by lr * sign(g).
  np.testing.assert_allclose(updates['mlp_0']['kernel'], -0.005, rtol=1e-3)
  assert count_params(params) == {'dense': 4, 'sparse': 6}


def test_clipping_and_config_errors():
  c = _opt_config()
  c.clip_global_norm = 1.0
  tx = make_optimizer(c)
  params = {'embeddings': {'item': jnp.zeros((2,))}, 'w': jnp.zeros((2,))}
  grads = {'embeddings': {'item': jnp.array([30.0, 40.0])}, 'w': jnp.zeros((2,))}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Clipped to norm 1 first: g = (0.6, 0.8).
  expected = -0.1 * np.array([0.6, 0.8]) / np.sqrt(1 + np.array([0.36, 0.64]))
  np.testing.assert_allclose(updates['embeddings']['item'], expected, rtol=1e-5)
  c = _opt_config()
  c.dense.name = 'lamb'
  with pytest.raises(ConfigError, match=r'config.optimizer.dense.name=.lamb.'):
    make_optimizer(c)
  c = _opt_config()
  c.dense.decay = 1.0
  with pytest.raises(ConfigError, match=r'config.optimizer.dense.decay must be in \(0, 1\)'):
    make_optimizer(c)
  assert isinstance(make_optimizer(_opt_config()), optax.GradientTransformation)


def test_esmm_trains_the_joint_probability_on_all_impressions():
  logits = np.array([[[0.5, -1.0, 0.2], [2.0, 0.3, -0.4]]], np.float32)
  labels = np.array([[[1, 1, 0], [0, 0, 0]]], np.float32)
  mask = np.array([[True, True]])
  _, per_task = multitask_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask),
                              (-1, 0, 1), (1.0, 1.0, 1.0), mode='esmm')
  sig = lambda z: 1 / (1 + np.exp(-z))
  p = sig(logits[0])
  joint = np.stack([p[:, 0], p[:, 0] * p[:, 1], p[:, 0] * p[:, 1] * p[:, 2]], -1)
  y = labels[0]
  expected = -(y * np.log(joint) + (1 - y) * np.log(1 - joint)).mean(0)
  np.testing.assert_allclose(per_task, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="loss mode 'focal'"):
    multitask_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), (-1, 0, 1),
                  (1.0, 1.0, 1.0), mode='focal')


def test_listwise_weight_adds_a_softmax_over_each_requests_candidates():
  """loss.listwise_weight (mode 'joint'): BCE_k + w * (-mean over positives of log softmax over
  the request's real candidates), weighted per task; the padding candidate is in no softmax."""
  import types
  from onetrans_jax.train import make_loss_fn
  logits = np.array([[[0.5, -1.0], [2.0, 0.3], [9.0, 9.0]],
                     [[-0.2, 0.1], [0.4, -0.6], [1.0, 1.0]]], np.float32)     # [R=2, C=3, T=2]
  labels = np.array([[[1, 0], [1, 1], [0, 0]], [[0, 0], [1, 0], [0, 0]]], np.float32)
  mask = np.array([[True, True, False], [True, True, True]])
  model = types.SimpleNamespace(apply=lambda variables, batch, train: jnp.asarray(logits))
  schema = types.SimpleNamespace(num_tasks=2, task_names=('a', 'b'), task_parents=(-1, 0))
  batch = {'labels': jnp.asarray(labels), 'cand': {'mask': jnp.asarray(mask)}}

  def loss(**cfg):
    c = ml_collections.ConfigDict({'model': {'name': 'onetrans'},
                                   'loss': {'mode': 'joint', 'task_weights': (1.0, 2.0), **cfg}})
    return make_loss_fn(c, model, schema)[0](None, batch)

  base_total, base_parts = loss()
  total, parts = loss(listwise_weight=0.5)
  base, per_task = base_parts['task'], parts['task']
  np.testing.assert_array_equal(parts['bce'], base)     # the BCE alone, without the term
  # By hand: task a's positives are (r0, c0), (r0, c1) over r0's two real candidates and (r1, c1)
  # over r1's three; task b's one positive is (r0, c1).
  ls = lambda z, i: z[i] - np.log(np.sum(np.exp(z)))
  nce_a = -(ls(np.array([0.5, 2.0]), 0) + ls(np.array([0.5, 2.0]), 1)
            + ls(np.array([-0.2, 0.4, 1.0]), 1)) / 3
  nce_b = -ls(np.array([-1.0, 0.3]), 1)
  np.testing.assert_allclose(per_task, np.asarray(base) + 0.5 * np.array([nce_a, nce_b]),
                             rtol=1e-5)
  np.testing.assert_allclose(total, float(base_total) + 0.5 * (nce_a + 2.0 * nce_b), rtol=1e-5)
  with pytest.raises(ConfigError, match=r"listwise_weight=0.5 with config.loss.mode='conditional'"):
    loss(listwise_weight=0.5, mode='conditional')
  with pytest.raises(ConfigError, match=r'listwise_weight=-1.0: use a weight >= 0'):
    loss(listwise_weight=-1.0)


def test_sparse_weight_decay_shrinks_every_embedding_row_and_only_those():
  """optimizer.sparse.weight_decay: an L2 gradient wd * w enters Adagrad, even for a row whose
  loss gradient is 0 (a row the batch did not touch); the dense side is untouched."""
  c = _opt_config()
  c.sparse.weight_decay = 0.1
  params = {'embeddings': {'item': jnp.array([[2.0, -1.0], [0.5, 0.0]])},
            'mlp_0': {'kernel': jnp.zeros((2,))}}
  grads = {'embeddings': {'item': jnp.array([[0.0, 0.0], [0.3, 0.0]])},
           'mlp_0': {'kernel': jnp.zeros((2,))}}
  tx = make_optimizer(c)
  updates, _ = tx.update(grads, tx.init(params), params)
  g = np.array([[0.2, -0.1], [0.3 + 0.05, 0.0]])          # loss gradient + 0.1 * w
  np.testing.assert_allclose(updates['embeddings']['item'], -0.1 * g / np.sqrt(1 + g * g),
                             rtol=1e-5)
  np.testing.assert_allclose(updates['mlp_0']['kernel'], 0.0)
  c.sparse.weight_decay = -0.5
  with pytest.raises(ConfigError, match=r'config.optimizer.sparse.weight_decay must be >= 0'):
    make_optimizer(c)
