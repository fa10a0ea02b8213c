"""Request-level sharing and the user cache (SPEC A.6): exact against the per-candidate pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax import losses
from onetrans_jax.errors import ConfigError
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.attention import attention_mask, reference_attention, shared_prefix_attention
from onetrans_jax.models.onetrans.model import OneTrans
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config

LAYOUTS = [
    dict(),
    # slow (opt-in): the default and the group-wise agnostic layouts cover both merge paths and
    # both tokenizers in the default run; these two add the pyramid and sharing switches.
    pytest.param(dict(pyramid=False), marks=pytest.mark.slow),
    dict(ns_tokenizer='group_wise', seq_merge='timestamp_agnostic'),
    pytest.param(dict(seq_merge='timestamp_agnostic', use_sep=False, param_sharing='shared'),
                 marks=pytest.mark.slow),
]


def _pair(schema, **overrides):
  shared = build_model(onetrans_model_config(request_level=True, **overrides), schema)
  naive = build_model(onetrans_model_config(request_level=False, **overrides), schema)
  params = partitioning.unbox(shared.init(jax.random.key(0), dummy_batch(schema, 1))['params'])
  return shared, naive, params


def test_shared_prefix_attention_matches_joint_mask():
  """Per candidate, the split attention equals one attention over [S ; NS] with the causal mask."""
  rng = np.random.default_rng(0)
  r, c, n, l, h, dh = 2, 3, 4, 6, 2, 8
  q, k_ns, v_ns = (jnp.asarray(rng.normal(size=(r, c, n, h, dh)), jnp.float32) for _ in range(3))
  k_s, v_s = (jnp.asarray(rng.normal(size=(r, l, h, dh)), jnp.float32) for _ in range(2))
  valid = jnp.asarray([[False, False, True, True, True, True], [True] * l])
  out = shared_prefix_attention(q, k_s, v_s, valid, k_ns, v_ns)
  for i in range(c):
    k = jnp.concatenate([k_s, k_ns[:, i]], axis=1)
    v = jnp.concatenate([v_s, v_ns[:, i]], axis=1)
    mask = attention_mask(jnp.concatenate([valid, jnp.ones((r, n), bool)], 1), n, causal=True)
    np.testing.assert_allclose(out[:, i], reference_attention(q[:, i], k, v, mask), atol=1e-5)


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda d: ','.join(f'{k}={v}' for k, v in d.items())
                         or 'default')
def test_request_level_equals_per_candidate(data, layout):
  """Same parameters, two layouts: logits, every layer's states, loss and gradients agree."""
  schema, batch = data
  shared, naive, params = _pair(schema, **layout)
  fwd = lambda m: jax.jit(lambda p, b: m.apply({'params': p}, b, collect=True))
  a_logits, a_states = fwd(shared)(params, batch)
  b_logits, b_states = fwd(naive)(params, batch)
  np.testing.assert_allclose(a_logits, b_logits, atol=1e-5)
  for layer, (a, b) in enumerate(zip(a_states, b_states)):
    for side in ('s', 'ns'):
      assert a[side].shape == b[side].shape, (layer, side)
      np.testing.assert_allclose(a[side], b[side], atol=1e-5, err_msg=f'layer {layer} {side}')
  parents = schema.task_parents

  def loss(model):
    def f(p):
      logits = model.apply({'params': p}, batch)
      return losses.multitask_bce(logits, batch['labels'], batch['cand']['mask'], parents,
                                  [1.0] * len(parents))[0]
    return jax.jit(jax.value_and_grad(f))

  (la, ga), (lb, gb) = loss(shared)(params), loss(naive)(params)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  # float32 sums in another order: an absolute tolerance on the scale of each gradient leaf.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(y).max()))), ga, gb)


@pytest.mark.parametrize('layout', [dict(), dict(pyramid=False)])
def test_cached_scoring_equals_full_forward(data, layout):
  """Stage I reads no candidate field, stage II no sequence; together they equal the full pass."""
  schema, batch = data
  model, naive, params = _pair(schema, **layout)
  user_only = {'request': batch['request'], 'seq': batch['seq']}
  cands_only = {'request': batch['request'], 'cand': batch['cand']}
  cache = model.apply({'params': params}, user_only, method=OneTrans.user_cache)
  scores = model.apply({'params': params}, cands_only, cache, method=OneTrans.score_with_cache)
  full = naive.apply({'params': params}, batch)
  assert float(jnp.max(jnp.abs(scores - full))) <= 1e-5
  # One cache entry per layer, its keys cover that layer's whole S input.
  lengths = [k.shape[1] for k in cache['k']]
  assert lengths == [28, 28, 28] if layout else lengths == [28, 28, 12]


def test_request_level_refused_with_full_attention(data):
  schema, _ = data
  with pytest.raises(ConfigError, match="request_level=True needs config.model.attention='causal'"):
    build_model(onetrans_model_config(request_level=True, attention='full'), schema)
  # The default follows the attention: full attention runs per candidate.
  assert not build_model(onetrans_model_config(attention='full'), schema).request_level
  assert build_model(onetrans_model_config(), schema).request_level


@pytest.mark.parametrize('layout', [
    dict(),
    pytest.param(dict(param_sharing='shared', pyramid=False), marks=pytest.mark.slow),
    pytest.param(dict(remat='full'), marks=pytest.mark.slow)],
    ids=['default', 'shared,no-pyramid', 'remat'])
def test_token_first_ns_layout_computes_the_same_model(data, layout):
  """model.ns_layout='token_first' holds the candidate side's NS tokens [N, R, C, d] (a speed
  layout, benchmarks/ns_layout.py): the same parameters, logits, every layer's states, cached
  scoring and gradients as the default [R, C, N, d]."""
  schema, batch = data
  last = build_model(onetrans_model_config(request_level=True, **layout), schema)
  first = build_model(onetrans_model_config(request_level=True, ns_layout='token_first',
                                            **layout), schema)
  boxed = first.init(jax.random.key(0), dummy_batch(schema, 1))['params']
  params = partitioning.unbox(last.init(jax.random.key(0), dummy_batch(schema, 1))['params'])
  assert jax.tree.structure(partitioning.unbox(boxed)) == jax.tree.structure(params)
  fwd = lambda m: jax.jit(lambda p, b: m.apply({'params': p}, b, collect=True))
  (a, a_states), (b, b_states) = fwd(last)(params, batch), fwd(first)(params, batch)
  np.testing.assert_allclose(b, a, atol=1e-6)
  for layer, (x, y) in enumerate(zip(a_states, b_states)):
    np.testing.assert_allclose(y['ns'], x['ns'], atol=1e-5, err_msg=f'layer {layer}')
  user_only = {'request': batch['request'], 'seq': batch['seq']}
  cands_only = {'request': batch['request'], 'cand': batch['cand']}
  cache = first.apply({'params': params}, user_only, method=OneTrans.user_cache)
  cached = first.apply({'params': params}, cands_only, cache, method=OneTrans.score_with_cache)
  np.testing.assert_allclose(cached, a, atol=1e-5)
  parents = schema.task_parents

  def grads(model):
    f = lambda p: losses.multitask_bce(model.apply({'params': p}, batch), batch['labels'],
                                       batch['cand']['mask'], parents, [1.0] * len(parents))[0]
    return jax.jit(jax.grad(f))(params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      y, x, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(x).max()))), grads(last), grads(first))


def test_ns_layout_is_validated(data):
  schema, _ = data
  with pytest.raises(ConfigError, match='ns_layout'):
    build_model(onetrans_model_config(ns_layout='diagonal'), schema)
