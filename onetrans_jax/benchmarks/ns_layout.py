r"""Does the token-specific FFN of the NS tokens pay for its layout? A/B in one process.

  python -m onetrans_jax.benchmarks.ns_layout                   # the mechanism world's shape
  python -m onetrans_jax.benchmarks.ns_layout --requests=128 --width=128

The candidate side of request-level OneTrans holds its NS tokens as [R, C, N, d] and applies the N
stacked weights with '...nd,nde->...ne'. XLA's CPU dot wants the batch dimension (N) leading, so
it transposes around every such einsum, forward and backward (profile_step on onetrans_s_mech:
copy / transpose fusions around ffn_in and the kv projection among the slowest ops). This times
the FFN (two token-specific einsums and SiLU, forward + backward, the trainer's compiler options)
in that layout and token-first [N, R, C, d], alternating the two so machine load hits both alike,
and prints the medians and their ratio. It measures a candidate change; the model is unchanged.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from onetrans_jax import xla_options

_R = flags.DEFINE_integer('requests', 64, 'R: requests per step.')
_C = flags.DEFINE_integer('candidates', 8, 'C: candidates per request.')
_N = flags.DEFINE_integer('ns_tokens', 8, 'N: NS tokens.')
_D = flags.DEFINE_integer('width', 64, 'd: model width.')
_MULT = flags.DEFINE_integer('ffn_mult', 4, 'FFN expansion.')
_REPEATS = flags.DEFINE_integer('repeats', 15, 'Timed calls per layout (alternating).')


def ffn_token_last(x, w1, w2):
  y = jax.nn.silu(jnp.einsum('rcnd,nde->rcne', x, w1))
  return jnp.sum(jnp.einsum('rcne,ned->rcnd', y, w2) ** 2)


def ffn_token_first(x, w1, w2):
  y = jax.nn.silu(jnp.einsum('nrcd,nde->nrce', x, w1))
  return jnp.sum(jnp.einsum('nrce,ned->nrcd', y, w2) ** 2)


def measure(r: int, c: int, n: int, d: int, mult: int, repeats: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(r, c, n, d)), jnp.float32)
  w1 = jnp.asarray(rng.normal(size=(n, d, mult * d)) * 0.05, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(n, mult * d, d)) * 0.05, jnp.float32)
  opts = (dict(xla_options.CPU_FUSED_DOTS) if jax.default_backend() == 'cpu' else None)
  runs = {'token-last [R,C,N,d]': (jax.jit(jax.grad(ffn_token_last, argnums=(0, 1, 2)),
                                           compiler_options=opts), x),
          'token-first [N,R,C,d]': (jax.jit(jax.grad(ffn_token_first, argnums=(0, 1, 2)),
                                            compiler_options=opts),
                                    jnp.transpose(x, (2, 0, 1, 3)))}
  # The same function either way: the gradients agree (up to summation order).
  ga = runs['token-last [R,C,N,d]'][0](x, w1, w2)
  gb = runs['token-first [N,R,C,d]'][0](jnp.transpose(x, (2, 0, 1, 3)), w1, w2)
  np.testing.assert_allclose(np.transpose(np.asarray(gb[0]), (1, 2, 0, 3)), ga[0], rtol=2e-4,
                             atol=1e-5)
  times: dict[str, list[float]] = {k: [] for k in runs}
  for _ in range(repeats):
    for name, (f, a) in runs.items():
      t = time.perf_counter()
      jax.block_until_ready(f(a, w1, w2))
      times[name].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  t = measure(_R.value, _C.value, _N.value, _D.value, _MULT.value, _REPEATS.value)
  base = t['token-last [R,C,N,d]']
  print(f'NS-token FFN fwd+bwd, R {_R.value} x C {_C.value} x N {_N.value}, d {_D.value}, '
        f'x{_MULT.value}; {jax.devices()[0].device_kind}, jax {jax.__version__}')
  for name, sec in t.items():
    print(f'{name:<24} {sec * 1e3:8.1f} ms   {base / sec:5.2f}x')


if __name__ == '__main__':
  app.run(main)
