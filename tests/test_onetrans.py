"""OneTrans (SPEC part A): causality, pyramid, mixed parameters and that every switch is live."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax.errors import ConfigError
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.attention import attention_mask, reference_attention, tail_causal
from onetrans_jax.models.layers.mixed import MixedLinear
from onetrans_jax.models.onetrans.config import layout as onetrans_layout
from onetrans_jax.models.onetrans.model import OneTrans
from onetrans_jax.models.onetrans.pyramid import linear_schedule
from onetrans_jax.optimizers import count_params
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config


def _init(schema, mcfg, seed=0):
  model = build_model(mcfg, schema)
  params = partitioning.unbox(model.init(jax.random.key(seed), dummy_batch(schema, 1))['params'])
  return model, params


def _apply(model, params, batch, **kw):
  """Eager forward: for these tiny shapes compiling each variant costs more than running it."""
  return model.apply({'params': params}, batch, **kw)


# ------------------------------------------------------------------ pyramid schedule
def test_paper_schedules():
  assert linear_schedule(1190, 12, 6, 32) == (1190, 960, 704, 480, 256, 12)
  assert linear_schedule(1500, 16, 8, 32) == (1500, 1280, 1088, 864, 640, 448, 224, 16)
  assert all(isinstance(q, int) for q in linear_schedule(1190, 12, 6, 32))


def test_layout_and_schedule_errors(data):
  schema, _ = data
  l_s, l_ns, sched = onetrans_layout(onetrans_model_config(), schema)
  assert (l_s, l_ns) == (16 + 8 + 4, 4) and sched == (32, 16, 4)
  assert onetrans_layout(onetrans_model_config(pyramid=False), schema)[2] == (32, 32, 32)
  # timestamp-agnostic adds one [SEP] per boundary.
  assert onetrans_layout(onetrans_model_config(seq_merge='timestamp_agnostic'), schema)[0] == 30
  assert onetrans_layout(onetrans_model_config(seq_merge='timestamp_agnostic', use_sep=False),
                         schema)[0] == 28
  bad = [
      (dict(pyramid_schedule=(64, 16, 4)), 'starts at 64 queries but the token list has only 32'),
      (dict(pyramid_schedule=(32, 16, 2)), 'below config.model.num_ns_tokens=4'),
      (dict(pyramid_schedule=(32, 16)), 'has 2 entries for config.model.num_layers=3'),
      (dict(pyramid_schedule=(16, 32, 4)), 'must not increase'),
      (dict(num_heads=3), 'config.model.num_heads=3: must divide config.model.width=16'),
      (dict(use_sep=True), "use_sep=True needs config.model.seq_merge='timestamp_agnostic'"),
      (dict(ns_tokenizer='group_wise', num_ns_tokens=40), 'exceeds the 17 non-sequential'),
      (dict(attention='sliding'), "config.model.attention='sliding'"),
      (dict(attention_impl='cudnn'), 'needs a GPU'),
      (dict(ns_groups=(('age',),) * 4), "ns_groups is set but config.model.ns_tokenizer is not"),
  ]
  for override, message in bad:
    with pytest.raises(ConfigError, match=message):
      build_model(onetrans_model_config(**override), schema)


# ------------------------------------------------------------------ building blocks vs references
def test_tail_causal_mask_and_attention_reference():
  m = tail_causal(5, 2)
  np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32)
             for s in [(2, 3, 2, 4), (2, 6, 2, 4), (2, 6, 2, 4)])
  valid = jnp.asarray([[False, True, True, True, True, True], [True] * 6])
  mask = attention_mask(valid, 3, causal=True)
  # Padding key 0 is hidden from every query; query r sees keys <= 3 + r.
  assert not bool(mask[0, 0, :, 0].any()) and bool(mask[1, 0, 0, :4].all())
  assert not bool(mask[1, 0, 0, 4:].any())
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')
  np.testing.assert_allclose(out, reference_attention(q, k, v, mask), atol=1e-5)


def test_mixed_linear_is_per_token_weights():
  s, ns = jnp.ones((2, 5, 3)), jax.random.normal(jax.random.key(1), (2, 4, 3))
  layer = MixedLinear(6, num_ns=4)
  boxed = layer.init(jax.random.key(0), s, ns)['params']
  assert boxed['s_kernel'].names == (partitioning.EMBED, partitioning.MLP)
  assert boxed['ns_kernel'].names == (partitioning.TOKENS, partitioning.EMBED, partitioning.MLP)
  p = partitioning.unbox(boxed)
  assert p['s_kernel'].shape == (3, 6) and p['ns_kernel'].shape == (4, 3, 6)
  ys, yns = layer.apply({'params': p}, s, ns)
  for j in range(4):  # the reference: token j through its own kernel
    np.testing.assert_allclose(yns[:, j], ns[:, j] @ p['ns_kernel'][j], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ys, s @ p['s_kernel'], rtol=1e-5)
  assert not np.allclose(p['ns_kernel'][0], p['ns_kernel'][1])
  shared = MixedLinear(6, num_ns=4, shared=True)
  p = partitioning.unbox(shared.init(jax.random.key(0), s, ns)['params'])
  assert set(p) == {'s_kernel'}
  np.testing.assert_allclose(shared.apply({'params': p}, s, ns)[1], ns @ p['s_kernel'], rtol=1e-5)


# ------------------------------------------------------------------ causality through the stack
def _encode(model, params, s, valid, ns):
  return model.apply({'params': params}, s, valid, ns, True, method=OneTrans.encode)[1]


@pytest.mark.parametrize('pyramid', [True, False])
def test_s_states_never_see_ns_and_are_causal(data, pyramid):
  schema, _ = data
  model, params = _init(schema, onetrans_model_config(pyramid=pyramid))
  l_s, d = 28, 16
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(2, l_s, d)), jnp.float32)
  ns = jnp.asarray(rng.normal(size=(2, 4, d)), jnp.float32)
  valid = jnp.ones((2, l_s), bool).at[0, :5].set(False)
  base = _encode(model, params, s, valid, ns)
  other_ns = _encode(model, params, s, valid, ns + 1.0)
  j = 20
  other_s = _encode(model, params, s.at[:, j].add(1.0), valid, ns)
  for layer, (a, b, c) in enumerate(zip(base, other_ns, other_s)):
    np.testing.assert_array_equal(a['s'], b['s'], err_msg=f'layer {layer}: S saw NS')
    assert not np.allclose(a['ns'], b['ns'])
    kept = a['s'].shape[1]
    first_abs = l_s - kept  # absolute position of the first kept S token
    before = max(0, j - first_abs)
    np.testing.assert_array_equal(a['s'][:, :before], c['s'][:, :before],
                                  err_msg=f'layer {layer}: an earlier S token saw a later one')
    if kept > before:
      assert not np.allclose(a['s'][:, before:], c['s'][:, before:])
    assert a['ns'].shape[1] == 4  # NS tokens survive every layer


def test_ns_inputs_do_not_reach_s_tokens_end_to_end(data):
  """Through the tokenizer: changing user, context or candidate features leaves S states alone."""
  schema, batch = data
  model, params = _init(schema, onetrans_model_config())
  perturbed = copy.deepcopy(batch)
  perturbed['cand']['cat'][..., 1] = (perturbed['cand']['cat'][..., 1] % 12) + 1
  perturbed['cand']['num'] += 0.5
  perturbed['request']['cat'][:, 1] = (perturbed['request']['cat'][:, 1] % 7) + 1
  perturbed['request']['num'] += 0.5
  _, a = _apply(model, params, batch, collect=True)
  _, b = _apply(model, params, perturbed, collect=True)
  for la, lb in zip(a, b):
    np.testing.assert_array_equal(la['s'], lb['s'])
    assert not np.allclose(la['ns'], lb['ns'])


def test_pyramid_keeps_the_most_recent_tail(data):
  """Pyramid layer-1 outputs equal the no-pyramid layer-1 outputs at the kept (latest) slots."""
  schema, _ = data
  # The no-pyramid model's parameters are a superset (its last layer also has S-side weights);
  # both models run on them.
  model_f, params = _init(schema, onetrans_model_config(pyramid=False))
  model_p = build_model(onetrans_model_config(pyramid=True), schema)
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.normal(size=(2, 28, 16)), jnp.float32)
  ns = jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)
  valid = jnp.ones((2, 28), bool)
  p = _encode(model_p, params, s, valid, ns)
  f = _encode(model_f, params, s, valid, ns)
  assert [x['s'].shape[1] for x in p] == [28, 12, 0]  # schedule (32, 16, 4) minus 4 NS
  assert [x['s'].shape[1] for x in f] == [28, 28, 28]
  np.testing.assert_allclose(p[0]['s'], f[0]['s'], atol=1e-6)
  np.testing.assert_allclose(p[1]['s'], f[1]['s'][:, -12:], atol=1e-5)
  np.testing.assert_allclose(p[1]['ns'], f[1]['ns'], atol=1e-5)


def test_full_attention_lets_s_see_ns(data):
  schema, _ = data
  model, params = _init(schema, onetrans_model_config(attention='full'))
  rng = np.random.default_rng(2)
  s = jnp.asarray(rng.normal(size=(1, 28, 16)), jnp.float32)
  ns = jnp.asarray(rng.normal(size=(1, 4, 16)), jnp.float32)
  valid = jnp.ones((1, 28), bool)
  a = _encode(model, params, s, valid, ns)
  b = _encode(model, params, s, valid, ns + 1.0)
  assert not np.allclose(a[0]['s'], b[0]['s'])


# ------------------------------------------------------------------ switches
SWITCHES = [
    dict(ns_tokenizer='group_wise'),
    dict(seq_merge='timestamp_agnostic'),
    dict(seq_merge='timestamp_agnostic', use_sep=False),
    dict(param_sharing='shared'),
    dict(attention='full'),
    dict(pyramid=False),
    dict(time_gap_buckets=0),
    dict(activation='gelu'),
    dict(dtype='bfloat16'),
]


def test_every_switch_changes_the_computation(data):
  schema, batch = data
  model, params = _init(schema, onetrans_model_config())
  base = _apply(model, params, batch)
  assert base.shape == (3, 8, 3) and bool(jnp.all(jnp.isfinite(base)))
  shapes = jax.tree.map(np.shape, params)
  for sw in SWITCHES:
    m, p = _init(schema, onetrans_model_config(**sw))
    if jax.tree.map(np.shape, p) == shapes:
      p = params  # same parameter tree: run on the baseline's weights so only the switch differs
    out = _apply(m, p, batch)
    assert out.shape == base.shape and bool(jnp.all(jnp.isfinite(out))), sw
    assert not np.allclose(out, base, atol=1e-6), f'switch {sw} changed nothing'
  # Timestamp-agnostic with and without [SEP]: the same weights otherwise.
  m_sep, p_sep = _init(schema, onetrans_model_config(seq_merge='timestamp_agnostic'))
  m_nosep = build_model(onetrans_model_config(seq_merge='timestamp_agnostic', use_sep=False), schema)
  p_nosep = {k: v for k, v in p_sep.items()}
  p_nosep['tokenizer'] = {k: v for k, v in p_sep['tokenizer'].items() if k != 'sep'}
  p_nosep['tokenizer']['position'] = p_sep['tokenizer']['position'][2:]
  assert not np.allclose(_apply(m_sep, p_sep, batch), _apply(m_nosep, p_nosep, batch), atol=1e-6)


@pytest.mark.slow
def test_remat_is_exact(data):
  schema, batch = data
  model, params = _init(schema, onetrans_model_config())
  remat = build_model(onetrans_model_config(remat='full'), schema)

  def loss(m):
    return lambda p: jnp.sum(m.apply({'params': p}, batch) ** 2)

  g1 = jax.grad(loss(model))(params)
  g2 = jax.grad(loss(remat))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


def test_shared_params_far_fewer(data):
  schema, _ = data
  _, mixed = _init(schema, onetrans_model_config(pyramid=False))
  _, shared = _init(schema, onetrans_model_config(pyramid=False, param_sharing='shared'))
  n_mixed, n_shared = count_params(mixed)['dense'], count_params(shared)['dense']
  # Per layer: 1 + L_NS weight sets (mixed) against 1 (shared); without the pyramid every layer
  # has S queries, so the ratio is exact.
  blocks = lambda p: sum(x.size for k, v in p.items() if k.startswith('block_')
                         for x in jax.tree.leaves(v))
  assert blocks(mixed) == pytest.approx(5 * blocks(shared), rel=0.01)
  assert n_shared < 0.6 * n_mixed


# The agnostic layout's run (~40 s, eager) is in the slow step: the default suite stays < 10 min.
@pytest.mark.parametrize('layout', [
    dict(), pytest.param(dict(seq_merge='timestamp_agnostic'), marks=pytest.mark.slow)])
def test_every_parameter_gets_a_gradient(data, layout):
  """No dead weights: each parameter (embedding tables aside: ids absent from the batch) moves."""
  schema, batch = data
  model, params = _init(schema, onetrans_model_config(**layout))
  grads = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, batch) ** 2))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat
          if 'embeddings' not in jax.tree_util.keystr(path) and not np.any(np.asarray(g))]
  assert not dead, dead
