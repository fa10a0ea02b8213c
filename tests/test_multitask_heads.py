"""Multi-task predictors (SPEC B.7 baselines): shapes, gates, exact structure, counts, FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from onetrans_jax.accounting import xla_flops
from onetrans_jax.errors import ConfigError
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.multitask import config as mhc
from onetrans_jax.models.multitask import predictors as mh
from onetrans_jax.models.multitask.towers import TaskTowers

R, C, D, T = 3, 5, 32, 3


def _cfg(kind: str, **overrides) -> ml_collections.ConfigDict:
  c = mhc.defaults()
  c.predictor = kind
  c.width = D
  c.update(overrides)
  return c


# Widths that differ from D and from each other, so a count that mixes them up fails.
SIZED = {
    'towers': dict(head_hidden=12),
    'shared_bottom': dict(predictor_bottom_hidden=20, head_hidden=12),
    'mmoe': dict(predictor_experts=5, predictor_expert_hidden=24, head_hidden=12),
    'ple': dict(predictor_levels=3, predictor_task_experts=2, predictor_shared_experts=3,
                predictor_expert_hidden=24, head_hidden=12),
}
CASES = [(k, {}) for k in mhc.PREDICTORS] + [(k, v) for k, v in SIZED.items()]
IDS = [f'{k}-default' for k in mhc.PREDICTORS] + [f'{k}-sized' for k in SIZED]


def _x(seed=0, shape=(R, C, D)):
  return jax.random.normal(jax.random.key(seed), shape)


def _init(head, x, seed=1):
  """Random parameters of the head's real tree, drawn on the host.

  The heads' truncated-normal initialiser compiles once per parameter shape, seconds per head on
  CPU; these tests need any well-scaled values (biases non-zero, so references check them).
  ``test_real_init`` runs the real initialiser once.
  """
  shapes = partitioning.unbox(jax.eval_shape(head.init, jax.random.key(0), x)['params'])
  rng = np.random.default_rng(seed)

  def draw(s):
    scale = 1.0 / np.sqrt(s.shape[-2]) if len(s.shape) >= 2 else 0.1
    return jnp.asarray(rng.normal(size=s.shape) * scale, s.dtype)
  return jax.tree.map(draw, shapes)


def _applier(head, return_gates=False):
  """Eager forward: for these small heads, op-by-op dispatch beats compiling each variant."""
  kw = {'return_gates': True} if return_gates else {}
  return lambda p, v: head.apply({'params': p}, v, **kw)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _silu(z):
  return z / (1.0 + np.exp(-z))


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _tower_ref(p, inputs):
  """inputs: list over tasks of [..., H] -> [..., T]; one task at a time."""
  return np.stack([_silu(inp @ p['w1'][k] + p['b1'][k]) @ p['w2'][k, :, 0] + p['b2'][k]
                   for k, inp in enumerate(inputs)], -1)


# ------------------------------------------------------------------ shapes, counts, FLOPs
@pytest.mark.parametrize('kind, sizes', CASES, ids=IDS)
def test_shape_params_and_flops(kind, sizes):
  cfg = _cfg(kind, **sizes)
  head = mhc.from_config(cfg, T)
  x = _x()
  params = _init(head, x)
  logits = jax.eval_shape(_applier(head), params, x)   # values: the reference tests below
  assert logits.shape == (R, C, T) and logits.dtype == jnp.float32
  n = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
  assert n == mhc.param_count(cfg, D, T), (n, mhc.param_count(cfg, D, T))
  xla = xla_flops(lambda p, v: head.apply({'params': p}, v), params, x) / (R * C)
  analytic = mhc.forward_flops(cfg, D, T)
  assert 0.7 < xla / analytic < 1.5, (xla, analytic)


def test_real_init():
  """The real initialiser: float32 parameters, zero biases, fan-in scaled weights."""
  head = mhc.from_config(_cfg('mmoe', predictor_experts=8), T)
  x = _x()
  params = partitioning.unbox(jax.jit(head.init)(jax.random.key(0), x)['params'])
  assert jax.tree.structure(params) == jax.tree.structure(_init(head, x))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  assert float(jnp.abs(params['expert_b']).max()) == 0.0
  for name in ('expert_w', 'gate_w'):   # fan-in D: std 1/sqrt(D), per expert and per task
    std = np.std(np.asarray(params[name]).reshape(params[name].shape[0], -1), axis=1)
    assert np.all((0.7 / np.sqrt(D) < std) & (std < 1.3 / np.sqrt(D))), (name, std)


def test_towers_is_the_existing_head():
  head = mhc.from_config(_cfg('towers'), T)
  assert isinstance(head, TaskTowers) and head.hidden == D
  assert mhc.from_config(_cfg('towers', head_hidden=7), T).hidden == 7
  # A config without any predictor field is the towers of old configs.
  old = ml_collections.ConfigDict(dict(width=D, head_hidden=0))
  assert isinstance(mhc.from_config(old, T), TaskTowers)
  assert mhc.param_count(old, D, T) == T * (D * D + 2 * D + 1)


def test_defaults_have_every_field():
  d = mhc.defaults()
  for fields in mhc._FIELDS.values():
    for f in fields:
      assert f in d
  assert d.predictor == 'towers' and d.predictor_experts == 4 and d.predictor_expert_hidden == 0


def test_compute_dtype_bfloat16_keeps_float32_params_and_logits():
  cfg = _cfg('mmoe')
  x = _x()
  h32 = mhc.from_config(cfg, T)
  h16 = mhc.from_config(cfg, T, dtype=jnp.bfloat16)
  params = _init(h32, x)
  shapes = partitioning.unbox(jax.eval_shape(h16.init, jax.random.key(0), x)['params'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  a = np.asarray(_applier(h32)(params, x))
  b = jax.jit(_applier(h16))(params, x)   # one compile beats a bfloat16 compile per op
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(b), a, atol=0.1)


# ------------------------------------------------------------------ gates
def _sums_to_one(g, n_experts):
  g = np.asarray(g)
  assert g.shape[-1] == n_experts
  assert np.all(g >= 0)
  np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
  assert np.ptp(g, axis=-1).max() > 1e-3   # not a constant uniform gate: it reads x


def test_mmoe_gates_are_softmax_and_match_a_reference():
  head = mh.MMoE(T, num_experts=4, expert_hidden=24, tower_hidden=12)
  x = _x()
  params = _init(head, x)
  logits, gates = _applier(head, True)(params, x)
  assert gates['task'].shape == (R, C, T, 4)
  _sums_to_one(gates['task'], 4)
  # Reference: one task, one expert at a time.
  p, xn = _np(params), np.asarray(x, np.float64)
  experts = [_silu(xn @ p['expert_w'][e] + p['expert_b'][e]) for e in range(4)]
  mixed = []
  for k in range(T):
    g = _softmax(xn @ p['gate_w'][k])
    np.testing.assert_allclose(np.asarray(gates['task'])[..., k, :], g, rtol=1e-5, atol=1e-6)
    mixed.append(sum(g[..., e:e + 1] * experts[e] for e in range(4)))
  np.testing.assert_allclose(np.asarray(logits), _tower_ref(p['towers'], mixed),
                             rtol=1e-4, atol=1e-5)


def test_mmoe_with_one_expert_is_a_shared_bottom():
  x = _x()
  sb = mh.SharedBottom(T, bottom_hidden=20, tower_hidden=12)
  sb_params = _init(sb, x)
  mmoe = mh.MMoE(T, num_experts=1, expert_hidden=20, tower_hidden=12)
  m_params = dict(_init(mmoe, x, seed=7))
  m_params['expert_w'] = sb_params['bottom_w'][None]
  m_params['expert_b'] = sb_params['bottom_b'][None]
  m_params['towers'] = sb_params['towers']
  logits, gates = _applier(mmoe, True)(m_params, x)
  np.testing.assert_array_equal(np.asarray(gates['task']), 1.0)   # exactly 1, whatever x
  np.testing.assert_allclose(np.asarray(logits), np.asarray(_applier(sb)(sb_params, x)),
                             rtol=1e-5, atol=1e-6)
  assert _applier(sb, True)(sb_params, x)[1] == {}


def _ple_reference(p, x, levels, t, et, es):
  """PLE with explicit loops over levels, tasks and experts."""
  task_in, shared_in = [x] * t, x
  for lvl in range(levels):
    q = p[f'level_{lvl}']
    task_exp = [[_silu(task_in[k] @ q['task_expert_w'][k, i] + q['task_expert_b'][k, i])
                 for i in range(et)] for k in range(t)]
    shared_exp = [_silu(shared_in @ q['shared_expert_w'][i] + q['shared_expert_b'][i])
                  for i in range(es)]
    new_task = []
    for k in range(t):
      g = _softmax(task_in[k] @ q['task_gate_w'][k])
      pool = task_exp[k] + shared_exp                       # own experts, then shared
      new_task.append(sum(g[..., i:i + 1] * e for i, e in enumerate(pool)))
    if lvl < levels - 1:
      g = _softmax(shared_in @ q['shared_gate_w'])
      pool = [e for k in range(t) for e in task_exp[k]] + shared_exp
      shared_in = sum(g[..., i:i + 1] * e for i, e in enumerate(pool))
    task_in = new_task
  return _tower_ref(p['towers'], task_in)


@pytest.mark.parametrize('levels', [1, 2])
def test_ple_gates_and_reference(levels):
  et, es = 2, 3
  head = mh.PLE(T, num_levels=levels, shared_experts=es, task_experts=et, expert_hidden=24,
                tower_hidden=12)
  x = _x()
  params = _init(head, x)
  logits, gates = _applier(head, True)(params, x)
  assert len(gates) == levels
  for lvl, g in enumerate(gates):
    _sums_to_one(g['task'], et + es)                    # task k: its own + the shared experts
    assert g['task'].shape == (R, C, T, et + es)
    if lvl < levels - 1:
      _sums_to_one(g['shared'], T * et + es)            # intermediate: every expert
    else:
      assert 'shared' not in g and 'shared_gate_w' not in params[f'level_{lvl}']
  ref = _ple_reference(_np(params), np.asarray(x, np.float64), levels, T, et, es)
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-5)


def _perturb_task(params, level, j):
  """Task j's experts and gate at one level, replaced by fresh random values."""
  q = dict(params[f'level_{level}'])
  rng = np.random.default_rng(99)
  for name in ('task_expert_w', 'task_expert_b', 'task_gate_w'):
    new = np.array(q[name])
    new[j] = rng.normal(size=new.shape[1:])
    q[name] = jnp.asarray(new)
  out = dict(params)
  out[f'level_{level}'] = q
  return out


def test_ple_one_level_task_isolation():
  """CGC: task k reads only its own and the shared experts, so task j's experts cannot move it."""
  head = mh.PLE(T, num_levels=1, shared_experts=2, task_experts=2, expert_hidden=16)
  x = _x()
  params = _init(head, x)
  apply = _applier(head)
  base = np.asarray(apply(params, x))
  for j in range(T):
    moved = np.asarray(apply(_perturb_task(params, 0, j), x))
    for k in range(T):
      if k == j:
        assert np.abs(moved[..., k] - base[..., k]).max() > 1e-3
      else:
        np.testing.assert_allclose(moved[..., k], base[..., k], rtol=1e-6, atol=1e-7)


def test_ple_two_levels_share_through_the_shared_gate():
  """At an intermediate level the shared gate mixes every expert: task j reaches task k; at the
  last level it does not."""
  head = mh.PLE(T, num_levels=2, shared_experts=2, task_experts=2, expert_hidden=16)
  x = _x()
  params = _init(head, x)
  apply = _applier(head)
  base = np.asarray(apply(params, x))
  first = np.asarray(apply(_perturb_task(params, 0, 0), x))
  assert np.abs(first[..., 1:] - base[..., 1:]).max() > 1e-4
  last = np.asarray(apply(_perturb_task(params, 1, 0), x))
  assert np.abs(last[..., 0] - base[..., 0]).max() > 1e-3
  np.testing.assert_allclose(last[..., 1:], base[..., 1:], rtol=1e-6, atol=1e-7)


def test_any_leading_dims():
  head = mh.MMoE(T, num_experts=4, expert_hidden=24, tower_hidden=12)
  x = _x()
  params = _init(head, x)
  apply = _applier(head)
  flat = apply(params, x.reshape(R * C, D))
  assert flat.shape == (R * C, T)
  np.testing.assert_allclose(np.asarray(apply(params, x)).reshape(R * C, T), np.asarray(flat),
                             rtol=1e-6)


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize('kind, field, value', [
    ('bogus', 'predictor', None),
    ('mmoe', 'predictor_experts', 0),
    ('mmoe', 'predictor_expert_hidden', -1),
    ('ple', 'predictor_levels', 0),
    ('ple', 'predictor_task_experts', 0),
    ('ple', 'predictor_shared_experts', -2),
    ('ple', 'predictor_expert_hidden', 2.5),
    ('shared_bottom', 'predictor_bottom_hidden', -4),
    ('towers', 'head_hidden', -1),
    ('mmoe', 'head_hidden', True),
])
def test_bad_config_names_the_field(kind, field, value):
  cfg = _cfg(kind).to_dict()
  if field != 'predictor':
    cfg[field] = value
  cfg = ml_collections.ConfigDict(cfg)   # a fresh dict: no type lock on the bad value
  for fn in (lambda: mhc.from_config(cfg, T), lambda: mhc.param_count(cfg, D, T),
             lambda: mhc.forward_flops(cfg, D, T)):
    with pytest.raises(ValueError, match=f'config.model.{field}\\b'):
      fn()


def test_towers_need_a_width_for_head_hidden_zero():
  cfg = mhc.defaults()   # no width field
  with pytest.raises(ConfigError, match='config.model.head_hidden'):
    mhc.from_config(cfg, T)
  assert mhc.from_config(cfg, T, width=16).hidden == 16


def test_unused_fields_are_not_checked():
  """A bad PLE size does not stop an MMoE run."""
  cfg = _cfg('mmoe', predictor_levels=0)
  assert isinstance(mhc.from_config(cfg, T), mh.MMoE)
