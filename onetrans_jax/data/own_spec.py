"""The spec of your own data: ``config.data`` for ``name='own_data'``, its defaults and its checks.

``own_data()`` returns every field with its default; ``parse_spec`` reads a ``config.data`` (an
experiment file's, or a run's config.json read back) into checked dataclasses, every problem naming
its field. What the fields mean: onetrans_jax/data/own_data.py's docstring, encoders.py for the
feature encodings, and onetrans_jax/experiments/own_data.py for complete specs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from onetrans_jax.data import tables
from onetrans_jax.data.encoders import CategoricalSpec, NumericSpec, as_dicts
from onetrans_jax.data.event_log import RequestConfig, add_pipeline_fields
from onetrans_jax.data.types import DataConfigError
from onetrans_jax.errors import ConfigError

NAME = 'own_data'


def _file_fields(**overrides) -> dict[str, Any]:
  d = dict(format='auto',           # 'csv', 'parquet', or 'auto' (by the file name's ending)
           delimiter=',', header=True,
           column_names=placeholder(tuple),  # the columns of a CSV without a header line
           encoding='utf-8', quote_char='"')
  d.update(overrides)
  return d


def own_data(path: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """``config.data`` for your own files with every field; ``path``: the directory the file names
  are relative to. Defaults describe one CSV event log with a 0/1 ``click`` column."""
  d = ml_collections.ConfigDict()
  d.name = NAME
  d.path = placeholder(str) if path is None else path
  d.cache_dir = placeholder(str)   # None: $ONETRANS_CACHE_DIR, else ~/.cache/onetrans_jax
  d.events = ml_collections.ConfigDict(_file_fields(
      file='events.csv',             # or a list of files read in turn
      user='user_id', item='item_id', time='timestamp',
      time_format='unix',            # 'unix', 'unix_ms', 'iso', or a strptime format
      request=placeholder(str),      # a request-key column; None: sessions by session_gap
      impression=placeholder(str)))  # a condition choosing the ranked rows; None: every row
  # How the id columns become the 'user' and 'item' vocabularies: 'vocab' (min_count 0 keeps
  # every id of the files) or 'hash' with buckets.
  d.user_id = ml_collections.ConfigDict(dict(encode='vocab', min_count=0, buckets=0))
  d.item_id = ml_collections.ConfigDict(dict(encode='vocab', min_count=0, buckets=0))
  d.tasks = (dict(name='click', column='click'),)
  d.sequences = (dict(name='clicked', where='click == 1', max_len=50),)
  d.seq_side_features = ()          # item categorical features carried by every sequence event
  for side, key in (('item_features', 'item_id'), ('user_features', 'user_id')):
    d[side] = ml_collections.ConfigDict(_file_fields(
        file=placeholder(str),       # None: the features are columns of the event log
        key=key, categorical=(), numeric=()))
  d.session_gap = 1800              # seconds without an impression that end a request
  d.num_candidates = 16             # C: a longer request is split
  d.eval_fraction = 0.1             # the latest requests by start time that form the hold-out
  d.holdout_start = placeholder(str)  # or: the hold-out is every request from this time on
  d.valid_start = placeholder(str)  # with holdout_start: validation from this time on
  d.valid_fraction = 0.0            # or: the latest fraction of the training requests
  d.user_id_feature = True          # the user id as a request feature
  d.time_context = True             # hour and weekday of the request as features
  d.utc_offset = 0                  # seconds added to UTC for hour / weekday (local time)
  d.history_stats = False           # leak-free counters as numeric features (event_log.py)
  d.stats_prior = 10.0
  d.stats_scale = 'raw'
  add_pipeline_fields(d, batch_size=64)
  d.update(overrides)
  return d


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  parent: str | None
  column: str | None
  condition: tables.Condition | None
  field: str


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
  name: str
  where: tables.Condition | None
  max_len: int


@dataclasses.dataclass(frozen=True)
class SideSpec:
  kind: str                          # 'item' or 'user'
  field: str                         # 'config.data.item_features'
  files: tuple[tables.FileSpec, ...]  # () : the features are columns of the event log
  key: str
  categorical: tuple[CategoricalSpec, ...]
  numeric: tuple[NumericSpec, ...]

  @property
  def columns(self) -> list[str]:
    return ([c for s in self.categorical for c in s.columns] + [n.column for n in self.numeric])


@dataclasses.dataclass(frozen=True)
class Spec:
  """``config.data`` of an own_data run, read and checked."""
  events: tuple[tables.FileSpec, ...]
  user: str
  item: str
  time: str
  time_format: str
  request: str | None
  impression: tables.Condition | None
  user_id: CategoricalSpec
  item_id: CategoricalSpec
  tasks: tuple[TaskSpec, ...]
  sequences: tuple[SequenceSpec, ...]
  items: SideSpec
  users: SideSpec
  request_config: RequestConfig
  eval_fraction: float
  valid_fraction: float
  holdout_start: int | None
  valid_start: int | None


def _files(section: Any, field: str, root: str | None, required: bool
           ) -> tuple[tables.FileSpec, ...]:
  names = section.get('file', None)
  if names is None:
    if required:
      raise DataConfigError(f'{field}.file is not set; name the CSV or Parquet file(s)')
    return ()
  names = [names] if isinstance(names, str) else list(names)
  if not names:
    raise DataConfigError(f'{field}.file is an empty list; name at least one file')
  out = []
  for name in names:
    path = os.path.expanduser(str(name))
    if root and not os.path.isabs(path):
      path = os.path.join(os.path.expanduser(str(root)), path)
    quote = section.get('quote_char', '"')
    out.append(tables.FileSpec(
        path=path, field=field, format=str(section.get('format', 'auto')),
        delimiter=str(section.get('delimiter', ',')), header=bool(section.get('header', True)),
        column_names=tuple(section.get('column_names', None) or ()),
        encoding=str(section.get('encoding', 'utf-8')), quote_char=quote or None))
  return tuple(out)


def _time(value: Any, field: str) -> int | None:
  """A split time: unix seconds, or an ISO 8601 date / time (UTC)."""
  if value is None:
    return None
  text = str(value).strip()
  if re.fullmatch(r'[+-]?\d+', text):
    return int(text)
  try:
    t = datetime.datetime.fromisoformat(text)
  except ValueError:
    raise DataConfigError(f'{field}={value!r} is neither unix seconds nor an ISO 8601 time '
                          '(2024-05-01 or 2024-05-01T12:00:00)') from None
  if t.tzinfo is None:
    t = t.replace(tzinfo=datetime.timezone.utc)
  return int(t.timestamp())


def parse_spec(cfg: ml_collections.ConfigDict) -> Spec:
  """Reads and checks ``config.data``; every problem names its field."""
  root = cfg.get('path', None)
  ev = cfg.get('events', None)
  if ev is None:
    raise DataConfigError('config.data.events is missing; start from own_data.own_data()')
  events = _files(ev, 'config.data.events', root, required=True)
  condition = lambda text, field: None if text in (None, '') else tables.Condition.parse(
      text, field)

  def id_spec(name: str, field: str) -> CategoricalSpec:
    d = dict(cfg.get(field.split('.')[-1], None) or {})
    d = {k: v for k, v in d.items() if v not in (None, 0) or k == 'min_count'}
    spec = CategoricalSpec.parse({**d, 'name': name}, field, default_min_count=0)
    if spec.encode not in ('vocab', 'hash'):
      raise ConfigError(f"{field}.encode={spec.encode!r}: an id column takes 'vocab' or 'hash'")
    return spec

  tasks, names = [], []
  for i, t in enumerate(as_dicts(cfg.get('tasks', None), 'config.data.tasks')):
    field = f'config.data.tasks[{i}]'
    unknown = sorted(set(t) - {'name', 'column', 'condition', 'parent'})
    if unknown or not t.get('name'):
      raise ConfigError(f'{field}: give name and one of column / condition (and optionally '
                        f'parent); unknown keys: {unknown}')
    if (t.get('column') is None) == (t.get('condition') is None):
      raise ConfigError(f'{field} ({t["name"]!r}): give exactly one of column (a 0/1 column) and '
                        "condition (e.g. 'rating >= 4')")
    if t.get('parent') is not None and t['parent'] not in names:
      raise ConfigError(f'{field}.parent={t["parent"]!r} must name a task listed before it: '
                        f'{names}')
    tasks.append(TaskSpec(str(t['name']), t.get('parent'), t.get('column'),
                          condition(t.get('condition'), f'{field}.condition'), field))
    names.append(str(t['name']))
  if not tasks:
    raise ConfigError('config.data.tasks is empty; declare at least one label')
  seqs = []
  for i, s in enumerate(as_dicts(cfg.get('sequences', None), 'config.data.sequences')):
    field = f'config.data.sequences[{i}]'
    if set(s) - {'name', 'where', 'max_len'} or not s.get('name') or not s.get('max_len'):
      raise ConfigError(f'{field}: give name, max_len and optionally where (a condition); got '
                        f'{sorted(s)}')
    seqs.append(SequenceSpec(str(s['name']), condition(s.get('where'), f'{field}.where'),
                             int(s['max_len'])))
  if not seqs:
    raise ConfigError('config.data.sequences is empty; declare at least one behaviour sequence')

  def side(kind: str, section_name: str) -> SideSpec:
    field = f'config.data.{section_name}'
    sec = cfg.get(section_name, None) or ml_collections.ConfigDict()
    cats = tuple(CategoricalSpec.parse(d, f'{field}.categorical[{i}]')
                 for i, d in enumerate(as_dicts(sec.get('categorical', None),
                                                f'{field}.categorical')))
    nums = tuple(NumericSpec.parse(d, f'{field}.numeric[{i}]')
                 for i, d in enumerate(as_dicts(sec.get('numeric', None), f'{field}.numeric')))
    files = _files(sec, field, root, required=False)
    return SideSpec(kind, field, files, str(sec.get('key', f'{kind}_id')), cats, nums)

  items, users = side('item', 'item_features'), side('user', 'user_features')
  features = [f for s in (items, users) for c in s.categorical for f in c.features]
  features += [n.name for s in (items, users) for n in s.numeric]
  dup = sorted({f for f in features if features.count(f) > 1} |
               (set(features) & {'user_id', 'item_id', 'hour', 'weekday'}))
  if dup:
    raise ConfigError(f'feature name(s) {dup} are used twice or reserved (user_id, item_id, hour, '
                      'weekday); rename them in config.data.item_features / user_features')
  item_cat = [f for c in items.categorical for f in c.features]
  side_features = tuple(cfg.get('seq_side_features', None) or ())
  for f in side_features:
    if f not in item_cat:
      raise ConfigError(f'config.data.seq_side_features names {f!r}, which is not an item '
                        f'categorical feature (config.data.item_features.categorical): {item_cat}')
  holdout, valid = (_time(cfg.get(k, None), f'config.data.{k}')
                    for k in ('holdout_start', 'valid_start'))
  valid_fraction = float(cfg.get('valid_fraction', 0.0))
  if valid is not None and (holdout is None or valid >= holdout):
    raise DataConfigError('config.data.valid_start needs config.data.holdout_start, later than '
                          'it (the validation split ends where the hold-out begins)')
  if valid is not None and valid_fraction:
    raise DataConfigError(f'config.data.valid_start and valid_fraction={valid_fraction} both '
                          'carve a validation split; set valid_fraction=0')
  rcfg = RequestConfig(
      session_gap=int(cfg.get('session_gap', 1800)),
      num_candidates=int(cfg.get('num_candidates', 16)),
      max_len={s.name: s.max_len for s in seqs},
      eval_fraction=float(cfg.get('eval_fraction', 0.1)),
      seq_side_features=side_features,
      user_id_feature=bool(cfg.get('user_id_feature', True)),
      time_context=bool(cfg.get('time_context', True)),
      utc_offset=int(cfg.get('utc_offset', 0)),
      history_stats=bool(cfg.get('history_stats', False)),
      stats_prior=float(cfg.get('stats_prior', 10.0)),
      stats_scale=str(cfg.get('stats_scale', 'raw')))
  return Spec(
      events=events, user=str(ev.user), item=str(ev.item), time=str(ev.time),
      time_format=str(ev.get('time_format', 'unix')), request=ev.get('request', None),
      impression=condition(ev.get('impression', None), 'config.data.events.impression'),
      user_id=id_spec('user', 'config.data.user_id'),
      item_id=id_spec('item', 'config.data.item_id'), tasks=tuple(tasks), sequences=tuple(seqs),
      items=items, users=users, request_config=rcfg,
      eval_fraction=float(cfg.get('eval_fraction', 0.1)), valid_fraction=valid_fraction,
      holdout_start=holdout, valid_start=valid)
