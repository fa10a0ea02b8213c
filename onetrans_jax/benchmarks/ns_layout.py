r"""Does the token-specific FFN of the NS tokens pay for its layout? A/B in one process.

  python -m onetrans_jax.benchmarks.ns_layout                   # the mechanism world's shape
  python -m onetrans_jax.benchmarks.ns_layout --requests=128 --width=128

The candidate side of request-level OneTrans holds its NS tokens as [R, C, N, d] and applies the N
stacked weights with '...nd,nde->...ne'. XLA's CPU dot wants the batch dimension (N) leading, so
it transposes around every such einsum, forward and backward (profile_step on onetrans_s_mech:
copy / transpose fusions around ffn_in and the kv projection among the slowest ops). This times
the FFN (two token-specific einsums and SiLU, forward + backward, the trainer's compiler options)
in that layout and token-first [N, R, C, d], alternating the two so machine load hits both alike,
and prints the medians and their ratio. ``--workload`` also times a study's whole training step
under ``model.ns_layout`` 'token_last' and 'token_first' (the model's two layouts).
"""

from __future__ import annotations

import time

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from onetrans_jax import xla_options


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


def measure_workload(key: str, repeats: int) -> dict[str, float]:
  """Median seconds of the trainer's step (benchmarks/steps.py) of workload ``key`` under each
  ``model.ns_layout``, on the same first batch, the two alternating."""
  from onetrans_jax.benchmarks import steps, workloads  # local: heavier imports
  built = {}
  for layout in ('token_last', 'token_first'):
    cfg = workloads.workload_config(key)
    cfg.model.ns_layout = layout
    step = steps.build_step(cfg)
    built[layout] = [step.compiled, step.state, step.batch]
  times: dict[str, list[float]] = {k: [] for k in built}
  for i in range(repeats + 1):
    for layout, run in built.items():
      t = time.perf_counter()
      run[1], _ = run[0](run[1], run[2])
      jax.block_until_ready(run[1])
      if i:   # the first call of each warms up
        times[layout].append(time.perf_counter() - t)
  return {f'{key} step, {k}': float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
  # argparse, not absl flags: the suite's flags live in the same registry when both are imported.
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--requests', type=int, default=64, help='R: requests per step')
  ap.add_argument('--candidates', type=int, default=8, help='C: candidates per request')
  ap.add_argument('--ns_tokens', type=int, default=8, help='N: NS tokens')
  ap.add_argument('--width', type=int, default=64, help='d: model width')
  ap.add_argument('--ffn_mult', type=int, default=4, help='FFN expansion')
  ap.add_argument('--repeats', type=int, default=15, help='timed calls per layout (alternating)')
  ap.add_argument('--workload', default=None,
                  help="also time the trainer's whole step of this benchmarks/workloads.py "
                       'workload (e.g. onetrans_s_mech) under model.ns_layout token_last and '
                       'token_first, alternating')
  a = ap.parse_args(argv)
  t = measure(a.requests, a.candidates, a.ns_tokens, a.width, a.ffn_mult, a.repeats)
  base = t['token-last [R,C,N,d]']
  print(f'NS-token FFN fwd+bwd, R {a.requests} x C {a.candidates} x N {a.ns_tokens}, '
        f'd {a.width}, x{a.ffn_mult}; {jax.devices()[0].device_kind}, jax {jax.__version__}')
  for name, sec in t.items():
    print(f'{name:<24} {sec * 1e3:8.1f} ms   {base / sec:5.2f}x')
  if a.workload:
    w = measure_workload(a.workload, a.repeats)
    base = next(iter(w.values()))
    for name, sec in w.items():
      print(f'{name:<40} {sec * 1e3:8.1f} ms   {base / sec:5.2f}x')


if __name__ == '__main__':
  main()
