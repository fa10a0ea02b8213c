r"""Cross-request KV caching (SPEC A.6): cached vs per-candidate scoring, and request-level training.

  python -m onetrans_jax.benchmarks.kv_cache          # the issue's grid, CPU-sized model
  python -m onetrans_jax.benchmarks.kv_cache --candidates=1,16 --seq_lens=256 --repeats=3  # quick

Per request (R=1), for each L_S and C: latency of the per-candidate pass (C token lists of
L_S + L_NS tokens) and of cached scoring (stage I once, stage II for C candidates, one jitted
call), XLA's peak-memory estimate of each compiled program (arguments + outputs + temporaries,
``memory_analysis``), the measured speedup and the analytic FLOP ratio beside it. The stage II
cost per candidate (from C=1 to the largest C) shows that a cached candidate costs O(L_NS x L),
not O(L^2). Then the incremental user cache: appending a few events to a stored user state
against encoding the whole history again (stage I), for a history that still fits every pyramid
window (all layers reused) and for a full window (old events evicted: only the tokens and layer-0
keys/values reused, SPEC A.6's caveat), with the append-stable tokenizer (``s_position='none'``,
no time-gap buckets). Then one training step with and without request-level sharing: the
trainer's own step (``train.make_train_step``: loss, gradients, the optimizer update), jitted as
the trainer jits it (``train.jit_train_step``: state sharded and donated) on a one-device mesh
(onetrans_jax/benchmarks/steps.py).
Ratios are taken within one run; absolute times depend on the machine (noted in the header).
Per-candidate programs whose memory estimate exceeds --max_gb are compiled but not run.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import numpy as np

from onetrans_jax import serving
from onetrans_jax.benchmarks import steps
from onetrans_jax.data import pipeline
from onetrans_jax.experiments import common
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.schema import dummy_batch

_CANDIDATES = flags.DEFINE_list('candidates', ['1', '16', '64', '256', '1024'], 'C values.')
_SEQ_LENS = flags.DEFINE_list('seq_lens', ['256', '1024'], 'L_S values (S tokens per request).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per cell (median reported).')
_MAX_GB = flags.DEFINE_float('max_gb', 6.0, 'Skip running programs estimated above this.')
_WIDTH = flags.DEFINE_integer('width', 64, 'd.')
_LAYERS = flags.DEFINE_integer('layers', 3, 'Layers.')
_NS = flags.DEFINE_integer('ns_tokens', 8, 'L_NS.')
_APPEND = flags.DEFINE_integer('append', 8, 'Click events appended per incremental update.')
_TRAIN_REQUESTS = flags.DEFINE_integer('train_requests', 16, 'Requests per training step.')
_TRAIN_CANDIDATES = flags.DEFINE_integer('train_candidates', 16, 'Candidates per request.')


def _data_config(seq_len: int, candidates: int, requests: int):
  """Synthetic data whose merged S list is ``seq_len`` tokens."""
  cart, order = seq_len // 8, seq_len // 16
  return common.synthetic_data(click_len=seq_len - cart - order, cart_len=cart, order_len=order,
                               num_candidates=candidates, min_candidates=candidates,
                               batch_size=requests)


def _setup(seq_len: int, candidates: int, requests: int = 1):
  """Synthetic data whose merged S list is ``seq_len`` tokens, and one batch of it."""
  ds = pipeline.build_dataset(_data_config(seq_len, candidates, requests))
  items = [ds.source[i] for i in range(requests)]
  batch = jax.tree.map(lambda *x: np.stack(x), *items)
  batch.pop('true_prob')
  model_cfg = onetrans_config.defaults(width=_WIDTH.value, num_heads=4,
                                       num_layers=_LAYERS.value, num_ns_tokens=_NS.value,
                                       pyramid_multiple=32)
  return ds.schema, model_cfg, batch


def _time(fn, *args, feed=None) -> float:
  """Median wall time of ``fn(*args)`` after a warm-up. A ``fn`` that donates its first argument
  gets ``feed(previous output)`` there instead (its input buffer is gone)."""
  out = jax.block_until_ready(fn(*args))  # warm
  times = []
  for _ in range(_REPEATS.value):
    if feed is not None:
      args = (feed(out),) + tuple(args[1:])
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _memory_gb(fn, *args) -> float:
  return _compiled_gb(fn.lower(*args).compile())


def _compiled_gb(compiled) -> float:
  """XLA's estimate of what a compiled program holds at once (a donated buffer counted once)."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
           m.alias_size_in_bytes)
  return total / 2**30


def serving_table() -> list[str]:
  rows = []
  per_candidate = {}
  for seq_len in (int(x) for x in _SEQ_LENS.value):
    for c in (int(x) for x in _CANDIDATES.value):
      schema, mcfg, batch = _setup(seq_len, c)
      shared = build_model(mcfg, schema)
      mcfg_naive = mcfg.copy_and_resolve_references()
      mcfg_naive.request_level = False
      naive = build_model(mcfg_naive, schema)
      params = partitioning.unbox(
          jax.jit(shared.init)(jax.random.key(0), dummy_batch(schema, 1))['params'])
      user_fn, score_fn = serving.cached_scoring_fns(shared)
      cached = jax.jit(lambda p, b: score_fn(p, serving.candidate_part(b),
                                             user_fn(p, serving.user_part(b))))
      stage2 = jax.jit(lambda p, b, cache: score_fn(p, b, cache))
      uncached = jax.jit(lambda p, b: naive.apply({'params': p}, b))
      mem_c, mem_u = _memory_gb(cached, params, batch), _memory_gb(uncached, params, batch)
      t_c = _time(cached, params, batch)
      cache = user_fn(params, serving.user_part(batch))
      t_2 = _time(stage2, params, serving.candidate_part(batch), cache)
      per_candidate.setdefault(seq_len, {})[c] = t_2
      t_u = _time(uncached, params, batch) if mem_u <= _MAX_GB.value else float('nan')
      split = onetrans_config.shared_forward_flops(mcfg, schema)
      full = onetrans_config.forward_flops(mcfg, schema)['total']
      flop_ratio = c * full / (split['user'] + c * split['candidate'])
      uncached_ms = '—' if np.isnan(t_u) else f'{t_u * 1e3:.2f}'
      speedup = '—' if np.isnan(t_u) else f'{t_u / t_c:.2f}x'
      rows.append(f'{seq_len:>5} {c:>5} {uncached_ms:>12} {t_c * 1e3:>10.2f} {t_2 * 1e3:>10.2f} '
                  f'{speedup:>9} {flop_ratio:>8.2f}x {mem_u:>9.3f} {mem_c:>9.3f}')
      print(rows[-1], flush=True)
  lines = [f'{"L_S":>5} {"C":>5} {"uncached ms":>12} {"cached ms":>10} {"stage II":>10} '
           f'{"speedup":>9} {"FLOPs":>9} {"mem U GB":>9} {"mem C GB":>9}'] + rows
  lines.append('')
  lines.append('stage II cost per extra candidate (ms), between the smallest and largest C:')
  cs = sorted(int(x) for x in _CANDIDATES.value)
  marginal = {}
  for seq_len, times in per_candidate.items():
    if len(cs) > 1:
      marginal[seq_len] = (times[cs[-1]] - times[cs[0]]) / (cs[-1] - cs[0])
      lines.append(f'  L_S={seq_len}: {marginal[seq_len] * 1e3:.4f} ms')
  if len(marginal) > 1:
    (l0, m0), (l1, m1) = sorted(marginal.items())[0], sorted(marginal.items())[-1]
    lines.append(f'  ratio {m1 / m0:.2f} for L ratio {l1 / l0:.1f} '
                 f'(O(L_NS x L) predicts ~{l1 / l0:.1f}, O(L^2) {(l1 / l0) ** 2:.0f})')
  return lines


def _events(schema, counts: dict[str, int], start: int, width: dict[str, int], seed: int):
  """One user's events: counts[name] per sequence, right-aligned in ``width[name]`` slots, at
  increasing times from ``start`` (sequences interleaved), small valid ids."""
  rng = np.random.default_rng(seed)
  seq = {}
  for j, q in enumerate(schema.sequences):
    k, w = counts[q.name], width[q.name]
    ids = np.zeros((1, w, 1 + len(q.side_features)), np.int32)
    ids[0, w - k:] = rng.integers(1, 6, size=(k, ids.shape[-1]))
    t = np.zeros((1, w), np.int32)
    t[0, w - k:] = start + j + len(schema.sequences) * np.arange(k)
    mask = np.zeros((1, w), bool)
    mask[0, w - k:] = True
    seq[q.name] = {'ids': ids, 'time': t, 'mask': mask}
  return seq


def incremental_table() -> list[str]:
  rows = []
  for seq_len in (int(x) for x in _SEQ_LENS.value):
    schema, mcfg, batch = _setup(seq_len, 1)
    mcfg.s_position, mcfg.time_gap_buckets = 'none', 0
    model = build_model(mcfg, schema)
    params = partitioning.unbox(
        jax.jit(model.init)(jax.random.key(0), dummy_batch(schema, 1))['params'])
    start, append = serving.incremental_user_fns(model)
    lens = {q.name: q.max_len for q in schema.sequences}
    deepest = model.schedule[-2] - model.num_ns_tokens if model.num_layers > 1 else seq_len
    k = _APPEND.value
    new_width = {q.name: (k if q.name == schema.sequences[0].name else 1)
                 for q in schema.sequences}
    # (regime, cached events per sequence): one that fits the deepest kept window, one full.
    small = max(1, (deepest - k) // 2)
    for regime, cached in (('fits', {n: min(l, small // len(lens)) for n, l in lens.items()}),
                           ('full', lens)):
      old = {'request': batch['request'], 'seq': _events(schema, cached, 0, lens, seed=1)}
      new = {'seq': _events(schema, {n: (k if w == k else 0) for n, w in new_width.items()},
                            10 * seq_len, new_width, seed=2)}
      whole = {'request': batch['request'],
               'seq': {n: {f: np.concatenate([old['seq'][n][f], new['seq'][n][f]], 1)[:, -l:]
                           for f in ('ids', 'time', 'mask')} for n, l in lens.items()}}
      state = start(params, old)
      plan = serving.plan_append(model, state, new)
      t_fresh = _time(start, params, whole)
      t_append = _time(append, params, state, new)
      rows.append(f'{seq_len:>5} {regime:>5} {sum(cached.values()):>7} {k:>4} '
                  f'{str(plan):>9} {t_fresh * 1e3:>10.2f} {t_append * 1e3:>10.2f} '
                  f'{t_fresh / t_append:>8.2f}x')
      print(rows[-1], flush=True)
  return ([f'{"L_S":>5} {"state":>5} {"cached":>7} {"new":>4} {"(kv,out)":>9} {"stage I ms":>10} '
           f'{"append ms":>10} {"speedup":>9}'] + rows)


def training_table() -> list[str]:
  seq_len = int(_SEQ_LENS.value[0])
  schema, mcfg, batch = _setup(seq_len, _TRAIN_CANDIDATES.value, _TRAIN_REQUESTS.value)
  data = _data_config(seq_len, _TRAIN_CANDIDATES.value, _TRAIN_REQUESTS.value)
  times = {}
  for request_level in (True, False):
    config = common.base_config(mcfg.copy_and_resolve_references(), data)
    config.model.request_level = request_level
    step = steps.trainer_step(config, schema, batch)  # the trainer's step; donates its state
    times[request_level] = (_time(step.compiled, step.state, step.batch, feed=lambda out: out[0]),
                            _compiled_gb(step.compiled))
  (t_s, m_s), (t_n, m_n) = times[True], times[False]
  return [f'training step, {_TRAIN_REQUESTS.value} requests x {_TRAIN_CANDIDATES.value} '
          f'candidates, L_S={seq_len}: shared {t_s * 1e3:.1f} ms ({m_s:.3f} GB), per candidate '
          f'{t_n * 1e3:.1f} ms ({m_n:.3f} GB): {t_n / t_s:.2f}x faster, '
          f'{m_n / m_s:.2f}x less memory']


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f'device: {dev.platform} {dev.device_kind} x{jax.device_count()}; model d={_WIDTH.value}, '
        f'{_LAYERS.value} layers, L_NS={_NS.value}, float32; median of {_REPEATS.value} calls; '
        'one request per call', flush=True)
  lines = serving_table() + [''] + incremental_table() + [''] + training_table()
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
