"""Load and run an exported scorer: jax and numpy only, no model or training code.

A serving process needs just this file and the export directory written by
``onetrans_jax.serving.export_model`` (``onetrans export``):

    from onetrans_jax.serving_runtime import load_scorer
    scorer = load_scorer('/path/to/export')
    logits = scorer.predict({'request': ..., 'seq': ..., 'cand': ...})  # any model: [R, C, T]
    # a OneTrans export also serves in two stages:
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
FORWARD_FILE = 'forward.jaxexport'  # a one-stage export (OneRank, the baselines)


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


def _load(path: str) -> export.Exported:
  with open(path, 'rb') as f:
    return export.deserialize(bytearray(f.read()))


class ExportedScorer:
  """An export's functions with the parameters already on the device: the two serving stages of
  a OneTrans export, or the one forward pass of any other model."""

  def __init__(self, directory: str):
    manifest = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(manifest):
      raise FileNotFoundError(f'{directory} is not an export: {MANIFEST_FILE} is missing (write '
                              'one with onetrans export, or onetrans_jax.serving.export_model)')
    with open(manifest) as f:
      self.manifest = json.load(f)
    self.two_stage = self.manifest.get('stages', 'user_cache+score') != 'forward'
    files = (USER_CACHE_FILE, SCORE_FILE) if self.two_stage else (FORWARD_FILE,)
    for name in files + (PARAMS_FILE,):
      if not os.path.exists(os.path.join(directory, name)):
        raise FileNotFoundError(f'{directory} is not a complete export: {name} is missing '
                                '(export again)')
    self._fns = {name: _load(os.path.join(directory, name)) for name in files}
    with np.load(os.path.join(directory, PARAMS_FILE)) as npz:
      self.params = jax.device_put(unflatten({k: npz[k] for k in npz.files}))
    platform = jax.default_backend()
    platform = 'cuda' if platform == 'gpu' else platform
    lowered = self._fns[files[-1]].platforms
    if platform not in lowered:
      raise RuntimeError(f'this export was lowered for {lowered}, not {platform!r}; '
                         'export again with platforms=(..., "' + platform + '")')

  def _stage(self, name: str) -> export.Exported:
    if name not in self._fns:
      raise ValueError(f'this {self.manifest.get("model")} export is one forward pass '
                       '(predict); the two cached stages are a OneTrans export\'s')
    return self._fns[name]

  def user_cache(self, batch: Mapping[str, Any]) -> Any:
    """Stage I: {'request': ..., 'seq': ...} -> the per-layer user cache."""
    return self._stage(USER_CACHE_FILE).call(self.params, batch)

  def score(self, batch: Mapping[str, Any], cache: Any) -> jax.Array:
    """Stage II: {'request': ..., 'cand': ...} and a user cache -> logits [R, C, T]."""
    return self._stage(SCORE_FILE).call(self.params, batch, cache)

  def predict(self, batch: Mapping[str, Any]) -> jax.Array:
    """{'request': ..., 'seq': ..., 'cand': ...} -> logits [R, C, T], whatever the model."""
    if self.two_stage:
      cache = self.user_cache({'request': batch['request'], 'seq': batch['seq']})
      return self.score({'request': batch['request'], 'cand': batch['cand']}, cache)
    return self._stage(FORWARD_FILE).call(
        self.params, {k: batch[k] for k in ('request', 'seq', 'cand')})


def load_scorer(directory: str) -> ExportedScorer:
  return ExportedScorer(directory)
