"""KuaiRand (Kuaishou; Pure, 1K, 27K) in its official file layout -> ranking requests.

Files (in ``config.data.path``, or its ``data/`` folder as the download unpacks):
  log_standard_4_08_to_4_21_<v>.csv, log_standard_4_22_to_5_08_<v>.csv (27K ships each in
  ``_part1``, ``_part2`` pieces: both layouts are read), optionally log_random_4_22_to_5_08_<v>.csv;
  user_features_<v>.csv; video_features_basic_<v>.csv. CSV with a header line; columns are found
  by name, so extra or reordered columns are fine and a missing one is named. Every file is
  streamed in chunks (event_log.TextStream): the 27K logs (23 GB, 322M rows) become compact arrays
  (4 + 4 + 8 + 1 bytes a row), never text in memory.

Every log row is a real exposure in the feed, so every row is an impression. Tasks ``click``,
``like``, ``long_view`` are the row's is_click, is_like, long_view flags. [D] All three are
unconditional: each flag is observed on every exposure, and a like can come without a click (in
the single-column feed is_click means a "valid play" of >= 7 s, and a like may come sooner), so a
click-conditional like would drop real positives; ``conditional_tasks=True`` makes like and
long_view conditional on click (``Task.parent``) instead, for funnel-style training.

Features (ids dense, 0 = padding / unknown / missing):
  request: user_id; user_active_degree, follow / fans / friend_user_num_range,
    register_days_range, is_lowactive_period, is_live_streamer, is_video_author,
    onehot_feat0..17 (categorical);
    log1p of follow_user_num, fans_user_num, friend_user_num, register_days (numeric); hour and
    weekday of the request in Beijing time (UTC+8, where Kuaishou logged it);
  sequences: ``clicked``, ``liked``, ``long_viewed``: the user's latest such videos strictly before
    the request, each with its first tag and time;
  candidate: item_id (video), author, video_type, upload_type, video_tag and video_tag_2 (the
    first two tags of ``tag``, one tag vocabulary) categorical; log1p of video_duration in seconds.
String categories are numbered in sorted order of the distinct values of the logged users /
videos (ids 1..n), authors by sorted author_id; a video or user missing from its feature file, or
an empty value, gets 0.
Data: https://kuairand.com (never commit it into this repository).
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np
from absl import logging
from ml_collections.config_dict import placeholder

from onetrans_jax.data.event_log import (add_pipeline_fields, DEFAULT_CHUNK_BYTES, Chunk,
                                         DataFileError, EventLog, RequestConfig, TextStream,
                                         lookup_ids, make_dataset)
from onetrans_jax.data.types import DataConfigError
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

VARIANTS = ('pure', '1k', '27k')
TASK_NAMES = ('click', 'like', 'long_view')
SEQUENCES = ('clicked', 'liked', 'long_viewed')  # events whose task flag (same order) is 1
STANDARD_LOGS = ('log_standard_4_08_to_4_21', 'log_standard_4_22_to_5_08')
RANDOM_LOG = 'log_random_4_22_to_5_08'
LOG_COLUMNS = ('user_id', 'video_id', 'time_ms', 'is_click', 'is_like', 'long_view')
USER_STRINGS = ('user_active_degree', 'follow_user_num_range', 'fans_user_num_range',
                'friend_user_num_range', 'register_days_range')
USER_FLAGS = ('is_lowactive_period', 'is_live_streamer', 'is_video_author')
USER_COUNTS = ('follow_user_num', 'fans_user_num', 'friend_user_num', 'register_days')
ONEHOT = tuple(f'onehot_feat{k}' for k in range(18))
VIDEO_STRINGS = ('video_type', 'upload_type')
VIDEO_COLUMNS = ('video_id', 'author_id') + VIDEO_STRINGS + ('video_duration', 'tag')
TAG_SLOTS = 2  # [D] tags kept per video: most videos carry one or two
BEIJING_UTC_OFFSET = 8 * 3600
_INT32_MAX = np.iinfo(np.int32).max
# Fixed string widths (characters): a longer value is an error naming its line, never truncated.
_WIDTH = {'str': 64, 'num': 32, 'tag': 256}
_WHAT = ('download KuaiRand-{V} from https://kuairand.com, unpack it and point config.data.path at '
         'its directory (or its data/ folder)')


def kuairand_data(variant: str = 'pure', path: str | None = None,
                  **overrides) -> ml_collections.ConfigDict:
  """``config.data`` for KuaiRand with every field; ``path``: the unpacked KuaiRand directory."""
  if variant not in VARIANTS:
    raise ConfigError(f'KuaiRand variant {variant!r}: choose one of {VARIANTS}')
  d = ml_collections.ConfigDict()
  d.name = 'kuairand'
  d.variant = variant             # 'pure', '1k' or '27k': the file suffix
  d.path = placeholder(str) if path is None else path  # KuaiRand-<V> or its data/ folder
  d.include_random = False        # [D] also read log_random_4_22_to_5_08 (uniformly random
                                  # exposures): a different policy than the feed being ranked
  d.conditional_tasks = False     # [D] like / long_view unconditional (see the module docstring)
  d.max_rows = placeholder(int)   # [D] None: every row; N: the first N rows of each log file
  d.session_gap = 1800            # [D] seconds: 30 min without an exposure ends a request
  d.num_candidates = 16           # [D] C: longer feed sessions are split into requests
  d.clicked_len = 50              # [D] clicks and long views are common (a third or more of
  d.long_viewed_len = 50          # exposures), likes rare (~1-2%): shorter
  d.liked_len = 20
  d.eval_fraction = 0.1           # [D] the latest 10% of requests (by start time) evaluate
  d.chunk_bytes = DEFAULT_CHUNK_BYTES  # text read at a time: bounds the reader's memory
  add_pipeline_fields(d, batch_size=256)
  d.update(overrides)
  return d


def build(cfg: ml_collections.ConfigDict):
  """pipeline.DATASETS builder of ``kuairand``."""
  variant = str(cfg.get('variant', 'pure')).lower()
  if variant not in VARIANTS:
    raise DataConfigError(f'config.data.variant={variant!r}: choose one of {VARIANTS}')
  for name in ('clicked_len', 'liked_len', 'long_viewed_len', 'chunk_bytes'):
    if int(cfg.get(name, 1)) < 1:
      raise ConfigError(f'config.data.{name} must be >= 1, got {cfg[name]}')
  max_rows = cfg.get('max_rows')
  if max_rows is not None and int(max_rows) < 1:
    raise ConfigError(f'config.data.max_rows must be >= 1 or None (every row), got {max_rows}')
  rcfg = RequestConfig(
      session_gap=int(cfg.get('session_gap', 1800)),
      num_candidates=int(cfg.get('num_candidates', 16)),
      max_len={s: int(cfg.get(f'{s}_len', 20)) for s in SEQUENCES},
      eval_fraction=float(cfg.get('eval_fraction', 0.1)),
      seq_side_features=('video_tag',),
      utc_offset=BEIJING_UTC_OFFSET,
  )
  what = _WHAT.format(V={'pure': 'Pure', '1k': '1K', '27k': '27K'}[variant])
  path = cfg.get('path')
  if not path:
    raise DataConfigError(f'config.data.path is not set; {what}')
  path = os.path.expanduser(str(path))
  if not os.path.isdir(path):
    raise DataConfigError(f'config.data.path={path!r} is not a directory; {what}')
  log = load(path, variant, include_random=bool(cfg.get('include_random', False)),
             conditional_tasks=bool(cfg.get('conditional_tasks', False)),
             max_rows=None if max_rows is None else int(max_rows),
             chunk_bytes=int(cfg.get('chunk_bytes', DEFAULT_CHUNK_BYTES)))
  return make_dataset(log, rcfg)


# ================================================================================ files
def _data_dir(path: str, variant: str) -> str:
  """``path`` itself, or its ``data/`` folder where the download keeps the CSVs."""
  probe = f'user_features_{variant}.csv'
  sub = os.path.join(path, 'data')
  if not os.path.exists(os.path.join(path, probe)) and os.path.exists(os.path.join(sub, probe)):
    return sub
  return path


def log_files(path: str, base: str, variant: str, what: str) -> list[str]:
  """``<base>_<v>.csv``, or its ``_part1``, ``_part2``, ... pieces in order (27K)."""
  whole = os.path.join(path, f'{base}_{variant}.csv')
  if os.path.exists(whole):
    return [whole]
  pattern = re.compile(re.escape(f'{base}_{variant}_part') + r'(\d+)\.csv$')
  parts = sorted((int(m.group(1)), name) for name in os.listdir(path)
                 if (m := pattern.match(name)))
  if not parts:
    raise DataFileError(f'{whole}: file not found (nor its _part1, _part2, ... pieces); {what}')
  return [os.path.join(path, name) for _, name in parts]


# ================================================================================ values
class _Vocab:
  """Strings -> ids, streamed: provisional ids in order of first sight, then ``remap`` renumbers
  them in sorted order of the values, so ids never depend on the chunk size or the row order."""

  def __init__(self):
    self.ids: dict[str, int] = {}

  def encode(self, values: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(np.strings.strip(values), return_inverse=True)
    codes = np.array([0 if v == '' else self.ids.setdefault(v, len(self.ids) + 1)
                      for v in uniq.tolist()], np.int32)  # a loop over distinct values only
    return codes[inverse.reshape(-1)] if values.size else np.zeros(0, np.int32)

  def remap(self) -> np.ndarray:
    """[n + 1] provisional id -> final id (0 stays 0)."""
    order = sorted(self.ids, key=str)
    perm = np.zeros(len(self.ids) + 1, np.int32)
    perm[[self.ids[v] for v in order]] = np.arange(1, len(order) + 1)
    return perm


def _numbers(chunk: Chunk, column: np.ndarray, name: str, *, integer: bool,
             minimum: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """A string column of ``chunk`` holding optional numbers (empty = missing; pandas writes ints
  with gaps as ``4.0``) -> (float64 values, present mask). Non-numbers, fractions and values below
  ``minimum`` name their line.
  """
  text = np.strings.strip(column)
  present = text != ''
  values = np.zeros(text.shape, np.float64)
  try:
    values[present] = text[present].astype(np.float64)
  except ValueError:
    for k in np.flatnonzero(present):  # only on the failure path: find the first bad line
      try:
        float(text[k])
      except ValueError:
        raise chunk.error(int(k), f'{name} is {str(text[k])!r}, not a number; fix or delete this '
                                  'line') from None
  bad = present & ~np.isfinite(values)
  if integer:
    bad |= present & (values != np.round(values))
  chunk.check(bad | (present & (values < minimum)), lambda k: (
      f'{name} is {str(text[k])!r}, not {"an integer" if integer else "a number"} >= '
      f'{minimum:g}; fix or delete this line'))
  return values, present


def _codes(chunk: Chunk, column: np.ndarray, name: str) -> np.ndarray:
  """Optional non-negative integer codes -> ids value + 1 (0: missing)."""
  values, present = _numbers(chunk, column, name, integer=True)
  chunk.check(values > _INT32_MAX - 1, lambda k: f'{name} {values[k]:.0f} is too large')
  return np.where(present, values + 1, 0).astype(np.int32)


def _log1p(chunk: Chunk, column: np.ndarray, name: str, scale: float = 1.0) -> np.ndarray:
  """Optional non-negative amounts (counts, durations) -> log1p(value * scale); missing -> 0."""
  values, _ = _numbers(chunk, column, name, integer=False)
  return np.log1p(values * scale).astype(np.float32)


# ================================================================================ loading
def read_logs(files: list[str], what: str, max_rows: int | None,
              chunk_bytes: int) -> dict[str, np.ndarray]:
  """Stream the log files: raw user / video ids, time_ms and the three flags as bits."""
  parts: dict[str, list[np.ndarray]] = {'user': [], 'video': [], 'time_ms': [], 'flags': []}
  for file in files:
    stream = TextStream(file, header=True, quotechar='"', encoding='utf-8', what=what,
                        chunk_bytes=chunk_bytes, max_rows=max_rows)
    col = stream.columns(LOG_COLUMNS)
    for chunk in stream.chunks({col[n]: (n, np.int64) for n in LOG_COLUMNS}):
      for n in ('user_id', 'video_id'):
        ids = chunk[col[n]]
        chunk.check((ids < 0) | (ids > _INT32_MAX), lambda k, n=n, ids=ids: (
            f'{n} {int(ids[k])} is not a 32-bit id (0..{_INT32_MAX})'))
      ms = chunk[col['time_ms']]
      chunk.check((ms < 0) | (ms // 1000 > _INT32_MAX), lambda k: (
          f'time_ms {int(ms[k])} is not a unix time in milliseconds (1970..2038)'))
      flags = np.zeros(len(chunk), np.int8)
      for bit, n in enumerate(LOG_COLUMNS[3:]):
        v = chunk[col[n]]
        chunk.check((v != 0) & (v != 1), lambda k, n=n, v=v: f'{n} is {int(v[k])}, not 0 or 1')
        flags |= (v << bit).astype(np.int8)
      parts['user'].append(chunk[col['user_id']].astype(np.int32))
      parts['video'].append(chunk[col['video_id']].astype(np.int32))
      parts['time_ms'].append(chunk[col['time_ms']].copy())
      parts['flags'].append(flags)
  out = {}
  for k in list(parts):  # one column at a time: the peak is one column twice, not the whole log
    chunks = parts.pop(k)
    out[k] = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
  return out


def read_users(file: str, users: np.ndarray, what: str, chunk_bytes: int
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """user_features -> (user_cat, user_num) side tables by dense user id (row 0 = padding)."""
  stream = TextStream(file, header=True, quotechar='"', encoding='utf-8', what=what,
                      chunk_bytes=chunk_bytes)
  names = ('user_id',) + USER_STRINGS + USER_FLAGS + USER_COUNTS + ONEHOT
  col = stream.columns(names)
  spec = {col['user_id']: ('user_id', np.int64)}
  spec.update({col[n]: (n, f'U{_WIDTH["str" if n in USER_STRINGS else "num"]}')
               for n in names[1:]})
  n = users.size + 1
  cat = {f: np.zeros(n, np.int32) for f in USER_STRINGS + USER_FLAGS + ONEHOT}
  num = {f: np.zeros(n, np.float32) for f in USER_COUNTS}
  vocabs = {f: _Vocab() for f in USER_STRINGS}
  seen = np.zeros(n, np.bool_)
  for chunk in stream.chunks(spec):
    dense = lookup_ids(users, chunk[col['user_id']])
    _check_unique(chunk, chunk[col['user_id']], dense, seen, 'user_id')
    rows = dense > 0  # users who never appear in the logs are skipped
    for f in USER_STRINGS:
      cat[f][dense[rows]] = vocabs[f].encode(chunk[col[f]][rows])
    for f in USER_FLAGS:
      codes = _codes(chunk, chunk[col[f]], f)
      chunk.check(codes > 2, lambda k, f=f, c=codes: f'{f} is {c[k] - 1}, not 0 or 1')
      cat[f][dense[rows]] = codes[rows]
    for f in ONEHOT:
      cat[f][dense[rows]] = _codes(chunk, chunk[col[f]], f)[rows]
    for f in USER_COUNTS:
      num[f][dense[rows]] = _log1p(chunk, chunk[col[f]], f)[rows]
  for f, vocab in vocabs.items():
    cat[f] = vocab.remap()[cat[f]]
  return cat, num


def _check_unique(chunk: Chunk, raw: np.ndarray, dense: np.ndarray, seen: np.ndarray,
                  name: str) -> None:
  """Each id on one line only: ``seen`` holds the ids of earlier chunks; marks this chunk's."""
  rows = np.flatnonzero(dense > 0)
  d = dense[rows]
  order = np.argsort(d, kind='stable')
  later = np.zeros(rows.size, np.bool_)
  later[order[1:]] = d[order[1:]] == d[order[:-1]]  # the second line of a pair is the duplicate
  bad = np.zeros(len(chunk), np.bool_)
  bad[rows] = later | seen[d]
  chunk.check(bad, lambda k: f'{name} {int(raw[k])} is listed twice; each {name} must appear '
                             'on one line only')
  seen[d] = True


def read_videos(file: str, videos: np.ndarray, what: str, chunk_bytes: int
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """video_features_basic -> (item_cat, item_num) side tables by dense video id."""
  stream = TextStream(file, header=True, quotechar='"', encoding='utf-8', what=what,
                      chunk_bytes=chunk_bytes)
  col = stream.columns(VIDEO_COLUMNS)
  spec = {col['video_id']: ('video_id', np.int64), col['tag']: ('tag', f'U{_WIDTH["tag"]}'),
          col['author_id']: ('author_id', f'U{_WIDTH["num"]}'),
          col['video_duration']: ('video_duration', f'U{_WIDTH["num"]}')}
  spec.update({col[f]: (f, f'U{_WIDTH["str"]}') for f in VIDEO_STRINGS})
  n = videos.size + 1
  author = np.full(n, -1, np.int64)
  cat = {f: np.zeros(n, np.int32) for f in VIDEO_STRINGS}
  tags = np.zeros((n, TAG_SLOTS), np.int32)
  duration = np.zeros(n, np.float32)
  vocabs = {f: _Vocab() for f in VIDEO_STRINGS}
  seen = np.zeros(n, np.bool_)
  for chunk in stream.chunks(spec):
    dense = lookup_ids(videos, chunk[col['video_id']])
    _check_unique(chunk, chunk[col['video_id']], dense, seen, 'video_id')
    rows = dense > 0  # videos never shown in the logs are skipped
    d = dense[rows]
    a, present = _numbers(chunk, chunk[col['author_id']], 'author_id', integer=True)
    author[d] = np.where(present, a, -1)[rows].astype(np.int64)
    for f in VIDEO_STRINGS:
      cat[f][d] = vocabs[f].encode(chunk[col[f]][rows])
    duration[d] = _log1p(chunk, chunk[col['video_duration']], 'video_duration', 1e-3)[rows]
    rest = chunk[col['tag']]
    for slot in range(TAG_SLOTS):  # "12,65" -> 12, 65: split on the comma, vectorised
      head, _, rest = np.strings.partition(rest, ',')
      tags[d, slot] = _codes(chunk, head, 'tag')[rows]
  known = author >= 0
  author_ids = np.zeros(n, np.int32)
  author_ids[known] = np.unique(author[known], return_inverse=True)[1].reshape(-1) + 1
  item_cat = {'author': author_ids}
  item_cat.update({f: vocabs[f].remap()[cat[f]] for f in VIDEO_STRINGS})
  item_cat.update({'video_tag' if s == 0 else f'video_tag_{s + 1}': tags[:, s]
                   for s in range(TAG_SLOTS)})
  return item_cat, {'video_duration': duration}


def load(path: str, variant: str = 'pure', *, include_random: bool = False,
         conditional_tasks: bool = False, max_rows: int | None = None,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> EventLog:
  """Read the logs, user_features and video_features_basic of a KuaiRand variant."""
  what = _WHAT.format(V={'pure': 'Pure', '1k': '1K', '27k': '27K'}[variant])
  path = _data_dir(path, variant)
  files = [f for base in STANDARD_LOGS for f in log_files(path, base, variant, what)]
  if include_random:
    files += log_files(path, RANDOM_LOG, variant, what)
  user_file = os.path.join(path, f'user_features_{variant}.csv')
  video_file = os.path.join(path, f'video_features_basic_{variant}.csv')
  for f in (user_file, video_file):  # fail before the long read of the logs
    if not os.path.exists(f):
      raise DataFileError(f'{f}: file not found; {what}')
  raw = read_logs(files, what, max_rows, chunk_bytes)
  if raw['user'].size == 0:
    raise DataFileError(f'{files[0]}: the logs hold no rows; {what}')
  # Time order (ms) first: the request builder's stable sort by (user, second) then keeps
  # same-second exposures in the order they were shown.
  t = raw['time_ms']
  if np.any(t[1:] < t[:-1]):
    order = np.argsort(t, kind='stable')
    raw = {k: v[order] for k, v in raw.items()}
    del order
  users, user = np.unique(raw.pop('user'), return_inverse=True)
  videos, item = np.unique(raw.pop('video'), return_inverse=True)
  user = (user.reshape(-1) + 1).astype(np.int32)
  item = (item.reshape(-1) + 1).astype(np.int32)
  flags = raw.pop('flags')
  labels = np.stack([(flags >> bit) & 1 for bit in range(3)], -1).astype(np.float32)
  user_cat, user_num = read_users(user_file, users.astype(np.int64), what, chunk_bytes)
  item_cat, item_num = read_videos(video_file, videos.astype(np.int64), what, chunk_bytes)
  tasks = tuple(Task(n, parent='click' if conditional_tasks and n != 'click' else None)
                for n in TASK_NAMES)
  logging.info('%s: %d exposures from %d log file(s), %d users, %d videos', path, user.size,
               len(files), users.size, videos.size)
  return EventLog(
      user=user, item=item, time=raw.pop('time_ms') // 1000, labels=labels,
      is_impression=np.ones(user.size, np.bool_),
      in_sequence={s: labels[:, j] == 1 for j, s in enumerate(SEQUENCES)},
      tasks=tasks, num_users=int(users.size), num_items=int(videos.size),
      item_cat=item_cat, item_num=item_num, user_cat=user_cat, user_num=user_num,
      vocab={'video_tag': 'tag', 'video_tag_2': 'tag'},
  )
