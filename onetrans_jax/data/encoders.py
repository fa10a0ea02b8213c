"""A user's column values -> model inputs: categorical ids and normalised numbers.

Each encoder is fitted once, on the training period, and then frozen: the validation and hold-out
rows, and any file scored later with the run (``onetrans predict --data``), get the same ids and
scales, so the embedding tables keep their meaning. An encoder works on a column's *distinct*
values (``tables.Values``), never per row, and its fitted state is plain JSON.

Categorical encodings (``encode``), id 0 being padding / unknown as in every vocabulary:
  vocab     values seen at least ``min_count`` times in the training period -> 1..n in value
            order (numeric when all are integers); the rest -> 0. ``min_count=0``: every value
            in the data.
  hash      1 + a stable hash of the value modulo ``buckets``: no vocabulary to fit or store.
  values    the listed ``values`` -> 1..n; any other: ``other='error'`` (a closed list: the row is
            named), ``'unknown'`` (0) or ``'own_id'`` (n + 1, learned like the others).
  buckets   a number -> 1 + the number of ``edges`` <= it; missing -> 0.
  identity  an integer id already in [0, ``size``) used as is.
  flags     several 0/1 ``columns`` (multi-hot) -> ``slots`` features holding the first set
            columns' ids (1 + the column's position), sharing one vocabulary.
Before encoding, ``prefix`` keeps a value's first n characters and ``extract`` a regex's first
group (no match: missing). Numbers: ``normalize='zscore'`` with the training period's mean and
standard deviation (a missing value becomes the mean, i.e. 0), after ``log1p`` when asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onetrans_jax.errors import ConfigError

ENCODINGS = ('vocab', 'hash', 'values', 'buckets', 'identity', 'flags')
OTHER = ('error', 'unknown', 'own_id')
NORMALIZE = ('zscore', 'none')


def _get(d: Mapping[str, Any], key: str, default: Any = None) -> Any:
  value = d.get(key, default) if hasattr(d, 'get') else default
  return default if value is None else value


def as_dicts(items: Any, field: str) -> list[dict[str, Any]]:
  """A spec's list of feature / task / sequence entries as plain dicts (a ConfigDict, a dict, or
  what a config.json read back holds)."""
  if items is None:
    return []
  if hasattr(items, 'to_dict') or isinstance(items, Mapping):
    raise ConfigError(f'{field} must be a list of entries (dicts), got one mapping')
  out = []
  for i, item in enumerate(items):
    item = item.to_dict() if hasattr(item, 'to_dict') else item
    if not isinstance(item, Mapping):
      raise ConfigError(f'{field}[{i}] must be a dict, got {item!r}')
    out.append(dict(item))
  return out


@dataclasses.dataclass(frozen=True)
class CategoricalSpec:
  """One categorical feature of a spec, checked; ``field`` names it in messages."""
  name: str
  columns: tuple[str, ...]
  encode: str
  field: str
  vocab: str
  min_count: int = 1
  buckets: int = 0
  values: tuple[str, ...] = ()
  other: str = 'error'
  edges: tuple[float, ...] = ()
  size: int = 0
  slots: int = 1
  prefix: int = 0
  extract: str | None = None

  KEYS = ('name', 'column', 'columns', 'encode', 'vocab', 'min_count', 'buckets', 'values', 'other',
          'edges', 'size', 'slots', 'prefix', 'extract')

  @classmethod
  def parse(cls, d: Mapping[str, Any], field: str, default_min_count: int = 1
            ) -> 'CategoricalSpec':
    unknown = sorted(set(d) - set(cls.KEYS))
    if unknown:
      raise ConfigError(f'{field}: unknown key(s) {unknown}; known: {list(cls.KEYS)}')
    name = _get(d, 'name')
    if not name:
      raise ConfigError(f'{field}: give the feature a name')
    field = f'{field} ({name!r})'
    encode = _get(d, 'encode', 'vocab')
    if encode not in ENCODINGS:
      raise ConfigError(f'{field}.encode={encode!r}: choose one of {list(ENCODINGS)}')
    columns = tuple(_get(d, 'columns', ())) or ((_get(d, 'column', name),))
    if (encode == 'flags') != (len(_get(d, 'columns', ())) > 0):
      raise ConfigError(f'{field}: encode=\'flags\' reads several 0/1 columns (columns=[...]); '
                        'every other encoding reads one column (column=...)')
    spec = cls(name=str(name), columns=tuple(str(c) for c in columns), encode=encode, field=field,
               vocab=str(_get(d, 'vocab', name)),
               min_count=int(_get(d, 'min_count', default_min_count)),
               buckets=int(_get(d, 'buckets', 0)),
               values=tuple(str(v) for v in _get(d, 'values', ())),
               other=str(_get(d, 'other', 'error')),
               edges=tuple(float(e) for e in _get(d, 'edges', ())),
               size=int(_get(d, 'size', 0)), slots=int(_get(d, 'slots', 1)),
               prefix=int(_get(d, 'prefix', 0)), extract=_get(d, 'extract'))
    spec.check()
    return spec

  def check(self) -> None:
    f = self.field
    if self.min_count < 0:
      raise ConfigError(f'{f}.min_count must be >= 0 (0: every value), got {self.min_count}')
    if self.encode == 'hash' and self.buckets < 1:
      raise ConfigError(f"{f}: encode='hash' needs buckets >= 1, got {self.buckets}")
    if self.encode == 'values' and not self.values:
      raise ConfigError(f"{f}: encode='values' needs the list of values")
    if self.encode == 'values' and len(set(self.values)) != len(self.values):
      raise ConfigError(f'{f}.values lists a value twice')
    if self.other not in OTHER:
      raise ConfigError(f'{f}.other={self.other!r}: choose one of {list(OTHER)}')
    if self.encode == 'buckets' and (not self.edges or list(self.edges) != sorted(self.edges)):
      raise ConfigError(f"{f}: encode='buckets' needs increasing edges, got {list(self.edges)}")
    if self.encode == 'identity' and self.size < 2:
      raise ConfigError(f"{f}: encode='identity' needs size >= 2 (ids 0..size-1), got {self.size}")
    if self.encode == 'flags' and not 1 <= self.slots <= len(self.columns):
      raise ConfigError(f'{f}.slots must lie in 1..{len(self.columns)} (the flag columns), got '
                        f'{self.slots}')
    if self.extract is not None:
      try:
        if re.compile(self.extract).groups < 1:
          raise ConfigError(f'{f}.extract={self.extract!r}: the regex needs a group ( ... ) '
                            'holding the value')
      except re.error as e:
        raise ConfigError(f'{f}.extract={self.extract!r} is not a regex ({e})') from None

  @property
  def features(self) -> list[str]:
    """The schema features it makes: its name, then name_2 .. name_k for flag slots."""
    return [self.name] + [f'{self.name}_{j + 1}' for j in range(1, self.slots)]

  def transform(self, values: Sequence[str]) -> list[str | None]:
    """``prefix`` / ``extract`` applied to distinct values (None: missing after it)."""
    out: list[str | None] = list(values)
    if self.prefix:
      out = [v[:self.prefix] if v is not None else None for v in out]
    if self.extract is not None:
      rx = re.compile(self.extract)
      out = [m.group(1) if v is not None and (m := rx.search(v)) else None for v in out]
    return out


class CategoricalEncoder:
  """A fitted categorical encoder: ``ids(values)`` -> (ids, bad) per distinct value."""

  def __init__(self, spec: CategoricalSpec, state: Mapping[str, Any] | None = None):
    self.spec = spec
    self.vocab_values: list[str] = list((state or {}).get('values', []))
    self._lookup = {v: i + 1 for i, v in enumerate(self.vocab_values or spec.values)}

  @property
  def size(self) -> int:
    s = self.spec
    if s.encode == 'vocab':
      n = len(self.vocab_values) + 1
    elif s.encode == 'hash':
      n = s.buckets + 1
    elif s.encode == 'values':
      n = len(s.values) + (2 if s.other == 'own_id' else 1)
    elif s.encode == 'buckets':
      n = len(s.edges) + 2
    elif s.encode == 'identity':
      n = s.size
    else:
      n = len(s.columns) + 1
    return max(n, 2)

  def fit(self, values: Sequence[str | None], counts: np.ndarray) -> 'CategoricalEncoder':
    """``values``: distinct (transformed) values; ``counts``: each one's training-period count
    (a value with count 0 is still in the data: kept only with min_count=0)."""
    if self.spec.encode != 'vocab':
      return self
    total: dict[str, int] = {}
    for v, c in zip(values, counts):
      if v is not None:
        total[v] = total.get(v, 0) + int(c)
    keep = [v for v, c in total.items() if c >= self.spec.min_count]
    numeric = bool(keep) and all(re.fullmatch(r'[+-]?\d+', v) for v in keep)
    self.vocab_values = sorted(keep, key=int if numeric else None)
    self._lookup = {v: i + 1 for i, v in enumerate(self.vocab_values)}
    return self

  def state(self) -> dict[str, Any]:
    return {'values': self.vocab_values} if self.spec.encode == 'vocab' else {}

  def ids(self, values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """-> (id per distinct value [n] int32, why each is unusable: '' where fine). A missing
    value (None) gets 0."""
    s = self.spec
    out = np.zeros(len(values), np.int32)
    why = [''] * len(values)
    for j, v in enumerate(values):
      if v is None:
        continue
      if s.encode in ('vocab', 'values'):
        i = self._lookup.get(v)
        if i is None and s.encode == 'values':
          if s.other == 'error':
            why[j] = (f'{v!r} is not one of the listed values {list(s.values)} ({s.field}); fix '
                      "the value, add it to the list, or set other='unknown' or 'own_id'")
          i = len(s.values) + 1 if s.other == 'own_id' else 0
        out[j] = i or 0
      elif s.encode == 'hash':
        out[j] = 1 + int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(),
                                    'little') % s.buckets
      elif s.encode in ('buckets', 'identity'):
        try:
          x = float(v)
        except ValueError:
          why[j] = f'{v!r} is not a number ({s.field} reads it as one); fix the value'
          continue
        if s.encode == 'buckets':
          out[j] = 0 if math.isnan(x) else 1 + int(np.searchsorted(s.edges, x, side='right'))
        elif not (x.is_integer() and 0 <= x < s.size):
          why[j] = (f'{v!r} is not an integer id in 0..{s.size - 1} ({s.field}: '
                    "encode='identity'); fix the value or raise size")
        else:
          out[j] = int(x)
    return out, why

  def slots(self, flags: np.ndarray) -> np.ndarray:
    """flags [n, K] 0/1 -> [n, slots] ids: the first set columns' 1 + position, 0 after."""
    set_ = flags > 0
    order = np.argsort(~set_, axis=1, kind='stable')[:, :self.spec.slots]
    present = np.take_along_axis(set_, order, axis=1)
    return np.where(present, order + 1, 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class NumericSpec:
  name: str
  column: str
  field: str
  normalize: str = 'zscore'
  log1p: bool = False

  KEYS = ('name', 'column', 'normalize', 'log1p')

  @classmethod
  def parse(cls, d: Mapping[str, Any], field: str) -> 'NumericSpec':
    unknown = sorted(set(d) - set(cls.KEYS))
    if unknown:
      raise ConfigError(f'{field}: unknown key(s) {unknown}; known: {list(cls.KEYS)}')
    name = _get(d, 'name')
    if not name:
      raise ConfigError(f'{field}: give the feature a name')
    spec = cls(str(name), str(_get(d, 'column', name)), f'{field} ({name!r})',
               str(_get(d, 'normalize', 'zscore')), bool(_get(d, 'log1p', False)))
    if spec.normalize not in NORMALIZE:
      raise ConfigError(f'{spec.field}.normalize={spec.normalize!r}: choose one of '
                        f'{list(NORMALIZE)}')
    return spec


class NumericEncoder:
  """``log1p`` then a z-score with the training period's moments; missing -> the mean."""

  def __init__(self, spec: NumericSpec, state: Mapping[str, Any] | None = None):
    self.spec = spec
    self.mean = float((state or {}).get('mean', 0.0))
    self.std = float((state or {}).get('std', 1.0))

  def _pre(self, x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0)) if self.spec.log1p else x

  def fit(self, x: np.ndarray) -> 'NumericEncoder':
    """``x``: the training period's values (NaN: missing)."""
    x = self._pre(np.asarray(x, np.float64))
    x = x[~np.isnan(x)]
    if self.spec.normalize == 'zscore' and x.size:
      self.mean, self.std = float(x.mean()), float(max(x.std(), 1e-6))
    elif self.spec.normalize == 'none':
      self.mean, self.std = float(x.mean()) if x.size else 0.0, 1.0
    return self

  def state(self) -> dict[str, float]:
    return {'mean': self.mean, 'std': self.std}

  def apply(self, x: np.ndarray) -> np.ndarray:
    x = self._pre(np.asarray(x, np.float64))
    x = np.where(np.isnan(x), self.mean, x)
    if self.spec.normalize == 'zscore':
      x = (x - self.mean) / self.std
    return x.astype(np.float32)
