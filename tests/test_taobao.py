"""Taobao UserBehavior: the official CSV layout -> exact requests, streaming, strict line checks.

The fixture is a small hand-checked log written as UserBehavior.csv (no header, 5 columns); a
random log of a few thousand rows drives the streaming, sampling and training checks.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from onetrans_jax.data import event_log as el
from onetrans_jax.data import pipeline, taobao
from onetrans_jax.data.event_log import DataFileError
from onetrans_jax.errors import ConfigError
from tests.helpers import all_requests
from tests.taobao_files import (FIXTURE_CONFIG, ROWS, T0, random_rows, write_csv)


def _data(path: str, **kw):
  return taobao.taobao_data(path=path, **{**FIXTURE_CONFIG, **kw})




# ---------------------------------------------------------------------------------- exact batch
def test_fixture_batch_is_exact(tmp_path):
  ds = pipeline.build_dataset(_data(write_csv(tmp_path)))
  s = ds.schema
  assert [f.name for f in s.request_categorical] == ['user_id', 'hour', 'weekday']
  assert [f.name for f in s.candidate_categorical] == ['item_id', 'category']
  assert [q.name for q in s.sequences] == ['pv', 'fav', 'cart', 'buy']
  assert all(q.side_features == (('category', 'category'),) for q in s.sequences)
  assert s.task_names == ('click', 'cart', 'buy') and s.task_parents == (-1, 0, 0)
  assert s.vocab_sizes == {'user': 4, 'item': 6, 'category': 4, 'hour': 25, 'weekday': 8}
  # Requests by start time: A u100@0, C1 u7@100 (2 pvs), C2 u7@200, B u100@5000, D u55@10000;
  # the last round(0.4 * 5) = 2 evaluate.
  assert len(ds.source) == 5
  assert ds.train_range == (0, 3) and ds.eval_range == (3, 5)
  b = all_requests(ds)
  np.testing.assert_array_equal(b['request']['user_id'], [3, 1, 1, 3, 2])
  np.testing.assert_array_equal(b['request']['time'] - T0, [0, 100, 200, 5000, 10000])
  # Beijing time: 08:00 -> hour id 9; +5000 s 09:23 -> 10; +10000 s 10:46 -> 11; Saturday = 6.
  np.testing.assert_array_equal(b['request']['cat'], [[3, 9, 6], [1, 9, 6], [1, 9, 6],
                                                      [3, 10, 6], [2, 11, 6]])
  category = {1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
  cands = [[1, 2], [5, 3], [2], [4], [1, 1]]
  labels = [[[1, 1, 0], [1, 0, 0]],   # A: 1000 carted 120 s later; its buy came after 4000 s
            [[1, 0, 0], [1, 0, 0]],   # C1: the cart of 5000 came before the view
            [[1, 0, 0]],
            [[1, 0, 1]],              # B: bought in the same second
            [[1, 0, 1], [1, 0, 1]]]   # D: both views of 1000 precede its buy
  for r in range(5):
    n = len(cands[r])
    np.testing.assert_array_equal(b['cand']['mask'][r], np.arange(2) < n)
    np.testing.assert_array_equal(b['cand']['cat'][r, :n], [[i, category[i]] for i in cands[r]])
    np.testing.assert_array_equal(b['labels'][r, :n], labels[r], err_msg=f'request {r}')
    assert not b['cand']['cat'][r, n:].any() and not b['labels'][r, n:].any()

  # Sequences: (item, time) strictly before the request, right-aligned, category attached.
  expect = {
      'pv': [[], [], [(5, 100), (3, 100)], [(1, 0), (2, 60)], []],
      'fav': [[], [], [], [(3, 3000)], []],
      'cart': [[], [(5, 50)], [(5, 50)], [(1, 120)], []],
      'buy': [[], [], [], [(1, 4000)], []],   # B's own same-second buy is not earlier
  }
  for name, rows in expect.items():
    seq, length = b['seq'][name], s.sequence(name).max_len
    for r, events in enumerate(rows):
      k = len(events)
      np.testing.assert_array_equal(seq['mask'][r], np.arange(length) >= length - k,
                                    err_msg=f'{name} request {r}')
      np.testing.assert_array_equal(seq['ids'][r, length - k:].reshape(k, 2),
                                    np.array([[i, category[i]] for i, _ in events]).reshape(k, 2))
      np.testing.assert_array_equal(seq['time'][r, length - k:] - T0, [t for _, t in events])
      assert np.all(seq['time'][r][seq['mask'][r]] < b['request']['time'][r])
      assert not seq['ids'][r, :length - k].any()


def test_time_range_and_max_rows(tmp_path, caplog):
  path = os.path.join(write_csv(tmp_path), taobao.FILE)
  with caplog.at_level('WARNING'):
    raw = taobao.read(path)
  assert (raw.rows_read, raw.out_of_range, raw.user.size) == (16, 2, 14)
  assert 'read 16 rows; dropped 2 with a timestamp outside config.data.time_range' in caplog.text
  assert raw.user.dtype == np.int32 and raw.behavior.dtype == np.int8
  raw = taobao.read(path, time_range=None)
  assert (raw.rows_read, raw.out_of_range, raw.user.size) == (16, 0, 16)
  raw = taobao.read(path, time_range=(T0, T0 + 150))  # only dt in [0, 150)
  assert raw.out_of_range == 10
  assert sorted((raw.time - T0).tolist()) == [0, 50, 60, 100, 100, 120]
  raw = taobao.read(path, max_rows=5)
  assert raw.rows_read == 5 and raw.user.tolist() == [100] * 5
  # Through the config: the first 6 rows hold u100's pvs at 0 and 60 s and u7's at 100 s.
  ds = pipeline.build_dataset(_data(str(tmp_path), max_rows=6, eval_fraction=0.5))
  assert ds.source.log.num_users == 2 and int(ds.source.log.is_impression.sum()) == 3


def test_streaming_chunk_size_does_not_matter(tmp_path):
  path = write_csv(tmp_path, random_rows())
  big = taobao.load(os.path.join(path, taobao.FILE), negatives=2, chunk_bytes=1 << 20)
  for chunk_bytes in (7, 1000):  # 7: smaller than a line
    small = taobao.load(os.path.join(path, taobao.FILE), negatives=2, chunk_bytes=chunk_bytes)
    for f in dataclasses.fields(big):
      a, b = getattr(big, f.name), getattr(small, f.name)
      if isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=f.name)
      elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
          np.testing.assert_array_equal(a[k], b[k], err_msg=f'{f.name}[{k}]')
      else:
        assert a == b, f.name


def test_text_stream_edges(tmp_path):
  """The shared reader: BOM + header, CRLF, blank lines, quoted separators, max_rows, lines."""
  p = tmp_path / 'x.csv'
  p.write_bytes('\ufeffid,name,tag\r\n1,a,"1,2"\r\n\r\n2,b,3\n\n\n3,"c",\n4,d,5'.encode())
  spec = {0: ('id', np.int64), 2: ('tag', 'U8')}
  for chunk_bytes in (1, 5, 1 << 20):
    s = el.TextStream(str(p), header=True, quotechar='"', what='', chunk_bytes=chunk_bytes)
    assert s.header == ('id', 'name', 'tag') and s.columns(['tag']) == {'tag': 2}
    chunks = list(s.chunks(spec))
    assert np.concatenate([c[0] for c in chunks]).tolist() == [1, 2, 3, 4]
    assert np.concatenate([c[2] for c in chunks]).tolist() == ['1,2', '3', '', '5']
    assert np.concatenate([c.lines for c in chunks]).tolist() == [2, 4, 7, 8]
    s = el.TextStream(str(p), header=True, quotechar='"', what='', chunk_bytes=chunk_bytes,
                      max_rows=3)
    assert np.concatenate([c[0] for c in s.chunks(spec)]).tolist() == [1, 2, 3]
  p.write_bytes(b'id,name,tag\n1,a,b\n2,b,toolongvalue\n')
  with pytest.raises(DataFileError, match=r'x\.csv, line 3: tag \(field 3\) is longer than 8'):
    list(el.TextStream(str(p), header=True, what='').chunks(spec))
  p.write_bytes(b'')
  with pytest.raises(DataFileError, match=r'x\.csv, line 1: expected a header line .*empty file'):
    el.TextStream(str(p), header=True, what='')


def test_sampled_negatives(tmp_path):
  path = write_csv(tmp_path, random_rows())
  log = taobao.load(os.path.join(path, taobao.FILE), negatives=2, seed=3)
  rows = random_rows()
  n_real, n_pv = len(rows), sum(r[3] == 'pv' for r in rows)
  real, neg = slice(0, n_real), slice(n_real, None)
  pv = log.in_sequence['pv'][real]
  assert int(pv.sum()) == n_pv
  assert 0.9 * 2 * n_pv < log.num_events - n_real <= 2 * n_pv  # collisions with the pv dropped
  assert log.is_impression[neg].all() and not log.labels[neg].any()
  assert not any(m[neg].any() for m in log.in_sequence.values())
  np.testing.assert_array_equal(log.is_impression[real], pv)
  np.testing.assert_array_equal(log.labels[real][pv, 0], 1)
  # Conditional labels only on real pvs; with label_window = 3600 some carts and buys are in.
  assert 0 < log.labels[real][pv, 1].mean() < 0.3 and 0 < log.labels[real][pv, 2].mean() < 0.2
  # Deterministic, seed-dependent.
  again = taobao.load(os.path.join(path, taobao.FILE), negatives=2, seed=3)
  np.testing.assert_array_equal(again.item, log.item)
  other = taobao.load(os.path.join(path, taobao.FILE), negatives=2, seed=4)
  assert not np.array_equal(other.item[n_real:n_real + 50], log.item[neg][:50])
  # Through the pipeline: every request's sequences are strictly earlier, batches pass the schema.
  ds = pipeline.build_dataset(_data(path, negatives=2, num_candidates=8, eval_fraction=0.2))
  it = pipeline.make_iterator(ds, ds.train_range, global_batch_size=16, shuffle=True, seed=0,
                              repeat=True, num_threads=1)
  for _ in range(3):
    batch = next(it)
    ds.schema.check_batch(batch)
    for name in taobao.SEQUENCES:
      seq = batch['seq'][name]
      assert np.all(np.where(seq['mask'], seq['time'], 0) < batch['request']['time'][:, None])
  ix = ds.source.index
  assert np.all(np.diff(ix.time) >= 0)
  assert ix.time[slice(*ds.train_range)].max() <= ix.time[slice(*ds.eval_range)].min()


# ---------------------------------------------------------------------------------- validation
def _write_lines(path, lines: list[bytes]) -> str:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, taobao.FILE), 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')
  return str(path)


def _lines() -> list[bytes]:
  return [f'{u},{i},{c},{b},{T0 + dt}'.encode() for u, i, c, b, dt in ROWS]


def _build(path):
  return pipeline.build_dataset(_data(str(path)))


def test_missing_file(tmp_path):
  with pytest.raises(DataFileError, match=r'UserBehavior\.csv: file not found; download '
                                          r'UserBehavior\.csv\.zip'):
    _build(tmp_path)


@pytest.mark.parametrize('chunk_bytes', [8, 1 << 20])
def test_bad_lines_name_the_line(tmp_path, chunk_bytes):
  cases = [
      (3, b'100,1000,10,pv', r'line 4: 4 field\(s\) separated by .*expected 5'),
      (5, b'100,x1000,10,pv,1511568000',
       r"line 6: item id \(field 2\) is 'x1000', not an integer"),
      (7, b'7,2000,10,click,1511568200',
       r"line 8: behavior type 'click' \(field 4\) is not one of \['pv', 'fav', 'cart', 'buy'\]"),
      (8, b'7,2000,10,favourite_and_more,1511568200', r'line 9: behavior type \(field 4\) is longer than 8'),
      (2, b'100,1000,10,c\xe4rt,1511568120', r"line 3: byte b'\\xe4' at column 14 is not valid "
                                             'ascii'),
      (9, b'100,-4,30,pv,1511573000', r'line 10: item id -4 \(field 2\) is not a 32-bit id'),
  ]
  for k, (at, line, message) in enumerate(cases):
    lines = _lines()
    lines[at] = line
    path = _write_lines(tmp_path / str(k), lines)
    with pytest.raises(DataFileError, match=r'UserBehavior\.csv, ' + message):
      pipeline.build_dataset(_data(path, chunk_bytes=chunk_bytes))


def test_stray_time_without_range(tmp_path):
  lines = _lines()
  lines[4] = b'100,3000,20,fav,99999999999'
  path = _write_lines(tmp_path, lines)
  with pytest.raises(DataFileError, match=r'line 5: timestamp 99999999999 \(field 5\) is not a '
                                          r'unix time .*config\.data\.time_range'):
    pipeline.build_dataset(_data(path, time_range=None))
  assert len(pipeline.build_dataset(_data(path)).source) == 5  # the default window drops it


def test_config_errors(tmp_path):
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path is not set'):
    pipeline.build_dataset(taobao.taobao_data())
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path=.* does not exist'):
    pipeline.build_dataset(taobao.taobao_data(path=str(tmp_path / 'nowhere.csv')))
  path = write_csv(tmp_path)
  for field, value, message in (('time_range', (5, 1), r'config\.data\.time_range must be'),
                                ('max_rows', 0, r'config\.data\.max_rows must be >= 1'),
                                ('negatives', -1, r'config\.data\.negatives must be >= 0'),
                                ('cart_len', 0, r'config\.data\.cart_len must be >= 1'),
                                ('eval_fraction', 1.0, r'config\.data\.eval_fraction')):
    with pytest.raises(ConfigError, match=message):
      pipeline.build_dataset(_data(path, **{field: value}))
  with pytest.raises(DataFileError, match=r'no rows left to rank \(16 read, 16 outside'):
    pipeline.build_dataset(_data(path, time_range=(1, 2)))


# ---------------------------------------------------------------------------------- training
def test_training_smoke(tmp_path):
  from onetrans_jax.experiments import pooled_mlp
  from onetrans_jax.train import train_and_evaluate
  c = pooled_mlp.get_config()
  c.data = _data(write_csv(tmp_path / 'data', random_rows()), negatives=1, num_candidates=8,
                 pv_len=8, eval_fraction=0.3, batch_size=8)
  c.model.embed_dim = 8
  c.model.hidden = (16,)
  c.train.total_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  result = train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['step'] == 4
  for task in ('click', 'cart', 'buy'):
    m = result['final'][task]
    assert m['count'] > 0 and math.isfinite(m['logloss']) and math.isfinite(m['auc']), (task, m)
