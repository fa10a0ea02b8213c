"""The cache-blocked attention path equals the reference: values, gradients, the model on top."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax.experiments import common
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.layers.attention import (attention_mask, reference_attention,
                                                  resolve_implementation, tail_attention)
from onetrans_jax.models.layers.blocked_attention import _blocks, _fit_chunk, blocked_attention
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.schema import dummy_batch


def _inputs(b, nq, nk, h=2, dh=8, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, nq, h, dh)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(b, nk, h, dh)), dtype) for _ in range(2))
  # Left padding as the S tokens have it, one list with no valid key at all (only its own).
  first = rng.integers(0, nk, size=(b, 1))
  first[0] = nk
  valid = jnp.asarray(np.arange(nk)[None, :] >= first)
  return q, k, v, valid


def _value_and_grads(fn, q, k, v):
  cot = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  loss = lambda q, k, v: jnp.sum(cot * fn(q, k, v).astype(jnp.float32))
  return (fn(q, k, v),) + jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize('b,nq,nk,causal,block_q,chunk', [
    (6, 40, 40, True, 16, None),    # all queries, ragged last block
    (6, 24, 40, True, 7, 4),        # tail queries; batch 6 padded to 8 in chunks of 4
    (5, 1, 40, True, 48, 2),        # one query (the last pyramid layer's NS token)
    (4, 40, 40, False, 16, 3),      # full attention: every block reads every key
    (3, 12, 30, False, 5, 1),       # chunks of one list
])
def test_equals_reference(b, nq, nk, causal, block_q, chunk):
  q, k, v, valid = _inputs(b, nq, nk)
  mask = attention_mask(valid, nq, causal)
  got = _value_and_grads(
      lambda q, k, v: blocked_attention(q, k, v, valid, causal, block_q=block_q, chunk=chunk),
      q, k, v)
  want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
  for name, g, w in zip(('out', 'dq', 'dk', 'dv'), got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5, err_msg=name)


def test_bfloat16_close_to_float32_reference():
  q, k, v, valid = _inputs(4, 32, 48, dtype=jnp.bfloat16)
  mask = attention_mask(valid, 32, True)
  got = _value_and_grads(lambda q, k, v: blocked_attention(q, k, v, valid, True, block_q=8),
                         q, k, v)
  want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0.05, atol=0.05)


def test_causal_blocks_skip_the_masked_keys():
  blocks = _blocks(264, 264, True, 48)
  assert [e - s for s, e, _ in blocks] == [44] * 6          # evened out, not 5 x 48 + 24
  assert [keys for _, _, keys in blocks] == [44, 88, 132, 176, 220, 264]
  computed = sum((e - s) * keys for s, e, keys in blocks)
  assert computed / (264 * 264) == pytest.approx(7 / 12)    # vs the full rectangle
  # Tail queries: the 8 last positions of 96 keys read all keys up to their own.
  assert _blocks(8, 96, True, 48) == [(0, 8, 96)]
  assert _blocks(100, 100, False, 48) == [(0, 34, 100), (34, 68, 100), (68, 100, 100)]


def test_chunk_fitting():
  assert _fit_chunk(256, 11) == 8     # a divisor: no padding
  assert _fit_chunk(6, 4) == 3
  assert _fit_chunk(13, 8) == 8       # 13 is prime: pad to 16 rather than chunks of one
  assert _fit_chunk(3, 8) == 3


def test_errors_name_the_problem():
  q, k, v, valid = _inputs(2, 10, 8)
  with pytest.raises(ValueError, match='10 queries but only 8 keys'):
    blocked_attention(q, k, v, valid, True)
  q, k, v, valid = _inputs(2, 8, 8)
  with pytest.raises(ValueError, match='block_q must be >= 1'):
    blocked_attention(q, k, v, valid, True, block_q=0)
  with pytest.raises(ValueError, match="choose one of \\('auto', 'blocked', 'xla', 'cudnn'\\)"):
    resolve_implementation('flash')


def test_auto_is_blocked_on_cpu_and_tail_attention_dispatches():
  assert resolve_implementation('auto') == ('blocked' if jax.default_backend() == 'cpu' else 'xla')
  q, k, v, valid = _inputs(3, 8, 20)
  outs = [tail_attention(q, k, v, valid, True, impl) for impl in ('blocked', 'xla')]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fields', [
    dict(),                                   # request-level sharing (S side and NS side)
    pytest.param(dict(attention='full', request_level=False), marks=pytest.mark.slow),
    pytest.param(dict(request_level=False), marks=pytest.mark.slow),  # per candidate
    pytest.param(dict(remat='full'), marks=pytest.mark.slow),
])
def test_onetrans_blocked_equals_xla(fields):
  data = common.synthetic_data(click_len=12, cart_len=6, order_len=4, num_candidates=3,
                               min_candidates=2, batch_size=2, num_users=20, num_items=40)
  from onetrans_jax.data import pipeline
  ds = pipeline.build_dataset(data)
  batch = jax.tree.map(lambda *x: np.stack(x), *[ds.source[i] for i in range(2)])
  batch.pop('true_prob')
  outs = []
  for impl in ('blocked', 'xla'):
    cfg = onetrans_config.defaults(width=16, num_heads=2, num_layers=3, num_ns_tokens=4,
                                embed_dim=8, pyramid_multiple=4, attention_impl=impl, **fields)
    model = build_model(cfg, ds.schema)
    params = partitioning.unbox(model.init(jax.random.key(0), dummy_batch(ds.schema, 1))['params'])
    logits = lambda p, model=model: model.apply({'params': p}, batch)
    outs.append(jax.jit(lambda p, f=logits: (f(p), jax.grad(lambda p: jnp.sum(jnp.sin(f(p))))(p)))(
        params))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
  for g, w in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5 * float(np.abs(w).max()))
