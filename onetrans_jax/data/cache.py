"""Requests kept in memory after they are first built, so later epochs only copy them.

A source builds request ``i`` from scratch on every read: the synthetic world generates it in
numpy (1.6 ms a request, about 100 ms per batch of 64, measured on a core shared with a study
lane), and a study run reads its training range 4-8 times. On a study lane pinned to one core that generation shares
the core with the training step. ``RequestCache`` keeps every leaf of the requests built so far in
one preallocated array per leaf ([N, *leaf shape], filled on first read), so a cached read is
a handful of row copies and the batches are bit-identical to the uncached ones.

Sources are deterministic per index (grain's random-access contract), which is what makes
the cache exact. It covers the whole source or nothing: when ``len(source)`` x the first request's
bytes exceeds ``data.cache_mb`` or half of the memory available when the first request is read,
reads go straight to the source (the default synthetic world of a million requests stays
generated on demand). A request whose structure, shape or dtype differs
from the first one's (a source with ragged items) turns the cache off for good, with one message.
"""

from __future__ import annotations

import threading
from typing import Any

import jax
import numpy as np

from onetrans_jax import reporting

DEFAULT_MB = 2048   # config.data.cache_mb: the worlds of the studies take 200-300 MB


def available_mb() -> float | None:
  """Memory the OS could give this process now (MemAvailable), None where it does not say."""
  try:
    with open('/proc/meminfo', encoding='ascii') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


class RequestCache:
  """``source`` memoised per index in columnar arrays (see the module docstring)."""

  def __init__(self, source: Any, budget_mb: float, name: str = ''):
    self.source, self.budget_mb = source, float(budget_mb)
    self.name = name or type(source).__name__
    self._lock = threading.Lock()
    self._treedef: Any = None
    self._columns: list[np.ndarray] | None = None
    self._filled: np.ndarray | None = None
    self._off = self.budget_mb <= 0
    self.hits = 0

  def __len__(self) -> int:
    return len(self.source)

  def __getattr__(self, name: str) -> Any:   # the underlying source's other attributes
    if name == 'source':                      # not set yet (unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.source, name)

  def __getstate__(self) -> dict[str, Any]:
    """A grain worker process gets the source and an empty cache of its own, not the arrays."""
    state = dict(self.__dict__)
    state.update(_lock=None, _treedef=None, _columns=None, _filled=None, hits=0)
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def cached(self) -> int:
    """How many requests are held."""
    return 0 if self._filled is None else int(self._filled.sum())

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if self._off:
      return self.source[index]
    # One snapshot of the three: a concurrent switch-off replaces them, never edits them.
    filled, columns, treedef = self._filled, self._columns, self._treedef
    if filled is not None and columns is not None and filled[index]:
      self.hits += 1   # approximate under grain's threads; exact in one thread (tests)
      return jax.tree.unflatten(treedef, [c[index].copy() for c in columns])
    request = self.source[index]
    self._store(index, request)
    return request

  def _store(self, index: int, request: dict[str, Any]) -> None:
    leaves, treedef = jax.tree.flatten(request)
    leaves = [np.asarray(x) for x in leaves]
    with self._lock:
      if self._off:
        return
      if self._columns is None:
        size = len(self.source) * sum(x.nbytes for x in leaves) / 2**20
        free = available_mb()
        if size > self.budget_mb or (free is not None and size > free / 2):
          why = (f'> data.cache_mb={self.budget_mb:g}' if size > self.budget_mb else
                 f'> half of the {free:,.0f} MB of memory available now')
          reporting.log(f'{self.name}: not keeping its requests in memory ({size:,.0f} MB for '
                        f'{len(self.source):,} requests {why}); each read builds its request')
          self._off = True
          return
        self._treedef = treedef
        self._columns = [np.empty((len(self.source),) + x.shape, x.dtype) for x in leaves]
        self._filled = np.zeros(len(self.source), bool)
      elif treedef != self._treedef or any(
          x.shape != c.shape[1:] or x.dtype != c.dtype for x, c in zip(leaves, self._columns)):
        reporting.log(f'{self.name}: request {index} differs in structure, shape or dtype from '
                      'the first one read; its requests are no longer kept in memory')
        self._off, self._columns, self._filled = True, None, None
        return
      for column, x in zip(self._columns, leaves):
        column[index] = x
      self._filled[index] = True   # after the row is written: a reader never sees half a row
