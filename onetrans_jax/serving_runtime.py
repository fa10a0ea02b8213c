"""Load and run an exported OneTrans scorer: jax and numpy only, no model or training code.

A serving process needs just this file and the export directory written by
``onetrans_jax.serving.export_scorer``:

    from onetrans_jax.serving_runtime import load_scorer
    scorer = load_scorer('/path/to/export')
    cache = scorer.user_cache({'request': ..., 'seq': ...})      # once per request (stage I)
    logits = scorer.score({'request': ..., 'cand': ...}, cache)   # any number of candidates

The number of requests R and candidates C are symbolic in the exported functions, so one export
serves every batch shape; sequence lengths and feature counts are fixed by the schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax import export

USER_CACHE_FILE = 'user_cache.jaxexport'
SCORE_FILE = 'score.jaxexport'
PARAMS_FILE = 'params.npz'
MANIFEST_FILE = 'manifest.json'


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}: the inverse of the exporter's flattening."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


class ExportedScorer:
  """The two serving stages of an export, with the parameters already on the device."""

  def __init__(self, directory: str):
    for name in (USER_CACHE_FILE, SCORE_FILE, PARAMS_FILE, MANIFEST_FILE):
      if not os.path.exists(os.path.join(directory, name)):
        raise FileNotFoundError(f'{directory} is not a OneTrans export: {name} is missing '
                                '(write one with onetrans_jax.serving.export_scorer)')
    with open(os.path.join(directory, MANIFEST_FILE)) as f:
      self.manifest = json.load(f)
    with open(os.path.join(directory, USER_CACHE_FILE), 'rb') as f:
      self._user = export.deserialize(bytearray(f.read()))
    with open(os.path.join(directory, SCORE_FILE), 'rb') as f:
      self._score = export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, PARAMS_FILE)) as npz:
      self.params = jax.device_put(unflatten({k: npz[k] for k in npz.files}))
    platform = jax.default_backend()
    platform = 'cuda' if platform == 'gpu' else platform
    if platform not in self._score.platforms:
      raise RuntimeError(f'this export was lowered for {self._score.platforms}, not {platform!r}; '
                         'export again with platforms=(..., "' + platform + '")')

  def user_cache(self, batch: Mapping[str, Any]) -> Any:
    """Stage I: {'request': ..., 'seq': ...} -> the per-layer user cache."""
    return self._user.call(self.params, batch)

  def score(self, batch: Mapping[str, Any], cache: Any) -> jax.Array:
    """Stage II: {'request': ..., 'cand': ...} and a user cache -> logits [R, C, T]."""
    return self._score.call(self.params, batch, cache)


def load_scorer(directory: str) -> ExportedScorer:
  return ExportedScorer(directory)
