"""Cache-blocked tail-query attention with a flash-style backward (the CPU default, SPEC A.7).

Why: on CPU, XLA runs attention as separate ops over the whole [B, H, Q, L] score tensor
(matmul, mask, max, exp, sum, matmul), each a round trip through main memory; at OneTrans shapes
(head width 32, a few hundred tokens) those ops are memory-bound and run at a fraction of the
dense-matmul rate. This path keeps every intermediate in cache instead:
  * the batch is walked in chunks of ``batch_chunk`` token lists (a ``fori_loop``), so a chunk's
    scores fit in L2;
  * within a chunk, queries are split into static blocks of ``block_q`` rows; under the causal mask
    a block of the tail queries only reads the keys up to its last position, so the fully masked
    part of the score rectangle is never computed (about half of it for layer 0);
  * the mask is built inside the block from ``key_valid`` and static positions, never as a
    [B, 1, Q, L] array;
  * the backward pass recomputes each block's probabilities from the saved log-sum-exp (as
    FlashAttention does) instead of storing them: the saved state is O(B H Q).
The mask is exactly ``attention.attention_mask``'s: query r (absolute position L - Q + r) sees
valid keys (and, causal, keys j <= its position), and always its own key. Results equal the
reference path up to float rounding (tests/test_blocked_attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Defaults measured on a 2-core AVX-512 CPU at the bench shape (B 256, H 4, L 264, Dh 32), forward
# + backward: chunks of 8 lists with even query blocks of 44 rows 354 ms; blocks of 64 (the last
# one ragged) 434 ms, of 32 409 ms; chunks of 16 390 ms; the XLA reference 1022 ms.
BLOCK_Q = 48            # the largest query block; blocks are evened out (264 rows: 6 x 44)
CHUNK_BYTES = 2 << 20   # ~float32 score bytes of one chunk's query block: sizes ``batch_chunk``


def _blocks(num_queries: int, num_keys: int, causal: bool, block_q: int
            ) -> list[tuple[int, int, int]]:
  """Static (first query, end query, keys read) per query block; blocks of near-equal size."""
  count = -(-num_queries // block_q)
  block_q = -(-num_queries // count)
  out = []
  for start in range(0, num_queries, block_q):
    end = min(num_queries, start + block_q)
    out.append((start, end, num_keys - num_queries + end if causal else num_keys))
  return out


def _block_mask(key_valid: jnp.ndarray, start: int, end: int, keys: int, num_queries: int,
                num_keys: int, causal: bool) -> jnp.ndarray:
  """[b, 1, end - start, keys] bool: the rows of ``attention_mask`` this block computes."""
  pos = num_keys - num_queries + np.arange(start, end)
  idx = np.arange(keys)
  visible = key_valid[:, None, None, :keys]
  if causal:
    visible = visible & (idx[None, :] <= pos[:, None])
  return visible | (idx[None, :] == pos[:, None])


def _scores(q, k, mask, scale):
  s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  return jnp.where(mask, s, jnp.finfo(jnp.float32).min)


def _forward_chunk(q, k, v, key_valid, causal: bool, block_q: int):
  """One chunk: q [b, Q, H, Dh], k/v [b, L, H, Dh] -> (out [b, Q, H, Dh], lse [b, H, Q])."""
  nq, nk = q.shape[1], k.shape[1]
  scale = 1.0 / np.sqrt(q.shape[-1])
  outs, lses = [], []
  for start, end, keys in _blocks(nq, nk, causal, block_q):
    s = _scores(q[:, start:end], k[:, :keys],
                _block_mask(key_valid, start, end, keys, nq, nk, causal), scale)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    total = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum('bhqk,bkhd->bqhd', p.astype(v.dtype), v[:, :keys],
                   preferred_element_type=jnp.float32)
    outs.append(o / jnp.swapaxes(total, 1, 2))
    lses.append((m + jnp.log(total))[..., 0])
  return jnp.concatenate(outs, axis=1).astype(q.dtype), jnp.concatenate(lses, axis=2)


def _backward_chunk(q, k, v, key_valid, out, lse, d_out, causal: bool, block_q: int):
  """Gradients of one chunk from the saved output and log-sum-exp (probabilities recomputed)."""
  nq, nk = q.shape[1], k.shape[1]
  scale = 1.0 / np.sqrt(q.shape[-1])
  f32 = jnp.float32
  # delta_r = sum_j p_rj dP_rj = <dO_r, O_r>: the softmax backward's row term.
  delta = jnp.einsum('bqhd,bqhd->bhq', out.astype(f32), d_out.astype(f32))
  dq = []
  dk = jnp.zeros(k.shape, f32)
  dv = jnp.zeros(v.shape, f32)
  for start, end, keys in _blocks(nq, nk, causal, block_q):
    qb, dob = q[:, start:end], d_out[:, start:end]
    s = _scores(qb, k[:, :keys], _block_mask(key_valid, start, end, keys, nq, nk, causal), scale)
    p = jnp.exp(s - lse[:, :, start:end, None])
    dv = dv.at[:, :keys].add(jnp.einsum('bhqk,bqhd->bkhd', p.astype(dob.dtype), dob,
                                        preferred_element_type=f32))
    dp = jnp.einsum('bqhd,bkhd->bhqk', dob, v[:, :keys], preferred_element_type=f32)
    ds = (p * (dp - delta[:, :, start:end, None]) * scale).astype(q.dtype)
    dq.append(jnp.einsum('bhqk,bkhd->bqhd', ds, k[:, :keys], preferred_element_type=f32))
    dk = dk.at[:, :keys].add(jnp.einsum('bhqk,bqhd->bkhd', ds, qb, preferred_element_type=f32))
  return (jnp.concatenate(dq, axis=1).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))


def _chunked(fn, num_chunks: int, inputs: tuple, out_like: tuple) -> tuple:
  """Runs ``fn`` over batch chunks: row i of chunk c is batch row i * num_chunks + c.

  The batch splits as [chunk, num_chunks] (a free reshape) and a ``fori_loop`` slices axis 1,
  so no input is transposed and a batch sharded over devices stays sharded inside the body.
  ``out_like``: (shape, dtype) of each output over the whole batch.
  """
  split = lambda x: x.reshape((x.shape[0] // num_chunks, num_chunks) + x.shape[1:])
  xs = tuple(split(x) for x in inputs)
  if num_chunks == 1:
    return tuple(r.astype(d) for r, (_, d) in zip(fn(*inputs), out_like))
  outs = tuple(jnp.zeros((s[0] // num_chunks, num_chunks) + tuple(s[1:]), d) for s, d in out_like)

  def body(c, acc):
    res = fn(*(jax.lax.dynamic_index_in_dim(x, c, axis=1, keepdims=False) for x in xs))
    return tuple(jax.lax.dynamic_update_index_in_dim(a, r.astype(a.dtype), c, axis=1)
                 for a, r in zip(acc, res))

  outs = jax.lax.fori_loop(0, num_chunks, body, outs)
  return tuple(o.reshape(s) for o, (s, _) in zip(outs, out_like))


def batch_chunk(num_heads: int, num_keys: int, block_q: int = BLOCK_Q,
                chunk_bytes: int = CHUNK_BYTES) -> int:
  """Token lists per chunk so that one query block's float32 scores take ~``chunk_bytes``."""
  return max(1, chunk_bytes // (4 * num_heads * min(block_q, num_keys) * num_keys))


def _fit_chunk(batch: int, bound: int) -> int:
  """The largest divisor of ``batch`` up to ``bound`` (no padding), unless that is under half of
  ``bound``: then ``bound`` itself and the batch is padded."""
  bound = max(1, min(batch, bound))
  best = max(c for c in range(1, bound + 1) if batch % c == 0)
  return best if 2 * best >= bound else bound


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, key_valid, causal, block_q, num_chunks):
  return _attention_fwd(q, k, v, key_valid, causal, block_q, num_chunks)[0]


def _attention_fwd(q, k, v, key_valid, causal, block_q, num_chunks):
  b, nq, h, _ = q.shape
  out, lse = _chunked(functools.partial(_forward_chunk, causal=causal, block_q=block_q),
                      num_chunks, (q, k, v, key_valid),
                      ((q.shape, q.dtype), ((b, h, nq), jnp.float32)))
  return out, (q, k, v, key_valid, out, lse)


def _attention_bwd(causal, block_q, num_chunks, res, d_out):
  q, k, v, key_valid, out, lse = res
  dq, dk, dv = _chunked(functools.partial(_backward_chunk, causal=causal, block_q=block_q),
                        num_chunks, (q, k, v, key_valid, out, lse, d_out),
                        ((q.shape, q.dtype), (k.shape, k.dtype), (v.shape, v.dtype)))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, key_valid: jnp.ndarray,
                      causal: bool, block_q: int = BLOCK_Q, chunk: int | None = None
                      ) -> jnp.ndarray:
  """q [B, Q, H, Dh] (the last Q of L positions), k/v [B, L, H, Dh], key_valid [B, L] bool
  -> [B, Q, H, Dh]; the mask is ``attention.attention_mask(key_valid, Q, causal)``.

  ``chunk``: token lists per batch chunk (None: ``batch_chunk``'s cache-sized default). A batch
  that is not a multiple of it is padded with empty lists (every padded query reads its own key).
  The query and key lengths must be static; the batch may be symbolic (one chunk then).
  """
  b, nq, _, _ = q.shape
  nk = k.shape[1]
  if nq > nk:
    raise ValueError(f'blocked_attention: {nq} queries but only {nk} keys (queries are the tail '
                     'of the key positions)')
  if block_q < 1:
    raise ValueError(f'blocked_attention: block_q must be >= 1, got {block_q}')
  if not isinstance(b, (int, np.integer)):
    # A symbolic batch (``jax.export`` of the scorer): one chunk; the query blocks still skip.
    num_chunks, pad = 1, 0
  else:
    chunk = min(b, chunk) if chunk else _fit_chunk(b, batch_chunk(q.shape[2], nk, block_q))
    num_chunks = -(-b // chunk)
    pad = num_chunks * chunk - b
  if pad:
    widen = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    q, k, v, key_valid = (widen(x) for x in (q, k, v, key_valid))
  with jax.named_scope('blocked_attention'):  # names the ops in profiles (profile_step.py)
    out = _attention(q, k, v, key_valid.astype(bool), bool(causal), int(block_q), num_chunks)
  return out[:b] if pad else out
