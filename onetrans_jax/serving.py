"""Cached serving of OneTrans (SPEC A.6): jitted two-stage scoring and its export.

Stage I encodes a request's behaviour sequences once into the per-layer user cache (S keys and
values); stage II scores any number of candidates against it. Both are exact: they compute the
same numbers as the per-candidate forward pass (tests/test_request_level.py, test_serving.py).

``export_scorer`` writes both stages with ``jax.export`` (R and C symbolic, so one export serves
every batch shape) plus the parameters; ``onetrans_jax.serving_runtime`` loads them with jax and
numpy alone.
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
from onetrans_jax.models.onetrans import OneTrans, require_user_cache
from onetrans_jax.schema import FeatureSchema

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
  from onetrans_jax.train import dummy_batch  # local: train imports the model registry
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
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, serving_runtime.USER_CACHE_FILE), 'wb') as f:
    f.write(exp_user.serialize())
  with open(os.path.join(directory, serving_runtime.SCORE_FILE), 'wb') as f:
    f.write(exp_score.serialize())
  np.savez(os.path.join(directory, serving_runtime.PARAMS_FILE), **_flatten(jax.device_get(params)))
  manifest = {
      'model': 'onetrans',
      'platforms': list(platforms),
      'tasks': list(schema.task_names),
      'num_layers': model.num_layers,
      'schedule': list(model.schedule),
      'sequences': {s.name: s.max_len for s in schema.sequences},
      'user_inputs': jax.tree.map(lambda s: [str(d) for d in s.shape] + [str(s.dtype)],
                                  user_spec),
      'candidate_inputs': jax.tree.map(lambda s: [str(d) for d in s.shape] + [str(s.dtype)],
                                       cand_spec),
  }
  with open(os.path.join(directory, serving_runtime.MANIFEST_FILE), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest
