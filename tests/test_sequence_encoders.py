"""Sequence encoders of the baselines (SPEC A.11): DIN's exact unit, padding, independence, counts,
FLOPs against XLA's count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax.accounting import xla_flops
from onetrans_jax.models.baselines import sequence_encoders as se
from onetrans_jax.models.layers import partitioning

R, C, L, D = 2, 3, 8, 8
D_T, D_U = 6, 5
# Request 0: five valid events (three padded on the left); request 1: an empty history.
MASK = np.array([[False] * 3 + [True] * 5, [False] * L])


def _data(seed=0, l=L, d=D, d_t=None):
  k = jax.random.split(jax.random.key(seed), 3)
  events = jax.random.normal(k[0], (R, l, d))
  target = jax.random.normal(k[1], (R, C, d_t or d))
  user = jax.random.normal(k[2], (R, D_U))
  return events, target, user


def _shapes(module, *args):
  """The module's parameter shapes (unboxed: plain ShapeDtypeStructs)."""
  return partitioning.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)['params'])


def _random_params(module, *args, seed=1):
  """Random parameters of the module's real tree, drawn on the host (skips compiling the
  initialisers, seconds each on CPU); fan-in scaled, biases and gains non-zero."""
  shapes = _shapes(module, *args)
  rng = np.random.default_rng(seed)

  def draw(s):
    if len(s.shape) >= 2:
      return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[-2]), s.dtype)
    return jnp.asarray(0.5 + 0.3 * rng.normal(size=s.shape), s.dtype)
  return jax.tree.map(draw, shapes)


def _count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def _din_apply(module):
  return jax.jit(lambda p, e, m, t: module.apply({'params': p}, e, m, t, return_weights=True))


# ------------------------------------------------------------------ DIN: the unit itself
def _prelu(z, a):
  return np.where(z >= 0, z, a * z)


def _din_reference(p, events, mask, target):
  """The activation unit as written in the paper, one (candidate, event) pair at a time."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  events, target = np.asarray(events, np.float64), np.asarray(target, np.float64)
  n_hidden = sum(1 for k in p if k.startswith('kernel_'))
  r, c, l = target.shape[0], target.shape[1], events.shape[1]
  w = np.zeros((r, c, l))
  for i in range(r):
    for ci in range(c):
      for j in range(l):
        if not mask[i, j]:
          continue
        ej, et = events[i, j], target[i, ci]
        h = np.concatenate([ej, et, ej - et, ej * et])
        for k in range(n_hidden):
          h = _prelu(h @ p[f'kernel_{k}'] + p[f'bias_{k}'], p[f'prelu_{k}'])
        w[i, ci, j] = (h @ p['out_kernel'])[0] + p['out_bias'][0]
  return np.einsum('rcl,rld->rcd', w, np.where(mask[..., None], events, 0)), w


def test_din_unit_is_the_concat_mlp():
  """Weights and interest against a hand computation on [e_j, e_t, e_j - e_t, e_j * e_t]."""
  din = se.DINAttention(hidden=(12, 6))
  events, target, _ = _data()
  params = _random_params(din, events, MASK, target)
  v, w = _din_apply(din)(params, events, MASK, target)
  v_ref, w_ref = _din_reference(params, events, MASK, target)
  np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(v), v_ref, rtol=1e-4, atol=1e-5)
  assert params['kernel_0'].shape == (4 * D, 12)


def test_din_sum_pooling_without_softmax():
  """Identical events: doubling the valid events doubles v (a softmax would leave v unchanged)."""
  din = se.DINAttention(hidden=(12, 6))
  e = jax.random.normal(jax.random.key(3), (D,))
  events = jnp.broadcast_to(e, (R, 4, D))
  target = jax.random.normal(jax.random.key(4), (R, C, D))
  two = np.array([[False, False, True, True]] * R)
  four = np.ones((R, 4), bool)
  params = _random_params(din, events, two, target)
  apply = _din_apply(din)
  v2, w2 = apply(params, events, two, target)
  v4, w4 = apply(params, events, four, target)
  np.testing.assert_allclose(np.asarray(v4), 2 * np.asarray(v2), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(v4), np.asarray(v2), atol=1e-3)
  assert np.all(np.asarray(w2)[..., :2] == 0.0)                # padded events weigh exactly 0
  assert np.all(np.abs(np.asarray(w4).sum(-1) - 1.0) > 1e-3)   # and the weights are no softmax


def test_stack_din_one_layer_is_din_and_refines_the_query():
  events, target, _ = _data()
  din = se.DINAttention(hidden=(12, 6))
  p = _random_params(din, events, MASK, target)
  v_din, w_din = _din_apply(din)(p, events, MASK, target)
  v1, w1 = _din_apply(se.StackDIN(1, (12, 6)))({'din_0': p}, events, MASK, target)
  np.testing.assert_array_equal(np.asarray(v1), np.asarray(v_din))
  np.testing.assert_array_equal(np.asarray(w1), np.asarray(w_din))
  # Two layers whose second unit is the first: the second layer reads with q_2 = e_t + LN(v_1).
  stack = se.StackDIN(2, (12, 6))
  p2 = _random_params(stack, events, MASK, target)
  p2 = {**p2, 'din_0': p, 'din_1': p}
  v2, _ = _din_apply(stack)(p2, events, MASK, target)
  ln = p2['query_norm_0']
  x = np.asarray(v_din, np.float64)
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  q2 = np.asarray(target) + x * np.asarray(ln['scale']) + np.asarray(ln['bias'])
  v_ref, _ = _din_reference(p, events, MASK, q2)
  np.testing.assert_allclose(np.asarray(v2), v_ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ every module
def _longer(**kw):
  cfg = dict(width=16, num_heads=2, num_layers=3, merge=3, num_recent=2)
  cfg.update(kw)
  return se.Longer(**cfg)


MODULES = {
    'din': (lambda: se.DINAttention(hidden=(12, 6)), 'din'),
    'stack_din': (lambda: se.StackDIN(3, (12, 6)), 'din'),
    'longer': (_longer, 'longer'),                           # L = 8 is not a multiple of 3
    'longer_plain': (lambda: _longer(merge=2, num_layers=1, num_recent=4, inner_trans=False,
                                     positions=False), 'longer'),
    'transformer': (lambda: se.SequenceTransformer(16, 2, 2), 'seq'),
}


def _args(kind, events, target, user, mask=MASK):
  if kind == 'din':
    return events, mask, target
  if kind == 'longer':
    return events, mask, target, user
  return events, mask


def _expected_shape(module, kind):
  if kind == 'din':
    return (R, C, D)
  if kind == 'longer':
    return (R, C, module.width)
  return (R, module.num_pooled, module.width)


@pytest.mark.parametrize('name', list(MODULES))
def test_shape_empty_history_and_padding(name):
  make, kind = MODULES[name]
  module = make()
  events, target, user = _data(d_t=D_T if kind == 'longer' else None)
  args = _args(kind, events, target, user)
  params = _random_params(module, *args)
  apply = jax.jit(lambda p, *a: module.apply({'params': p}, *a))
  out = np.asarray(apply(params, *args))
  assert out.shape == _expected_shape(module, kind)
  assert np.isfinite(out).all()                      # request 1 has no valid event
  # Padded events, even non-finite ones, never reach an output.
  noise = 1e3 * jax.random.normal(jax.random.key(9), events.shape)
  noise = noise.at[1, 0, 0].set(jnp.inf).at[0, 1, 2].set(jnp.nan)
  perturbed = jnp.where(MASK[..., None], events, noise)
  out2 = np.asarray(apply(params, *_args(kind, perturbed, target, user)))
  np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-5)
  # ... while a valid event does.
  moved = events.at[0, L - 1].add(1.0)
  assert not np.allclose(np.asarray(apply(params, *_args(kind, moved, target, user)))[0], out[0])


@pytest.mark.parametrize('name', ['din', 'longer', 'transformer'])
def test_bfloat16_compute_keeps_float32_params(name):
  make, kind = MODULES[name]
  module = make().clone(dtype=jnp.bfloat16)
  events, target, user = _data(d_t=D_T if kind == 'longer' else None)
  args = _args(kind, events, target, user)
  shapes = _shapes(module, *args)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  out = jax.eval_shape(lambda p: module.apply({'params': p}, *args), shapes)
  assert out.dtype == jnp.bfloat16


def test_longer_candidates_are_independent():
  module = _longer()
  events, target, user = _data(d_t=D_T)
  params = _random_params(module, events, MASK, target, user)
  apply = jax.jit(lambda p, t: module.apply({'params': p}, events, MASK, t, user))
  out = np.asarray(apply(params, target))
  out2 = np.asarray(apply(params, target.at[:, 1].add(3.0)))
  np.testing.assert_allclose(out2[:, [0, 2]], out[:, [0, 2]], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out2[:, 1], out[:, 1])


def _ln(x, p, eps=1e-6):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _dense(x, p):
  return x @ p['kernel'] + p['bias']


def _longer_reference(module, p, events, mask, target, user):
  """LONGER as one token list per candidate, [target, user, merged sequence], under the joint
  mask the module documents; plain softmax attention, float64, one candidate at a time."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  events, target, user = (np.asarray(a, np.float64) for a in (events, target, user))
  kk, k, h = module.merge, module.num_recent, module.num_heads
  r, l, d_e = events.shape
  n = -(-l // kk)
  e = np.pad(events, ((0, 0), (n * kk - l, 0), (0, 0))) + p['positions'][::-1]
  m = np.pad(mask, ((0, 0), (n * kk - l, 0)))
  e = np.where(m[..., None], e, 0)
  out = np.zeros((r, target.shape[1], module.width))
  for i in range(r):
    seq = _dense(e[i].reshape(n, kk * d_e), p['merge_proj'])
    seq_valid = m[i].reshape(n, kk).any(-1)
    for c in range(target.shape[1]):
      x = np.concatenate([_dense(target[i, c], p['target_proj'])[None],
                          _dense(user[i], p['user_proj'])[None], seq])
      valid = np.concatenate([[True, True], seq_valid])
      kind = ['target', 'user'] + ['seq'] * n
      pos = np.array([-2, -1] + list(range(n)))
      for layer in range(module.num_layers):
        lp = p[f'layer_{layer}']
        q_idx = [0, 1] + list(range(len(x) - k, len(x)))
        y = _ln(x, lp['attn_norm'])
        q = _dense(y[q_idx], lp['q']).reshape(len(q_idx), h, -1)
        kv = _dense(y, lp['kv'])
        kh = kv[:, :module.width].reshape(len(x), h, -1)
        vh = kv[:, module.width:].reshape(len(x), h, -1)
        see = np.zeros((len(q_idx), len(x)), bool)
        for a, qi in enumerate(q_idx):
          for b in range(len(x)):
            if kind[qi] == 'target':
              see[a, b] = valid[b]
            elif kind[b] == 'target':
              see[a, b] = False
            elif kind[qi] == 'user':
              see[a, b] = valid[b]
            else:
              see[a, b] = valid[b] and pos[b] <= pos[qi]
        logits = np.einsum('qhd,khd->hqk', q, kh) / np.sqrt(q.shape[-1])
        logits = np.where(see[None], logits, -np.inf)
        wts = np.exp(logits - logits.max(-1, keepdims=True))
        wts /= wts.sum(-1, keepdims=True)
        o = np.einsum('hqk,khd->qhd', wts, vh).reshape(len(q_idx), -1)
        z = x[q_idx] + _dense(o, lp['out'])
        x = z + _dense(_gelu(_dense(_ln(z, lp['ffn_norm']), lp['ffn_in'])), lp['ffn_out'])
        valid, kind, pos = valid[q_idx], [kind[j] for j in q_idx], pos[q_idx]
      out[i, c] = _ln(x[0], p['final_norm'])
  return out


@pytest.mark.parametrize('layers, recent', [(3, 2), (2, 0)])
def test_longer_matches_the_joint_mask_reference(layers, recent):
  """The request/candidate split equals one causal token list per candidate."""
  module = _longer(num_layers=layers, num_recent=recent, inner_trans=False)
  events, target, user = _data(d_t=D_T)
  params = _random_params(module, events, MASK, target, user)
  out = jax.jit(module.apply)({'params': params}, events, MASK, target, user)
  ref = _longer_reference(module, params, events, MASK, target, user)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_longer_left_pads_to_a_multiple_of_merge():
  """L = 7 with merge 4 is exactly L = 8 with one more padded event on the left."""
  module = _longer(merge=4, num_recent=1)
  events, target, user = _data(l=8, d_t=D_T)
  mask8 = np.array([[False] * 3 + [True] * 5, [False] * 7 + [True]])
  params = _random_params(module, events, mask8, target, user)
  assert params['positions'].shape == (8, D)
  apply = jax.jit(lambda p, e, m: module.apply({'params': p}, e, m, target, user))
  out8 = apply(params, events, mask8)
  out7 = apply(params, events[:, 1:], mask8[:, 1:])
  np.testing.assert_allclose(np.asarray(out7), np.asarray(out8), rtol=1e-5, atol=1e-5)


def test_config_errors_name_the_attribute():
  events, target, user = _data(d_t=D_T)
  with pytest.raises(ValueError, match='num_recent'):       # 8 events / merge 3 = 3 tokens
    jax.eval_shape(_longer(num_recent=4).init, jax.random.key(0), events, MASK, target, user)
  with pytest.raises(ValueError, match='num_heads'):
    jax.eval_shape(_longer(num_heads=3).init, jax.random.key(0), events, MASK, target, user)
  with pytest.raises(ValueError, match='hidden'):
    jax.eval_shape(se.DINAttention(hidden=()).init, jax.random.key(0), events, MASK,
                   jnp.ones((R, C, D)))
  with pytest.raises(ValueError, match='target width'):
    jax.eval_shape(se.DINAttention().init, jax.random.key(0), events, MASK, target)


def test_real_init_is_float32_and_finite():
  module = _longer(num_layers=1, inner_trans=False)
  events, target, user = _data(d_t=D_T)
  params = partitioning.unbox(
      jax.jit(module.init)(jax.random.key(0), events, MASK, target, user)['params'])
  assert jax.tree.structure(params) == jax.tree.structure(
      _random_params(module, events, MASK, target, user))
  assert all(x.dtype == jnp.float32 and np.isfinite(x).all() for x in jax.tree.leaves(params))


# ------------------------------------------------------------------ parameter counts
def _din_params(d, hidden):
  sizes = [4 * d] + list(hidden)
  return sum(a * b + 2 * b for a, b in zip(sizes[:-1], sizes[1:])) + hidden[-1] + 1


def _block_params(w, m=4):
  return 4 * w * w + 4 * w + 2 * m * w * w + m * w + w + 4 * w   # attention, FFN, two LNs


@pytest.mark.parametrize('d, hidden', [(8, (12, 6)), (16, (20, 10, 5))])
def test_din_param_count(d, hidden):
  events, target = jnp.ones((R, L, d)), jnp.ones((R, C, d))
  p = _shapes(se.DINAttention(hidden), events, MASK, target)
  assert _count(p) == _din_params(d, hidden)
  for n in (2, 3):
    p = _shapes(se.StackDIN(n, hidden), events, MASK, target)
    assert _count(p) == n * _din_params(d, hidden) + (n - 1) * 2 * d


@pytest.mark.parametrize('width, layers, merge, inner', [(16, 2, 4, True), (24, 3, 3, False)])
def test_longer_param_count(width, layers, merge, inner):
  events, target, user = _data(d_t=D_T)
  module = se.Longer(width, 2, layers, merge=merge, num_recent=1, inner_trans=inner)
  p = _shapes(module, events, MASK, target, user)
  padded = -(-L // merge) * merge
  w = width
  want = (padded * D + (_block_params(D) if inner else 0) + merge * D * w + w
          + D_T * w + w + D_U * w + w + layers * _block_params(w) + 2 * w)
  assert _count(p) == want
  # The vanilla block is the 12 d^2 + 13 d of LONGER's own count (§3.3).
  assert _block_params(w) == 12 * w * w + 13 * w


@pytest.mark.parametrize('width, layers', [(16, 1), (24, 3)])
def test_sequence_transformer_param_count(width, layers):
  module = se.SequenceTransformer(width, 4, layers)
  p = _shapes(module, jnp.ones((R, L, D)), MASK)
  assert _count(p) == D * width + width + L * width + layers * _block_params(width) + 2 * width


# ------------------------------------------------------------------ FLOPs
FLOP_CASES = {
    'din': (lambda: se.DINAttention((32, 16)), 'din',
            lambda m, l, d: se.din_flops(l, d, m.hidden)),
    'stack_din': (lambda: se.StackDIN(2, (32, 16)), 'din',
                  lambda m, l, d: se.stack_din_flops(m.num_layers, l, d, m.hidden)),
    'longer': (lambda: se.Longer(64, 2, 2, merge=2, num_recent=4), 'longer',
               lambda m, l, d: se.longer_flops(l, d, d, D_U, m.width, m.num_layers, m.merge,
                                               m.num_recent, m.ffn_mult, m.inner_trans)),
    'transformer': (lambda: se.SequenceTransformer(64, 2, 2), 'seq',
                    lambda m, l, d: se.sequence_transformer_flops(l, d, m.width,
                                                                  m.num_layers, m.ffn_mult)),
}


@pytest.mark.parametrize('name', list(FLOP_CASES))
def test_flops_match_xla(name):
  make, kind, analytic = FLOP_CASES[name]
  module = make()
  l, d = 16, 32
  events, target, user = _data(l=l, d=d)
  mask = np.ones((R, l), bool)
  args = _args(kind, events, target, user, mask)
  params = _random_params(module, *args)
  xla = xla_flops(lambda p, *a: module.apply({'params': p}, *a), params, *args)
  f = analytic(module, l, d)
  total = R * f['request'] + R * C * f['candidate']
  # XLA also counts the elementwise work the analytic count leaves out (a few percent here).
  assert 0.97 < xla / total < 1.15, (xla, total)


def test_flops_split_and_scaling():
  # DIN: the sequence-linear parts double with L; nothing else is left.
  a, b = se.din_flops(10, 8, (16, 4)), se.din_flops(20, 8, (16, 4))
  assert b['request'] == 2 * a['request']
  assert b['candidate'] - 2 * a['candidate'] == -2 * 8 * 16        # e_t (W_b - W_c) once
  s = se.stack_din_flops(3, 10, 8, (16, 4))
  assert s == {k: 3 * v for k, v in a.items()}
  # The transformer is request-level only; attention scores are quadratic in L.
  t1, t2 = (se.sequence_transformer_flops(n, 8, 16, 2) for n in (10, 20))
  assert t1['candidate'] == 0.0 and t2['request'] > 2 * t1['request']
  # LONGER: a candidate's cost grows with the merged length only through its scores in layer 1,
  # and merging fewer events per token costs the request side more.
  x1, x2 = (se.longer_flops(n, 8, 6, 5, 16, 2, 4, 2) for n in (16, 32))
  assert x2['candidate'] - x1['candidate'] == 4.0 * (32 // 4 - 16 // 4) * 16
  assert se.longer_flops(32, 8, 6, 5, 16, 2, 2, 2)['request'] > x2['request']
