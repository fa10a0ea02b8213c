"""Feature-interaction baselines (SPEC A.11): DCNv2, Wukong, HiFormer, RankMixer.

Hand-checked layers against numpy, the structural claims of each paper (parameter-free token
mixing, token-specific projections), parameter counts against hand formulas, analytic FLOPs
against XLA's count, output widths and errors. Tiny shapes; parameters come from shapes alone
(``jax.eval_shape``) filled with numpy draws where values matter, so each module compiles at most
a couple of times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax.accounting import xla_flops
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.baselines.feature_interaction import (CrossLayer, DCNv2, HiFormer,
                                                               HiFormerLayer, RankMixer,
                                                               RankMixerLayer, Wukong, WukongLayer,
                                                               cross_layer, dcnv2_flops,
                                                               hiformer_flops, rankmixer_flops,
                                                               token_mixing,
                                                               token_mixing_token_first,
                                                               wukong_flops)


def _shapes(model, x):
  return partitioning.unbox(jax.eval_shape(model.init, jax.random.key(0), x)['params'])


def _random_params(model, x, seed=0, scale=0.3):
  """Parameters of the model's shapes, drawn from numpy (no init compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype),
                      _shapes(model, x))


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _layer_norm(x, scale, bias, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------- DCN-V2
def test_cross_layer_matches_hand_computation():
  rng = np.random.default_rng(0)
  d = 6
  x0, x = rng.normal(size=(3, d)), rng.normal(size=(3, d))
  w, b = rng.normal(size=(d, d)), rng.normal(size=(d,))
  expected = x0 * (x @ w + b) + x
  np.testing.assert_allclose(cross_layer(x0, x, w, b), expected, rtol=1e-6)
  got = CrossLayer().apply({'params': {'kernel': w, 'bias': b}}, jnp.asarray(x0), jnp.asarray(x))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # element by element: x'_i = x0_i * (sum_j x_j W_ji + b_i) + x_i
  i = 2
  assert np.isclose(expected[0, i], x0[0, i] * (sum(x[0, j] * w[j, i] for j in range(d)) + b[i])
                    + x[0, i])
  # low rank: W = V U (row form of the paper's U V^T)
  v, u = rng.normal(size=(d, 2)), rng.normal(size=(2, d))
  got = CrossLayer(rank=2).apply({'params': {'v': v, 'u': u, 'bias': b}}, jnp.asarray(x0),
                                 jnp.asarray(x))
  np.testing.assert_allclose(got, cross_layer(x0, x, v @ u, b), rtol=1e-5, atol=1e-5)


def test_dcnv2_cross_stack_and_structures():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4)).astype(np.float32)                 # [B, N, D]
  x0 = x.reshape(2, 12)
  cross_only = DCNv2(num_cross_layers=2, mlp_hidden=())
  p = _np(_random_params(cross_only, x))
  xl = x0
  for i in range(2):
    xl = cross_layer(x0, xl, p[f'cross_{i}']['kernel'], p[f'cross_{i}']['bias'])
  np.testing.assert_allclose(cross_only.apply({'params': p}, x), xl, rtol=1e-4, atol=1e-5)
  # parallel: the deep network reads x0, not the cross output; output [x_L, h_L]
  par = DCNv2(num_cross_layers=2, structure='parallel', mlp_hidden=(5,))
  p = _np(_random_params(par, x))
  xl = x0
  for i in range(2):
    xl = cross_layer(x0, xl, p[f'cross_{i}']['kernel'], p[f'cross_{i}']['bias'])
  h = np.maximum(x0 @ p['deep_0']['kernel'] + p['deep_0']['bias'], 0)
  np.testing.assert_allclose(par.apply({'params': p}, x), np.concatenate([xl, h], -1), rtol=1e-4,
                             atol=1e-5)


# ---------------------------------------------------------------------------------- Wukong
def test_wukong_layer_matches_numpy_reference():
  """Optimised FM X (X^T Y), LN, MLP -> n_F tokens; LCB; projected residual (n changes); LN."""
  rng = np.random.default_rng(2)
  n, d, n_f, n_l, k = 5, 4, 2, 2, 3
  x = rng.normal(size=(2, n, d)).astype(np.float32)
  layer = WukongLayer(n_f, n_l, k, (6,))
  p = _np(_random_params(layer, x))
  fm = np.einsum('bnd,bmd,mk->bnk', x, x, p['fm_projection'])         # (X X^T) Y
  h = _layer_norm(fm.reshape(2, -1), p['fm_norm']['scale'], p['fm_norm']['bias'])
  h = np.maximum(h @ p['fm_mlp_0']['kernel'] + p['fm_mlp_0']['bias'], 0)
  h = (h @ p['fm_out']['kernel'] + p['fm_out']['bias']).reshape(2, n_f, d)
  lcb = np.einsum('ln,bnd->bld', p['lcb'], x)
  res = np.einsum('on,bnd->bod', p['residual_projection'], x)
  expected = _layer_norm(np.concatenate([h, lcb], 1) + res, p['norm']['scale'], p['norm']['bias'])
  np.testing.assert_allclose(jax.jit(layer.apply)({'params': p}, x), expected, rtol=1e-4,
                             atol=1e-4)
  # fm_rank >= n: the plain X X^T [n, n]; n_F + n_L = n: the identity residual
  plain = WukongLayer(3, 2, 8, ())
  shapes = _shapes(plain, x)
  assert 'fm_projection' not in shapes and 'residual_projection' not in shapes
  assert shapes['fm_norm']['scale'].shape == (n * n,)


# ---------------------------------------------------------------------------------- HiFormer
@pytest.mark.parametrize('projection, q_names', [('heterogeneous', ('q',)),
                                                 ('composite', ('q_down', 'q_up'))])
def test_hiformer_projections_carry_a_token_axis(projection, q_names):
  n, d, t = 5, 8, 1
  model = HiFormer(num_layers=2, num_heads=2, head_dim=4, rank=3, projection=projection,
                   num_task_tokens=t)
  shapes = _shapes(model, jnp.zeros((1, n, d)))
  e = 2 * 4
  for layer, rows in (('layer_0', n + t), ('layer_1', t)):          # last layer: task rows only
    for kind in ('q', 'k', 'v'):
      kind_rows = rows if kind == 'q' else n + t
      if projection == 'heterogeneous':
        assert shapes[layer][kind].shape == (kind_rows, d, e)
      else:
        assert shapes[layer][f'{kind}_down'].shape == (n + t, d, 3)  # reads every token
        assert shapes[layer][f'{kind}_up'].shape == (kind_rows, 3, e)
    assert all(name in shapes[layer] for name in q_names)
    assert shapes[layer]['out'].shape == (rows, e, d)
    assert shapes[layer]['ffn_w1'].shape == (rows, d, 4 * d)


@pytest.mark.parametrize('projection', ['heterogeneous', 'composite'])
def test_hiformer_is_not_permutation_equivariant(projection):
  n, d = 4, 8
  model = HiFormer(num_layers=1, num_heads=2, head_dim=4, rank=3, projection=projection,
                   num_task_tokens=0)
  x = np.random.default_rng(3).normal(size=(2, n, d)).astype(np.float32)
  p = _random_params(model, x)
  f = jax.jit(lambda p, x: model.apply({'params': p}, x).reshape(x.shape))
  perm = np.array([2, 0, 3, 1])
  out, out_perm = np.asarray(f(p, x)), np.asarray(f(p, x[:, perm]))
  assert not np.allclose(out_perm, out[:, perm], atol=1e-3)
  if projection == 'heterogeneous':
    # control: with every token's slice tied, the layer is a shared-weight Transformer layer,
    # whose output permutes with its input
    tied = jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape) if a.ndim >= 2 else a, p)
    out, out_perm = np.asarray(f(tied, x)), np.asarray(f(tied, x[:, perm]))
    np.testing.assert_allclose(out_perm, out[:, perm], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('projection, q_slice', [('heterogeneous', 'q'), ('composite', 'q_up')])
def test_hiformer_token_slices_act_only_where_they_should(projection, q_slice):
  """Token i's query slice changes output row i only; its key slice changes every row."""
  n, d, i = 4, 8, 1
  layer = HiFormerLayer(num_heads=2, head_dim=4, rank=3, projection=projection, ffn_mult=2)
  x = np.random.default_rng(4).normal(size=(2, n, d)).astype(np.float32)
  p = _random_params(layer, x)
  f = jax.jit(lambda p, x: layer.apply({'params': p}, x))
  base = np.asarray(f(p, x))
  k_slice = 'k' if projection == 'heterogeneous' else 'k_up'
  for name, changed_rows in ((q_slice, [i]), (k_slice, list(range(n)))):
    q = dict(p)
    q[name] = p[name].at[i].add(0.5)
    diff = np.abs(np.asarray(f(q, x)) - base).max(axis=(0, 2))
    assert all(diff[r] > 1e-4 for r in changed_rows), (name, diff)
    assert all(diff[r] < 1e-6 for r in range(n) if r not in changed_rows), (name, diff)


def test_hiformer_task_tokens_and_pruning():
  """The output is the task tokens' final states; the pruned last layer computes only them."""
  n, d = 4, 8
  model = HiFormer(num_layers=2, num_heads=2, head_dim=4, rank=3, num_task_tokens=2)
  x = np.random.default_rng(5).normal(size=(3, n, d)).astype(np.float32)
  p = _random_params(model, x)
  out = jax.jit(model.apply)({'params': p}, x)
  assert out.shape == (3, 2 * d) == (3, model.output_width(n, d))
  # the same last layer unpruned (its task rows sliced from full-size stacks) gives the same rows
  layer = HiFormerLayer(num_heads=2, head_dim=4, rank=3, projection='composite', ffn_mult=4)
  hidden = jnp.concatenate([x, jnp.broadcast_to(p['task_tokens'], (3, 2, d))], axis=1)
  hidden = jax.jit(HiFormerLayer(2, 4, 3, 'composite', 4).apply)({'params': p['layer_0']}, hidden)
  full = dict(_random_params(layer, hidden, seed=9))
  for name, value in p['layer_1'].items():
    if name in ('q_up', 'out', 'ffn_w1', 'ffn_b1', 'ffn_w2', 'ffn_b2'):
      full[name] = full[name].at[n:].set(value)
    else:
      full[name] = value
  rows = jax.jit(layer.apply)({'params': full}, hidden)[:, n:]
  np.testing.assert_allclose(out.reshape(3, 2, d), rows, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- RankMixer
def test_token_mixing_is_a_parameter_free_rearrangement():
  t, d = 4, 8
  x = np.arange(2 * t * d, dtype=np.float32).reshape(2, t, d)
  y = np.asarray(token_mixing(jnp.asarray(x)))
  assert y.shape == (2, t, d)
  np.testing.assert_array_equal(np.sort(y, axis=None), np.sort(x, axis=None))   # a permutation
  np.testing.assert_array_equal(token_mixing(jnp.asarray(y)), x)                # H = T: involution
  dh = d // t
  for h in range(t):          # new token h = [x_1^(h) || .. || x_T^(h)]
    np.testing.assert_array_equal(y[:, h], np.concatenate(
        [x[:, s, h * dh:(h + 1) * dh] for s in range(t)], axis=-1))
  assert token_mixing(jnp.zeros((3, 5, t, d)), num_heads=2).shape == (3, 5, 2, t * d // 2)
  with pytest.raises(ValueError, match='divisible'):
    token_mixing(jnp.zeros((t, 6)), num_heads=4)


def test_rankmixer_parameters_are_per_token_ffns_and_norms_only():
  t, d, k = 4, 8, 2
  model = RankMixer(num_layers=2, ffn_mult=k)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, t, d)), jnp.float32)
  params = partitioning.unbox(jax.jit(model.init)(jax.random.key(0), x)['params'])
  names = {'/'.join(str(getattr(key, 'key', key)) for key in path[1:])
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert names == {'mix_norm/scale', 'mix_norm/bias', 'ffn_norm/scale', 'ffn_norm/bias',
                   'pffn_w1', 'pffn_b1', 'pffn_w2', 'pffn_b2'}
  w1, w2 = params['layer_0']['pffn_w1'], params['layer_0']['pffn_w2']
  assert w1.shape == (t, d, k * d) and w2.shape == (t, k * d, d)
  for a in range(t):
    for b in range(a + 1, t):
      assert not np.allclose(w1[a], w1[b]) and not np.allclose(w2[a], w2[b])


def test_rankmixer_layer_matches_numpy_reference():
  t, d = 4, 8
  layer = RankMixerLayer(ffn_mult=2)
  x = np.random.default_rng(7).normal(size=(3, t, d)).astype(np.float32)
  p = _np(_random_params(layer, x))
  mixed = x.reshape(3, t, t, d // t).transpose(0, 2, 1, 3).reshape(3, t, d)
  s = _layer_norm(mixed + x, p['mix_norm']['scale'], p['mix_norm']['bias'])
  h = np.asarray(jax.nn.gelu(np.einsum('btd,tdf->btf', s, p['pffn_w1']) + p['pffn_b1']))
  y = np.einsum('btf,tfd->btd', h, p['pffn_w2']) + p['pffn_b2']
  expected = _layer_norm(y + s, p['ffn_norm']['scale'], p['ffn_norm']['bias'])
  np.testing.assert_allclose(layer.apply({'params': p}, x), expected, rtol=1e-4, atol=1e-4)
  model = RankMixer(num_layers=1, ffn_mult=2)
  out = model.apply({'params': {'layer_0': p}}, x)
  np.testing.assert_allclose(out, expected.mean(axis=1), rtol=1e-4, atol=1e-4)   # mean pooling


def test_rankmixer_holds_its_tokens_first_with_the_same_parameters_and_outputs():
  """The stack runs its layers on [T, ..., D] (the per-token einsums' batch axis first, so XLA
  copies nothing around them); the parameters are the token-last layer's and the outputs and
  gradients equal applying those layers to [..., T, D] (up to float rounding)."""
  t, d = 4, 8
  x = jnp.asarray(np.random.default_rng(8).normal(size=(3, 5, t, d)), jnp.float32)
  np.testing.assert_array_equal(
      token_mixing_token_first(jnp.moveaxis(x, -2, 0)), jnp.moveaxis(token_mixing(x), -2, 0))
  model = RankMixer(num_layers=2, ffn_mult=2)
  params = partitioning.unbox(model.init(jax.random.key(1), x)['params'])
  params = jax.tree_util.tree_map(   # non-trivial biases and norms
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params)

  def token_last(p, x):
    for i in range(2):
      x = RankMixerLayer(ffn_mult=2).apply({'params': p[f'layer_{i}']}, x)
    return jnp.mean(x, axis=-2)

  np.testing.assert_allclose(model.apply({'params': params}, x), token_last(params, x),
                             rtol=1e-5, atol=1e-6)
  g_first = jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({'params': p}, x))))(params)
  g_last = jax.grad(lambda p: jnp.sum(jnp.sin(token_last(p, x))))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g_first), jax.tree_util.tree_leaves(g_last)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='divisible'):
    token_mixing_token_first(jnp.zeros((4, 2, 6)))


# ---------------------------------------------------------------------------------- params
def _mlp_params(d_in, widths):
  total = 0
  for w in widths:
    total += d_in * w + w
    d_in = w
  return total


def dcnv2_params(n, d, layers, mlp, rank=None):
  d0 = n * d
  cross = d0 * d0 + d0 if rank is None else 2 * d0 * rank + d0
  return layers * cross + _mlp_params(d0, mlp)


def wukong_params(n, d, layers, n_f, n_l, k, mlp):
  total, n_out = 0, n_f + n_l
  for _ in range(layers):
    m = n * k if k < n else n * n
    total += (n * k if k < n else 0) + 2 * m + _mlp_params(m, mlp + (n_f * d,))
    total += n_l * n + (n_out * n if n_out != n else 0) + 2 * d
    n = n_out
  return total


def hiformer_params(n, d, layers, heads, dh, rank, projection, t, mult):
  n, e, f = n + t, heads * dh, mult * d
  proj = {'heterogeneous': lambda rows: rows * d * e,
          'composite': lambda rows: (n * d * rows * e if rank is None
                                     else n * d * rank + rows * rank * e)}[projection]
  total = t * d
  for i in range(layers):
    rows = t if (i == layers - 1 and t) else n
    total += proj(rows) + 2 * proj(n) + rows * e * d + rows * (2 * d * f + f + d) + 4 * d
  return total


def rankmixer_params(t, d, layers, mult):
  return layers * (4 * d + t * (2 * mult * d * d + mult * d + d))


N_TOKENS = 4


@pytest.mark.parametrize('layers', [1, 2])
@pytest.mark.parametrize('d', [8, 16])
def test_parameter_counts_match_hand_formulas(layers, d):
  x = jnp.zeros((1, N_TOKENS, d))
  cases = [
      (DCNv2(layers, 'stacked', (16, 8)), dcnv2_params(N_TOKENS, d, layers, (16, 8))),
      (DCNv2(layers, 'parallel', (8,), rank=3), dcnv2_params(N_TOKENS, d, layers, (8,), 3)),
      (Wukong(layers, 3, 2, 2, (8,)), wukong_params(N_TOKENS, d, layers, 3, 2, 2, (8,))),
      (Wukong(layers, 2, 2, None, ()), wukong_params(N_TOKENS, d, layers, 2, 2, 99, ())),
      (HiFormer(layers, 2, 4, 3), hiformer_params(N_TOKENS, d, layers, 2, 4, 3, 'composite', 1, 4)),
      (HiFormer(layers, 2, 4, None, num_task_tokens=2, ffn_mult=2),
       hiformer_params(N_TOKENS, d, layers, 2, 4, None, 'composite', 2, 2)),
      (HiFormer(layers, 1, 4, None, 'heterogeneous', num_task_tokens=0),
       hiformer_params(N_TOKENS, d, layers, 1, 4, None, 'heterogeneous', 0, 4)),
      (RankMixer(layers, 2), rankmixer_params(N_TOKENS, d, layers, 2)),
  ]
  for model, expected in cases:
    assert _count(_shapes(model, x)) == expected, model


# ---------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize('model, analytic', [
    (DCNv2(2, 'stacked', (32, 16)), lambda n, d: dcnv2_flops(n, d, 2, (32, 16))),
    (DCNv2(2, 'parallel', (32,), rank=8), lambda n, d: dcnv2_flops(n, d, 2, (32,), 8)),
    (Wukong(2, 4, 4, 3, (32,)), lambda n, d: wukong_flops(n, d, 2, 4, 4, 3, (32,))),
    (HiFormer(2, 2, 8, 8), lambda n, d: hiformer_flops(n, d, 2, 2, 8, 8, 'composite', 1, 4)),
    (HiFormer(2, 2, 8, None, 'heterogeneous', 0),
     lambda n, d: hiformer_flops(n, d, 2, 2, 8, None, 'heterogeneous', 0, 4)),
    (RankMixer(2, 4), lambda n, d: rankmixer_flops(n, d, 2, 4)),
], ids=['dcn_stacked', 'dcn_parallel_lowrank', 'wukong', 'hiformer', 'hiformer_het', 'rankmixer'])
def test_analytic_flops_match_xla(model, analytic):
  n, d = N_TOKENS, 16
  x = jnp.zeros((1, n, d))                           # one example
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(model, x))
  xla = xla_flops(lambda p, x: model.apply({'params': p}, x), params, x)
  assert model.flops(n, d) == analytic(n, d)
  assert 0.5 <= xla / analytic(n, d) <= 2.0, (xla, analytic(n, d))


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('model, width', [
    (DCNv2(2, 'stacked', (16, 8)), 8),
    (DCNv2(1, 'stacked', ()), 4 * 8),
    (DCNv2(2, 'parallel', (16,)), 4 * 8 + 16),
    (Wukong(2, 3, 2, 2, (8,)), 5 * 8),
    (HiFormer(2, 2, 4, 3), 8),
    (HiFormer(1, 2, 4, 3, num_task_tokens=3), 3 * 8),
    (HiFormer(2, 2, 4, 3, 'heterogeneous', 0), 4 * 8),
    (RankMixer(2, 2), 8),
])
def test_output_shapes(model, width):
  x = jnp.zeros((2, 3, 4, 8))                        # [R, C, N, D]
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
  assert out.shape == (2, 3, width) and model.output_width(4, 8) == width


@pytest.mark.parametrize('model, match', [
    (DCNv2(structure='diagonal'), 'DCNv2.structure'),
    (DCNv2(structure='parallel', mlp_hidden=()), 'DCNv2.mlp_hidden'),
    (DCNv2(num_cross_layers=0), 'DCNv2.num_cross_layers'),
    (DCNv2(rank=0), 'DCNv2.rank'),
    (DCNv2(mlp_hidden=(8, -1)), 'DCNv2.mlp_hidden'),
    (Wukong(num_fm_tokens=0), 'Wukong.num_fm_tokens'),
    (Wukong(fm_rank=0), 'Wukong.fm_rank'),
    (Wukong(num_layers=0), 'Wukong.num_layers'),
    (HiFormer(projection='shared'), 'HiFormer.projection'),
    (HiFormer(num_heads=0), 'HiFormer.num_heads'),
    (HiFormer(num_task_tokens=-1), 'HiFormer.num_task_tokens'),
    (RankMixer(ffn_mult=0), 'RankMixer.ffn_mult'),
    (RankMixer(), 'D=8 must be divisible by the number of tokens T=6'),
])
def test_bad_hyperparameters_raise_clear_errors(model, match):
  with pytest.raises(ValueError, match=match):
    model.output_width(6, 8)
  with pytest.raises(ValueError, match=match):
    _shapes(model, jnp.zeros((1, 6, 8)))


def test_the_rankmixer_layout_benchmark_times_both_layouts(capsys):
  from onetrans_jax.benchmarks import rankmixer_layout
  rankmixer_layout.main(['--requests=3', '--candidates=2', '--tokens=2', '--width=4',
                         '--ffn_mult=1', '--layers=1', '--repeats=2'])
  out = capsys.readouterr().out
  assert '3 x 2 rows x 2 tokens x 4' in out and 'token_first' in out and 'token_last /' in out
