"""MovieLens 100K / 1M fixture files: one small hand-checked world in both official layouts.

Shared by tests/test_movielens.py and tests/fuzz_readers.py (test modules never import each
other: tests/test_imports.py).
"""

from __future__ import annotations

import os

from onetrans_jax.data import movielens

T0 = 880_000_000  # 1997-11-20 04:26:40 UTC, a Thursday

# ---------------------------------------------------------------------------------- the fixture
# Movies (raw id -> dense id): 1 -> 1, 2 -> 2, 5 -> 3, 7 -> 4, 10 -> 5 (raw ids have gaps).
# (raw id, title, 100K release date, genres); genre ids: GENRES index + 1.
MOVIES = [
    (2, 'GoldenEye (1995)', '01-Jan-1995', ('Action', 'Adventure', 'Thriller')),       # 2,3,17
    (1, 'Toy Story (1995)', '01-Jan-1995', ('Animation', "Children's", 'Comedy')),     # 4,5,6
    (5, 'Mis\xe9rables, Les (1939)', '01-Jan-1939', ('Drama',)),                        # 9
    (7, 'Twelve Monkeys (1995)', '01-Jan-1995', ('Drama', 'Sci-Fi')),                  # 9,16
    (10, 'Lost Reel', '', ('unknown',)),                                                # 1
]
# (id, 100K age, 1M age code, gender, 100K occupation, 1M occupation code, zip)
USERS = [
    (1, 24, 18, 'M', 'technician', 19, '85711'),
    (3, 17, 1, 'M', 'student', 18, 'T8H1N'),
    (2, 53, 50, 'F', 'other', 13, '94043'),
]
# (user, movie raw id, rating, seconds after T0), in a shuffled file order.
RATINGS = [
    (2, 1, 1, 100), (1, 1, 5, 0), (1, 2, 3, 10), (2, 2, 4, 5), (1, 5, 4, 20), (2, 5, 5, 200),
    (2, 10, 4, 300), (1, 10, 5, 7200), (3, 1, 4, 20000), (3, 5, 3, 20000), (2, 7, 2, 9000),
]
FIXTURE_CONFIG = dict(session_gap=3600, num_candidates=3, rated_len=3, liked_len=2,
                      eval_fraction=0.3, batch_size=2, num_threads=1)


def write_lines(path, name: str, lines: list[str], encoding: str = 'ascii') -> None:
  with open(os.path.join(path, name), 'wb') as f:
    f.write(''.join(l + '\n' for l in lines).encode(encoding))


def write_100k(path, ratings=RATINGS) -> str:
  os.makedirs(path, exist_ok=True)
  genres = movielens.GENRES
  write_lines(path, 'u.genre', [f'{g}|{i}' for i, g in enumerate(genres)] + [''])  # as shipped
  items = []
  for mid, title, date, gs in MOVIES:
    flags = '|'.join('1' if g in gs else '0' for g in genres)
    items.append(f'{mid}|{title}|{date}||http://us.imdb.com/x|{flags}')
  write_lines(path, 'u.item', items, 'latin-1')
  write_lines(path, 'u.user', [f'{u}|{a}|{g}|{o}|{z}' for u, a, _, g, o, _, z in USERS])
  write_lines(path, 'u.data', [f'{u}\t{m}\t{r}\t{T0 + dt}' for u, m, r, dt in ratings])
  return str(path)


def write_1m(path, ratings=RATINGS) -> str:
  os.makedirs(path, exist_ok=True)
  write_lines(path, 'movies.dat', [f'{m}::{t}::{"|".join(gs)}' for m, t, _, gs in MOVIES],
              'latin-1')
  write_lines(path, 'users.dat', [f'{u}::{g}::{a}::{o}::{z}' for u, _, a, g, _, o, z in USERS])
  write_lines(path, 'ratings.dat', [f'{u}::{m}::{r}::{T0 + dt}' for u, m, r, dt in ratings])
  return str(path)
