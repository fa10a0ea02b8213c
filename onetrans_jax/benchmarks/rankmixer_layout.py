r"""RankMixer's per-token FFNs with the tokens first or in place: A/B in one process.

  python -m onetrans_jax.benchmarks.rankmixer_layout            # the mechanism world's shape
  python -m onetrans_jax.benchmarks.rankmixer_layout --requests=256 --width=256

RankMixer's per-token FFN ('...td,tdf->...tf') has the token axis as a batch axis of its dots;
held in the middle of [B, T, D], XLA's CPU dots copy the [B, T, kD] activations (and gradients)
into [T, B, kD] and back around every einsum. ``feature_interaction.RankMixer`` now moves the
tokens first once for its whole stack (``RankMixerLayer(token_first=True)``, the same parameters)
and folds the requests and candidates into one row axis, so a weight gradient contracts over one
axis.
This times the stack forward + backward both ways, compiled with the trainer's options,
alternating the two so the machine's load hits both alike, and prints the medians and their
ratio (the RankMixer + Transformer workload of the studies: 64 requests x 8 candidates, T = 8
tokens of D = 128, k = 4, 2 layers).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from onetrans_jax import xla_options
from onetrans_jax.models.baselines.feature_interaction import RankMixer, RankMixerLayer
from onetrans_jax.models.layers import partitioning


def _token_last(params: dict, x: jnp.ndarray, ffn_mult: int, layers: int) -> jnp.ndarray:
  """The stack as it ran before: every layer on [..., T, D]."""
  for i in range(layers):
    x = RankMixerLayer(ffn_mult).apply({'params': params[f'layer_{i}']}, x)
  return jnp.mean(x, axis=-2)


def measure(requests: int, candidates: int, tokens: int, width: int, ffn_mult: int, layers: int,
            repeats: int) -> dict[str, float]:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(requests, candidates, tokens, width)),
                  jnp.float32)
  model = RankMixer(num_layers=layers, ffn_mult=ffn_mult)
  params = partitioning.unbox(model.init(jax.random.key(0), x)['params'])
  opts = xla_options.compiler_options({'train': {'cpu_fused_dots': True}})
  loss = {
      'token_first': lambda p, x: jnp.sum(jnp.sin(model.apply({'params': p}, x))),
      'token_last': lambda p, x: jnp.sum(jnp.sin(_token_last(p, x, ffn_mult, layers))),
  }
  fns = {k: jax.jit(jax.value_and_grad(f), compiler_options=opts) for k, f in loss.items()}
  for f in fns.values():
    jax.block_until_ready(f(params, x))
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(params, x))
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--requests', type=int, default=64)
  p.add_argument('--candidates', type=int, default=8)
  p.add_argument('--tokens', type=int, default=8)
  p.add_argument('--width', type=int, default=128)
  p.add_argument('--ffn_mult', type=int, default=4)
  p.add_argument('--layers', type=int, default=2)
  p.add_argument('--repeats', type=int, default=20)
  a = p.parse_args(argv)
  t = measure(a.requests, a.candidates, a.tokens, a.width, a.ffn_mult, a.layers, a.repeats)
  print(f'RankMixer forward + backward, {a.requests} x {a.candidates} rows x {a.tokens} tokens '
        f'x {a.width}, k={a.ffn_mult}, {a.layers} layers, median of {a.repeats} '
        f'({jax.devices()[0].device_kind})')
  for k, v in t.items():
    print(f'  {k:<12} {v * 1e3:8.2f} ms')
  print(f'  token_last / token_first: {t["token_last"] / t["token_first"]:.2f}x')


if __name__ == '__main__':
  main()
