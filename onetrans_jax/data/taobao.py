"""Taobao UserBehavior (Alibaba, Tianchi) in its official file layout -> ranking requests.

``UserBehavior.csv``: no header, 5 comma-separated columns: user_id, item_id, category_id,
behavior_type (pv, fav, cart, buy), timestamp (unix seconds); ~100M rows (3.6 GB) of 987K users
between 2017-11-25 and 2017-12-03 (Beijing time). It is read streaming (event_log.TextStream): the
log becomes five compact arrays (4 + 4 + 4 + 1 + 4 bytes a row) and is never held as text.

Impressions and labels ([D]): the log holds no exposure that was not acted on, only what users
did: a ``pv`` is a view of the item's page, i.e. a click on it somewhere. So every pv is an
impression with ``click`` = 1, and ``negatives`` items per pv, drawn from the pv log itself
(popularity-weighted, never the viewed item), are sampled non-clicked impressions of the same user
at the same time with every label 0: without them ``click`` would be 1 everywhere and its head
could learn nothing. ``cart`` and ``buy`` are conditional on ``click`` (``Task.parent``): on a pv,
whether the same user carted / bought the same item within ``label_window`` seconds from the view
on (a buy can skip the cart, so both hang off click, not off each other). Labels look forward, as
labels do; features never do: every sequence holds events strictly before the request.

Features (ids dense, 0 = padding / unknown):
  request: user_id, hour and weekday of the request in Beijing time (UTC+8, the log's own zone);
  sequences: ``pv``, ``fav``, ``cart``, ``buy``: the user's latest events of that type strictly
    before the request, each with its item's category and time;
  candidate: item_id, category.

Every line is checked (column count, integer ids and time, the behaviour type, ASCII); a bad one
ends in a DataFileError naming the file and the line. Rows outside ``time_range`` (default: the
official window; the file holds a few stray timestamps) are dropped, counted and logged.
Data: https://tianchi.aliyun.com/dataset/649 (never commit it into this repository).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
from absl import logging
from ml_collections.config_dict import placeholder

from onetrans_jax.data.event_log import (add_pipeline_fields, DEFAULT_CHUNK_BYTES, DataFileError,
                                         EventLog, RequestConfig, TextStream, make_dataset)
from onetrans_jax.data.types import DataConfigError
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

FILE = 'UserBehavior.csv'
BEHAVIOURS = ('pv', 'fav', 'cart', 'buy')  # behavior_type values; their index is the code
PV, FAV, CART, BUY = range(4)
TASKS = (Task('click'), Task('cart', parent='click'), Task('buy', parent='click'))
SEQUENCES = BEHAVIOURS
BEIJING_UTC_OFFSET = 8 * 3600
# The official window, [2017-11-25 00:00, 2017-12-04 00:00) Beijing time, as unix seconds.
OFFICIAL_WINDOW = (1_511_539_200, 1_512_316_800)
_INT32_MAX = np.iinfo(np.int32).max
_WHAT = (f'download UserBehavior.csv.zip from https://tianchi.aliyun.com/dataset/649, unzip it and '
         f'point config.data.path at {FILE} or the directory holding it')


def taobao_data(path: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """``config.data`` for Taobao UserBehavior with every field; ``path``: the CSV or its directory."""
  d = ml_collections.ConfigDict()
  d.name = 'taobao'
  d.path = placeholder(str) if path is None else path  # UserBehavior.csv or its directory
  d.max_rows = placeholder(int)   # [D] None: every row; N: only the file's first N rows (a quick
                                  # run: the official file is grouped by user, so a prefix keeps
                                  # whole users with their histories)
  d.time_range = OFFICIAL_WINDOW  # [D] [start, end) unix seconds: rows outside are dropped and
                                  # counted; None keeps every row (times must then fit int32)
  d.label_window = 3600           # [D] seconds after a pv in which a cart / buy of the item labels
                                  # it: covers a browsing session (30 min gaps) and the detour to
                                  # the cart, while only views in the log's last hour see a cut
                                  # window (a day would bias the whole latest-day eval range)
  d.negatives = 1                 # [D] sampled non-clicked impressions per pv (0: click is always
                                  # 1 and its head learns nothing)
  d.negative_seed = 0             # seed of that sampling: the dataset is deterministic
  d.session_gap = 1800            # [D] seconds: 30 min without a pv ends a request (the usual web
                                  # session cut)
  d.num_candidates = 16           # [D] C: pvs and their negatives; longer sessions are split
  d.pv_len = 50                   # [D] ~89% of events are pvs, ~90 a user in 9 days
  d.fav_len = 10                  # [D] fav, cart and buy are 3%, 5.5% and 2% of events: a
  d.cart_len = 10                 # handful a user, 10 keeps nearly all of them
  d.buy_len = 10
  d.eval_fraction = 0.1           # [D] the latest 10% of requests (by start time) evaluate
  d.chunk_bytes = DEFAULT_CHUNK_BYTES  # text read at a time: bounds the reader's memory
  add_pipeline_fields(d, batch_size=256)
  d.update(overrides)
  return d


def build(cfg: ml_collections.ConfigDict):
  """pipeline.DATASETS builder of ``taobao``."""
  for name in ('pv_len', 'fav_len', 'cart_len', 'buy_len', 'chunk_bytes'):
    if int(cfg.get(name, 1)) < 1:
      raise ConfigError(f'config.data.{name} must be >= 1, got {cfg[name]}')
  for name in ('label_window', 'negatives'):
    if int(cfg.get(name, 0)) < 0:
      raise ConfigError(f'config.data.{name} must be >= 0, got {cfg[name]}')
  max_rows = cfg.get('max_rows')
  if max_rows is not None and int(max_rows) < 1:
    raise ConfigError(f'config.data.max_rows must be >= 1 or None (every row), got {max_rows}')
  time_range = cfg.get('time_range', OFFICIAL_WINDOW)
  if time_range is not None:
    if len(time_range) != 2 or int(time_range[0]) >= int(time_range[1]):
      raise ConfigError('config.data.time_range must be (start, end) unix seconds with start < '
                        f'end, or None, got {time_range}')
    time_range = (int(time_range[0]), int(time_range[1]))
  rcfg = RequestConfig(
      session_gap=int(cfg.get('session_gap', 1800)),
      num_candidates=int(cfg.get('num_candidates', 16)),
      max_len={s: int(cfg.get(f'{s}_len', 10)) for s in SEQUENCES},
      eval_fraction=float(cfg.get('eval_fraction', 0.1)),
      seq_side_features=('category',),
      utc_offset=BEIJING_UTC_OFFSET,
  )
  path = cfg.get('path')
  if not path:
    raise DataConfigError(f'config.data.path is not set; {_WHAT}')
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    path = os.path.join(path, FILE)
  elif not os.path.exists(path):
    raise DataConfigError(f'config.data.path={path!r} does not exist; {_WHAT}')
  log = load(path, max_rows=None if max_rows is None else int(max_rows), time_range=time_range,
             label_window=int(cfg.get('label_window', 3600)),
             negatives=int(cfg.get('negatives', 1)), seed=int(cfg.get('negative_seed', 0)),
             chunk_bytes=int(cfg.get('chunk_bytes', DEFAULT_CHUNK_BYTES)))
  return make_dataset(log, rcfg)


# ================================================================================ reading
@dataclasses.dataclass
class UserBehavior:
  """The kept rows as compact arrays in file order, and what the limits left out."""
  user: np.ndarray       # [N] int32 raw ids
  item: np.ndarray       # [N] int32
  category: np.ndarray   # [N] int32
  behavior: np.ndarray   # [N] int8 index into BEHAVIOURS
  time: np.ndarray       # [N] int32 unix seconds
  rows_read: int         # rows read from the file (max_rows caps it)
  out_of_range: int      # of those, rows dropped for a time outside time_range


def read(path: str, *, max_rows: int | None = None,
         time_range: tuple[int, int] | None = OFFICIAL_WINDOW,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> UserBehavior:
  """Stream ``UserBehavior.csv``: every row read is checked, rows outside ``time_range`` dropped.

  Peak memory: the kept rows (17 bytes each) plus one chunk of text and its parsed columns.
  """
  stream = TextStream(path, num_fields=5, encoding='ascii', what=_WHAT, chunk_bytes=chunk_bytes,
                      max_rows=max_rows)
  names = ('user id', 'item id', 'category id', 'behavior type', 'timestamp')
  # A behaviour wider than 4 characters is read (up to 8) to be named as unknown, not as long.
  spec = {j: (n, 'U8' if j == 3 else np.int64) for j, n in enumerate(names)}
  parts: dict[str, list[np.ndarray]] = {k: [] for k in ('user', 'item', 'category', 'behavior',
                                                        'time')}
  rows = dropped = 0
  for chunk in stream.chunks(spec):
    rows += len(chunk)
    for j in range(3):
      ids = chunk[j]
      chunk.check((ids < 0) | (ids > _INT32_MAX), lambda k, j=j, ids=ids: (
          f'{names[j]} {int(ids[k])} (field {j + 1}) is not a 32-bit id (0..{_INT32_MAX})'))
    code = np.full(len(chunk), -1, np.int8)
    for c, b in enumerate(BEHAVIOURS):
      code[chunk[3] == b] = c
    chunk.check(code < 0, lambda k: (f'behavior type {str(chunk[3][k])!r} (field 4) is not one '
                                     f'of {list(BEHAVIOURS)}; fix or delete this line'))
    ts = chunk[4]
    if time_range is None:
      chunk.check((ts < 0) | (ts > _INT32_MAX), lambda k: (
          f'timestamp {int(ts[k])} (field 5) is not a unix time in 1970..2038; set '
          'config.data.time_range to drop such rows'))
      keep = slice(None)
    else:
      keep = (ts >= time_range[0]) & (ts < time_range[1])
      dropped += int(keep.size - np.count_nonzero(keep))
    for k, col in (('user', chunk[0]), ('item', chunk[1]), ('category', chunk[2]),
                   ('time', ts)):
      parts[k].append(col[keep].astype(np.int32))
    parts['behavior'].append(code[keep])
  # One column at a time: the peak is the chunks of one column twice, not of the whole log.
  cols = {}
  for k in list(parts):
    cols[k] = np.concatenate(parts.pop(k)) if rows else np.zeros(0, np.int8 if k == 'behavior'
                                                                 else np.int32)
  # Dropped rows are said at WARNING (what launch.py shows), kept rows only at INFO.
  (logging.warning if dropped else logging.info)(
      '%s: read %d rows%s; dropped %d with a timestamp outside config.data.time_range=%s '
      '(set it to None to keep every row)', path, rows,
      '' if max_rows is None else f' (max_rows={max_rows})', dropped, time_range)
  return UserBehavior(**cols, rows_read=rows, out_of_range=dropped)


# ================================================================================ the log
def _dense(raw: np.ndarray) -> tuple[int, np.ndarray]:
  """Raw ids -> (count, dense ids 1..count in sorted raw order) in one sort."""
  uniq, inverse = np.unique(raw, return_inverse=True)
  return int(uniq.size), (inverse.reshape(-1) + 1).astype(np.int32)


def _followed_by(key: np.ndarray, time: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 window: int) -> np.ndarray:
  """For each event in ``src`` (indices): is there a ``dst`` event with the same key at a time in
  [t, t + window]? One sort and one binary search, no loop over events."""
  out = np.zeros(src.size, np.bool_)
  if src.size == 0 or dst.size == 0:
    return out
  t0 = int(time.min())
  keys = np.unique(key[dst])  # rank < 2**31, time - t0 < 2**32: one int64 sorts by (key, time)
  code = (np.searchsorted(keys, key[dst]).astype(np.int64) << 32) + (time[dst] - t0)
  code.sort()
  rank = np.minimum(np.searchsorted(keys, key[src]), keys.size - 1)
  match = keys[rank] == key[src]
  lo = (rank.astype(np.int64) << 32) + (time[src] - t0)
  j = np.minimum(np.searchsorted(code, lo, side='left'), code.size - 1)
  hit = code[j]
  return match & (hit >= lo) & (hit >> 32 == rank) & ((hit & 0xFFFFFFFF) <= time[src] - t0 + window)


def load(path: str, *, max_rows: int | None = None,
         time_range: tuple[int, int] | None = OFFICIAL_WINDOW, label_window: int = 3600,
         negatives: int = 1, seed: int = 0,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> EventLog:
  """Read ``UserBehavior.csv`` into the EventLog: pvs (+ sampled negatives) are impressions."""
  raw = read(path, max_rows=max_rows, time_range=time_range, chunk_bytes=chunk_bytes)
  if raw.user.size == 0:
    raise DataFileError(f'{path}: no rows left to rank ({raw.rows_read} read, {raw.out_of_range} '
                        f'outside config.data.time_range={time_range}); {_WHAT}')
  num_users, user = _dense(raw.user)
  num_items, item = _dense(raw.item)
  num_cats, cat = _dense(raw.category)
  item_category = np.zeros(num_items + 1, np.int32)
  item_category[item] = cat  # one category per item in this dataset (the last row's if not)
  behavior, time = raw.behavior, raw.time.astype(np.int64)
  del raw, cat

  pv = np.flatnonzero(behavior == PV)
  key = user.astype(np.int64) * (num_items + 1) + item
  labels = np.zeros((pv.size, len(TASKS)), np.float32)
  labels[:, 0] = 1.0
  for col, code in ((1, CART), (2, BUY)):
    labels[:, col] = _followed_by(key, time, pv, np.flatnonzero(behavior == code), label_window)
  del key

  # Sampled negatives: the n-th pv's negatives are drawn from the items of uniformly drawn pvs.
  rng = np.random.default_rng(seed)
  src = np.repeat(pv, negatives)
  neg_item = item[pv[rng.integers(0, pv.size, src.size)]] if pv.size else item[:0]
  keep = neg_item != item[src]
  src, neg_item = src[keep], neg_item[keep]
  if not keep.all():  # a draw that hit the pv's own item is no negative
    logging.info('%s: %d of %d sampled negatives dropped (the viewed item itself)', path,
                 int(keep.size - keep.sum()), keep.size)

  n, m = behavior.size, src.size
  all_labels = np.zeros((n + m, len(TASKS)), np.float32)
  all_labels[pv] = labels
  in_sequence = {name: np.concatenate([behavior == c, np.zeros(m, np.bool_)])
                 for c, name in enumerate(SEQUENCES)}
  is_impression = np.concatenate([behavior == PV, np.ones(m, np.bool_)])
  logging.info('%s: %d events (%d pv, %d sampled negatives), %d users, %d items, %d categories',
               path, n, pv.size, m, num_users, num_items, num_cats)
  return EventLog(
      user=np.concatenate([user, user[src]]), item=np.concatenate([item, neg_item]),
      time=np.concatenate([time, time[src]]), labels=all_labels, is_impression=is_impression,
      in_sequence=in_sequence, tasks=TASKS, num_users=num_users, num_items=num_items,
      item_cat={'category': item_category},
  )
