"""Cached serving of OneTrans (SPEC A.6): jitted two-stage scoring and its export.

Stage I encodes a request's behaviour sequences once into the per-layer user cache (S keys and
values); stage II scores any number of candidates against it. Both are exact: they compute the
same numbers as the per-candidate forward pass (tests/test_request_level.py, test_serving.py).

Across requests, ``incremental_user_fns`` keeps a user's stage-I state and appends newly arrived
events to it (``OneTrans.extend_user_state``); ``plan_append`` decides on the host, from event
counts, how many layers can be reused exactly.

``export_scorer`` writes both stages with ``jax.export`` (R and C symbolic, so one export serves
every batch shape) plus the parameters; ``onetrans_jax.serving_runtime`` loads them with jax and
numpy alone. ``export_forward`` writes any other model (OneRank, the baselines) as one function,
batch -> logits, the same way; ``export_model`` chooses between the two by the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax import export

from onetrans_jax import serving_runtime
from onetrans_jax.models.onetrans.model import (OneTrans, UserState, require_incremental,
                                                require_user_cache)
from onetrans_jax.schema import FeatureSchema, dummy_batch

Batch = Mapping[str, Any]


def user_part(batch: Batch) -> dict[str, Any]:
  """What stage I reads: the request row and its behaviour sequences (no candidate)."""
  return {'request': batch['request'], 'seq': batch['seq']}


def candidate_part(batch: Batch) -> dict[str, Any]:
  """What stage II reads: the request row and the candidates (no sequence)."""
  return {'request': batch['request'], 'cand': batch['cand']}


def _check_model(model: Any) -> None:
  if not isinstance(model, OneTrans):
    raise ValueError(f'cached serving is defined for OneTrans, got {type(model).__name__}')
  require_user_cache(model)  # fail here, before anything is traced


def cached_scoring_fns(model: OneTrans) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """(user_cache(params, user_batch), score(params, candidate_batch, cache)), both jitted."""
  _check_model(model)
  user = jax.jit(lambda p, b: model.apply({'params': p}, b, method=OneTrans.user_cache))
  score = jax.jit(lambda p, b, cache: model.apply({'params': p}, b, cache,
                                                  method=OneTrans.score_with_cache))
  return user, score


def plan_append(model: OneTrans, state: UserState, events: Batch) -> tuple[int, int]:
  """(kv_layers, out_layers) for ``OneTrans.extend_user_state``, from the event counts.

  Layer i's old outputs stay exact while the user's whole history (after the append) fits its S
  input window; once a sequence overflows its ``max_len`` the oldest events are evicted and only
  the layer-0 keys/values are reused. Also checks that the events can be appended: every field
  present, one row per user in ``state``, and each user's new events strictly later than the
  cached ones (the merge orders equal times by sequence, so a tie could land mid-window).
  """
  require_incremental(model)
  seqs = model.schema.sequences
  valid, kind = np.asarray(state['valid']), np.asarray(state['kind'])
  time = np.asarray(state['time'], np.int64)
  rows = valid.shape[0]
  new_counts, first_new = [], np.full(rows, np.iinfo(np.int64).max)
  for q in seqs:
    ev = events.get('seq', {}).get(q.name)
    if ev is None or any(f not in ev for f in ('ids', 'mask', 'time')):
      raise ValueError(f"appended events need seq/{q.name}/ids, mask and time (an empty sequence "
                       'is an all-False mask)')
    mask, t = np.asarray(ev['mask'], bool), np.asarray(ev['time'], np.int64)
    if mask.shape[0] != rows or t.shape != mask.shape:
      raise ValueError(f'seq/{q.name}: mask {mask.shape} and time {t.shape} must be [R, L] with '
                       f'R = {rows}, the rows of the user state')
    new_counts.append(mask.sum(1))
    first_new = np.minimum(first_new, np.where(mask, t, np.iinfo(np.int64).max).min(1))
  last_old = np.where(valid, time, np.iinfo(np.int64).min).max(1)
  late = np.flatnonzero(first_new <= last_old)
  if late.size:
    r = int(late[0])
    raise ValueError(f'row {r}: a new event at time {int(first_new[r])} is not later than the '
                     f'cached history (last event at {int(last_old[r])}); rebuild the state with '
                     'the full history (user_state) instead of appending')
  old_counts = np.stack([(valid & (kind == i)).sum(1) for i in range(len(seqs))], 1)
  after = old_counts + np.stack(new_counts, 1)
  layers = model.num_layers
  if np.any(after > np.asarray([q.max_len for q in seqs])):
    return min(1, layers), 0   # eviction: only the tokens and layer-0 keys/values survive
  total = int(after.sum(1).max())
  n_s = np.asarray(state['tokens']).shape[1]
  windows = [n_s] + [q - model.num_ns_tokens for q in model.schedule[:-1]]  # S inputs per layer
  fits = next((i for i, n in enumerate(windows) if total > n), layers)
  return min(fits + 1, layers), fits


def incremental_user_fns(model: OneTrans) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """(start(params, user_batch) -> state, append(params, state, events) -> state).

  ``state['cache']`` is the user cache for ``cached_scoring_fns``'s scorer. ``append`` is jitted
  once per (kv_layers, out_layers) plan and per shape of the appended events.
  """
  _check_model(model)
  require_incremental(model)
  start = jax.jit(lambda p, b: model.apply({'params': p}, b, method=OneTrans.user_state))
  extend = jax.jit(lambda p, st, ev, kv, out: model.apply(
      {'params': p}, st, ev, kv, out, method=OneTrans.extend_user_state), static_argnums=(3, 4))

  def append(params: Any, state: UserState, events: Batch) -> UserState:
    kv, out = plan_append(model, state, events)
    return extend(params, state, {'seq': events['seq']}, kv, out)

  return start, append


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if '/' in key:
      raise ValueError(f'parameter name {key!r} contains "/", which the export uses as separator')
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(_flatten(value, path + '/'))
    else:
      out[path] = np.asarray(value)
  return out


def _symbolic_specs(schema: FeatureSchema, params: Any) -> tuple[Any, Any, Any, Any]:
  """Input specs with symbolic R (requests) and C (candidates); the rest fixed by the schema."""
  r, c = export.symbolic_shape('r, c')  # symbolic dimensions are >= 1
  example = dummy_batch(schema, 1)

  def spec(x, dims):
    shape = (r, c)[:dims] + np.shape(x)[dims:]
    return jax.ShapeDtypeStruct(shape, x.dtype)

  user = {'request': jax.tree.map(lambda x: spec(x, 1), example['request']),
          'seq': jax.tree.map(lambda x: spec(x, 1), example['seq'])}
  cands = {'request': user['request'], 'cand': jax.tree.map(lambda x: spec(x, 2), example['cand'])}
  p = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
  return p, user, cands, (r, c)


def _write(directory: str, files: Mapping[str, export.Exported], params: Any,
           manifest: Mapping[str, Any]) -> None:
  os.makedirs(directory, exist_ok=True)
  for name, exported in files.items():
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(exported.serialize())
  np.savez(os.path.join(directory, serving_runtime.PARAMS_FILE), **_flatten(jax.device_get(params)))
  with open(os.path.join(directory, serving_runtime.MANIFEST_FILE), 'w') as f:
    json.dump(manifest, f, indent=1)


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda s: [str(d) for d in s.shape] + [str(s.dtype)], tree)


def export_forward(model: Any, params: Any, schema: FeatureSchema, directory: str,
                   platforms: Sequence[str] = ('cpu',), name: str = '') -> dict[str, Any]:
  """Write ``model``'s eval-mode forward pass, {'request', 'seq', 'cand'} -> logits [R, C, T],
  and the parameters to ``directory``; R and C symbolic. For every model without a two-stage
  cache (OneRank scores each candidate against the request's own candidate set, so its
  candidates cannot be scored apart). Returns the manifest."""
  forward = jax.jit(lambda p, b: model.apply({'params': p}, b, train=False))
  p_spec, user_spec, cand_spec, _ = _symbolic_specs(schema, params)
  batch_spec = {'request': user_spec['request'], 'seq': user_spec['seq'],
                'cand': cand_spec['cand']}
  exported = export.export(forward, platforms=tuple(platforms))(p_spec, batch_spec)
  manifest = {'model': name or type(model).__name__.lower(), 'stages': 'forward',
              'platforms': list(platforms), 'tasks': list(schema.task_names),
              'sequences': {s.name: s.max_len for s in schema.sequences},
              'inputs': _shapes(batch_spec)}
  _write(directory, {serving_runtime.FORWARD_FILE: exported}, params, manifest)
  return manifest


def export_model(model: Any, params: Any, schema: FeatureSchema, directory: str,
                 platforms: Sequence[str] = ('cpu',), name: str = '') -> dict[str, Any]:
  """The export a model serves best: a request-level OneTrans as the two cached stages
  (``export_scorer``), any other model (or a OneTrans with full attention) as one forward pass."""
  if isinstance(model, OneTrans):
    try:
      require_user_cache(model)
    except ValueError:
      return export_forward(model, params, schema, directory, platforms, name or 'onetrans')
    return export_scorer(model, params, schema, directory, platforms)
  return export_forward(model, params, schema, directory, platforms, name)


def export_scorer(model: OneTrans, params: Any, schema: FeatureSchema, directory: str,
                  platforms: Sequence[str] = ('cpu',)) -> dict[str, Any]:
  """Write stage I, stage II and the parameters to ``directory``; returns the manifest.

  ``platforms``: where the export may run ('cpu', 'cuda', 'tpu'); lowering for several keeps one
  artifact for a mixed fleet.
  """
  user_fn, score_fn = cached_scoring_fns(model)
  p_spec, user_spec, cand_spec, _ = _symbolic_specs(schema, params)
  exp_user = export.export(user_fn, platforms=tuple(platforms))(p_spec, user_spec)
  cache_spec = jax.eval_shape(user_fn, p_spec, user_spec)
  exp_score = export.export(score_fn, platforms=tuple(platforms))(p_spec, cand_spec, cache_spec)
  manifest = {
      'model': 'onetrans',
      'stages': 'user_cache+score',
      'platforms': list(platforms),
      'tasks': list(schema.task_names),
      'num_layers': model.num_layers,
      'schedule': list(model.schedule),
      'sequences': {s.name: s.max_len for s in schema.sequences},
      'user_inputs': _shapes(user_spec),
      'candidate_inputs': _shapes(cand_spec),
  }
  _write(directory, {serving_runtime.USER_CACHE_FILE: exp_user,
                     serving_runtime.SCORE_FILE: exp_score}, params, manifest)
  return manifest
