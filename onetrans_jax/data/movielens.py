"""MovieLens 100K and 1M (GroupLens) in their official file layouts -> ranking requests.

Each rating is an impression of its movie to its user; a request is one user's ratings within a
session (event_log.py). Tasks: ``like`` = rating >= 4 and ``love`` = rating 5. ``love`` is
conditional on ``like`` (``Task.parent``): a 5 is always also a >= 4, so love is a later stage of
the same funnel, exactly like click -> cart, and P(love | like) separates the 4s from the 5s among
the liked movies instead of re-learning "liked at all" a second time.

Features (ids dense, 0 = padding / unknown; one vocabulary each unless shared):
  request: user_id, age (7 GroupLens age groups), gender, occupation, zip_region (first zip digit,
    or "not a US zip"), hour and weekday of the request (UTC);
  sequences: ``rated`` (every rated movie) and ``liked`` (rated >= 4), each event with its primary
    genre and time, strictly before the request;
  candidate: item_id, item_genre / item_genre_2 / item_genre_3 (the movie's first three genres in
    GroupLens' genre order, one shared genre vocabulary), item_year (release-year bucket).

Every file is read strictly (event_log.read_table): a missing file, a wrong field count, a
non-numeric id, a broken encoding, a rating outside 1..5, a duplicate or unknown user / movie end in
a DataFileError naming the file, the line and the fix.
Data: https://grouplens.org/datasets/movielens/ (never commit it into this repository).
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np
from absl import logging
from ml_collections.config_dict import placeholder

from onetrans_jax.data.event_log import (add_pipeline_fields, DataFileError, EventLog,
                                         RequestConfig, Table, dense_ids, lookup_ids, make_dataset,
                                         read_table)
from onetrans_jax.data.types import DataConfigError
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

VARIANTS = ('100k', '1m')
DUPLICATE_MODES = ('error', 'drop')
TASKS = (Task('like'), Task('love', parent='like'))
SEQUENCES = ('rated', 'liked')
LIKE_RATING, LOVE_RATING = 4, 5
# GroupLens' genres in u.genre order; 1M uses the same names without 'unknown'.
# Genre id = index + 1, so both variants share one genre vocabulary.
GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy', 'Crime',
          'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'Musical', 'Mystery', 'Romance',
          'Sci-Fi', 'Thriller', 'War', 'Western')
GENRE_SLOTS = 3  # [D] genres kept per movie: 96% of the 100K movies have at most 3
# 100K's occupations (the list of its u.occupation, fixed, so the file is not needed); 1M codes 21
# occupations 0..20 in its README. Both map to ids 1..21 (one vocabulary size, different lists).
OCCUPATIONS_100K = ('administrator', 'artist', 'doctor', 'educator', 'engineer', 'entertainment',
                    'executive', 'healthcare', 'homemaker', 'lawyer', 'librarian', 'marketing',
                    'none', 'other', 'programmer', 'retired', 'salesman', 'scientist', 'student',
                    'technician', 'writer')
NUM_OCCUPATIONS_1M = 21
# 1M's age codes (1: under 18, 18: 18-24, 25: 25-34, 35: 35-44, 45: 45-49, 50: 50-55, 56: 56+);
# 100K's exact ages are bucketed onto the same 7 groups so both variants share the vocabulary.
AGE_CODES_1M = (1, 18, 25, 35, 45, 50, 56)
_AGE_EDGES = np.array(AGE_CODES_1M[1:])
# [D] release-year buckets: coarse for old films, yearly where the mass is (75% of the 100K
# movies are from 1993-1998). Bucket id = 1 + number of edges <= year; 0 = unknown year.
YEAR_EDGES = np.array([1940, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998,
                       1999, 2000])
GENDERS = ('M', 'F')
# [D] zip_region: the first zip digit (10 US regions, ~94 users each in 100K; 3 digits would
# leave ~1 user per value), id 1..10; ZIP_OTHER for a non-US (e.g. Canadian) code.
ZIP_OTHER = 11
VOCAB_SIZES = {'genre': len(GENRES) + 1, 'year_bucket': len(YEAR_EDGES) + 2,
               'age': len(AGE_CODES_1M) + 1, 'gender': len(GENDERS) + 1,
               'occupation': NUM_OCCUPATIONS_1M + 1, 'zip_region': ZIP_OTHER + 1}

_SOURCE = ('download ml-{v}.zip from https://grouplens.org/datasets/movielens/, unzip it and point '
           'config.data.path at the directory holding {files}')
_FILES = {'100k': ('u.data', 'u.user', 'u.item', 'u.genre'),
          '1m': ('ratings.dat', 'users.dat', 'movies.dat')}


def movielens_data(variant: str = '100k', path: str | None = None,
                   **overrides) -> ml_collections.ConfigDict:
  """``config.data`` for MovieLens with every field; ``path``: the unzipped GroupLens directory."""
  if variant not in VARIANTS:
    raise ConfigError(f'MovieLens variant {variant!r}: choose one of {VARIANTS}')
  d = ml_collections.ConfigDict()
  d.name = f'movielens_{variant}'
  d.path = placeholder(str) if path is None else path  # the directory of the GroupLens files
  d.session_gap = 3600            # [D] seconds: MovieLens users rate in bursts (the web UI shows
                                  # pages of movies); an hour of silence ends a request
  d.num_candidates = 16           # [D] C: a burst of more than 16 ratings is split into requests
  d.rated_len = 50                # [D] the median 100K request has 65 earlier ratings (p25: 20)
  d.liked_len = 30                # [D] and 38 earlier likes: 55% of ratings are >= 4
  d.eval_fraction = 0.1           # [D] the latest 10% of requests (by start time) evaluate
  d.user_id_feature = True        # the user id as a request feature; False: users are known only
                                  # by demographics, history and statistics (most evaluation users
                                  # are unseen in training under the chronological split)
  d.seq_rating = False            # True: every history event carries the rating given (1..5)
                                  # as a side feature; False: the item and its genre only (the
                                  # 'liked' sequence alone says which were rated >= 4)
  d.history_stats = False         # True: leak-free user / item counts and smoothed positive rates
                                  # before each request as numeric features (event_log.py)
  d.stats_prior = 10.0            # pseudo-impressions of those rates
  d.stats_scale = 'raw'           # 'zscore': those statistics standardised by the training
                                  # range's mean and std (event_log.standardise_statistics)
  d.duplicate_rows = 'error'      # a rating line repeating an earlier one exactly: 'error' (names
                                  # them) or 'drop' (keeps the first, says how many went)
  add_pipeline_fields(d, batch_size=64)
  d.update(overrides)
  return d


def _request_config(cfg: ml_collections.ConfigDict) -> RequestConfig:
  for name in ('rated_len', 'liked_len'):
    if int(cfg.get(name, 1)) < 1:
      raise ConfigError(f'config.data.{name} must be >= 1, got {cfg[name]}')
  return RequestConfig(
      session_gap=int(cfg.get('session_gap', 3600)),
      num_candidates=int(cfg.get('num_candidates', 16)),
      max_len={'rated': int(cfg.get('rated_len', 50)), 'liked': int(cfg.get('liked_len', 30))},
      eval_fraction=float(cfg.get('eval_fraction', 0.1)),
      seq_side_features=('item_genre',),
      seq_event_features=('rating',) if bool(cfg.get('seq_rating', False)) else (),
      user_id_feature=bool(cfg.get('user_id_feature', True)),
      history_stats=bool(cfg.get('history_stats', False)),
      stats_prior=float(cfg.get('stats_prior', 10.0)),
      stats_scale=str(cfg.get('stats_scale', 'raw')),
  )


def _data_dir(cfg: ml_collections.ConfigDict, variant: str) -> str:
  path = cfg.get('path')
  how = _SOURCE.format(v=variant.lower(), files=', '.join(_FILES[variant]))
  if not path:
    raise DataConfigError(f'config.data.path is not set; {how}')
  path = os.path.expanduser(str(path))
  if not os.path.isdir(path):
    raise DataConfigError(f'config.data.path={path!r} is not a directory; {how}')
  return path


def _duplicates(cfg: ml_collections.ConfigDict) -> str:
  mode = str(cfg.get('duplicate_rows', 'error'))
  if mode not in DUPLICATE_MODES:
    raise ConfigError(f'config.data.duplicate_rows={mode!r}: use one of {DUPLICATE_MODES}')
  return mode


def build_100k(cfg: ml_collections.ConfigDict):
  """pipeline.DATASETS builder of ``movielens_100k``."""
  rcfg = _request_config(cfg)
  return make_dataset(load_100k(_data_dir(cfg, '100k'), _duplicates(cfg)), rcfg)


def build_1m(cfg: ml_collections.ConfigDict):
  """pipeline.DATASETS builder of ``movielens_1m``."""
  rcfg = _request_config(cfg)
  return make_dataset(load_1m(_data_dir(cfg, '1m'), _duplicates(cfg)), rcfg)


# ================================================================================ shared parts
def _first_bad(table: Table, bad: np.ndarray, what: str) -> None:
  """Raise naming the first row where ``bad`` holds (vectorised check, one message)."""
  k = np.flatnonzero(bad)
  if k.size:
    raise table.error(int(k[0]), what)


def _ratings_log(ratings: Table, users: np.ndarray, items: np.ndarray, user_file: str,
                 item_file: str, user_cat: dict[str, np.ndarray],
                 item_cat: dict[str, np.ndarray], duplicate_rows: str = 'error') -> EventLog:
  """Ratings (user, item, rating, unix time columns) -> the EventLog, both variants."""
  raw_user, raw_item = ratings.ints(0, 'user id'), ratings.ints(1, 'movie id')
  rating, ts = ratings.ints(2, 'rating'), ratings.ints(3, 'timestamp')
  _check_cut_short(ratings, ts)
  keep = _unique_rows(ratings, np.stack([raw_user, raw_item, rating, ts], -1), duplicate_rows)
  if keep is not None:
    raw_user, raw_item, rating, ts = raw_user[keep], raw_item[keep], rating[keep], ts[keep]
    ratings = Table(ratings.path, [ratings.rows[k] for k in keep], ratings.lines[keep])
  out = (rating < 1) | (rating > 5)
  if out.any():
    k = int(np.flatnonzero(out)[0])
    raise ratings.error(k, f'rating {int(rating[k])} is outside 1..5; fix or delete this line')
  user, item = lookup_ids(users, raw_user), lookup_ids(items, raw_item)
  for dense, raw, name, file in ((user, raw_user, 'user', user_file),
                                 (item, raw_item, 'movie', item_file)):
    if np.any(dense == 0):
      k = int(np.flatnonzero(dense == 0)[0])
      raise ratings.error(k, f'{name} id {int(raw[k])} is not listed in {file}; add it there or '
                             'delete this rating (were the files taken from the same download?)')
  if ratings.rows and (ts.min() < 0 or ts.max() > np.iinfo(np.int32).max):
    k = int(np.flatnonzero((ts < 0) | (ts > np.iinfo(np.int32).max))[0])
    raise ratings.error(k, f'timestamp {int(ts[k])} is not a unix time in seconds (1970..2038)')
  like, love = rating >= LIKE_RATING, rating >= LOVE_RATING
  n = len(ratings)
  return EventLog(
      user=user, item=item, time=ts.astype(np.int64),
      labels=np.stack([like, love], -1).astype(np.float32),
      is_impression=np.ones(n, np.bool_),
      in_sequence={'rated': np.ones(n, np.bool_), 'liked': like},
      tasks=TASKS, num_users=int(users.size), num_items=int(items.size),
      item_cat=item_cat, user_cat=user_cat,
      vocab={'item_genre': 'genre', 'item_genre_2': 'genre', 'item_genre_3': 'genre',
             'item_year': 'year_bucket', 'age': 'age', 'gender': 'gender',
             'occupation': 'occupation', 'zip_region': 'zip_region'},
      vocab_sizes=dict(VOCAB_SIZES, rating=6),
      event_cat={'rating': rating.astype(np.int32)},
  )


def _check_cut_short(ratings: Table, ts: np.ndarray) -> None:
  """A file whose last line has no newline may have been cut short; its last field, the
  timestamp, would then miss digits and still parse. Refuse a last timestamp outside the other
  lines' range widened by that range's span (a real last rating lies within it)."""
  if not ratings.unterminated or len(ratings) < 2:
    return
  lo, hi = int(ts[:-1].min()), int(ts[:-1].max())
  span = max(hi - lo, 86_400)
  if not lo - span <= int(ts[-1]) <= hi + span:
    raise ratings.error(
        len(ratings) - 1, f'timestamp {int(ts[-1])} is outside the range of the other lines '
        f'({lo}..{hi}) and the file ends without a newline: it looks cut short; re-download it, '
        'or delete this line')


def _unique_rows(ratings: Table, rows: np.ndarray, mode: str) -> np.ndarray | None:
  """Lines repeating an earlier line exactly: an error naming them ('error'), or the indices of
  the rows to keep, first occurrences (``mode='drop'``); None when there are none."""
  if not len(rows):
    return None
  _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  dup = np.flatnonzero(first[inverse] != np.arange(len(rows)))
  if not dup.size:
    return None
  pairs = ', '.join(f'line {int(ratings.lines[k])} repeats line {int(ratings.lines[first[inverse[k]]])}'
                    for k in dup[:3])
  if mode == 'error':
    raise DataFileError(
        f'{ratings.path}: {dup.size:,} line(s) repeat an earlier line exactly ({pairs}'
        f'{", ..." if dup.size > 3 else ""}); de-duplicate the file, or set '
        "config.data.duplicate_rows='drop' to keep each first occurrence")
  logging.warning('%s: dropped %d line(s) repeating an earlier line exactly (%s%s)',
                  ratings.path, dup.size, pairs, ', ...' if dup.size > 3 else '')
  return np.setdiff1d(np.arange(len(rows)), dup)


def _padded(values: np.ndarray) -> np.ndarray:
  """A side table by dense id: row 0 (padding) is 0."""
  return np.concatenate([np.zeros((1,) + values.shape[1:], np.int32), values.astype(np.int32)])


def _genre_slots(genre_ids: np.ndarray) -> dict[str, np.ndarray]:
  """[n, G] genre ids (0 = not this genre) -> the first GENRE_SLOTS non-zero ids per movie."""
  order = np.argsort(genre_ids == 0, axis=1, kind='stable')  # present genres first, in order
  slots = np.take_along_axis(genre_ids, order, axis=1)[:, :GENRE_SLOTS]
  if slots.shape[1] < GENRE_SLOTS:
    slots = np.pad(slots, ((0, 0), (0, GENRE_SLOTS - slots.shape[1])))
  names = ['item_genre'] + [f'item_genre_{j + 1}' for j in range(1, GENRE_SLOTS)]
  return {name: _padded(slots[:, j]) for j, name in enumerate(names)}


def _year_bucket(year: np.ndarray) -> np.ndarray:
  return np.where(year > 0, 1 + np.searchsorted(YEAR_EDGES, year, side='right'), 0)


def _zip_region(table: Table, col: int) -> np.ndarray:
  first = [z.strip()[:1] for z in table.column(col)]
  return np.array([int(c) + 1 if c.isdigit() else ZIP_OTHER for c in first], np.int32)


def _category(table: Table, col: int, name: str, values: tuple[str, ...]) -> np.ndarray:
  """Strings from a closed list -> ids 1..len(values); anything else names its line."""
  lookup = {v: i + 1 for i, v in enumerate(values)}
  out = np.empty(len(table), np.int32)
  for k, v in enumerate(table.column(col)):
    if v not in lookup:
      raise table.error(k, f'{name} {v!r} (field {col + 1}) is not one of {list(values)}')
    out[k] = lookup[v]
  return out


def _what(variant: str) -> str:
  return _SOURCE.format(v=variant, files=', '.join(_FILES[variant]))


# ================================================================================ 100K
def load_100k(path: str, duplicate_rows: str = 'error') -> EventLog:
  """Read u.genre, u.item, u.user and u.data of MovieLens 100K from directory ``path``."""
  what = _what('100k')
  genre = read_table(os.path.join(path, 'u.genre'), sep='|', num_fields=2, encoding='ascii',
                     what=what)
  g_index = genre.ints(1, 'genre index')
  g_ids = _category(genre, 0, 'genre', GENRES)
  if sorted(g_index.tolist()) != list(range(len(genre))):
    raise DataFileError(f'{genre.path}: genre indices {sorted(g_index.tolist())} must be 0..'
                        f'{len(genre) - 1}, each once (they number the genre columns of u.item)')
  col_genre = np.zeros(len(genre), np.int32)
  col_genre[g_index] = g_ids  # genre id of each flag column of u.item

  item = read_table(os.path.join(path, 'u.item'), sep='|', num_fields=5 + len(genre),
                    encoding='latin-1', what=what)
  raw_items = item.ints(0, 'movie id')
  items = dense_ids(raw_items, item, 'movie id')
  order = np.argsort(raw_items, kind='stable')  # file rows in dense-id order
  flags = np.stack([item.ints(5 + j, f'genre flag {GENRES[col_genre[j] - 1]!r}')
                    for j in range(len(genre))], -1) if len(item) else np.zeros((0, len(genre)))
  _first_bad(item, ~np.isin(flags, (0, 1)).all(1), 'a genre flag (fields 6..) is not 0 or 1')
  year = np.zeros(len(item), np.int64)
  for k, date in enumerate(item.column(2)):  # 'dd-Mon-yyyy' or empty (unknown)
    if date:
      m = re.fullmatch(r'\d{1,2}-[A-Za-z]{3}-(\d{4})', date.strip())
      if not m:
        raise item.error(k, f'release date {date!r} (field 3) is not dd-Mon-yyyy or empty')
      year[k] = int(m.group(1))
  item_cat = _genre_slots(np.where(flags == 1, col_genre, 0)[order])
  item_cat['item_year'] = _padded(_year_bucket(year)[order])

  user = read_table(os.path.join(path, 'u.user'), sep='|', num_fields=5, encoding='ascii',
                    what=what)
  raw_users = user.ints(0, 'user id')
  users = dense_ids(raw_users, user, 'user id')
  u_order = np.argsort(raw_users, kind='stable')
  age = user.ints(1, 'age')
  _first_bad(user, (age < 0) | (age > 150), 'age (field 2) is not between 0 and 150')
  user_cat = {
      'age': _padded((1 + np.searchsorted(_AGE_EDGES, age, side='right'))[u_order]),
      'gender': _padded(_category(user, 2, 'gender', GENDERS)[u_order]),
      'occupation': _padded(_category(user, 3, 'occupation', OCCUPATIONS_100K)[u_order]),
      'zip_region': _padded(_zip_region(user, 4)[u_order]),
  }

  ratings = read_table(os.path.join(path, 'u.data'), sep='\t', num_fields=4, encoding='ascii',
                       what=what)
  return _ratings_log(ratings, users, items, user.path, item.path, user_cat, item_cat,
                      duplicate_rows)


# ================================================================================ 1M
def load_1m(path: str, duplicate_rows: str = 'error') -> EventLog:
  """Read movies.dat, users.dat and ratings.dat of MovieLens 1M from directory ``path``."""
  what = _what('1m')
  movie = read_table(os.path.join(path, 'movies.dat'), sep='::', num_fields=3,
                     encoding='latin-1', what=what)
  raw_items = movie.ints(0, 'movie id')
  items = dense_ids(raw_items, movie, 'movie id')
  order = np.argsort(raw_items, kind='stable')
  lookup = {g: i + 1 for i, g in enumerate(GENRES)}
  genre_ids = np.zeros((len(movie), len(GENRES)), np.int32)
  year = np.zeros(len(movie), np.int64)
  for k, (title, genres) in enumerate(zip(movie.column(1), movie.column(2))):
    m = re.search(r'\((\d{4})\)\s*$', title)  # "Title (1995)"; no year -> unknown
    year[k] = int(m.group(1)) if m else 0
    for g in genres.split('|'):
      if g not in lookup:
        raise movie.error(k, f'genre {g!r} (field 3) is not one of {list(GENRES[1:])}')
      genre_ids[k, lookup[g] - 1] = lookup[g]  # GENRES order, as 100K's flag columns
  item_cat = _genre_slots(genre_ids[order])
  item_cat['item_year'] = _padded(_year_bucket(year)[order])

  user = read_table(os.path.join(path, 'users.dat'), sep='::', num_fields=5, encoding='ascii',
                    what=what)
  raw_users = user.ints(0, 'user id')
  users = dense_ids(raw_users, user, 'user id')
  u_order = np.argsort(raw_users, kind='stable')
  age = user.ints(2, 'age')
  age_id = np.searchsorted(np.array(AGE_CODES_1M), age)
  _first_bad(user, ~np.isin(age, AGE_CODES_1M), f'age code (field 3) is not one of {AGE_CODES_1M}')
  occ = user.ints(3, 'occupation')
  _first_bad(user, (occ < 0) | (occ >= NUM_OCCUPATIONS_1M),
             f'occupation (field 4) is not a code 0..{NUM_OCCUPATIONS_1M - 1}')
  user_cat = {
      'age': _padded((age_id + 1)[u_order]),
      'gender': _padded(_category(user, 1, 'gender', GENDERS)[u_order]),
      'occupation': _padded((occ + 1)[u_order]),
      'zip_region': _padded(_zip_region(user, 4)[u_order]),
  }

  ratings = read_table(os.path.join(path, 'ratings.dat'), sep='::', num_fields=4,
                       encoding='ascii', what=what)
  return _ratings_log(ratings, users, items, user.path, movie.path, user_cat, item_cat,
                      duplicate_rows)
