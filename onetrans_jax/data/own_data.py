"""Your own data, declaratively: CSV or Parquet files + a spec in ``config.data`` -> requests.

``config.data.name = 'own_data'`` (``own_data()`` returns every field with its default and
``parse_spec`` checks them: own_spec.py; ``onetrans_jax/experiments/own_data.py`` shows complete
specs). The spec maps the columns of an
event log, and optionally of an items and a users table, to:

  * ``events``: user id, item id and time (unix seconds or milliseconds, ISO 8601 or a strptime
    format; Parquet times natively); a ``request`` key column, or sessions of one user cut by
    ``session_gap`` seconds; ``impression``: which rows are ranked (a condition; default all);
  * ``tasks``: one binary label each, from a 0/1 ``column`` or a ``condition`` such as
    ``rating >= 4``, with ``parent`` for a task conditional on another (CVR given click);
  * ``sequences``: behaviour sequences, each the events matching ``where`` (e.g. ``event ==
    'buy'``), at most ``max_len``, with the item features in ``seq_side_features``;
  * ``item_features`` / ``user_features``: categorical and numeric side features
    (``encoders.py``: vocabularies with a min count, hashing, closed lists, buckets, flags;
    z-scores), read from their own
    ``file`` keyed by ``key``, or, without one, from the event log (a user's / item's first event);
  * the chronological split: the latest ``eval_fraction`` of requests (or those from
    ``holdout_start``) are the hold-out; ``valid_fraction`` (or ``valid_start``) carves the
    validation split off the end of the training period.

Everything after the columns is ``event_log.py``'s, shared with the MovieLens, Taobao and KuaiRand
loaders: sessions, leak-free sequences, the request source. Files are streamed in record batches
(``tables.py``); encoders are fitted on the training period only and frozen. The result is cached
on disk, keyed by a fingerprint of the spec and of the files (path, size, modification time), and
written atomically (a temporary directory renamed into place), so a second run, ``onetrans eval``
and ``onetrans predict`` reuse it. Each preprocessing logs the rows read, the rows dropped with the
reason, the split and the vocabulary sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from onetrans_jax import reporting
from onetrans_jax.data import tables
from onetrans_jax.data.encoders import CategoricalEncoder, NumericEncoder
from onetrans_jax.data.event_log import (DataFileError, EventLog, EventLogSource, RequestConfig,
                                         RequestIndex, build_requests, chronological_split)
from onetrans_jax.data.own_spec import NAME, SideSpec, Spec, own_data, parse_spec
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

__all__ = ['NAME', 'own_data', 'parse_spec', 'prepare', 'cached', 'build', 'build_for_file']

FORMAT_VERSION = 1   # of the cache: a change to what preprocessing computes bumps it
# config.data fields that change how batches are served, not what preprocessing computes.
PIPELINE_FIELDS = ('batch_size', 'shuffle', 'validate', 'num_threads', 'worker_count',
                   'cache_dir', 'cache_mb')
CACHE_ENV = 'ONETRANS_CACHE_DIR'
_INT32_MAX = np.iinfo(np.int32).max


# ================================================================================ reading
class _Side:
  """Raw side-feature values of every row of the file(s) they come from (codes, numbers, flags),
  with each row's file and 1-based row for messages."""

  def __init__(self, side: SideSpec):
    self.side = side
    self.values = {c.name: tables.Values() for c in side.categorical if c.encode != 'flags'}
    self.parts: dict[str, list[np.ndarray]] = {
        name: [] for name in [c.name for c in side.categorical] + [n.name for n in side.numeric]}

  def add(self, batch: tables.Batch, keep: np.ndarray) -> None:
    for c in self.side.categorical:
      if c.encode == 'flags':
        m = np.stack([batch.numbers(col, c.field) for col in c.columns], 1)
        bad = ~np.isnan(m) & (m != 0) & (m != 1)
        for j, col in enumerate(c.columns):
          batch.check(bad[:, j], col, lambda k, j=j: (
              f'flag {m[k, j]:g} is not 0 or 1 ({c.field}); fix the value'))
        self.parts[c.name].append(np.nan_to_num(m, nan=0.0)[keep].astype(np.int8))
      else:
        self.parts[c.name].append(self.values[c.name].add(*batch.strings(c.columns[0]))[keep])
    for n in self.side.numeric:
      self.parts[n.name].append(batch.numbers(n.column, n.field)[keep])

  def array(self, name: str) -> np.ndarray:
    return np.concatenate(self.parts[name]) if self.parts[name] else np.zeros(0)


@dataclasses.dataclass
class _Rows:
  """Where each kept row came from: its file (index into ``paths``) and 1-based data row."""
  paths: list[str]
  file: np.ndarray
  row: np.ndarray

  def where(self, k: int) -> str:
    return f'{self.paths[int(self.file[k])]}, row {int(self.row[k])}'


@dataclasses.dataclass
class _Events:
  user: np.ndarray        # [E] int32 codes into users
  item: np.ndarray
  time: np.ndarray        # [E] int64
  labels: np.ndarray      # [E, T] float32
  impression: np.ndarray  # [E] bool
  in_sequence: dict[str, np.ndarray]
  request: np.ndarray | None
  users: tables.Values
  items: tables.Values
  rows: _Rows
  read: dict[str, int]    # rows per file
  dropped: dict[str, int]  # reason -> rows
  labeled: bool           # every task's label was in the files (scoring a new file: maybe not)
  side: dict[str, _Side]  # 'item' / 'user' -> features read from the event log


def _read_events(spec: Spec, need_labels: bool) -> _Events:
  users, items, requests = tables.Values(), tables.Values(), tables.Values()
  from_events = {s.kind: _Side(s) for s in (spec.items, spec.users) if not s.files}
  parts: dict[str, list[np.ndarray]] = {k: [] for k in (
      'user', 'item', 'time', 'labels', 'impression', 'request', 'file', 'row')}
  seq_parts: dict[str, list[np.ndarray]] = {s.name: [] for s in spec.sequences}
  read, dropped = {}, {}
  labeled = True
  for f_index, fspec in enumerate(spec.events):
    data = tables.DataFile(fspec)
    field = fspec.field
    task_cols = {}
    for t in spec.tasks:  # first: a missing label column is named by its task
      cols = [t.column] if t.column else t.condition.columns
      missing = [c for c in cols if c not in data.columns]
      if missing and need_labels:
        data.require({c: t.field for c in cols})
      task_cols[t.name] = not missing
    labeled &= all(task_cols.values())
    names = {spec.user: f'{field}.user', spec.item: f'{field}.item', spec.time: f'{field}.time'}
    if spec.request:
      names[spec.request] = f'{field}.request'
    for cond in [spec.impression] + [s.where for s in spec.sequences]:
      names.update({c: cond.field for c in (cond.columns if cond else [])})
    for s in from_events.values():
      names.update({c: f'{s.side.field} (no file: columns of the event log)'
                    for c in s.side.columns})
    data.require(names)
    columns = list(names) + [c for t in spec.tasks if task_cols[t.name]
                             for c in ([t.column] if t.column else t.condition.columns)]
    n_read = 0
    for b in data.batches(columns):
      n_read += len(b)
      keep = np.ones(len(b), np.bool_)
      for col, reason in ((spec.user, 'missing user id'), (spec.item, 'missing item id'),
                          (spec.time, 'missing time')) + (
                              ((spec.request, 'missing request key'),) if spec.request else ()):
        gone = keep & ~b.present(col)
        if gone.any():
          dropped[reason] = dropped.get(reason, 0) + int(gone.sum())
        keep &= ~gone
      t = b.seconds(spec.time, spec.time_format, f'{field}.time_format')
      b.check(keep & ((t < 0) | (t > _INT32_MAX)), spec.time, lambda k: (
          f'time {int(t[k])} lies outside 1970..2038 (unix seconds that fit int32); fix the '
          f'value, or set {field}.time_format (unix_ms for milliseconds)'))
      imp = spec.impression.evaluate(b) if spec.impression else np.ones(len(b), np.bool_)
      labels = _labels(spec, b, imp & keep, task_cols)
      parts['user'].append(users.add(*b.strings(spec.user))[keep])
      parts['item'].append(items.add(*b.strings(spec.item))[keep])
      if spec.request:
        parts['request'].append(requests.add(*b.strings(spec.request))[keep].astype(np.int64))
      parts['time'].append(t[keep])
      parts['labels'].append(labels[keep])
      parts['impression'].append(imp[keep])
      parts['file'].append(np.full(int(keep.sum()), f_index, np.int32))
      parts['row'].append(b.rows[keep])
      for s in spec.sequences:
        seq_parts[s.name].append((s.where.evaluate(b) if s.where else
                                  np.ones(len(b), np.bool_))[keep])
      for side in from_events.values():
        side.add(b, keep)
    read[fspec.path] = n_read
  cat = lambda k, dtype: (np.concatenate(parts[k]).astype(dtype) if parts[k]
                          else np.zeros(0, dtype))
  if not parts['user'] or not sum(len(p) for p in parts['user']):
    raise DataFileError(f'{spec.events[0].path}: every row was dropped ({dropped}); fill the user, '
                        'item and time columns')
  return _Events(
      user=cat('user', np.int32), item=cat('item', np.int32), time=cat('time', np.int64),
      labels=np.concatenate(parts['labels']).astype(np.float32),
      impression=cat('impression', np.bool_),
      in_sequence={n: np.concatenate(p).astype(np.bool_) for n, p in seq_parts.items()},
      request=cat('request', np.int64) if spec.request else None, users=users, items=items,
      rows=_Rows([f.path for f in spec.events], cat('file', np.int32), cat('row', np.int64)),
      read=read, dropped=dropped, labeled=labeled, side=from_events)


def _labels(spec: Spec, b: tables.Batch, imp: np.ndarray, present: Mapping[str, bool]
            ) -> np.ndarray:
  """[n, T] float32 labels of one batch: checked on the impression rows, 0 elsewhere; a missing
  label of a conditional task is 0 where its parent is 0 (a conversion unknown without a click)."""
  out = np.zeros((len(b), len(spec.tasks)), np.float32)
  names = [t.name for t in spec.tasks]
  for j, t in enumerate(spec.tasks):
    if not present[t.name]:
      continue
    if t.condition is not None:
      out[:, j] = t.condition.evaluate(b)
      continue
    x = b.numbers(t.column, t.field)
    b.check(imp & ~np.isnan(x) & (x != 0) & (x != 1), t.column, lambda k: (
        f'label {x[k]:g} of task {t.name!r} is not 0 or 1 ({t.field}); write 0 or 1, or '
        f"derive the label with a condition instead, e.g. condition='{t.column} >= 4'"))
    missing = np.isnan(x)
    if t.parent is not None:
      missing &= out[:, names.index(t.parent)] != 0
    b.check(imp & missing, t.column, lambda k: (
        f'the label of task {t.name!r} is missing ({t.field}); fill it, or drop the row'))
    out[:, j] = np.nan_to_num(x, nan=0.0)
  return out * imp[:, None]


def _read_side_file(side: SideSpec, entity: Mapping[str, int], n: int
                    ) -> tuple[_Side, np.ndarray, _Rows, dict[str, int]]:
  """A side table keyed by ``side.key`` -> (its values, the row of each dense entity (-1:
  none), the rows, counts for the report). A key listed twice is an error naming both rows."""
  raw = _Side(side)
  keys, files, rows = [], [], []
  for f_index, fspec in enumerate(side.files):
    data = tables.DataFile(fspec)
    data.require({side.key: f'{side.field}.key', **{c: side.field for c in side.columns}})
    for b in data.batches([side.key] + side.columns):
      codes, values = b.strings(side.key)
      ent = np.asarray([entity.get(v, 0) for v in values] + [0], np.int64)[codes]
      keys.append(ent)
      files.append(np.full(len(b), f_index, np.int32))
      rows.append(b.rows)
      raw.add(b, np.ones(len(b), np.bool_))
  ent = np.concatenate(keys)
  where = _Rows([f.path for f in side.files], np.concatenate(files), np.concatenate(rows))
  source = np.full(n + 1, -1, np.int64)
  used = np.flatnonzero(ent > 0)
  order = used[np.argsort(ent[used], kind='stable')]
  dup = np.flatnonzero(ent[order][1:] == ent[order][:-1])
  if dup.size:
    first, second = order[dup[0]], order[dup[0] + 1]
    raise DataFileError(f'{where.where(second)}, column {side.key!r}: {side.kind} key repeats '
                        f'{where.where(first)}; each {side.kind} must have one row: delete one')
  source[ent[used]] = used
  counts = {'rows': int(ent.size), 'unused': int((ent == 0).sum()),
            'without_row': int((source[1:] < 0).sum())}
  return raw, source, where, counts


def _first_event(entity: np.ndarray, time: np.ndarray, n: int) -> np.ndarray:
  """Per dense entity 1..n, its earliest event (file order breaks ties); -1 if none."""
  order = np.lexsort((np.arange(entity.size), time))
  ent = entity[order]
  uniq, first = np.unique(ent, return_index=True)
  out = np.full(n + 1, -1, np.int64)
  out[uniq] = order[first]
  return out


# ================================================================================ encoding
@dataclasses.dataclass
class _Entities:
  """The dense ids of one entity kind: code in the column's Values -> 1..n (0: absent)."""
  dense: np.ndarray    # [len(values)] int32
  raw: list[str]       # [n + 1] raw id of each dense id ('' for 0)

  @property
  def n(self) -> int:
    return len(self.raw) - 1

  def lookup(self) -> dict[str, int]:
    return {v: i for i, v in enumerate(self.raw) if i}


def _entities(values: tables.Values, codes: np.ndarray) -> _Entities:
  present = np.zeros(len(values), np.bool_)
  present[codes] = True
  order = [int(c) for c in values.sorted_order() if present[c]]
  dense = np.zeros(len(values), np.int32)
  dense[order] = np.arange(1, len(order) + 1)
  return _Entities(dense, [''] + [values.values[c] for c in order])


def _encode_side(side: SideSpec, raw: _Side, source: np.ndarray, rows: _Rows, weight: np.ndarray,
                 frozen: Mapping[str, Any] | None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
  """Entity tables ([n + 1], row 0 = padding) of every side feature, and the encoders' states.

  ``source[e]``: the row of ``raw`` describing entity e (-1: none); ``weight[e]``: its events in
  the training period, which fit the encoders (``frozen``: fitted states to apply instead).
  """
  cat, num, states = {}, {}, {}
  has = source >= 0
  for c in side.categorical:
    enc = CategoricalEncoder(c, None if frozen is None else frozen[c.name]['state'])
    if c.encode == 'flags':
      flags = np.zeros((source.size, len(c.columns)), np.int8)
      flags[has] = raw.array(c.name)[source[has]]
      ids = enc.slots(flags)
      ids[0] = 0
      for j, f in enumerate(c.features):
        cat[f] = ids[:, j].astype(np.int32)
    else:
      codes = np.full(source.size, -1, np.int64)
      codes[has] = raw.array(c.name)[source[has]]
      codes[0] = -1
      distinct = c.transform(raw.values[c.name].values)
      if frozen is None:
        used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(distinct)))
        counts = np.bincount(codes[codes >= 0], weights=weight[codes >= 0],
                             minlength=len(distinct))
        enc.fit([distinct[j] for j in used], counts[used])
      ids, why = enc.ids(distinct)
      bad = [j for j, w in enumerate(why) if w]
      if bad:
        hit = np.flatnonzero(np.isin(codes, bad))
        if hit.size:
          e = int(hit[0])
          raise DataFileError(f'{rows.where(int(source[e]))}, column {c.columns[0]!r}: '
                              f'{why[int(codes[e])]}')
      cat[c.name] = np.where(codes >= 0, ids[np.maximum(codes, 0)], 0).astype(np.int32)
    states[c.name] = {'state': enc.state(), 'size': enc.size, 'vocab': c.vocab,
                      'features': c.features}
  for n_spec in side.numeric:
    enc = NumericEncoder(n_spec, None if frozen is None else frozen[n_spec.name]['state'])
    x = np.full(source.size, np.nan)
    x[has] = raw.array(n_spec.name)[source[has]]
    if frozen is None:
      enc.fit(np.repeat(x, weight.astype(np.int64)))
    values = enc.apply(x)
    values[0] = 0.0
    num[n_spec.name] = values
    states[n_spec.name] = {'state': enc.state()}
  return cat, num, states


def _split(spec: Spec, index: RequestIndex) -> dict[str, tuple[int, int] | None]:
  """The chronological train / valid / hold-out ranges of the time-sorted requests. With a
  fraction (and no times) the validation split is left to pipeline.split_validation."""
  n = len(index)
  if spec.holdout_start is None:
    train, holdout = chronological_split(n, spec.eval_fraction)
    return {'train': train, 'valid': None, 'holdout': holdout}
  h = int(np.searchsorted(index.time, spec.holdout_start, side='left'))
  v = h if spec.valid_start is None else int(np.searchsorted(index.time, spec.valid_start,
                                                              side='left'))
  out = {'train': (0, v), 'valid': None if spec.valid_start is None else (v, h),
         'holdout': (h, n)}
  for name, r in out.items():
    if r is not None and r[1] <= r[0]:
      fix = {'train': 'holdout_start (and valid_start) later', 'valid': 'valid_start earlier',
             'holdout': 'holdout_start earlier'}[name]
      raise DataFileError(
          f'{spec.events[0].path}, column {spec.time!r}: the {name} split is empty: no request '
          f'starts in it (requests start from {int(index.time[0])} to {int(index.time[-1])}, '
          f'unix seconds); set config.data.{fix}, inside that span')
  return out


@dataclasses.dataclass
class Prepared:
  """What preprocessing makes: the log and its requests, the split, the encoders' fitted states
  (frozen for later files), each dense id's raw value and the report."""
  log: EventLog
  index: RequestIndex
  split: dict[str, tuple[int, int] | None]
  encoders: dict[str, Any]
  raw_ids: dict[str, np.ndarray]
  report: dict[str, Any]


def prepare(spec: Spec, frozen: Mapping[str, Any] | None = None) -> Prepared:
  """Reads the files and builds the EventLog. ``frozen``: the encoders of a trained run (a new
  file is scored with the run's ids and scales; its labels may be absent; no split)."""
  ev = _read_events(spec, need_labels=frozen is None)
  users, items = _entities(ev.users, ev.user), _entities(ev.items, ev.item)
  user, item = users.dense[ev.user], items.dense[ev.item]
  tasks = tuple(Task(t.name, t.parent) for t in spec.tasks)
  log = EventLog(user=user, item=item, time=ev.time, labels=ev.labels,
                 is_impression=ev.impression, in_sequence=ev.in_sequence, tasks=tasks,
                 num_users=users.n, num_items=items.n, request=ev.request)
  # The side features come later (their encoders need the split): check the rest now.
  dataclasses.replace(spec.request_config, seq_side_features=()).check(log)
  if not ev.impression.any():
    raise DataFileError(f'{spec.events[0].path}: no row is an impression '
                        f'(config.data.events.impression={spec.impression.text!r}); nothing to '
                        'rank: fix the condition')
  index = build_requests(log, spec.request_config)
  if frozen is None:
    split = _split(spec, index)
    train_end = split['train'][1]
    if spec.holdout_start is None and spec.valid_fraction > 0:  # as pipeline.split_validation
      train_end -= int(round(spec.valid_fraction * train_end))
    cutoff = int(index.time[train_end]) if train_end < len(index) else np.iinfo(np.int64).max
  else:  # every request is scored: the whole file is the "hold-out"
    split = {'train': (0, 0), 'valid': None, 'holdout': (0, len(index))}
    cutoff = np.iinfo(np.int64).min  # nothing is fitted
  in_train = ev.time < cutoff
  states: dict[str, Any] = {}
  id_vocab = {}
  for kind, ent, dense, id_spec in (('user', users, user, spec.user_id),
                                    ('item', items, item, spec.item_id)):
    enc = CategoricalEncoder(id_spec, None if frozen is None else frozen[f'{kind}_id']['state'])
    if frozen is None:
      enc.fit(ent.raw[1:], np.bincount(dense[in_train], minlength=ent.n + 1)[1:])
    ids, _ = enc.ids(ent.raw[1:])
    id_vocab[kind] = np.concatenate([[0], ids]).astype(np.int32)
    states[f'{kind}_id'] = {'state': enc.state(), 'size': enc.size}
  side_tables, counts = {}, {}
  for side, ent, dense in ((spec.items, items, item), (spec.users, users, user)):
    weight = np.bincount(dense[in_train], minlength=ent.n + 1).astype(np.float64)
    if side.files:
      raw, source, rows, counts[side.kind] = _read_side_file(side, ent.lookup(), ent.n)
    else:
      raw, source, rows = ev.side[side.kind], _first_event(dense, ev.time, ent.n), ev.rows
    side_tables[side.kind] = _encode_side(
        side, raw, source, rows, weight, None if frozen is None else frozen[f'{side.kind}s'])
    states[f'{side.kind}s'] = side_tables[side.kind][2]
  vocab, sizes = {}, {'user': states['user_id']['size'], 'item': states['item_id']['size']}
  for kind in ('items', 'users'):
    for st in states[kind].values():
      if 'vocab' in st:
        for f in st['features']:
          vocab[f] = st['vocab']
        sizes[st['vocab']] = max(sizes.get(st['vocab'], 2), st['size'])
  (item_cat, item_num, _), (user_cat, user_num, _) = side_tables['item'], side_tables['user']
  log = dataclasses.replace(log, item_cat=item_cat, item_num=item_num, user_cat=user_cat,
                            user_num=user_num, vocab=vocab, vocab_sizes=sizes,
                            user_vocab_id=id_vocab['user'], item_vocab_id=id_vocab['item'])
  try:
    log.validate()
  except ValueError as e:
    raise ConfigError(f'config.data: the spec makes an invalid event log ({e})') from None
  report = {
      'rows_read': ev.read, 'rows_dropped': ev.dropped, 'events': log.num_events,
      'impressions': int(log.is_impression.sum()), 'users': users.n, 'items': items.n,
      'requests': ({'to score': len(index)} if frozen is not None else
                   {k: (None if r is None else r[1] - r[0]) for k, r in split.items()}),
      'vocabularies': dict(sizes), 'side_files': counts, 'labeled': ev.labeled}
  return Prepared(log, index, split, states,
                  {'user': np.asarray(users.raw), 'item': np.asarray(items.raw)}, report)


# ================================================================================ the cache
def fingerprint(cfg: ml_collections.ConfigDict, spec: Spec) -> str:
  """Of what preprocessing computes: the spec (not the serving fields) and every file's path,
  size and modification time. A changed file or field makes a new cache entry."""
  fields = {k: v for k, v in json.loads(cfg.to_json_best_effort()).items()
            if k not in PIPELINE_FIELDS}
  paths = [f.path for f in spec.events] + [f.path for s in (spec.items, spec.users)
                                            for f in s.files]
  files = []
  for p in paths:
    st = os.stat(p) if os.path.exists(p) else None
    files.append([os.path.abspath(p), st and st.st_size, st and st.st_mtime_ns])
  text = json.dumps([FORMAT_VERSION, fields, files], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_root(cfg: ml_collections.ConfigDict) -> str:
  root = cfg.get('cache_dir', None) or os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'onetrans_jax')
  return os.path.join(os.path.expanduser(str(root)), NAME)


def _save(prepared: Prepared, directory: str) -> None:
  log, ix = prepared.log, prepared.index
  arrays = {'user': log.user, 'item': log.item, 'time': log.time, 'labels': log.labels,
            'is_impression': log.is_impression, 'user_vocab_id': log.user_vocab_id,
            'item_vocab_id': log.item_vocab_id, 'raw/user': prepared.raw_ids['user'],
            'raw/item': prepared.raw_ids['item']}
  if log.request is not None:
    arrays['request'] = log.request
  for table in ('in_sequence', 'item_cat', 'item_num', 'user_cat', 'user_num'):
    arrays.update({f'{table}/{k}': v for k, v in getattr(log, table).items()})
  for f in ('impressions', 'start', 'size', 'user', 'time'):
    arrays[f'index/{f}'] = getattr(ix, f)
  for f in ('seq_events', 'seq_begin', 'seq_end'):
    arrays.update({f'index/{f}/{k}': v for k, v in getattr(ix, f).items()})
  np.savez(os.path.join(directory, 'data.npz'), **arrays)
  meta = {'format': FORMAT_VERSION, 'tasks': [[t.name, t.parent] for t in log.tasks],
          'num_users': log.num_users, 'num_items': log.num_items, 'vocab': log.vocab,
          'vocab_sizes': log.vocab_sizes,
          'order': {t: list(getattr(log, t)) for t in ('in_sequence', 'item_cat', 'item_num',
                                                        'user_cat', 'user_num')},
          'split': prepared.split, 'encoders': prepared.encoders, 'report': prepared.report}
  with open(os.path.join(directory, 'meta.json'), 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1)


def _load(directory: str) -> Prepared:
  with open(os.path.join(directory, 'meta.json'), encoding='utf-8') as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, 'data.npz')) as z:
    a = {k: z[k] for k in z.files}
  table = lambda t: {k: a[f'{t}/{k}'] for k in meta['order'][t]}
  log = EventLog(
      user=a['user'], item=a['item'], time=a['time'], labels=a['labels'],
      is_impression=a['is_impression'], in_sequence=table('in_sequence'),
      tasks=tuple(Task(n, p) for n, p in meta['tasks']), num_users=meta['num_users'],
      num_items=meta['num_items'], item_cat=table('item_cat'), item_num=table('item_num'),
      user_cat=table('user_cat'), user_num=table('user_num'), vocab=meta['vocab'],
      vocab_sizes=meta['vocab_sizes'], request=a.get('request'),
      user_vocab_id=a['user_vocab_id'], item_vocab_id=a['item_vocab_id'])
  seq = lambda f: {k: a[f'index/{f}/{k}'] for k in meta['order']['in_sequence']}
  index = RequestIndex(a['index/impressions'], a['index/start'], a['index/size'],
                       a['index/user'], a['index/time'], seq('seq_events'), seq('seq_begin'),
                       seq('seq_end'))
  split = {k: None if v is None else tuple(v) for k, v in meta['split'].items()}
  return Prepared(log, index, split, meta['encoders'],
                  {'user': a['raw/user'], 'item': a['raw/item']}, meta['report'])


def cached(cfg: ml_collections.ConfigDict, spec: Spec | None = None) -> tuple[Prepared, str]:
  """The preprocessed data of ``config.data``, from the cache or made now (then cached).
  -> (it, its cache directory)."""
  spec = spec or parse_spec(cfg)
  root = cache_root(cfg)
  directory = os.path.join(root, fingerprint(cfg, spec))
  if os.path.exists(os.path.join(directory, 'meta.json')):
    prepared = _load(directory)
    reporting.log(f'{NAME}: preprocessed data from the cache {directory}')
    _log_report(prepared.report)
    return prepared, directory
  prepared = prepare(spec)
  _log_report(prepared.report)
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.tmp-', dir=root)
  try:
    _save(prepared, tmp)
    with open(os.path.join(tmp, 'report.json'), 'w', encoding='utf-8') as f:
      json.dump(prepared.report, f, indent=1)
    try:
      os.replace(tmp, directory)  # atomic: a reader sees all of it or nothing
    except OSError:
      if not os.path.exists(os.path.join(directory, 'meta.json')):
        raise
      # another process cached the same fingerprint meanwhile: keep theirs
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  reporting.log(f'{NAME}: cached in {directory}')
  return prepared, directory


def _log_report(r: Mapping[str, Any]) -> None:
  for path, n in r['rows_read'].items():
    reporting.log(f'{NAME}: read {n:,} rows of {path}')
  if r['rows_dropped']:
    reporting.log(f'{NAME}: dropped ' + ', '.join(
        f'{n:,} {"row" if n == 1 else "rows"} ({why})' for why, n in r['rows_dropped'].items()))
  for kind, c in r['side_files'].items():
    reporting.log(f'{NAME}: {kind} table: {c["rows"]:,} rows, {c["unused"]:,} for {kind}s not in '
                  f'the events (unused); {c["without_row"]:,} {kind}s of the events have no row '
                  '(their features are unknown)')
  req = r['requests']
  reporting.log(f'{NAME}: {r["events"]:,} events ({r["impressions"]:,} impressions), '
                f'{r["users"]:,} users, {r["items"]:,} items -> requests: ' + ', '.join(
                    f'{k} {v:,}' for k, v in req.items() if v is not None))
  reporting.log(f'{NAME}: vocabulary sizes: ' + ', '.join(
      f'{k} {v:,}' for k, v in r['vocabularies'].items()))


# ================================================================================ datasets
def _dataset(prepared: Prepared, rcfg: RequestConfig, split: Mapping[str, Any]) -> Dataset:
  n = len(prepared.index)
  train, holdout = split['train'], split['holdout']
  # EventLogSource reads eval_fraction only to standardise history statistics on the training
  # range: the hold-out's share of the requests gives it exactly that range.
  frac = (holdout[1] - holdout[0]) / n if 0 < holdout[1] - holdout[0] < n else 0.5
  source = EventLogSource(prepared.log, dataclasses.replace(rcfg, eval_fraction=frac),
                          prepared.index)
  source.raw_ids = prepared.raw_ids
  return Dataset(source.schema, source, train, holdout, has_true_prob=False,
                 valid=split.get('valid'))


def build(cfg: ml_collections.ConfigDict) -> Dataset:
  """pipeline.DATASETS builder of ``own_data``."""
  spec = parse_spec(cfg)
  prepared, _ = cached(cfg, spec)
  return _dataset(prepared, spec.request_config, prepared.split)


def build_for_file(cfg: ml_collections.ConfigDict, path: str) -> tuple[Dataset, bool]:
  """Every request of ``path`` (an event log in the run's format), encoded with the encoders the
  run was trained with: -> (the dataset, whether the file holds every task's label). Its behaviour
  sequences come from its own earlier rows: include the history they should see."""
  spec = parse_spec(cfg)
  if spec.request_config.history_stats and spec.request_config.stats_scale != 'raw':
    raise ConfigError("scoring a new file needs config.data.stats_scale='raw': the z-scores of "
                      'the history statistics would come from the new file, not the training one')
  trained, _ = cached(cfg, spec)
  events = tuple(dataclasses.replace(f, path=os.path.expanduser(path)) for f in spec.events[:1])
  new = prepare(dataclasses.replace(spec, events=events), frozen=trained.encoders)
  _log_report(new.report)
  return _dataset(new, spec.request_config, new.split), bool(new.report['labeled'])
