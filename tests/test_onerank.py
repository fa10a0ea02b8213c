"""OneRank (SPEC part B): masks, request-level layout, task channels, detachment, loss, switches.

Compiles dominate on CPU, so every model variant is jitted once (``_compiled``) and reused, and
parameters are drawn on the host per parameter path (``_params``): variants that share a parameter
name and shape share its values, so an ablation differs from the baseline only by its switch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from onetrans_jax import losses
from onetrans_jax.errors import ConfigError
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.attention import prefix_group_attention, reference_attention
from onetrans_jax.models.onerank.config import defaults as onerank_model
from onetrans_jax.models.onerank.config import from_config as onerank_from_config
from onetrans_jax.models.onerank.model import OneRank, group_mask, onerank_mask
from onetrans_jax.models.onerank.task_channels import (CrossTaskInteraction, SituationDiscernment,
                                                       task_mask_matrix)
from onetrans_jax.optimizers import param_labels
from onetrans_jax.schema import dummy_batch

TINY = dict(width=16, num_heads=2, num_layers=2, embed_dim=4, time_gap_buckets=4)
K = 3  # click, cart, order


def _cfg(**overrides):
  return onerank_model(**{**TINY, **overrides})


@functools.lru_cache(maxsize=None)
def _model(schema, **overrides) -> OneRank:
  return onerank_from_config(_cfg(**overrides), schema)


def _params(model: OneRank, schema, seed: int = 0):
  """Host-drawn parameters, each leaf seeded by its path: cheap (no init compile) and shared by
  every variant that has the same parameter. Norm gains near 1, 1/tau = 1, fan-in scaled weights."""
  return _host_init(model, dummy_batch(schema, 1), seed=seed)


def _host_init(module, *args, seed: int = 0, **kwargs):
  """Parameters of ``module.init(key, *args)`` drawn on the host (see ``_params``)."""
  shapes = partitioning.unbox(jax.eval_shape(functools.partial(module.init, **kwargs),
                                             jax.random.key(0), *args).get('params', {}))

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = rng.normal(size=leaf.shape)
    if name.endswith("['scale']"):
      x = 1.0 + 0.1 * x
    elif 'log_inv_temperature' in name:
      x = np.zeros(leaf.shape)
    elif 'embeddings' in name or 'task_tokens' in name:
      x = 0.3 * x
    else:
      x = x * (leaf.shape[-2] ** -0.5 if len(leaf.shape) >= 2 else 0.1)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def _task_losses(model, params, batch):
  """Per-task loss vector [K] (BCE + InfoNCE of each task) and the forward outputs."""
  logits, aux = model.apply({'params': params}, batch, aux=True)
  _, parts = losses.onerank_loss(logits, aux['nce_logits'], batch['labels'], batch['cand']['mask'])
  return parts['bce'] + parts['nce'], (logits, aux)


@functools.lru_cache(maxsize=None)
def _compiled(schema, kind: str, **overrides):
  """One jit per (variant, kind): 'fwd' -> (logits, aux); 'grad' -> (d loss_k / d params for
  every task k as a leading axis, (logits, aux))."""
  model = _model(schema, **overrides)
  if kind == 'fwd':
    return jax.jit(lambda p, b: model.apply({'params': p}, b, aux=True))
  return jax.jit(jax.jacrev(functools.partial(_task_losses, model), has_aux=True))


def _forward(schema, params, batch, **overrides):
  """(logits, aux) of a variant; the baseline reuses its gradient jit (one compile, not two)."""
  if not overrides or overrides == dict(request_level=True):
    return _compiled(schema, 'grad')(params, batch)[1]
  return _compiled(schema, 'fwd', **overrides)(params, batch)


def _raw_cfg(**overrides):
  """A config holding values of the wrong type (ConfigDict would refuse them as overrides)."""
  return ml_collections.ConfigDict({**_cfg().to_dict(), **overrides})


def _leaves(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope='module')
def setup(data):
  """The fixture batch with planted labels: every task has positives, request 2 has no order
  positive, and one padding slot per request (labels 0 there)."""
  schema, batch = data
  batch = copy.deepcopy(batch)
  mask = np.asarray(batch['cand']['mask']).copy()
  assert mask.sum(1).min() >= 3 and not mask.all(1).any(), 'the fixture needs padding slots'
  rng = np.random.default_rng(0)
  labels = (rng.random(batch['labels'].shape) < 0.4).astype(np.float32)
  labels[0, 0] = 1.0
  labels[2, :, 2] = 0.0
  batch['labels'] = labels * mask[..., None]
  model = _model(schema)
  return schema, batch, model, _params(model, schema)


def _real(batch):
  return np.asarray(batch['cand']['mask'])


# ------------------------------------------------------------------ masks and attention
def test_group_and_joint_masks():
  np.testing.assert_array_equal(group_mask(2), [[1, 0, 0], [1, 1, 0], [1, 0, 1]])
  valid = jnp.asarray([[False, True, True]])
  m = np.asarray(onerank_mask(valid, 2, group_mask(2)))[0, 0]   # N = 3 + 2 * 3
  assert m.shape == (9, 9)
  # Prefix: causal over valid keys (own key kept), never a candidate group.
  np.testing.assert_array_equal(m[:3], [[1, 0, 0, 0, 0, 0, 0, 0, 0],
                                        [0, 1, 0, 0, 0, 0, 0, 0, 0],
                                        [0, 1, 1, 0, 0, 0, 0, 0, 0]])
  # Group 0 = rows 3..5 ([c, t1, t2]), group 1 = rows 6..8.
  np.testing.assert_array_equal(m[3], [0, 1, 1, 1, 0, 0, 0, 0, 0])   # c_0: prefix + itself
  np.testing.assert_array_equal(m[5], [0, 1, 1, 1, 0, 1, 0, 0, 0])   # t_2 of 0: prefix, c_0, t_2
  np.testing.assert_array_equal(m[7], [0, 1, 1, 0, 0, 0, 1, 1, 0])   # t_1 of 1: never group 0


def test_prefix_group_attention_matches_joint_mask():
  rng = np.random.default_rng(0)
  r, c, g, p, h, dh = 2, 3, 4, 5, 2, 4
  q, k_g, v_g = (jnp.asarray(rng.normal(size=(r, c, g, h, dh)), jnp.float32) for _ in range(3))
  k_p, v_p = (jnp.asarray(rng.normal(size=(r, p, h, dh)), jnp.float32) for _ in range(2))
  valid = jnp.asarray([[False, True, True, True, True], [True] * p])
  flat = lambda x: x.reshape(r, c * g, h, dh)

  @jax.jit
  def both(q, k_p, v_p, k_g, v_g):
    out = prefix_group_attention(q, k_p, v_p, valid, k_g, v_g, group_mask(g - 1))
    mask = onerank_mask(valid, c, group_mask(g - 1))[:, :, p:]   # the group rows
    ref = reference_attention(flat(q), jnp.concatenate([k_p, flat(k_g)], 1),
                              jnp.concatenate([v_p, flat(v_g)], 1), mask)
    return out, ref.reshape(out.shape)

  out, ref = both(q, k_p, v_p, k_g, v_g)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  with pytest.raises(ValueError, match='group_mask has shape'):
    prefix_group_attention(q, k_p, v_p, valid, k_g, v_g, group_mask(1))


def test_task_masks():
  names = ('click', 'cart', 'order')
  np.testing.assert_array_equal(task_mask_matrix('cascade', names), np.tril(np.ones((3, 3))))
  np.testing.assert_array_equal(task_mask_matrix('parallel', names), np.eye(3))
  np.testing.assert_array_equal(task_mask_matrix('full', names), np.ones((3, 3)))
  np.testing.assert_array_equal(task_mask_matrix('hybrid', names, (('order', 'click'),)),
                                [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
  with pytest.raises(ValueError, match=r"OneRank.task_edges: \('order', 'buy'\) names task 'buy'"):
    task_mask_matrix('hybrid', names, (('order', 'buy'),))
  with pytest.raises(ValueError, match='task_edges is empty'):
    task_mask_matrix('hybrid', names)
  with pytest.raises(ValueError, match="read only by task_mask='hybrid'"):
    task_mask_matrix('cascade', names, (('order', 'click'),))
  with pytest.raises(ValueError, match=r"OneRank.task_mask='chain': choose one of \['cascade'"):
    task_mask_matrix('chain', names)


# ------------------------------------------------------------------ encoder layouts and isolation
def test_request_level_equals_reference(setup):
  """The einsum request-level layout equals the explicit-mask full list (SPEC B.3), 1e-5."""
  schema, batch, _, params = setup
  logits, aux = _forward(schema, params, batch)
  ref_logits, ref = _forward(schema, params, batch, request_level=False)
  assert logits.shape == (3, 8, K) and logits.dtype == jnp.float32
  assert aux['task_repr'].shape == (3, 8, K, 16) and aux['task_vectors'].shape == (3, K, 16)
  assert aux['prefix'].shape == (3, 9 + 2 + 16 + 8 + 4, 16)   # contextual + history tokens
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  for key in ('task_repr', 'prefix', 'situation', 'task_vectors', 'nce_logits'):
    np.testing.assert_allclose(aux[key], ref[key], atol=1e-5, err_msg=key)
  assert np.std(np.asarray(logits)[_real(batch)]) > 1e-3  # not a degenerate constant


def _perturb_candidate(batch, r, i):
  out = copy.deepcopy(batch)
  out['cand']['num'][r, i] += 1.0
  out['cand']['cat'][r, i, 1] = out['cand']['cat'][r, i, 1] % 12 + 1
  return out


@pytest.mark.parametrize('request_level', [True, False])
def test_candidates_do_not_see_each_other(setup, request_level):
  """Perturbing candidate i changes its own r, no other candidate's r, and never the prefix."""
  schema, batch, _, params = setup
  _, a = _forward(schema, params, batch, request_level=request_level)
  _, b = _forward(schema, params, _perturb_candidate(batch, 0, 1), request_level=request_level)
  ra, rb = np.asarray(a['task_repr']), np.asarray(b['task_repr'])
  others = np.ones((3, 8), bool)
  others[0, 1] = False
  np.testing.assert_array_equal(ra[others], rb[others])
  assert (np.abs(ra[0, 1] - rb[0, 1]).max(-1) > 1e-4).all()  # every task state of candidate 1
  np.testing.assert_array_equal(a['prefix'], b['prefix'])


@pytest.mark.parametrize('request_level', [True, False])
def test_task_tokens_do_not_see_each_other(setup, request_level):
  """t_k reads the prefix, c_i and itself: moving task token j changes r_j only."""
  schema, batch, _, params = setup
  _, a = _forward(schema, params, batch, request_level=request_level)
  moved = dict(params, task_tokens=params['task_tokens'].at[1].add(0.5))
  _, b = _forward(schema, moved, batch, request_level=request_level)
  ra, rb = np.asarray(a['task_repr']), np.asarray(b['task_repr'])
  np.testing.assert_array_equal(ra[:, :, [0, 2]], rb[:, :, [0, 2]])
  assert (np.abs(ra[:, :, 1] - rb[:, :, 1]).max(-1) > 1e-4).all()
  np.testing.assert_array_equal(a['prefix'], b['prefix'])


def test_prefix_is_causal(setup):
  """Prefix token p reads prefix tokens <= p only (and no padding token); groups read it all."""
  schema, _, model, params = setup
  rng = np.random.default_rng(3)
  prefix = jnp.asarray(rng.normal(size=(2, 10, 16)), jnp.float32)
  groups = jnp.asarray(rng.normal(size=(2, 4, 1 + K, 16)), jnp.float32)
  valid = jnp.ones((2, 10), bool).at[0, 2:4].set(False)
  enc = jax.jit(lambda p, x, g: model.apply({'params': p}, x, valid, g, method=OneRank.encode))
  pa, ga = enc(params, prefix, groups)
  j = 6
  pb, gb = enc(params, prefix.at[:, j].add(1.0), groups)
  np.testing.assert_array_equal(pa[:, :j], pb[:, :j])
  assert (np.abs(np.asarray(pa[:, j:] - pb[:, j:])).max(-1) > 1e-4).all()
  assert (np.abs(np.asarray(ga - gb)).max(-1) > 1e-4).all()
  pc, gc = enc(params, prefix.at[0, 2].add(1.0), groups)  # a padding token: read by nobody
  np.testing.assert_array_equal(np.asarray(pa)[0, 4:], np.asarray(pc)[0, 4:])
  np.testing.assert_array_equal(ga, gc)


# ------------------------------------------------------------------ padding
def test_padding_candidates_change_nothing_real(setup):
  """Padding slots' features and labels move neither the real logits, r, z nor the loss."""
  schema, batch, _, params = setup
  grad = _compiled(schema, 'grad')
  (g_a, (logits_a, aux_a)) = grad(params, batch)
  pad = ~_real(batch)
  other = copy.deepcopy(batch)
  other['cand']['num'][pad] = 7.0
  other['cand']['cat'][pad] = 3
  other['labels'][pad] = 1.0
  (g_b, (logits_b, aux_b)) = grad(params, other)
  real = _real(batch)
  np.testing.assert_allclose(np.asarray(logits_a)[real], np.asarray(logits_b)[real], atol=1e-6)
  np.testing.assert_allclose(aux_a['task_vectors'], aux_b['task_vectors'], atol=1e-6)
  assert not np.allclose(np.asarray(logits_a)[pad], np.asarray(logits_b)[pad])
  loss = lambda lg, aux, b: losses.onerank_loss(lg, aux['nce_logits'], b['labels'],
                                                b['cand']['mask'])[0]
  np.testing.assert_allclose(loss(logits_a, aux_a, batch), loss(logits_b, aux_b, other), rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), g_a['block_0'],
               g_b['block_0'])


# ------------------------------------------------------------------ task channels, module level
def test_situation_discernment_is_per_task_and_ignores_padding():
  k, d, heads = K, 8, 2
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
  r = jnp.asarray(rng.normal(size=(2, 4, k, d)), jnp.float32)
  mask = jnp.asarray([[True, True, True, False], [True, True, False, False]])
  r_pad = r.at[0, 3].set(9.0).at[1, 2:].set(-9.0)
  modes = ('attention', 'mean', 'constant_query', 'off')
  modules = {mode: SituationDiscernment(k, d, heads, mode) for mode in modes}
  params = {mode: {'params': _host_init(m, s, r, mask)} for mode, m in modules.items()}

  @jax.jit
  def run(params):  # one compile for the three modes
    out = {}
    for mode, module in modules.items():
      f = lambda s_, r_, module=module, mode=mode: module.apply(params[mode], s_, r_, mask)
      out[mode] = f(s, r), f(s, r_pad), jax.jacrev(lambda x, f=f: f(s, x))(r), f(s + 1.0, r)
    return out

  results = run(params)
  for mode in modes:
    h, h_pad, jac, h_s = results[mode]
    assert h.shape == (2, k, d)
    np.testing.assert_array_equal(h, h_pad, err_msg=mode)
    # h_k reads r_k only: the task channels stay private.
    reads = np.abs(np.asarray(jac)).max(axis=(0, 2, 3, 4, 6))  # [K (h), K (r)]
    expected = np.zeros((k, k), bool) if mode == 'off' else np.eye(k, dtype=bool)
    np.testing.assert_array_equal(reads > 0, expected, err_msg=mode)  # 'off' reads no candidate
    moved = not np.allclose(h, h_s)
    assert moved == (mode == 'attention'), mode              # only f_k(s) reads the context
  # 'mean' is the attention with uniform weights over the real candidates, the same value and
  # output projections: a query of zeros (every score 0) gives the very same h.
  p_mean = params['mean']['params']
  m = np.asarray(mask)[..., None, None]
  mean = (np.asarray(r) * m).sum(1) / m.sum(1)
  want = np.einsum('rke,kef->rkf', np.einsum('rkd,kde->rke', mean, p_mean['mhca_value']),
                   p_mean['mhca_out'])
  np.testing.assert_allclose(results['mean'][0], want, rtol=2e-5, atol=1e-6)
  p_uniform = dict(params['attention']['params'], mhca_value=p_mean['mhca_value'],
                   mhca_out=p_mean['mhca_out'],
                   mhca_query=jnp.zeros_like(params['attention']['params']['mhca_query']))
  h_uniform = modules['attention'].apply({'params': p_uniform}, s, r, mask)
  np.testing.assert_allclose(h_uniform, results['mean'][0], rtol=2e-5, atol=1e-6)
  assert set(p_mean) == {'mhca_value', 'mhca_out'}          # no query-side parameters
  assert set(params['off']['params']) == {'task_vector'}


def test_task_mask_is_what_the_cross_task_read_sees():
  """Without detachment, d h~_k / d h_j is nonzero exactly where A[k][j] (all four masks)."""
  names = ('a', 'b', 'c')
  h = jnp.asarray(np.random.default_rng(2).normal(size=(2, K, 8)), jnp.float32)
  masks = {kind: task_mask_matrix(kind, names, edges) for kind, edges in (
      ('parallel', ()), ('cascade', ()), ('full', ()), ('hybrid', (('c', 'a'),)))}
  modules = {kind: CrossTaskInteraction(K, 8, 2, tuple(map(tuple, a.tolist())), detach=False)
             for kind, a in masks.items()}
  params = {'params': _host_init(modules['full'], h)}  # the weights do not depend on the mask
  jacs = jax.jit(lambda p, x: {kind: jax.jacrev(lambda y, m=m: m.apply(p, y))(x)
                               for kind, m in modules.items()})(params, h)
  for kind, a in masks.items():
    reads = np.abs(np.asarray(jacs[kind])).max(axis=(0, 2, 3, 5))   # [K (h~), K (h)]
    np.testing.assert_array_equal(reads > 0, a, err_msg=kind)


# ------------------------------------------------------------------ detachment (SPEC B.5)
def _private(g, k, j):
  """Task j's private parameters' gradient of task k's loss, by name."""
  sd, ct = g['situation_discernment'], g['cross_task_interaction']
  out = {name: sd[name][k, j] for name in ('f_kernel', 'f_bias', 'mhca_query', 'mhca_key',
                                            'mhca_value', 'mhca_out')}
  out['q_norm'] = sd['q_norm']['scale'][k, j]
  out['task_token'] = g['task_tokens'][k, j]
  out['cross_ffn_in'] = ct['ffn_in'][k, j]
  return out


def test_detachment_keeps_the_forward_and_cuts_cross_task_gradients(setup):
  schema, batch, _, params = setup
  g_on, (logits_on, aux_on) = _compiled(schema, 'grad')(params, batch)
  g_off, (logits_off, aux_off) = _compiled(schema, 'grad', detach=False)(params, batch)
  np.testing.assert_allclose(logits_on, logits_off, rtol=0, atol=1e-6)
  np.testing.assert_allclose(aux_on['task_vectors'], aux_off['task_vectors'], rtol=0, atol=1e-6)
  # Cascade: order (k=2) reads click and cart. With detachment its loss reaches none of their
  # private parameters (f_j, LayerNorm_j, MHCA_j, the task token t_j); without, all of them.
  for j in (0, 1):
    for name, x in _private(g_on, 2, j).items():
      np.testing.assert_array_equal(x, 0.0, err_msg=f'detach: d loss_order / d {name}[{j}]')
    for name, x in _private(g_off, 2, j).items():
      if name != 'cross_ffn_in':  # task j's FFN sits after the read: never on task k's path
        assert np.abs(x).max() > 0, f'no detach: d loss_order / d {name}[{j}] should be nonzero'
      else:
        np.testing.assert_array_equal(x, 0.0)
  # Its own channel learns either way; click (k=0) reads no other task even without detachment.
  for name, x in _private(g_on, 2, 2).items():
    assert np.abs(x).max() > 0, name
  for j in (1, 2):
    for name, x in _private(g_off, 0, j).items():
      np.testing.assert_array_equal(x, 0.0, err_msg=name)
  # The shared cross-task K/V weights keep a gradient from the order loss under detachment.
  for w in ('key', 'value'):
    assert np.abs(g_on['cross_task_interaction'][w][2]).max() > 0
  # The shared encoder and the temperature learn from every task.
  for k in range(K):
    assert np.abs(g_on['block_0']['qkv']['kernel'][k]).max() > 0
    assert np.abs(g_on['log_inv_temperature'][k]) > 0


def _cross_oracle(p, h, h_off, w_off, mask, heads):
  """Cross-task read with the off-diagonal keys/values from separate inputs (h_off, w_off)."""
  k_tasks, d = h.shape[-2:]
  split = lambda x: x.reshape(x.shape[:-1] + (heads, d // heads))
  q = split(h @ p['query'])
  k_live, v_live = split(h @ p['key']), split(h @ p['value'])
  k_off, v_off = split(h_off @ w_off['key']), split(h_off @ w_off['value'])
  eye = np.eye(k_tasks, dtype=bool)[None, :, :, None, None]
  keys = jnp.where(eye, k_live[:, None], k_off[:, None])
  vals = jnp.where(eye, v_live[:, None], v_off[:, None])
  logits = jnp.einsum('rqhe,rqjhe->rhqj', q, keys) / np.sqrt(d // heads)
  w = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
  return jnp.einsum('rhqj,rqjhe->rqhe', w, vals).reshape(h.shape) @ p['out']


def test_detach_kv_weights_gradient_only_through_the_diagonal():
  """Module level, against an oracle whose off-diagonal keys/values come from separate inputs:
  detach -> no gradient to h through them; detach_kv_weights -> none to the K/V weights either."""
  k, d, heads = 3, 8, 2
  mask = task_mask_matrix('full', ('a', 'b', 'c'))
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, k, d)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(2, k, d)), jnp.float32)
  make = lambda **kw: CrossTaskInteraction(k, d, heads, tuple(map(tuple, mask.tolist())), **kw)
  params = _host_init(make(), h)
  p_attn = {n: params[n] for n in ('query', 'key', 'value', 'out')}

  def model_grads(p, x, **kw):
    attend = lambda p, x: make(**kw).apply({'params': p}, x, method=CrossTaskInteraction.attend)
    return jax.grad(lambda p, x: jnp.sum(cot * attend(p, x)), argnums=(0, 1))(p, x), attend(p, x)

  oracle = lambda p, x, x_off, w_off: jnp.sum(cot * _cross_oracle(p, x, x_off, w_off, mask, heads))

  @jax.jit
  def run(params, p_attn, h):  # one compile for the oracle and the three modes
    return (jax.grad(oracle, argnums=(0, 1, 2, 3))(p_attn, h, h, p_attn),
            model_grads(params, h, detach=True, detach_kv_weights=True),
            model_grads(params, h, detach=True), model_grads(params, h, detach=False))

  ((g_p, g_h, g_hoff, g_woff), ((p_kv, h_kv), out_kv), ((p_det, h_det), out_det),
   ((p_live, h_live), out_live)) = run(params, p_attn, h)
  # The forward is the same computation in every mode.
  np.testing.assert_array_equal(out_kv, out_live)
  np.testing.assert_array_equal(out_det, out_live)
  tol = dict(rtol=1e-5, atol=1e-6)
  for w in ('key', 'value'):
    np.testing.assert_allclose(p_kv[w], g_p[w], **tol)                    # diagonal only
    np.testing.assert_allclose(p_det[w], g_p[w] + g_woff[w], **tol)       # both applications
    np.testing.assert_allclose(p_live[w], g_p[w] + g_woff[w], **tol)
    assert np.abs(g_woff[w]).max() > 1e-3 and np.abs(p_kv[w]).max() > 1e-3
  np.testing.assert_allclose(h_kv, g_h, **tol)
  np.testing.assert_allclose(h_det, g_h, **tol)                           # off-diagonal cut
  np.testing.assert_allclose(h_live, g_h + g_hoff, **tol)
  # So d h~_k / d h_j = 0 for j != k under detachment: a task's loss cannot reshape another's h.
  jac = jax.jit(jax.jacrev(lambda x: make().apply({'params': params}, x)))(h)  # [R,K,d,R,K,d]
  for q in range(k):
    for j in range(k):
      block = np.asarray(jac[:, q, :, :, j, :])
      if q == j:
        assert np.abs(block).max() > 0
      else:
        np.testing.assert_array_equal(block, 0.0)


# ------------------------------------------------------------------ loss (SPEC B.6)
def test_infonce_hand_computed():
  """Request 0: logits (0, ln 2, 0) over its 3 real candidates, positives 0 and 2, plus a padding
  slot labelled 1 with a huge logit; request 1: no positive; request 2: (1, 1), positive 1."""
  ln2 = float(np.log(2.0))
  logits = jnp.asarray([[0.0, ln2, 0.0, 50.0], [3.0, -1.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]])
  labels = jnp.asarray([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
  mask = jnp.asarray([[True, True, True, False], [True, True, True, True],
                      [True, True, False, False]])

  @jax.jit
  def nce(x, y):  # one task: [R, C] -> [R, C, 1]
    f = lambda x: losses.listwise_infonce(x[..., None], y[..., None], mask)
    (loss, num_pos), grad = f(x), jax.grad(lambda x: f(x)[0][0])(x)
    return loss[0], num_pos[0], grad

  loss, num_pos, g = nce(logits, labels)
  # softmax = (1/4, 1/2, 1/4): 2 ln 4 = 2.7725887; request 2: ln 2 = 0.6931472; 3 positives.
  np.testing.assert_allclose(loss, 1.1552453, rtol=1e-6)
  assert float(num_pos) == 3.0
  g = np.asarray(g)
  # The request without positives adds no term: no gradient, and its logits change nothing.
  np.testing.assert_array_equal(g[1], 0.0)
  assert float(nce(logits.at[1].set(jnp.asarray([-4.0, 9.0, 2.0, 1.0])), labels)[0]) == float(loss)
  # Padding slots: no gradient, and neither their logits nor their labels count.
  np.testing.assert_array_equal(g[0, 3], 0.0)
  np.testing.assert_array_equal(g[2, 2:], 0.0)
  assert float(nce(logits.at[2, 2:].set(30.0), labels.at[2, 2].set(1.0))[0]) == float(loss)
  assert float(nce(logits, 0 * labels)[0]) == 0.0   # no positive at all: 0, not NaN


def test_onerank_loss_combines_bce_and_infonce():
  """BCE is a mean over real candidates per task (every task unconditional); the total is
  sum_k w_k (bce_weight BCE_k + nce_weight NCE_k)."""
  labels = jnp.asarray([[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]])      # [R=1, C=3, T=2]
  mask = jnp.asarray([[True, True, False]])
  logits = jnp.zeros((1, 3, 2))
  loss = jax.jit(losses.onerank_loss, static_argnames=('task_weights', 'bce_weight', 'nce_weight'))
  total, parts = loss(logits, logits, labels, mask)
  ln2 = np.log(2.0)
  np.testing.assert_allclose(parts['bce'], [ln2, ln2], rtol=1e-6)   # sigmoid(0) = 1/2
  np.testing.assert_allclose(parts['nce'], [ln2, 0.0], rtol=1e-6)   # task 1: no real positive
  np.testing.assert_allclose(total, 3 * ln2, rtol=1e-6)
  total_w, _ = loss(logits, logits, labels, mask, task_weights=(2.0, 1.0), bce_weight=1.0,
                    nce_weight=0.5)
  np.testing.assert_allclose(total_w, 2 * (ln2 + 0.5 * ln2) + ln2, rtol=1e-6)
  # The conditional population of multitask_bce is not used: cart counts on every impression.
  _, cond = losses.multitask_bce(logits, labels, mask, (-1, 0), (1.0, 1.0))
  np.testing.assert_allclose(parts['bce'], cond, rtol=1e-6)


def test_the_temperature_starts_where_configured_and_can_be_held(setup):
  """inv_temperature_init sets 1/tau at step 0 (learned from there); learn_temperature=False
  holds it: no parameter, and the InfoNCE logits are the logits times that constant."""
  schema, batch, _, _ = setup
  learned = _model(schema, inv_temperature_init=14.0)
  init = partitioning.unbox(jax.jit(functools.partial(
      learned.init, method=OneRank.inverse_temperature))(jax.random.key(0)))
  np.testing.assert_allclose(float(init['params']['log_inv_temperature']), np.log(14.0),
                             rtol=1e-6)
  np.testing.assert_allclose(float(learned.apply(init, method=OneRank.inverse_temperature)),
                             14.0, rtol=1e-6)
  held = _model(schema, inv_temperature_init=14.0, learn_temperature=False)
  p = _params(held, schema)
  assert 'log_inv_temperature' not in p
  logits, aux = jax.jit(lambda q, b: held.apply({'params': q}, b, aux=True))(p, batch)
  np.testing.assert_allclose(aux['nce_logits'], 14.0 * np.asarray(logits), rtol=1e-6)
  assert float(aux['inv_temperature']) == 14.0
  for bad in (0.0, -1.0, 1e5):
    with pytest.raises(ConfigError, match=r'config.model.inv_temperature_init=.*must be a number'):
      _model(schema, inv_temperature_init=bad)


def test_model_loss_and_temperature(setup):
  schema, batch, model, params = setup
  _, (logits, aux) = _compiled(schema, 'grad')(params, batch)
  np.testing.assert_array_equal(aux['nce_logits'], logits)           # 1/tau = 1 here
  hot = dict(params, log_inv_temperature=jnp.asarray(np.log(2.0), jnp.float32))
  _, (logits2, aux2) = _compiled(schema, 'grad')(hot, batch)
  np.testing.assert_allclose(aux2['nce_logits'], 2.0 * logits2, rtol=1e-6)
  # The real initialiser sets 1/tau to config.py's default, 3 (only the top-level parameters
  # are created).
  init = partitioning.unbox(jax.jit(functools.partial(
      model.init, method=OneRank.inverse_temperature))(jax.random.key(0)))
  assert model.inv_temperature_init == onerank_model().inv_temperature_init == 3.0
  np.testing.assert_allclose(float(init['params']['log_inv_temperature']), np.log(3.0),
                             rtol=1e-6)
  np.testing.assert_allclose(float(model.apply(init, method=OneRank.inverse_temperature)), 3.0,
                             rtol=1e-6)
  total, parts = losses.onerank_loss(logits, aux['nce_logits'], batch['labels'],
                                     batch['cand']['mask'])
  assert np.isfinite(float(total)) and np.all(np.asarray(parts['num_positives']) > 0)
  # Matching scores: s = z . r / sqrt(d) + b.
  z, r = np.asarray(aux['task_vectors']), np.asarray(aux['task_repr'])
  expect = np.einsum('rkd,rckd->rck', z, r) / 4.0 + np.asarray(params['task_bias'])
  np.testing.assert_allclose(logits, expect, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ switches
SWITCHES = [
    dict(task_tokens='shared'),
    dict(scoring='mlp'),
    dict(situation='mean'),
    dict(situation='constant_query'),
    dict(situation='off'),
    dict(cross_task=False),
    dict(task_mask='parallel'),
    dict(task_mask='full'),
    dict(task_mask='hybrid', task_edges=(('order', 'click'),)),
    dict(candidate_in_task_tokens=True),
    dict(candidate_reads_context=True),
    dict(request_bias=True),
]


@pytest.fixture(scope='module')
def switched(setup):
  """Every variant's parameters and forward outputs, from one jit (one compile for all)."""
  schema, batch, _, _ = setup
  models = [_model(schema, **sw) for sw in SWITCHES]
  params = [_params(m, schema) for m in models]
  outs = jax.jit(lambda ps, b: [m.apply({'params': p}, b, aux=True)
                                for m, p in zip(models, ps)])(params, batch)
  return {i: (p, out) for i, (p, out) in enumerate(zip(params, outs))}


@pytest.mark.parametrize('switch', SWITCHES,
                         ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()))
def test_every_switch_changes_the_output(setup, switched, switch):
  """Same weights wherever the variant has the parameter: only the switch differs. (``detach`` and
  ``detach_kv_weights`` keep the forward by design; their effect on the gradients is tested in
  test_detachment_keeps_the_forward_and_cuts_cross_task_gradients and
  test_detach_kv_weights_gradient_only_through_the_diagonal.)"""
  schema, batch, _, params = setup
  base, _ = _forward(schema, params, batch)
  p, (logits, aux) = switched[SWITCHES.index(switch)]
  base_leaves = _leaves(params)
  for path, leaf in _leaves(p).items():  # the shared leaves really are the baseline's
    if path in base_leaves and leaf.shape == base_leaves[path].shape:
      np.testing.assert_array_equal(leaf, base_leaves[path], err_msg=path)
  np.testing.assert_array_equal(p['task_tokens'][0], params['task_tokens'][0])
  assert logits.shape == base.shape and bool(jnp.all(jnp.isfinite(logits)))
  real = _real(batch)
  assert not np.allclose(np.asarray(logits)[real], np.asarray(base)[real], atol=1e-4), switch
  r = np.asarray(aux['task_repr'])
  if switch.get('task_tokens') == 'shared':  # one task-token state serves every task
    np.testing.assert_array_equal(r[:, :, 0], r[:, :, 2])
    assert p['task_tokens'].shape == (1, 16)
  else:
    assert not np.allclose(r[:, :, 0], r[:, :, 2])
  if switch.get('scoring') == 'mlp':   # only the inner product is replaced: the channels stay
    np.testing.assert_allclose(aux['task_vectors'], _forward(schema, params, batch)[1][
        'task_vectors'], rtol=1e-5, atol=1e-5)
    assert 'task_bias' not in p and p['tower_w1'].shape == (3, 2 * 16, 16)
    # tower k reads [z_k ; r_k^i]: by hand for one candidate
    z, rr = np.asarray(aux['task_vectors'])[0], r[0, 0]
    hid = np.einsum('kd,kdh->kh', np.concatenate([z, rr], -1), p['tower_w1']) + p['tower_b1']
    by_hand = np.einsum('kh,kh->k', hid / (1 + np.exp(-hid)), p['tower_w2']) + p['tower_b2']
    np.testing.assert_allclose(np.asarray(logits)[0, 0], by_hand, rtol=1e-4, atol=1e-5)
  if switch.get('situation') == 'mean':      # h_k = W_o,k W_v,k (mean of the real r_k^i)
    m = real[..., None, None]
    sd = p['situation_discernment']
    want = np.einsum('rke,kef->rkf', np.einsum('rkd,kde->rke', (r * m).sum(1) / m.sum(1),
                                               sd['mhca_value']), sd['mhca_out'])
    np.testing.assert_allclose(aux['situation'], want, rtol=1e-4, atol=1e-5)
  if switch.get('situation') == 'off':       # one learned vector per task, for every request
    np.testing.assert_array_equal(aux['situation'][0], p['situation_discernment']['task_vector'])
    np.testing.assert_array_equal(aux['situation'][0], aux['situation'][-1])
  if switch.get('situation') == 'constant_query':  # f_k and its LayerNorm are gone
    assert set(p['situation_discernment']) == {'query', 'mhca_query', 'mhca_key', 'mhca_value',
                                               'mhca_out'}
  if switch.get('cross_task') is False:
    np.testing.assert_array_equal(aux['task_vectors'], aux['situation'])
    assert 'cross_task_interaction' not in p


def test_candidate_in_task_tokens_adds_c_i_to_its_groups_task_tokens(setup, switched):
  """The deviation: t_k of group i enters layer 0 as t_k + c_i; no new parameter, the masks
  unchanged (request-level still equals the explicit-mask reference, candidates still blind to
  each other), and the task states differ more across a request's candidates."""
  schema, batch, _, params = setup
  on = dict(candidate_in_task_tokens=True)
  p, (logits, aux) = switched[SWITCHES.index(on)]
  assert jax.tree.map(np.shape, p) == jax.tree.map(np.shape, params)
  tok = _model(schema, **on).apply({'params': params}, batch, method='tokens')
  base_tok = _model(schema).apply({'params': params}, batch, method='tokens')
  g, base_g = np.asarray(tok['groups']), np.asarray(base_tok['groups'])
  np.testing.assert_array_equal(g[:, :, 0], base_g[:, :, 0])              # c_i itself unchanged
  np.testing.assert_allclose(g[:, :, 1:], base_g[:, :, 1:] + base_g[:, :, :1], rtol=1e-6)
  ref_logits, ref = _forward(schema, params, batch, request_level=False, **on)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  np.testing.assert_allclose(aux['task_repr'], ref['task_repr'], atol=1e-5)
  _, moved = _forward(schema, params, _perturb_candidate(batch, 0, 1), request_level=False, **on)
  others = np.ones((3, 8), bool)
  others[0, 1] = False
  np.testing.assert_array_equal(np.asarray(ref['task_repr'])[others],
                                np.asarray(moved['task_repr'])[others])

  def spread(r):  # mean cosine of r_k^i to its request's mean over the real candidates
    real = _real(batch)
    r = np.asarray(r) / np.linalg.norm(r, axis=-1, keepdims=True)
    mean = (r * real[..., None, None]).sum(1, keepdims=True)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    return float(((r * mean).sum(-1))[real].mean())

  assert spread(aux['task_repr']) < spread(_forward(schema, params, batch)[1]['task_repr'])


def test_candidate_reads_context_changes_c_i_with_the_request(setup, switched):
  """The deviation: c_i's MLP also reads the raw contextual features. With it, changing a
  request feature changes that request's candidate tokens (without it they cannot change); the
  other requests and the masks are untouched (request-level = reference)."""
  schema, batch, _, params = setup
  on = dict(candidate_reads_context=True)
  p, (logits, aux) = switched[SWITCHES.index(on)]
  n_s = 9 * 4 + 2                                   # the fixture's 9 categorical x e=4 + 2 numeric
  assert p['candidate_in']['kernel'].shape[0] == params['candidate_in']['kernel'].shape[0] + n_s
  ref_logits, _ = _forward(schema, p, batch, request_level=False, **on)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  moved = copy.deepcopy(batch)
  moved['request']['num'][1] += 1.0
  for overrides, params_, changes in ((on, p, True), ({}, params, False)):
    a = _model(schema, **overrides).apply({'params': params_}, batch, method='tokens')['groups']
    b = _model(schema, **overrides).apply({'params': params_}, moved, method='tokens')['groups']
    a, b = np.asarray(a)[:, :, 0], np.asarray(b)[:, :, 0]
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
    assert (np.abs(a[1] - b[1]).max() > 1e-4) == changes, overrides
  bare = dataclasses.replace(schema, request_categorical=(), request_numeric=())
  with pytest.raises(ConfigError, match='config.model.candidate_reads_context=True: needs '
                     'request features to read'):
    onerank_from_config(_cfg(**on), bare)


def test_request_bias_shifts_a_requests_candidates_together(setup, switched):
  """The deviation: s_k^i + u_k . z_k. With u = 0 (its initialiser) the score is the paper's
  exactly; with u set, every candidate of a request moves by the same z_k . u_k."""
  schema, batch, _, params = setup
  on = dict(request_bias=True)
  p, (logits, aux) = switched[SWITCHES.index(on)]
  assert p['request_bias'].shape == (K, 16)
  base, base_aux = _forward(schema, params, batch)
  shift = np.einsum('rkd,kd->rk', np.asarray(base_aux['task_vectors']), p['request_bias'])
  np.testing.assert_allclose(logits, np.asarray(base) + shift[:, None], rtol=1e-5, atol=1e-5)
  zero = dict(p, request_bias=jnp.zeros_like(p['request_bias']))
  # (another compiled program than the baseline's: equal to float32 rounding)
  np.testing.assert_allclose(_forward(schema, zero, batch, **on)[0], base, rtol=1e-6, atol=1e-6)
  model = _model(schema, **on)
  init = partitioning.unbox(jax.jit(model.init)(jax.random.key(0), batch)['params'])
  assert not np.asarray(init['request_bias']).any()
  ref_logits, _ = _forward(schema, p, batch, request_level=False, **on)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  with pytest.raises(ConfigError, match="config.model.request_bias=True: needs config.model."
                     "scoring='matching'"):
    onerank_from_config(_cfg(request_bias=True, scoring='mlp'), schema)


def test_bad_switch_values_name_the_field(data):
  schema, _ = data
  for field, value in (('task_tokens', 'none'), ('scoring', 'dot'), ('situation', 'max'),
                       ('task_mask', 'chain'), ('cross_task', 'yes'), ('detach', 1.5),
                       ('candidate_in_task_tokens', 'yes'), ('candidate_reads_context', 'no')):
    model = OneRank(schema, width=16, num_heads=2, num_layers=1, embed_dim=4, **{field: value})
    with pytest.raises(ValueError, match=rf"OneRank.{field}={value!r}: choose one of"):
      jax.eval_shape(model.init, jax.random.key(0), dummy_batch(schema, 1))
    with pytest.raises(ConfigError, match=rf"config.model.{field}={value!r}: choose one of"):
      onerank_from_config(_raw_cfg(**{field: value}), schema)
  bad = [
      (dict(task_mask='hybrid', task_edges=(('order', 'buy'),)),
       r"config.model.task_edges: \('order', 'buy'\) names task 'buy'"),
      (dict(task_edges=(('order', 'click'),)), "config.model.task_mask='cascade'"),
      (dict(num_heads=3), 'config.model.num_heads=3: must divide config.model.width=16'),
      (dict(width=0), 'config.model.width=0: must be a positive integer'),
      (dict(use_sep=True), "config.model.use_sep=True needs config.model.seq_merge"),
      (dict(dtype='float16'), "config.model.dtype='float16'"),
      (dict(detach_kv_weights='no'), "config.model.detach_kv_weights='no'"),
  ]
  for override, message in bad:
    with pytest.raises(ConfigError, match=message):
      onerank_from_config(_raw_cfg(**override), schema)


def test_builder_defaults_and_embedding_group(data):
  schema, _ = data
  model = onerank_from_config(onerank_model(), schema)
  assert (model.width, model.num_heads, model.num_layers, model.ffn_mult) == (128, 4, 3, 4)
  assert (model.task_tokens, model.scoring, model.situation, model.task_mask) == (
      'per_task', 'matching', 'attention', 'cascade')
  assert model.cross_task and model.detach and not model.detach_kv_weights and model.request_level
  shapes = partitioning.unbox(jax.eval_shape(_model(schema).init, jax.random.key(0),
                                             dummy_batch(schema, 1))['params'])
  labels = param_labels(shapes)
  # One table per vocabulary, shared by history, context and candidates, in the sparse group.
  assert set(shapes['embeddings']) == set(schema.vocab_sizes)
  assert set(jax.tree.leaves(labels['embeddings'])) == {'sparse'}
  assert 'embeddings' not in shapes['history']
  assert set(jax.tree.leaves({k: v for k, v in labels.items() if k != 'embeddings'})) == {'dense'}
  assert shapes['task_tokens'].shape == (K, 16)
  assert shapes['situation_discernment']['f_kernel'].shape == (K, 9 * 4 + 2, 16)
