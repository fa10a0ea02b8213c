"""Your own data (onetrans_jax/data/own_data.py): files written here train end to end and are
scored by `onetrans predict`; MovieLens-100K written as a spec gives the dedicated loader's
batches; every unusable input stops with the file, row, column and fix.

The shop files follow onetrans_jax/experiments/own_data.py's default spec, so the commands of its
docstring are what these tests run. The real MovieLens-100K files are used when
../shared/data/ml-100k exists (as in test_movielens.py), else that test is skipped.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from onetrans_jax import inference
from onetrans_jax.data import movielens, own_data, pipeline
from onetrans_jax.data.event_log import DataFileError
from onetrans_jax.errors import ConfigError
from onetrans_jax.experiments import own_data as own_data_experiment
from onetrans_jax.train import train_and_evaluate
from tests.helpers import ROOT, onetrans_model_config, same_tree

REAL_100K = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')
T0 = 1_700_000_000
EVENT_COLUMNS = ('user_id', 'item_id', 'timestamp', 'click', 'purchase')


def shop_rows(n_rows: int = 600, n_users: int = 30, n_items: int = 24, seed: int = 0
              ) -> tuple[list[tuple], list[tuple]]:
  """(events, items) of a small shop: string user ids, a click -> purchase funnel."""
  rng = np.random.default_rng(seed)
  events, t = [], T0
  for _ in range(n_rows):
    t += int(rng.integers(1, 300))
    click = int(rng.random() < 0.35)
    events.append((f'u{int(rng.integers(n_users))}', int(rng.integers(1, n_items + 1)), t, click,
                   int(click and rng.random() < 0.4)))
  items = [(i, f'cat{i % 5}', f'brand{i % 7}', round(float(rng.uniform(1, 100)), 2))
           for i in range(1, n_items + 1)]
  return events, items


def write_csv(path, header, rows) -> str:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def write_shop(directory, fmt: str = 'csv', events=None, items=None) -> None:
  """events.<fmt> and items.<fmt>; Parquet with a native timestamp column and typed numbers."""
  ev, it = shop_rows()
  events, items = events or ev, items or it
  if fmt == 'csv':
    write_csv(directory / 'events.csv', EVENT_COLUMNS, events)
    write_csv(directory / 'items.csv', ('item_id', 'category', 'brand', 'price'), items)
    return
  cols = list(zip(*events))
  pq.write_table(pa.table({
      'user_id': pa.array(cols[0]), 'item_id': pa.array(cols[1], pa.int64()),
      'timestamp': pa.array(np.asarray(cols[2], 'datetime64[s]')),
      'click': pa.array(cols[3], pa.int8()), 'purchase': pa.array([bool(x) for x in cols[4]])}),
      directory / 'events.parquet')
  cols = list(zip(*items))
  pq.write_table(pa.table({'item_id': pa.array(cols[0], pa.int64()), 'category': cols[1],
                           'brand': cols[2], 'price': pa.array(cols[3], pa.float64())}),
                 directory / 'items.parquet')


def shop_config(directory, fmt: str = 'csv'):
  """onetrans_jax/experiments/own_data.py's default experiment, shrunk to test size."""
  c = own_data_experiment.get_config()
  d = c.data
  d.path, d.cache_dir = str(directory), str(directory / 'cache')
  d.events.file, d.item_features.file = f'events.{fmt}', f'items.{fmt}'
  d.sequences = (dict(name='clicked', where='click == 1', max_len=8),
                 dict(name='purchased', where='purchase == 1', max_len=4))
  d.num_candidates, d.batch_size, d.num_threads = 4, 8, 1
  c.model = onetrans_model_config()
  c.train.total_steps, c.train.log_every = 3, 3
  return c


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize('fmt', ['csv', 'parquet'])
def test_own_files_train_end_to_end_and_predict_writes_every_candidate(tmp_path, capsys, fmt):
  write_shop(tmp_path, fmt)
  c = shop_config(tmp_path, fmt)
  result = train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['step'] == 3
  for task in ('click', 'purchase'):
    assert result['final'][task]['count'] > 0 and np.isfinite(result['final'][task]['logloss'])
  ds = pipeline.build_dataset(c.data)  # from the cache now
  assert 'from the cache' in capsys.readouterr().out
  out = tmp_path / f'scores.{"csv" if fmt == "csv" else "parquet"}'
  inference.cli_predict(['onetrans predict', '--workdir', str(tmp_path / 'run'),
                         '--output', str(out)])
  table = (pa_csv.read_csv(out) if fmt == 'csv' else pq.read_table(out)).to_pydict()
  assert list(table) == ['request', 'user_id', 'item_id', 'time', 'p_click', 'p_purchase',
                         'label_click', 'label_purchase']
  a, b = ds.eval_range
  ix = ds.source.index
  assert len(table['request']) == int(ix.size[a:b].sum())  # a row per hold-out impression
  assert sorted(set(table['request'])) == list(range(a, b))
  assert all(str(u).startswith('u') for u in table['user_id'])  # the files' own ids
  probs = np.asarray(table['p_click'] + table['p_purchase'])
  assert np.all((probs > 0) & (probs < 1))
  # The rows are the files' rows: each (user, item, time) is an event of the log.
  events = {(u, str(i)) for u, i, *_ in shop_rows()[0]}
  assert {(str(u), str(i)) for u, i in zip(table['user_id'], table['item_id'])} <= events


def test_predict_scores_a_new_file_with_the_runs_encoders(tmp_path, capsys):
  """--data: a later file, read with the trained vocabularies (an unseen item -> id 0), labels
  optional; the schema is the run's, so its weights apply."""
  write_shop(tmp_path)
  c = shop_config(tmp_path)
  train_and_evaluate(c, str(tmp_path / 'run'))
  later = [(u, i if k % 5 else 999, t + 10 ** 6, cl, p)
           for k, (u, i, t, cl, p) in enumerate(shop_rows(n_rows=40, seed=1)[0])]
  write_csv(tmp_path / 'later.csv', EVENT_COLUMNS, later)
  ds, labeled = own_data.build_for_file(c.data, str(tmp_path / 'later.csv'))
  trained = pipeline.build_dataset(c.data)
  assert labeled and ds.schema == trained.schema
  item_ids = ds.source.log.item_vocab_id[ds.source.log.item]
  raw = ds.source.raw_ids['item'][ds.source.log.item]
  assert np.all((item_ids == 0) == (raw == '999'))  # never seen in training: the unknown id
  out = tmp_path / 'later.parquet'
  inference.cli_predict(['onetrans predict', '--workdir', str(tmp_path / 'run'), '--data',
                         str(tmp_path / 'later.csv'), '--output', str(out)])
  assert pq.read_table(out).num_rows == len(later)
  assert f'wrote {len(later)} rows' in capsys.readouterr().out


# ---------------------------------------------------------------------------------- the spec
def test_request_keys_iso_times_and_features_from_the_event_log(tmp_path):
  """A request-key column instead of sessions, ISO times, item features read from the event log
  (each item's first event), a min count (rarer -> 0) and hashing."""
  rows = [  # user, item, time, request, category, clicked
      ('a', 1, '2024-05-01T10:00:00', 'r1', 'x', 1), ('a', 2, '2024-05-01T10:00:05', 'r1', 'x', 0),
      ('a', 3, '2024-05-01T10:00:07', 'r2', 'y', 1), ('b', 1, '2024-05-01T11:00:00', 'r3', 'x', 0),
      ('b', 2, '2024-05-01T11:00:00', 'r3', 'x', 1), ('a', 4, '2024-05-02T09:00:00', 'r4', 'z', 1),
      ('b', 3, '2024-05-02T09:30:00', 'r5', 'y', 0), ('a', 2, '2024-05-03T09:00:00', 'r6', 'w', 1)]
  write_csv(tmp_path / 'log.csv', ('user', 'item', 'when', 'req', 'category', 'clicked'), rows)
  d = own_data.own_data(str(tmp_path), cache_dir=str(tmp_path / 'cache'))
  d.events.update(dict(file='log.csv', user='user', item='item', time='when', time_format='iso',
                       request='req'))
  d.tasks = (dict(name='click', column='clicked'),)
  d.sequences = (dict(name='clicked', where='clicked == 1', max_len=4),)
  d.item_features.categorical = (dict(name='category', min_count=2),
                                 dict(name='cat_hash', column='category', encode='hash',
                                      buckets=8))
  d.eval_fraction = 0.3
  ds = pipeline.build_dataset(d)
  ix, log = ds.source.index, ds.source.log
  # One request per key (r1 interleaves nothing; r2 is a's second key 2 s later).
  assert len(ds.source) == 6 and list(ix.size) == [2, 1, 2, 1, 1, 1]
  assert ix.time[0] == 1714557600  # 2024-05-01T10:00:00Z
  # An item's category is its first event's (item 2: 'x', not the later 'w'). In the training
  # period (before r5, the hold-out's first request) 'x' is on 4 events, 'y' and 'z' on one:
  # below min_count 2, so they get the unknown id 0.
  raw = ds.source.raw_ids['item']
  cat = dict(zip(raw[1:], log.item_cat['category'][1:]))
  assert cat == {'1': 1, '2': 1, '3': 0, '4': 0}
  assert ds.schema.vocab_sizes['category'] == 2  # padding / unknown, x
  hashed = dict(zip(raw[1:], log.item_cat['cat_hash'][1:]))
  assert hashed['1'] == hashed['2'] and 1 <= min(hashed.values()) and max(hashed.values()) <= 8


def test_the_cache_is_reused_and_renewed_when_a_file_changes(tmp_path, capsys):
  write_shop(tmp_path)
  c = shop_config(tmp_path)
  first = pipeline.build_dataset(c.data)
  assert 'cached in' in capsys.readouterr().out
  c.data.cache_mb = 0   # how batches are served, not what preprocessing computes: same entry
  second = pipeline.build_dataset(c.data)
  assert 'from the cache' in capsys.readouterr().out
  assert same_tree(first.source[5], second.source[5])
  root = own_data.cache_root(c.data)
  assert len(os.listdir(root)) == 1  # no temporary directory left behind
  events, items = shop_rows()
  write_shop(tmp_path, events=events[:-10])
  pipeline.build_dataset(c.data)
  out = capsys.readouterr().out
  assert 'cached in' in out and 'read 590 rows' in out
  assert len(os.listdir(root)) == 2
  report = json.load(open(os.path.join(root, sorted(os.listdir(root))[0], 'report.json')))
  assert report['vocabularies']['item'] == 25 and report['rows_dropped'] == {}


def test_rows_without_ids_are_dropped_and_reported(tmp_path, capsys):
  events, items = shop_rows()
  events[3] = ('', *events[3][1:])
  events[7] = (events[7][0], '', *events[7][2:])
  write_shop(tmp_path, events=events)
  pipeline.build_dataset(shop_config(tmp_path).data)
  out = capsys.readouterr().out
  assert 'read 600 rows' in out
  assert 'dropped 1 row (missing user id), 1 row (missing item id)' in out


@pytest.fixture(scope='module')
def real_100k():
  if not os.path.isfile(os.path.join(REAL_100K, 'u.data')):
    pytest.skip(f'MovieLens 100K not found at {REAL_100K}')
  return pipeline.build_dataset(movielens.movielens_data('100k', path=REAL_100K))


def test_movielens_100k_as_a_spec_gives_the_loaders_batches(real_100k, tmp_path):
  """onetrans_jax/experiments/own_data.py:movielens_100k reads the GroupLens files with the
  generic spec: the same schema, split and, request by request, identical arrays."""
  d = own_data_experiment.movielens_100k_data(REAL_100K)
  d.cache_dir = str(tmp_path)
  spec = pipeline.build_dataset(d)
  assert spec.schema == real_100k.schema
  assert (spec.train_range, spec.eval_range) == (real_100k.train_range, real_100k.eval_range)
  for i in range(len(real_100k.source)):
    assert same_tree(spec.source[i], real_100k.source[i]), i
  batch = lambda ds: next(pipeline.make_iterator(ds, ds.eval_range, global_batch_size=64,
                                                 shuffle=False, seed=0, repeat=False,
                                                 num_threads=1))
  assert same_tree(batch(spec), batch(real_100k))


# ---------------------------------------------------------------------------------- bad input
def _error(tmp_path, events=None, items=None, header=EVENT_COLUMNS, **data) -> str:
  """The one-line message building the shop data fails with."""
  ev, it = shop_rows(n_rows=60)
  write_csv(tmp_path / 'events.csv', header, events or ev)
  write_csv(tmp_path / 'items.csv', ('item_id', 'category', 'brand', 'price'), items or it)
  c = shop_config(tmp_path)
  c.data.update(data)
  with pytest.raises(ConfigError) as e:
    pipeline.build_dataset(c.data)
  assert '\n' not in str(e.value)
  return str(e.value)


def test_a_missing_column_names_the_file_the_column_and_the_spec_field(tmp_path):
  ev = [r[:4] for r in shop_rows(n_rows=60)[0]]
  msg = _error(tmp_path, events=ev, header=EVENT_COLUMNS[:4])
  assert msg == (
      f"{tmp_path}/events.csv, row 1 (the header), column 'purchase': no such column (named by "
      "config.data.tasks[1]); the file has columns ['user_id', 'item_id', 'timestamp', 'click']; "
      'rename the column in the file or set config.data.tasks[1] to one of them')


def test_a_wrong_type_names_the_row(tmp_path):
  items = shop_rows(n_rows=60)[1]
  items[2] = (3, 'cat3', 'brand3', 'cheap')
  msg = _error(tmp_path, items=items)
  assert msg == (
      f"{tmp_path}/items.csv, row 3, column 'price': 'cheap' is not a number "
      "(config.data.item_features.numeric[0] ('price') reads it as one); fix the value or "
      'delete the row')


def test_an_empty_file_is_named(tmp_path):
  write_csv(tmp_path / 'items.csv', ('item_id', 'category', 'brand', 'price'), shop_rows()[1])
  (tmp_path / 'events.csv').write_bytes(b'')
  with pytest.raises(DataFileError, match=r'events\.csv, line 1: expected a header line naming '
                     r'the columns, found an empty file; write the header, or set '
                     r'config\.data\.events\.header=False and column_names'):
    pipeline.build_dataset(shop_config(tmp_path).data)
  (tmp_path / 'events.csv').write_text(','.join(EVENT_COLUMNS) + '\n')
  with pytest.raises(DataFileError, match=r'events\.csv, row 1: the file holds no data rows; '
                     r'fill it, or point config\.data\.events\.file at the right file'):
    pipeline.build_dataset(shop_config(tmp_path).data)


def test_a_label_outside_0_1_names_the_row_and_column(tmp_path):
  ev = shop_rows(n_rows=60)[0]
  ev[6] = ev[6][:3] + (2, 0)
  msg = _error(tmp_path, events=ev)
  assert msg == (
      f"{tmp_path}/events.csv, row 7, column 'click': label 2 of task 'click' is not 0 or 1 "
      "(config.data.tasks[0]); write 0 or 1, or derive the label with a condition instead, e.g. "
      "condition='click >= 4'")


def test_an_unparsable_timestamp_names_the_row_and_the_format(tmp_path):
  ev = [(u, i, f'2024-05-0{1 + k // 20} 10:{k % 60:02d}:00', c, p)
        for k, (u, i, _, c, p) in enumerate(shop_rows(n_rows=60)[0])]
  ev[11] = ev[11][:2] + ('2024-05-01 25:00:00',) + ev[11][3:]
  msg = _error(tmp_path, events=ev)  # unix seconds expected: the first row already fails
  assert msg == (f"{tmp_path}/events.csv, row 1, column 'timestamp': '2024-05-01 10:00:00' is "
                 "not a number of unix seconds (config.data.events.time_format='unix'); fix the "
                 'value, or set config.data.events.time_format to its format (a strptime format, '
                 "or one of ('unix', 'unix_ms', 'iso'))")
  c = shop_config(tmp_path)
  c.data.events.time_format = '%Y-%m-%d %H:%M:%S'
  with pytest.raises(DataFileError) as e:
    pipeline.build_dataset(c.data)
  assert str(e.value) == (
      f"{tmp_path}/events.csv, row 12, column 'timestamp': '2024-05-01 25:00:00' is not a time "
      "in the format '%Y-%m-%d %H:%M:%S' (config.data.events.time_format); fix the value, or set "
      "config.data.events.time_format to its format (a strptime format, or one of ('unix', "
      "'unix_ms', 'iso'))")


def test_an_empty_split_names_the_time_column_and_the_fix(tmp_path):
  msg = _error(tmp_path, holdout_start='2030-01-01')
  assert msg.startswith(f"{tmp_path}/events.csv, column 'timestamp': the holdout split is empty: "
                        'no request starts in it (requests start from 17000')
  assert msg.endswith('unix seconds); set config.data.holdout_start earlier, inside that span')


def test_spec_mistakes_name_the_field(tmp_path):
  assert 'config.data.tasks[1].parent=\'buy\' must name a task listed before it' in _error(
      tmp_path, tasks=(dict(name='click', column='click'),
                       dict(name='purchase', column='purchase', parent='buy')))
  assert "config.data.sequences[0].where='click = 1': cannot read 'click = 1'" in _error(
      tmp_path, sequences=(dict(name='clicked', where='click = 1', max_len=8),))
  assert ("config.data.item_features.categorical[0] ('category').encode='onehot': choose one "
          'of') in _error(tmp_path, item_features=dict(
              file='items.csv', categorical=(dict(name='category', encode='onehot'),)))


def test_a_split_by_time_gives_the_validation_split_train_accepts(tmp_path):
  """holdout_start / valid_start: the requests from each time on; train's validation check takes
  the dataset's own split (config.data.valid_fraction stays 0)."""
  from onetrans_jax.train import check_validation
  write_shop(tmp_path)
  c = shop_config(tmp_path)
  events = shop_rows()[0]
  c.data.valid_start, c.data.holdout_start = str(events[400][2]), str(events[500][2])
  ds = pipeline.build_dataset(c.data)
  t = ds.source.index.time
  (a, b), (v0, v1), (h0, h1) = ds.train_range, ds.valid_range, ds.eval_range
  assert a == 0 and b == v0 and v1 == h0 and h1 == len(ds.source)
  assert t[b - 1] < events[400][2] <= t[v0] and t[v1 - 1] < events[500][2] <= t[h0]
  c.train.eval_every = 2
  assert check_validation(c, ds.schema.task_names, ds.valid_range is not None) == (
      'valid/click/auc')
  c.data.valid_fraction = 0.1
  with pytest.raises(ConfigError, match='valid_start and valid_fraction=0.1 both carve'):
    pipeline.build_dataset(c.data)
