"""The mixed layers' matmuls over flattened rows (models/layers/mixed.py): the same products and
gradients as the einsums they replace, and on CPU a weight gradient without the transposed copy
of the activation gradient that the multi-axis einsum made XLA write."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onetrans_jax.models.layers.mixed import rows_dot, stacked_rows_dot
from onetrans_jax.xla_options import CPU_FUSED_DOTS


@pytest.mark.parametrize('lead', [(), (5,), (3, 4), (2, 3, 4)])
def test_rows_dot_is_the_einsum_with_its_gradients(lead):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], lead + (6,))
  w = jax.random.normal(k[1], (6, 7))
  g = jax.random.normal(k[2], lead + (7,))
  ref = lambda x, w: jnp.sum(jnp.einsum('...d,de->...e', x, w) * g)
  new = lambda x, w: jnp.sum(rows_dot(x, w) * g)
  assert rows_dot(x, w).shape == lead + (7,)
  np.testing.assert_allclose(rows_dot(x, w), jnp.einsum('...d,de->...e', x, w), rtol=1e-6)
  for a, b in zip(jax.grad(ref, (0, 1))(x, w), jax.grad(new, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('token_first', [True, False])
@pytest.mark.parametrize('lead', [(), (3,), (2, 3)])
def test_stacked_rows_dot_applies_token_n_its_own_kernel(token_first, lead):
  n, d, e = 4, 5, 6
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  shape = (n,) + lead + (d,) if token_first else lead + (n, d)
  x = jax.random.normal(k[0], shape)
  w = jax.random.normal(k[1], (n, d, e))
  spec = 'n...d,nde->n...e' if token_first else '...nd,nde->...ne'
  y = stacked_rows_dot(x, w, token_first)
  assert y.shape == shape[:-1] + (e,)
  np.testing.assert_allclose(y, jnp.einsum(spec, x, w), rtol=1e-5, atol=1e-6)
  # Token j's output is its input times kernel j, and nothing else.
  j = 2
  xj = x[j] if token_first else x[..., j, :]
  yj = y[j] if token_first else y[..., j, :]
  np.testing.assert_allclose(yj, xj @ w[j], rtol=1e-5, atol=1e-6)
  ga = jax.grad(lambda x, w: jnp.sum(jnp.einsum(spec, x, w) ** 2), (0, 1))(x, w)
  gb = jax.grad(lambda x, w: jnp.sum(stacked_rows_dot(x, w, token_first) ** 2), (0, 1))(x, w)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU compiler\'s layout choice')
def test_the_ffn_weight_gradient_reads_the_activation_gradient_in_place():
  """FFN x [B, L, d] -> silu(x W1) W2: compiled as the trainer compiles it on CPU, the backward
  holds no transpose or copy of a [B * L, 4d] array (the einsum form wrote one per layer)."""
  b, l, d, f = 4, 32, 16, 64
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(k[0], (b, l, d))
  w1 = jax.random.normal(k[1], (d, f)) * 0.1
  w2 = jax.random.normal(k[2], (f, d)) * 0.1
  loss = lambda w, x: jnp.sum(rows_dot(jax.nn.silu(rows_dot(x, w[0])), w[1]) ** 2)
  hlo = jax.jit(jax.grad(loss), compiler_options=CPU_FUSED_DOTS).lower((w1, w2), x).compile()
  entry = hlo.as_text().split('ENTRY', 1)[1]
  big = re.compile(rf'= f32\[(?:{f},{b * l}|{f},{b},{l}|{b * l},{f}|{b},{l},{f})\]\S* '
                   r'(?:transpose|copy|fusion)\(')
  moves = [line.strip()[:120] for line in entry.splitlines()
           if big.search(line) and re.search(r'(?:transpose|copy)[\w.]*\s*=', line)]
  assert not moves, moves
