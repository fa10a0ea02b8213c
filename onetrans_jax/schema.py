"""Declarative feature schema and the one batch contract every model reads.

A dataset is described once, here, and every loader (synthetic, MovieLens, a user's own logs) emits
batches of this exact shape; every model consumes them. The batch is request-level: one user with up
to C candidates. That is what lets OneTrans share the user side across candidates (SPEC A.6), lets
OneRank compute its list-wise InfoNCE per request (SPEC B.6) and gives UAUC its user ids.

Batch contract (R requests, C candidates, T tasks; arrays are numpy on the host, jax on device)::

    request/user_id   [R]              int32   raw user id, for UAUC (needs no vocabulary)
    request/time      [R]              int32   request timestamp, seconds
    request/cat       [R, F_u]         int32   user + context categorical ids, schema order
    request/num       [R, N_u]         float32 user + context numeric values
    seq/<name>/ids    [R, L_s, 1+S_s]  int32   column 0 item id, then the side features, schema order
    seq/<name>/time   [R, L_s]         int32   event timestamp, seconds (< request time)
    seq/<name>/mask   [R, L_s]         bool    valid events
    cand/cat          [R, C, F_c]      int32   candidate categorical ids
    cand/num          [R, C, N_c]      float32 candidate numeric values
    cand/mask         [R, C]           bool    real (non-padding) candidates
    labels            [R, C, T]        float32 0/1 per task
    true_prob         [R, C, T]        float32 optional: planted conditional probabilities (synthetic)

Conventions: id 0 is padding / out-of-vocabulary in every vocabulary, real ids are 1..size-1.
Sequences hold events in chronological order and are *right-aligned* (padding on the left), so the
last position is the most recent event: the tail that the OneTrans pyramid keeps (SPEC A.5).
Task ``t`` with a ``parent`` is conditional (e.g. CVR = P(conversion | click), SPEC A.1): its
label, loss and metrics live on impressions whose parent label is 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SIDES = ('user', 'context', 'item')


class SchemaError(ValueError):
  """A schema or a batch that does not fit it; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """An id space with its own embedding table; features that share ids share the vocabulary."""
  name: str
  size: int  # ids in [0, size); 0 is padding / unknown.


@dataclasses.dataclass(frozen=True)
class CategoricalFeature:
  name: str
  vocab: str
  side: str = 'user'  # 'user', 'context' (request-level) or 'item' (candidate-level)


@dataclasses.dataclass(frozen=True)
class NumericFeature:
  name: str
  side: str = 'user'


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
  """One behaviour sequence (click, cart, order, ...): per event an item id plus side features."""
  name: str
  max_len: int
  item_vocab: str
  side_features: tuple[tuple[str, str], ...] = ()  # (feature name, vocabulary) per side column


@dataclasses.dataclass(frozen=True)
class Task:
  """A label. ``parent`` makes it conditional on the parent's label being 1."""
  name: str
  parent: str | None = None


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
  """Everything a model needs to know about a dataset's features, tasks and batch shapes."""
  vocabularies: tuple[Vocabulary, ...]
  request_categorical: tuple[CategoricalFeature, ...]
  request_numeric: tuple[NumericFeature, ...]
  sequences: tuple[SequenceFeature, ...]
  candidate_categorical: tuple[CategoricalFeature, ...]
  candidate_numeric: tuple[NumericFeature, ...]
  tasks: tuple[Task, ...]
  num_candidates: int

  def __post_init__(self):
    self.validate()

  # ---- lookups -------------------------------------------------------------------------------
  @property
  def vocab_sizes(self) -> dict[str, int]:
    return {v.name: v.size for v in self.vocabularies}

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  @property
  def task_parents(self) -> tuple[int, ...]:
    """Index of each task's parent task, -1 for unconditional tasks."""
    names = self.task_names
    return tuple(-1 if t.parent is None else names.index(t.parent) for t in self.tasks)

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def num_ns_features(self) -> int:
    """Non-sequential features: request + candidate, categorical + numeric."""
    return (len(self.request_categorical) + len(self.request_numeric) +
            len(self.candidate_categorical) + len(self.candidate_numeric))

  def sequence(self, name: str) -> SequenceFeature:
    for s in self.sequences:
      if s.name == name:
        return s
    raise SchemaError(f'schema has no sequence {name!r}; known: {[s.name for s in self.sequences]}')

  # ---- checks --------------------------------------------------------------------------------
  def validate(self) -> None:
    vocab = {}
    for v in self.vocabularies:
      if v.name in vocab:
        raise SchemaError(f'vocabulary {v.name!r} is declared twice')
      if v.size < 2:
        raise SchemaError(f'vocabulary {v.name!r}: size must be >= 2 (id 0 is padding), got {v.size}')
      vocab[v.name] = v.size

    def need_vocab(where: str, name: str) -> None:
      if name not in vocab:
        raise SchemaError(f'{where} uses vocabulary {name!r}, which is not declared; '
                          f'declared: {sorted(vocab)}')

    names: set[str] = set()

    def unique(name: str, where: str) -> None:
      if name in names:
        raise SchemaError(f'feature name {name!r} ({where}) is used twice')
      names.add(name)

    for f in self.request_categorical:
      unique(f.name, 'request_categorical')
      need_vocab(f'request feature {f.name!r}', f.vocab)
      if f.side not in ('user', 'context'):
        raise SchemaError(f'request feature {f.name!r}: side must be user or context, got {f.side!r}')
    for f in self.request_numeric:
      unique(f.name, 'request_numeric')
    for f in self.candidate_categorical:
      unique(f.name, 'candidate_categorical')
      need_vocab(f'candidate feature {f.name!r}', f.vocab)
    for f in self.candidate_numeric:
      unique(f.name, 'candidate_numeric')
    for s in self.sequences:
      unique(s.name, 'sequences')
      if s.max_len < 1:
        raise SchemaError(f'sequence {s.name!r}: max_len must be >= 1, got {s.max_len}')
      need_vocab(f'sequence {s.name!r}', s.item_vocab)
      for side_name, side_vocab in s.side_features:
        need_vocab(f'sequence {s.name!r} side feature {side_name!r}', side_vocab)
    if not self.tasks:
      raise SchemaError('schema needs at least one task')
    task_names = [t.name for t in self.tasks]
    if len(set(task_names)) != len(task_names):
      raise SchemaError(f'task names must be unique, got {task_names}')
    for i, t in enumerate(self.tasks):
      if t.parent is not None and t.parent not in task_names[:i]:
        raise SchemaError(f'task {t.name!r}: parent {t.parent!r} must be an earlier task of '
                          f'{task_names}')
    if self.num_candidates < 1:
      raise SchemaError(f'num_candidates must be >= 1, got {self.num_candidates}')

  # ---- batch contract ------------------------------------------------------------------------
  def batch_spec(self, num_requests: int, with_true_prob: bool = False) -> dict[str, Any]:
    """Shapes and dtypes of a batch of ``num_requests`` requests (a tree of ShapeDtype tuples)."""
    r, c, t = num_requests, self.num_candidates, self.num_tasks
    spec: dict[str, Any] = {
        'request': {
            'user_id': ((r,), np.int32),
            'time': ((r,), np.int32),
            'cat': ((r, len(self.request_categorical)), np.int32),
            'num': ((r, len(self.request_numeric)), np.float32),
        },
        'seq': {
            s.name: {
                'ids': ((r, s.max_len, 1 + len(s.side_features)), np.int32),
                'time': ((r, s.max_len), np.int32),
                'mask': ((r, s.max_len), np.bool_),
            } for s in self.sequences
        },
        'cand': {
            'cat': ((r, c, len(self.candidate_categorical)), np.int32),
            'num': ((r, c, len(self.candidate_numeric)), np.float32),
            'mask': ((r, c), np.bool_),
        },
        'labels': ((r, c, t), np.float32),
    }
    if with_true_prob:
      spec['true_prob'] = ((r, c, t), np.float32)
    return spec

  def check_batch(self, batch: Mapping[str, Any], where: str = 'batch') -> None:
    """Raise SchemaError naming the first field whose shape, dtype or ids break the contract.

    Cheap numpy checks run on the host for every batch of a loader that is not fully trusted:
    an id out of range would otherwise be silently clipped by the embedding gather.
    """
    num_requests = np.shape(batch['request']['user_id'])[0]
    spec = self.batch_spec(num_requests, with_true_prob='true_prob' in batch)

    def walk(spec_node: Any, node: Any, path: str) -> None:
      if isinstance(spec_node, dict):
        if not isinstance(node, Mapping):
          raise SchemaError(f'{where}: {path or "batch"} must be a mapping')
        missing = set(spec_node) - set(node)
        if missing:
          raise SchemaError(f'{where}: missing field(s) {sorted(missing)} under {path or "batch"}')
        for k in spec_node:
          walk(spec_node[k], node[k], f'{path}/{k}' if path else k)
        return
      shape, dtype = spec_node
      arr = np.asarray(node)
      if arr.shape != shape:
        raise SchemaError(f'{where}: {path} has shape {arr.shape}, the schema expects {shape}')
      if arr.dtype != dtype:
        raise SchemaError(f'{where}: {path} has dtype {arr.dtype}, the schema expects '
                          f'{np.dtype(dtype).name}')
      if arr.dtype.kind == 'f' and not np.all(np.isfinite(arr)):
        raise SchemaError(f'{where}: {path} holds {int(np.sum(~np.isfinite(arr)))} non-finite '
                          'values; clean or impute them in the loader')

    walk(spec, batch, '')
    sizes = self.vocab_sizes

    def check_ids(arr: np.ndarray, vocabs: Sequence[str], path: str) -> None:
      for col, vname in enumerate(vocabs):
        ids = arr[..., col]
        lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if lo < 0 or hi >= sizes[vname]:
          raise SchemaError(
              f'{where}: {path} column {col} has ids in [{lo}, {hi}] but vocabulary {vname!r} '
              f'has size {sizes[vname]}; enlarge the vocabulary or hash ids into range')

    check_ids(np.asarray(batch['request']['cat']), [f.vocab for f in self.request_categorical],
              'request/cat')
    check_ids(np.asarray(batch['cand']['cat']), [f.vocab for f in self.candidate_categorical],
              'cand/cat')
    for s in self.sequences:
      check_ids(np.asarray(batch['seq'][s.name]['ids']),
                [s.item_vocab] + [v for _, v in s.side_features], f'seq/{s.name}/ids')
      mask = np.asarray(batch['seq'][s.name]['mask'])
      # Right alignment: once a position is valid, every later one is valid too.
      if mask.shape[1] > 1 and np.any(mask[:, :-1] & ~mask[:, 1:]):
        raise SchemaError(f'{where}: seq/{s.name}/mask is not right-aligned (padding must be on the '
                          'left, the most recent event last)')
    labels = np.asarray(batch['labels'])
    if not np.all((labels == 0) | (labels == 1)):
      raise SchemaError(f'{where}: labels must be 0 or 1')
    if not np.all(np.asarray(batch['cand']['mask']).any(axis=1)):
      raise SchemaError(f'{where}: a request has no valid candidate (cand/mask all false); '
                        'drop such requests in the loader')


def dummy_batch(schema: FeatureSchema, num_requests: int) -> dict[str, Any]:
  """Zeros in the batch contract (all candidates valid), for model init and shape inference."""
  def zeros(spec: Any) -> Any:
    if isinstance(spec, tuple):
      return np.zeros(spec[0], spec[1])
    return {k: zeros(v) for k, v in spec.items()}
  batch = zeros(schema.batch_spec(num_requests))
  batch['cand']['mask'][:] = True
  return batch


def label_weights(labels: Any, cand_mask: Any, task_parents: Sequence[int]) -> Any:
  """Which (candidate, task) pairs are in each task's population: [..., T] of 0/1 floats.

  Works on numpy and jax arrays alike. A conditional task only counts where its parent is 1.
  """
  xp = np if isinstance(labels, np.ndarray) else _jnp()
  mask = xp.asarray(cand_mask, dtype=labels.dtype)[..., None]
  cols = []
  for t, parent in enumerate(task_parents):
    cols.append(mask[..., 0] if parent < 0 else mask[..., 0] * labels[..., parent])
  return xp.stack(cols, axis=-1)


def _jnp():
  import jax.numpy as jnp  # local: keeps the schema importable by loaders without jax.
  return jnp


def flatten_candidates(batch: Mapping[str, Any]) -> dict[str, Any]:
  """Point-wise view of a request batch: [R, C, ...] -> [R*C, ...], the user side repeated.

  Returns the same tree layout with C folded into the leading axis and ``cand/*`` arrays losing
  their candidate axis. Point-wise models call this inside their ``__call__``; set-wise models
  (OneTrans with request-level sharing, OneRank) keep the request axis.
  """
  xp = np if isinstance(batch['cand']['mask'], np.ndarray) else _jnp()
  r, c = batch['cand']['mask'].shape

  def rep(x):
    return xp.repeat(x, c, axis=0)

  out: dict[str, Any] = {
      'request': {k: rep(v) for k, v in batch['request'].items()},
      'seq': {n: {k: rep(v) for k, v in s.items()} for n, s in batch['seq'].items()},
      'cand': {k: v.reshape((r * c,) + v.shape[2:]) for k, v in batch['cand'].items()},
  }
  for key in ('labels', 'true_prob'):
    if key in batch:
      out[key] = batch[key].reshape((r * c,) + batch[key].shape[2:])
  return out
