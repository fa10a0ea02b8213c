r"""OneTrans (``onetrans_s:small``) on your own CSV or Parquet files, described by a spec.

  onetrans train --config own_data.py --workdir runs/mine --config.data.path=/data/shop
  onetrans eval --workdir runs/mine --split holdout          # the table again, eval_holdout.json
  onetrans predict --workdir runs/mine --output scores.parquet              # the hold-out's scores
  onetrans predict --workdir runs/mine --data /data/shop/new.csv --output new_scores.csv
  onetrans export --workdir runs/mine --output runs/mine/export            # jax.export + params

The default spec (``get_config()``) reads a shop's log: ``events.csv`` (one row per impression)
and ``items.csv``, in the directory ``config.data.path``::

  events.csv  user_id,item_id,timestamp,click,purchase      timestamp: unix seconds
  items.csv   item_id,category,brand,price

Any field is overridable (``--config.data.events.time_format='%Y-%m-%d %H:%M:%S'``,
``--config.data.session_gap=600``); for other columns, copy this file and edit the spec. The whole
spec, every field shown (onetrans_jax/data/own_data.py and encoders.py say what each does)::

  data = own_data.own_data(path='/data/shop')
  data.events.update(dict(file='events.csv', user='user_id', item='item_id',
                          time='timestamp', time_format='unix',  # or 'iso', '%Y-%m-%d %H:%M:%S'
                          request=None,          # or a request-id column: no session_gap cutting
                          impression=None))      # or a condition: "event in (show, click)"
  data.tasks = (dict(name='click', column='click'),              # a 0/1 column
                dict(name='purchase', column='purchase', parent='click'))  # CVR given click
                # or from a condition: dict(name='like', condition='rating >= 4')
  data.sequences = (dict(name='clicked', where='click == 1', max_len=50),
                    dict(name='purchased', where='purchase == 1', max_len=20))
  data.seq_side_features = ('category',)
  data.item_features.update(dict(file='items.csv', key='item_id',  # None: event-log columns
      categorical=(dict(name='category', min_count=2),           # vocabulary, rarer -> 0
                   dict(name='brand', encode='hash', buckets=1000)),
      numeric=(dict(name='price', log1p=True),)))                 # z-score on the training period
  data.user_id = dict(encode='vocab', min_count=0)                # or encode='hash', buckets=...
  data.session_gap, data.num_candidates = 1800, 16
  data.eval_fraction = 0.1     # or holdout_start='2024-06-01' (and valid_start='2024-05-25')
  data.valid_fraction = 0.0    # > 0: a validation split for early stopping

Preprocessing streams the files, logs rows read / dropped / vocabulary sizes, and caches its
result under ~/.cache/onetrans_jax (``config.data.cache_dir``); a changed file or spec field
preprocesses again. Every unusable value stops it with the file, row, column and fix.

``:movielens_100k`` is MovieLens-100K's GroupLens files (headerless ``u.data``, ``u.item``,
``u.user``) written as a spec: it builds exactly the batches of the dedicated loader
(onetrans_jax/data/movielens.py; tests/test_own_data.py compares them), which shows the
closed-list, bucket, prefix, regex and flag encodings on a real table:

  onetrans train --config own_data.py:movielens_100k --workdir runs/ml100k_spec \
      --config.data.path=/path/to/ml-100k
"""

import ml_collections

from onetrans_jax.data import movielens
from onetrans_jax.data.own_data import own_data
from onetrans_jax.experiments import common, onetrans_s


def shop_data(path: str | None = None) -> ml_collections.ConfigDict:
  """The default spec: events.csv + items.csv of a shop (the module docstring's layout)."""
  d = own_data(path)
  d.events.file = 'events.csv'
  d.tasks = (dict(name='click', column='click'),
             dict(name='purchase', column='purchase', parent='click'))
  d.sequences = (dict(name='clicked', where='click == 1', max_len=50),
                 dict(name='purchased', where='purchase == 1', max_len=20))
  d.seq_side_features = ('category',)
  d.item_features.file = 'items.csv'
  d.item_features.categorical = (dict(name='category', min_count=2),
                         dict(name='brand', encode='hash', buckets=1000))
  d.item_features.numeric = (dict(name='price', log1p=True),)
  return d


def movielens_100k_data(path: str | None = None) -> ml_collections.ConfigDict:
  """MovieLens-100K's GroupLens files as a spec: the dedicated loader's requests, exactly."""
  d = own_data(path)
  d.events.update(dict(file='u.data', delimiter='\t', header=False,
                       column_names=('user', 'movie', 'rating', 'timestamp'), user='user',
                       item='movie', time='timestamp'))
  d.tasks = (dict(name='like', condition=f'rating >= {movielens.LIKE_RATING}'),
             dict(name='love', condition=f'rating >= {movielens.LOVE_RATING}', parent='like'))
  d.sequences = (dict(name='rated', max_len=50),
                 dict(name='liked', where=f'rating >= {movielens.LIKE_RATING}', max_len=30))
  d.seq_side_features = ('item_genre',)
  flags = tuple(f'genre_{j}' for j in range(len(movielens.GENRES)))
  d.item_features.update(dict(
      file='u.item', key='movie', delimiter='|', header=False, encoding='latin-1',
      quote_char=None,
      column_names=('movie', 'title', 'release', 'video_release', 'url') + flags,
      categorical=(dict(name='item_genre', columns=flags, encode='flags',
                        slots=movielens.GENRE_SLOTS, vocab='genre'),
                   dict(name='item_year', column='release', extract=r'(\d{4})\s*$',
                        encode='buckets', edges=tuple(movielens.YEAR_EDGES.tolist()),
                        vocab='year_bucket'))))
  d.user_features.update(dict(
      file='u.user', key='user', delimiter='|', header=False, quote_char=None,
      column_names=('user', 'age', 'gender', 'occupation', 'zip'),
      categorical=(dict(name='age', encode='buckets',
                        edges=tuple(movielens.AGE_CODES_1M[1:])),
                   dict(name='gender', encode='values', values=movielens.GENDERS),
                   dict(name='occupation', encode='values', values=movielens.OCCUPATIONS_100K),
                   dict(name='zip_region', column='zip', prefix=1, encode='values',
                        values=tuple('0123456789'), other='own_id'))))
  d.session_gap = 3600
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'movielens_100k'):
    raise ValueError(f'onetrans_jax/experiments/own_data.py: unknown variant {arg!r}; use none '
                     'or :movielens_100k')
  data = movielens_100k_data() if arg == 'movielens_100k' else shop_data()
  c = common.base_config(onetrans_s.get_config('small').model, data, total_steps=400)
  common.cpu_sized(c)               # lr 0.001 for the dense weights at batch 64
  c.train.checkpoint_every = 0
  c.train.log_every = 50
  return c
