"""Stability diagnostics (SPEC C.6): per-task gradient cosine on chosen parameters, loss spread."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax import diagnostics as dg
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.multitask.predictors import MMoE


# ------------------------------------------------------------------ gradient cosine, by hand
def _linear_case():
  """loss_k = a_k . w + b_k v_k: d/dw = a_k (shared), d/dv = b_k e_k (task-specific)."""
  a = jnp.array([[1.0, 0.0, 0.0],
                 [1.0, 1.0, 0.0],
                 [0.0, 0.0, 0.0]])       # task 2 has no gradient on the shared weights
  b = jnp.array([1.0, 2.0, 3.0])
  params = {'shared': {'w': jnp.array([0.3, -0.7, 2.0])}, 'heads': {'v': jnp.ones(3)}}
  loss = lambda p: a @ p['shared']['w'] + b * p['heads']['v']
  return loss, params


def test_linear_model_by_hand():
  loss, params = _linear_case()
  cos = np.asarray(dg.per_task_gradient_cosine(loss, params, dg.excluding('heads')))
  r = 1 / math.sqrt(2)                   # [1,0,0] . [1,1,0] / (1 * sqrt 2)
  np.testing.assert_allclose(cos, [[1, r, 0], [r, 1, 0], [0, 0, 0]], atol=1e-6)
  assert np.all(np.isfinite(cos))
  # Every parameter: g0 = [1,0,0 | 1,0,0], g1 = [1,1,0 | 0,2,0], g2 = [0,0,0 | 0,0,3].
  cos = np.asarray(dg.per_task_gradient_cosine(loss, params, lambda path: True))
  c01 = 1 / (math.sqrt(2) * math.sqrt(6))
  np.testing.assert_allclose(cos, [[1, c01, 0], [c01, 1, 0], [0, 0, 1]], atol=1e-6)
  # Only the heads: one-hot directions, orthogonal.
  cos = np.asarray(dg.per_task_gradient_cosine(loss, params, dg.under('heads')))
  np.testing.assert_allclose(cos, np.eye(3), atol=1e-6)


def test_least_squares_by_hand_and_under_jit():
  """loss_k = (x_k . w - y_k)^2 / 2: gradient (x_k . w - y_k) x_k, the residual sets the sign."""
  x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  y = jnp.array([0.0, 5.0])
  params = {'w': jnp.array([1.0, 2.0])}  # residuals 1 and -2: g0 = [1, 0], g1 = [-2, -2]
  loss = lambda p: 0.5 * (x @ p['w'] - y) ** 2
  fn = jax.jit(lambda p: dg.per_task_gradient_cosine(loss, p, lambda path: True))
  r = -2 / math.sqrt(8)
  np.testing.assert_allclose(np.asarray(fn(params)), [[1, r], [r, 1]], atol=1e-6)


def test_identical_opposite_and_zero():
  w = {'w': jnp.array([0.5, -1.5, 2.0, 0.25])}
  d = jnp.array([1.0, 2.0, -1.0, 0.5])
  loss = lambda p: jnp.stack([d @ p['w'], 3.0 * (d @ p['w']), -(d @ p['w']), 0.0 * p['w'].sum()])
  cos = np.asarray(dg.per_task_gradient_cosine(loss, w, lambda path: True))
  expect = np.array([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 0]], float)
  np.testing.assert_allclose(cos, expect, atol=1e-6)
  assert not np.any(np.isnan(cos))


def test_select_nothing_is_an_error():
  loss, params = _linear_case()
  with pytest.raises(ValueError, match='select picked no parameter'):
    dg.per_task_gradient_cosine(loss, params, dg.under('missing'))


def test_paths_are_names():
  tree = {'a': {'b': [jnp.zeros(1), jnp.zeros(2)]}}
  paths = [dg.path_names(p) for p, _ in jax.tree.flatten_with_path(tree)[0]]
  assert paths == [('a', 'b', '0'), ('a', 'b', '1')]
  assert dg.excluding('b')(('a', 'b', '0')) is False and dg.excluding('c')(('a', 'b')) is True


# ------------------------------------------------------------------ a real multi-task model
class _Model(nn.Module):
  """A shared encoder (two Dense) under an MMoE predictor named 'head'."""

  @nn.compact
  def __call__(self, x):
    h = nn.silu(nn.Dense(8, name='enc_0')(x))
    h = nn.Dense(8, name='enc_1')(h)
    return MMoE(3, num_experts=2, expert_hidden=6, tower_hidden=4, name='head')(h)


def test_matches_a_loop_over_tasks_and_select_restricts():
  """The jacrev cosine equals per-task jax.grad, flattened by hand, on the encoder only; counting
  the head too gives another matrix."""
  model = _Model()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, size=(16, 3)), jnp.float32)
  params = partitioning.unbox(jax.jit(model.init)(jax.random.key(0), x)['params'])  # compiled

  def per_task(p):
    logits = model.apply({'params': p}, x)
    bce = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return bce.mean(0)

  task_grad = jax.jit(jax.grad(lambda p, k: per_task(p)[k]))   # one compile for every k

  def loop_reference(keep):
    flat = []
    for k in range(3):
      g = task_grad(params, k)
      flat.append(np.concatenate([np.asarray(leaf).reshape(-1) for name in keep
                                  for leaf in jax.tree.leaves(g[name])]))
    g = np.stack(flat).astype(np.float64)
    n = np.linalg.norm(g, axis=1)
    return g @ g.T / np.outer(n, n)

  cosine = jax.jit(dg.per_task_gradient_cosine, static_argnums=(0, 2))
  encoder = cosine(per_task, params, dg.excluding('head'))
  np.testing.assert_allclose(np.asarray(encoder), loop_reference(['enc_0', 'enc_1']), atol=2e-5)
  everything = cosine(per_task, params, lambda path: True)
  np.testing.assert_allclose(np.asarray(everything),
                             loop_reference(['enc_0', 'enc_1', 'head']), atol=2e-5)
  # Task heads are private, so counting them pulls the tasks apart: the matrices differ.
  assert np.abs(np.asarray(everything) - np.asarray(encoder)).max() > 1e-2


# ------------------------------------------------------------------ loss variance and summaries
def test_loss_variance_matches_numpy_over_the_window():
  names = ('click', 'cart', 'order')
  tracker = dg.LossVariance(names, window=50)
  rng = np.random.default_rng(0)
  losses = rng.normal(size=(137, 3)) * np.array([0.1, 1.0, 3.0]) + np.array([0.5, 1.0, 2.0])
  assert tracker.summary() == {}
  assert np.all(np.isnan(tracker.variance()))
  for i, row in enumerate(losses):
    if i % 2:
      tracker.update(row)
    else:
      tracker.update(dict(zip(names, row)))
    if i in (0, 9, 49, 50, 136):
      held = losses[max(0, i + 1 - 50):i + 1]
      assert len(tracker) == len(held)
      np.testing.assert_allclose(tracker.values(), held)
      np.testing.assert_allclose(tracker.variance(), np.var(held, axis=0), rtol=1e-12)
      np.testing.assert_allclose(tracker.mean(), np.mean(held, axis=0), rtol=1e-12)
  s = tracker.summary()
  held = losses[-50:]
  assert set(s) == {f'loss_{k}/{n}' for k in ('var', 'var_raw', 'mean') for n in names}
  steps = np.arange(50)
  for j, n in enumerate(names):
    assert s[f'loss_var_raw/{n}'] == pytest.approx(np.var(held[:, j]), rel=1e-12)
    line = np.polyval(np.polyfit(steps, held[:, j], 1), steps)   # numpy's least-squares line
    assert s[f'loss_var/{n}'] == pytest.approx(np.var(held[:, j] - line), rel=1e-9)
    assert isinstance(s[f'loss_var/{n}'], float)
  assert s['loss_var/click'] < s['loss_var/cart'] < s['loss_var/order']


def test_the_training_trend_is_not_read_as_instability():
  """A loss falling steadily with small noise has a large plain variance over the window but a
  detrended variance equal to its noise's; a pure line has none."""
  tracker = dg.LossVariance(('falling', 'line'), window=100)
  rng = np.random.default_rng(1)
  noise = rng.normal(scale=0.01, size=100)
  for i in range(100):
    tracker.update([2.0 - 0.01 * i + noise[i], 1.0 - 0.005 * i])
  raw, detrended = tracker.variance(), tracker.detrended_variance()
  assert raw[0] > 0.08 and raw[1] > 0.02                     # the trend dominates the raw figure
  assert detrended[0] == pytest.approx(np.var(noise), rel=0.05)
  assert detrended[1] == pytest.approx(0.0, abs=1e-20)


def test_loss_variance_rejects_bad_input():
  with pytest.raises(ValueError, match='window'):
    dg.LossVariance(('a',), window=0)
  tracker = dg.LossVariance(('a', 'b'))
  with pytest.raises(ValueError, match='2 losses|losses for tasks'):
    tracker.update([1.0, 2.0, 3.0])
  with pytest.raises(KeyError, match='b'):
    tracker.update({'a': 1.0})


def test_summaries_name_the_upper_triangle():
  m = np.array([[1.0, 0.25, -0.5], [0.25, 1.0, 0.75], [-0.5, 0.75, 1.0]])
  names = ('click', 'cart', 'order')
  assert dg.cosine_summary(m, names) == {'grad_cos/click__cart': 0.25,
                                         'grad_cos/click__order': -0.5,
                                         'grad_cos/cart__order': 0.75}
  tracker = dg.LossVariance(names, window=4)
  tracker.update([1.0, 2.0, 3.0])
  tracker.update([3.0, 2.0, 1.0])
  s = tracker.summary(jnp.asarray(m))
  assert s['grad_cos/cart__order'] == 0.75 and s['loss_var/click'] == 1.0
  assert s['loss_var/cart'] == 0.0 and s['loss_mean/order'] == 2.0
  with pytest.raises(ValueError, match='shape'):
    dg.cosine_summary(m, names[:2])
