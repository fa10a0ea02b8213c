"""MovieLens 100K / 1M: official file layouts -> exact requests, strict file checks, real data.

The fixture is one small hand-checked world written in both official layouts; both variants must
produce the same batch. The real 100K files are used when ../shared/data/ml-100k exists.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from onetrans_jax.data import movielens, pipeline
from onetrans_jax.data.event_log import DataFileError
from onetrans_jax.errors import ConfigError
from tests.helpers import ROOT, all_requests

REAL_100K = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')
from tests.movielens_files import (FIXTURE_CONFIG, RATINGS, T0, write_lines as _write, write_100k,
                                   write_1m)


def _data(variant: str, path: str, **kw):
  return movielens.movielens_data(variant, path=path, **{**FIXTURE_CONFIG, **kw})




# ---------------------------------------------------------------------------------- exact batch
@pytest.mark.parametrize('variant', ['100k', '1m'])
def test_fixture_batch_is_exact(tmp_path, variant):
  path = (write_100k if variant == '100k' else write_1m)(tmp_path / variant)
  ds = pipeline.build_dataset(_data(variant, path))
  s = ds.schema
  assert [f.name for f in s.request_categorical] == [
      'user_id', 'age', 'gender', 'occupation', 'zip_region', 'hour', 'weekday']
  assert [f.name for f in s.candidate_categorical] == [
      'item_id', 'item_genre', 'item_genre_2', 'item_genre_3', 'item_year']
  assert [q.name for q in s.sequences] == ['rated', 'liked']
  assert s.task_names == ('like', 'love') and s.task_parents == (-1, 0)
  assert s.vocab_sizes == {'user': 4, 'item': 6, 'age': 8, 'gender': 3, 'occupation': 22,
                           'zip_region': 12, 'genre': 20, 'year_bucket': 16, 'hour': 25,
                           'weekday': 8}
  # Requests by start time: A u1 @0 (3 ratings, then 2 h of silence), B u2 @5 (the first 3 of a
  # 4-rating session: C = 3 splits it), C u2 @300 (its 4th), D u1 @7200, F u2 @9000, E u3 @20000
  # (two ratings in the same second). The last 30% (round(1.8) = 2 requests) evaluate.
  assert len(ds.source) == 6
  assert ds.train_range == (0, 4) and ds.eval_range == (4, 6)
  b = all_requests(ds)
  np.testing.assert_array_equal(b['request']['user_id'], [1, 2, 2, 1, 2, 3])
  np.testing.assert_array_equal(b['request']['time'] - T0, [0, 5, 300, 7200, 9000, 20000])
  user_feats = {1: [1, 2, 1, 20, 9], 2: [2, 6, 2, 14, 10], 3: [3, 1, 1, 19, 11]}
  # 04:26 UTC -> hour id 5 (hour 4 + 1); +7200 s -> 06:26; +9000 -> 06:56; +20000 -> 10:26.
  # Weekday id 4: Thursday (1 = Monday).
  hours = [5, 5, 5, 7, 7, 11]
  for r, u in enumerate([1, 2, 2, 1, 2, 3]):
    np.testing.assert_array_equal(b['request']['cat'][r], user_feats[u] + [hours[r], 4])
  assert b['request']['num'].shape == (6, 0)

  # Candidates: dense item ids, genre slots, year bucket; padding past each request's size.
  item_feats = {1: [4, 5, 6, 10], 2: [2, 3, 17, 10], 3: [9, 0, 0, 1], 4: [9, 16, 0, 10],
                5: [1, 0, 0, 0]}
  cands = [[1, 2, 3], [2, 1, 3], [5], [5], [4], [1, 3]]
  like = [[1, 0, 1], [1, 0, 1], [1], [1], [0], [1, 0]]
  love = [[1, 0, 0], [0, 0, 1], [0], [1], [0], [0, 0]]
  for r in range(6):
    n = len(cands[r])
    np.testing.assert_array_equal(b['cand']['mask'][r], np.arange(3) < n)
    np.testing.assert_array_equal(b['cand']['cat'][r, :n],
                                  [[i] + item_feats[i] for i in cands[r]])
    assert not b['cand']['cat'][r, n:].any() and not b['labels'][r, n:].any()
    np.testing.assert_array_equal(b['labels'][r, :n], np.stack([like[r], love[r]], -1))

  # Sequences: strictly before the request, last max_len, right-aligned, with primary genre.
  genre = {1: 4, 2: 2, 3: 9, 4: 9, 5: 1}
  rated = [[], [], [(2, 5), (1, 100), (3, 200)], [(1, 0), (2, 10), (3, 20)],
           [(1, 100), (3, 200), (5, 300)], []]
  liked = [[], [], [(2, 5), (3, 200)], [(1, 0), (3, 20)], [(3, 200), (5, 300)], []]
  for name, expect, length in (('rated', rated, 3), ('liked', liked, 2)):
    seq = b['seq'][name]
    for r, events in enumerate(expect):
      k = len(events)
      np.testing.assert_array_equal(seq['mask'][r], np.arange(length) >= length - k,
                                    err_msg=f'{name} request {r}')
      ids = [[i, genre[i]] for i, _ in events]
      np.testing.assert_array_equal(seq['ids'][r, length - k:].reshape(k, 2),
                                    np.array(ids).reshape(k, 2), err_msg=f'{name} request {r}')
      np.testing.assert_array_equal(seq['time'][r, length - k:] - T0, [t for _, t in events])
      assert not seq['ids'][r, :length - k].any() and not seq['time'][r, :length - k].any()
      assert np.all(seq['time'][r][seq['mask'][r]] < b['request']['time'][r])


@pytest.mark.parametrize('variant', ['100k', '1m'])
def test_history_events_can_carry_their_rating(tmp_path, variant):
  """``data.seq_rating``: every 'rated' / 'liked' event carries the rating the user gave (a third
  id column, vocabulary 'rating' of size 6); off, no column and no table."""
  path = (write_100k if variant == '100k' else write_1m)(tmp_path / variant)
  plain = pipeline.build_dataset(_data(variant, path)).schema
  assert 'rating' not in plain.vocab_sizes
  assert plain.sequence('rated').side_features == (('item_genre', 'genre'),)
  ds = pipeline.build_dataset(_data(variant, path, seq_rating=True))
  assert ds.schema.vocab_sizes['rating'] == 6
  for name in ('rated', 'liked'):
    assert ds.schema.sequence(name).side_features == (('item_genre', 'genre'),
                                                     ('rating', 'rating'))
  b = all_requests(ds)
  ds.schema.check_batch(b)
  # (item, rating) of the events before requests C (u2 @300), D (u1 @7200), F (u2 @9000).
  rated = {2: [(2, 4), (1, 1), (3, 5)], 3: [(1, 5), (2, 3), (3, 4)], 4: [(1, 1), (3, 5), (5, 4)]}
  liked = {2: [(2, 4), (3, 5)], 3: [(1, 5), (3, 4)], 4: [(3, 5), (5, 4)]}
  for name, expect in (('rated', rated), ('liked', liked)):
    ids = b['seq'][name]['ids']
    assert ids.shape[-1] == 3
    for r, events in expect.items():
      k = len(events)
      np.testing.assert_array_equal(ids[r, -k:][:, [0, 2]], events, err_msg=f'{name} {r}')
    assert not ids[0].any() and not ids[5].any()     # no earlier ratings: all padding
    np.testing.assert_array_equal(ids[..., :2], all_requests(pipeline.build_dataset(
        _data(variant, path)))['seq'][name]['ids'])   # the other columns are unchanged


def test_session_gap_and_candidates_config(tmp_path):
  path = write_100k(tmp_path)
  # A 10 s gap already ends a request; C = 16 never splits: u1 @0, @10, @20 are three requests.
  ds = pipeline.build_dataset(_data('100k', path, session_gap=9, num_candidates=16))
  ix = ds.source.index
  u1 = ix.user == 1
  np.testing.assert_array_equal(ix.time[u1] - T0, [0, 10, 20, 7200])
  np.testing.assert_array_equal(ix.size[u1], [1, 1, 1, 1])
  # One huge gap: u2's five ratings 0..9000 s make one request of 5.
  ds = pipeline.build_dataset(_data('100k', path, session_gap=10_000, num_candidates=16))
  ix = ds.source.index
  np.testing.assert_array_equal(ix.size[ix.user == 2], [5])
  assert int(ix.size.sum()) == len(RATINGS)


def test_iterator_batches_pass_the_schema(tmp_path):
  ds = pipeline.build_dataset(_data('1m', write_1m(tmp_path), shuffle=True))
  it = pipeline.make_iterator(ds, ds.train_range, global_batch_size=2, shuffle=True, seed=3,
                              repeat=True, num_threads=1)
  for _ in range(5):  # validate=True inside: check_batch on every batch
    batch = next(it)
    ds.schema.check_batch(batch)
    assert batch['cand']['cat'].shape == (2, 3, 5)
    assert np.all(batch['request']['time'] <= T0 + 7200)  # training range only


# ---------------------------------------------------------------------------------- validation
def _lines(path, name):
  with open(os.path.join(path, name), 'rb') as f:
    return f.read().decode('latin-1').splitlines()


def _build(path, variant='100k'):
  return pipeline.build_dataset(_data(variant, str(path)))


def test_missing_file(tmp_path):
  path = write_100k(tmp_path)
  os.remove(os.path.join(path, 'u.user'))
  with pytest.raises(DataFileError, match=r'u\.user: file not found; download ml-100k\.zip'):
    _build(path)


def test_wrong_column_count_names_the_line(tmp_path):
  path = write_100k(tmp_path)
  lines = _lines(path, 'u.data')
  lines[2] = '1\t2\t3'
  _write(path, 'u.data', lines)
  with pytest.raises(DataFileError,
                     match=r'u\.data, line 3: 3 field\(s\) separated by .*expected 4'):
    _build(path)
  path = write_1m(tmp_path / '1m')
  lines = _lines(path, 'ratings.dat')
  lines[4] = '1::2::3::4::5'
  _write(path, 'ratings.dat', lines)
  with pytest.raises(DataFileError, match=r'ratings\.dat, line 5: 5 field'):
    _build(path, '1m')


def test_non_numeric_id(tmp_path):
  path = write_100k(tmp_path)
  lines = _lines(path, 'u.user')
  lines[1] = 'x3' + lines[1][1:]
  _write(path, 'u.user', lines)
  with pytest.raises(DataFileError, match=r"u\.user, line 2: user id \(field 1\) is 'x3', not an "
                                          'integer'):
    _build(path)


def test_broken_encoding(tmp_path):
  path = write_100k(tmp_path)
  with open(os.path.join(path, 'u.data'), 'rb') as f:
    lines = f.read().split(b'\n')
  lines[3] = b'1\t2\t\xff3\t880000000'
  with open(os.path.join(path, 'u.data'), 'wb') as f:
    f.write(b'\n'.join(lines))
  with pytest.raises(DataFileError, match=r"u\.data, line 4: byte b'\\xff' at column 5 is not "
                                          'valid ascii'):
    _build(path)


def test_rating_out_of_range(tmp_path):
  bad = list(RATINGS)
  bad[4] = (1, 5, 6, 20)
  with pytest.raises(DataFileError, match=r'u\.data, line 5: rating 6 is outside 1\.\.5'):
    _build(write_100k(tmp_path, bad))


def test_unknown_user_and_movie(tmp_path):
  with pytest.raises(DataFileError,
                     match=r'u\.data, line 12: user id 99 is not listed in .*u\.user'):
    _build(write_100k(tmp_path / 'a', RATINGS + [(99, 1, 3, 50)]))
  with pytest.raises(DataFileError,
                     match=r'ratings\.dat, line 12: movie id 3 is not listed in .*movies\.dat'):
    _build(write_1m(tmp_path / 'b', RATINGS + [(1, 3, 3, 50)]), '1m')


def test_duplicate_ids_and_bad_values(tmp_path):
  path = write_100k(tmp_path)
  lines = _lines(path, 'u.item')
  _write(path, 'u.item', lines + [lines[0]], 'latin-1')
  with pytest.raises(DataFileError, match=r'u\.item, line 6: movie id 2 is listed twice'):
    _build(path)
  path = write_1m(tmp_path / '1m')
  lines = _lines(path, 'movies.dat')
  lines[1] = lines[1].replace('Comedy', 'Cmoedy')
  _write(path, 'movies.dat', lines, 'latin-1')
  with pytest.raises(DataFileError, match=r"movies\.dat, line 2: genre 'Cmoedy'"):
    _build(path, '1m')


def test_a_file_cut_short_is_caught_by_its_last_timestamp(tmp_path):
  """The last line of a file without a final newline still has 4 fields when its timestamp lost
  digits: refused, naming the line; the same line with a newline, or an intact last line
  without one, loads."""
  path = write_100k(tmp_path)
  lines = _lines(path, 'u.data')
  with open(os.path.join(path, 'u.data'), 'wb') as f:
    f.write(('\n'.join(lines[:-1] + [lines[-1][:-4]])).encode())    # '...\t88000'
  with pytest.raises(DataFileError, match=r'u\.data, line 11: timestamp 88000 is outside the '
                                          r'range of the other lines \(880000000\.\.880020000\) '
                                          'and the file ends without a newline'):
    _build(path)
  with open(os.path.join(path, 'u.data'), 'wb') as f:
    f.write(('\n'.join(lines)).encode())                             # intact, no newline
  assert movielens.load_100k(path).num_events == 11


def test_duplicated_rating_lines_are_named_or_dropped(tmp_path):
  path = write_100k(tmp_path, RATINGS + [RATINGS[3], RATINGS[3], RATINGS[0]])
  with pytest.raises(DataFileError, match=r"u\.data: 3 line\(s\) repeat an earlier line exactly "
                                          r"\(line 12 repeats line 4, line 13 repeats line 4, "
                                          r"line 14 repeats line 1\).*duplicate_rows='drop'"):
    _build(path)
  dropped = movielens.load_100k(path, duplicate_rows='drop')
  clean = movielens.load_100k(write_100k(tmp_path / 'clean'))
  for field in ('user', 'item', 'time', 'labels'):
    np.testing.assert_array_equal(getattr(dropped, field), getattr(clean, field))
  pipeline.build_dataset(_data('100k', path, duplicate_rows='drop'))   # the config reaches it
  with pytest.raises(ConfigError, match=r"config\.data\.duplicate_rows='keep': use one of"):
    pipeline.build_dataset(_data('100k', path, duplicate_rows='keep'))


def test_huge_fields_and_lines_are_named_not_allocated(tmp_path):
  path = write_100k(tmp_path)
  lines = _lines(path, 'u.data')
  lines[2] = '1\t99999999999999999999\t3\t880000000'                # beyond int64
  _write(path, 'u.data', lines)
  with pytest.raises(DataFileError, match=r'u\.data, line 3: movie id \(field 2\) is '
                                          '99999999999999999999, beyond the 64-bit'):
    _build(path)
  lines[2] = '1\t' + '7' * 5000 + '\t3\t880000000'                   # a long field
  _write(path, 'u.data', lines)
  with pytest.raises(DataFileError, match=r"line 3: movie id \(field 2\) is 5,000 characters"):
    _build(path)
  lines[2] = '1\t2\t3\t' + '8' * (1 << 20)                             # a 1 MiB line
  _write(path, 'u.data', lines)
  with pytest.raises(DataFileError, match=r'u\.data, line 3: 1,048,582 bytes long, over the '
                                          '65,536-byte limit'):
    _build(path)


def test_config_errors(tmp_path):
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path is not set'):
    pipeline.build_dataset(movielens.movielens_data('100k'))
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path=.* is not a directory'):
    pipeline.build_dataset(movielens.movielens_data('1m', path=str(tmp_path / 'nowhere')))
  path = write_100k(tmp_path)
  with pytest.raises(ConfigError, match=r'config\.data\.eval_fraction must lie in \(0, 1\)'):
    pipeline.build_dataset(_data('100k', path, eval_fraction=1.0))
  with pytest.raises(ConfigError, match=r'config\.data\.rated_len must be >= 1'):
    pipeline.build_dataset(_data('100k', path, rated_len=0))


# ---------------------------------------------------------------------------------- training
def test_training_smoke(tmp_path):
  from onetrans_jax.experiments import pooled_mlp
  from onetrans_jax.train import train_and_evaluate
  c = pooled_mlp.get_config()
  # eval: the last 3 requests, where both tasks have positives and negatives.
  c.data = _data('100k', write_100k(tmp_path / 'data'), eval_fraction=0.5)
  c.model.embed_dim = 8
  c.model.hidden = (16,)
  c.train.total_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  result = train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['step'] == 4
  for task in ('like', 'love'):
    m = result['final'][task]
    assert m['count'] > 0 and math.isfinite(m['logloss']) and math.isfinite(m['auc']), m


# ---------------------------------------------------------------------------------- real data
@pytest.fixture(scope='module')
def real_100k():
  if not os.path.isfile(os.path.join(REAL_100K, 'u.data')):
    pytest.skip(f'MovieLens 100K not found at {REAL_100K}')
  return pipeline.build_dataset(movielens.movielens_data('100k', path=REAL_100K))


def test_real_100k_counts_and_split(real_100k):
  ds = real_100k
  src, ix, log = ds.source, ds.source.index, ds.source.log
  assert (log.num_users, log.num_items, log.num_events) == (943, 1682, 100_000)
  assert int(ix.size.sum()) == 100_000 and ix.size.max() == 16
  assert ds.schema.vocab_sizes['user'] == 944 and ds.schema.vocab_sizes['item'] == 1683
  np.testing.assert_allclose(log.labels.mean(0), [0.55375, 0.21201])
  # Chronological: requests sorted by start time, train entirely before eval.
  assert np.all(np.diff(ix.time) >= 0)
  (a, b), (c, d) = ds.train_range, ds.eval_range
  assert a == 0 and b == c and d == len(src) and d - c == round(0.1 * len(src))
  assert ix.time[a:b].max() <= ix.time[c:d].min()
  # No leakage, every request at once: a sequence's latest event is the user's and strictly
  # earlier than the request; the one before its window (if the user's) is older still.
  for name in ('rated', 'liked'):
    ev, lo, hi = ix.seq_events[name], ix.seq_begin[name], ix.seq_end[name]
    has = hi > lo
    last, first = ev[hi[has] - 1], ev[lo[has]]
    assert np.all(log.time[last] < ix.time[has])
    assert np.all(log.user[last] == ix.user[has]) and np.all(log.user[first] == ix.user[has])
    assert np.all(np.diff(log.time[ev][log.user[ev] == 1]) >= 0)
    # The event right after the window is not the user's, or not earlier than the request.
    nxt = np.minimum(hi, ev.size - 1)
    assert np.all((log.user[ev[nxt]] != ix.user) | (log.time[ev[nxt]] >= ix.time) |
                  (hi == ev.size))
    # A window shorter than max_len holds all the user's earlier events: the one before is not
    # the user's.
    prv = np.maximum(lo - 1, 0)
    assert np.all((lo == 0) | (log.user[ev[prv]] != ix.user) |
                  (hi - lo == ds.schema.sequence(name).max_len))
  # And through the source itself, on a spread of requests.
  for i in np.linspace(0, len(src) - 1, 200).astype(int):
    r = src[i]
    for name in ('rated', 'liked'):
      s = r['seq'][name]
      assert np.all(s['time'][s['mask']] < r['request']['time'])
      assert np.all(np.diff(s['time'][s['mask']]) >= 0)
  batch = next(pipeline.make_iterator(ds, ds.eval_range, global_batch_size=64, shuffle=False,
                                      seed=0, repeat=False, num_threads=1))
  ds.schema.check_batch(batch)


# ---------------------------------------------------------------------------------- experiment
@pytest.mark.slow  # ~30 s: three models compiled
def test_experiment_rows_run_on_movielens(tmp_path):
  """onetrans_jax/experiments/movielens_100k.py: every row builds on the MovieLens schema, and its
  training loss and gradient are finite on a fixture batch (the loss each row trains with)."""
  import jax
  import jax.numpy as jnp
  from onetrans_jax.experiments import movielens_100k
  from onetrans_jax import models
  from onetrans_jax.models import build_model
  from onetrans_jax.models.layers import partitioning
  from onetrans_jax.sweep import variant_config
  from onetrans_jax.train import make_loss_fn
  from onetrans_jax.schema import dummy_batch
  config = movielens_100k.get_config()
  assert [n for n, _ in config.sweep.variants] == [
      'DCNv2 + DIN', 'item positive rate', 'logistic regression', 'LightGBM', 'OneTrans',
      'OneRank']
  assert config.sweep.seeds == (0, 1, 2) and movielens_100k.get_config('quick').sweep.seeds == (0,)
  data = _data('100k', write_100k(tmp_path / 'data'), eval_fraction=0.5)
  ds = pipeline.build_dataset(data)
  batch = all_requests(ds)
  for name, overrides in config.sweep.variants:
    c = variant_config(config, overrides, seed=0)
    if models.is_floor(c.model):  # fitted, not trained: tests/test_floors.py
      continue
    c.data = data
    model = build_model(c.model, ds.schema)
    loss_fn, mode = make_loss_fn(c, model, ds.schema)
    assert mode == ('onerank' if name == 'OneRank' else 'joint')
    params = partitioning.unbox(jax.jit(model.init)(jax.random.key(0),
                                                    dummy_batch(ds.schema, 1))['params'])
    loss, grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch)[0]))(params)
    assert np.isfinite(float(loss)), name
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), name
