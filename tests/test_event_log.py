"""The dataset-independent request builder: sessions, leak-free sequences, split, text tables.

A hand-built log checks exact requests (non-impression events, same-second events, another user's
earlier events, numeric features, time context); a random log checks the vectorised builder
against a direct per-request reading of the definitions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onetrans_jax.data import event_log as el
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC, a Tuesday


def _log(**changes) -> el.EventLog:
  """Two users, four items; tasks click -> buy. Columns: user, item, dt, impression, click, buy,
  in 'click' sequence, in 'buy' sequence."""
  rows = [
      (1, 1, 100, 0, 0, 0, 1, 0),   # e0: a click outside any impression (feeds sequences only)
      (1, 2, 1000, 1, 1, 0, 1, 0),  # e1
      (1, 3, 1010, 1, 0, 0, 0, 0),  # e2
      (1, 4, 1020, 1, 1, 1, 1, 1),  # e3
      (1, 1, 1020, 1, 0, 0, 0, 0),  # e4: same second as e3
      (2, 3, 1005, 1, 1, 1, 1, 1),  # e6 (listed before e5: file order is not time order)
      (1, 2, 5000, 1, 1, 0, 1, 0),  # e5: after a gap > session_gap
      (2, 4, 2000, 1, 0, 0, 0, 0),  # e7
  ]
  a = np.array(rows)
  log = el.EventLog(
      user=a[:, 0].astype(np.int32), item=a[:, 1].astype(np.int32),
      time=(T0 + a[:, 2]).astype(np.int64), labels=a[:, 4:6].astype(np.float32),
      is_impression=a[:, 3].astype(bool),
      in_sequence={'click': a[:, 6].astype(bool), 'buy': a[:, 7].astype(bool)},
      tasks=(Task('click'), Task('buy', parent='click')), num_users=2, num_items=4,
      item_cat={'cat': np.array([0, 1, 2, 1, 3], np.int32)},
      item_num={'price': np.array([0, 1.5, 2.5, 3.5, 4.5], np.float32)},
      user_cat={'segment': np.array([0, 2, 1], np.int32)},
      user_num={'activity': np.array([0, 0.5, 0.25], np.float32)},
      vocab={'cat': 'category'}, vocab_sizes={'category': 6})
  return dataclasses.replace(log, **changes)


CFG = el.RequestConfig(session_gap=600, num_candidates=2, max_len={'click': 2, 'buy': 2},
                       eval_fraction=0.4, seq_side_features=('cat',))


def test_hand_built_requests():
  ds = el.make_dataset(_log(), CFG)
  s = ds.schema
  assert [f.name for f in s.request_categorical] == ['user_id', 'segment', 'hour', 'weekday']
  assert [f.name for f in s.request_numeric] == ['activity']
  assert [f.name for f in s.candidate_categorical] == ['item_id', 'cat']
  assert [f.name for f in s.candidate_numeric] == ['price']
  assert s.sequence('click').side_features == (('cat', 'category'),)
  assert s.vocab_sizes == {'user': 3, 'item': 5, 'category': 6, 'segment': 3, 'hour': 25,
                           'weekday': 8}
  # u1's impressions 1000, 1010, 1020, 1020 | 5000 -> C = 2 splits the first session in two;
  # u2's 1005 | 2000 (gap 995 > 600). By start time: A u1@1000, D u2@1005, B u1@1020, E u2@2000,
  # C u1@5000; the last round(0.4 * 5) = 2 evaluate.
  assert ds.train_range == (0, 3) and ds.eval_range == (3, 5)
  it = pipeline.make_iterator(ds, (0, 5), global_batch_size=5, shuffle=False, seed=0,
                              repeat=False, num_threads=1)
  b = next(it)
  s.check_batch(b)
  np.testing.assert_array_equal(b['request']['user_id'], [1, 2, 1, 2, 1])
  np.testing.assert_array_equal(b['request']['time'] - T0, [1000, 1005, 1020, 2000, 5000])
  # 22:13 UTC + 1000..2000 s is 22:xx (hour id 23); + 5000 s is 23:36 (id 24); Tuesday = 2.
  np.testing.assert_array_equal(b['request']['cat'], [[1, 2, 23, 2], [2, 1, 23, 2],
                                                      [1, 2, 23, 2], [2, 1, 23, 2],
                                                      [1, 2, 24, 2]])
  np.testing.assert_array_equal(b['request']['num'][:, 0], [0.5, 0.25, 0.5, 0.25, 0.5])
  np.testing.assert_array_equal(b['cand']['cat'], [[[2, 2], [3, 1]], [[3, 1], [0, 0]],
                                                   [[4, 3], [1, 1]], [[4, 3], [0, 0]],
                                                   [[2, 2], [0, 0]]])
  np.testing.assert_array_equal(b['cand']['num'][..., 0], [[2.5, 3.5], [3.5, 0], [4.5, 1.5],
                                                           [4.5, 0], [2.5, 0]])
  np.testing.assert_array_equal(b['cand']['mask'], [[1, 1], [1, 0], [1, 1], [1, 0], [1, 0]])
  np.testing.assert_array_equal(b['labels'], [[[1, 0], [0, 0]], [[1, 1], [0, 0]],
                                              [[1, 1], [0, 0]], [[0, 0], [0, 0]],
                                              [[1, 0], [0, 0]]])
  # click sequence (max 2): A sees only e0 (the non-impression click); D sees nothing (u1's e1 at
  # 1000 < 1005 is another user's); B sees e0, e1 but not its own e3 (1020 is not < 1020);
  # E sees e6; C the latest two of e0, e1, e3.
  click = b['seq']['click']
  np.testing.assert_array_equal(click['mask'], [[0, 1], [0, 0], [1, 1], [0, 1], [1, 1]])
  np.testing.assert_array_equal(click['ids'], [[[0, 0], [1, 1]], [[0, 0], [0, 0]],
                                               [[1, 1], [2, 2]], [[0, 0], [3, 1]],
                                               [[2, 2], [4, 3]]])
  np.testing.assert_array_equal(np.where(click['mask'], click['time'] - T0, 0),
                                [[0, 100], [0, 0], [100, 1000], [0, 1005], [1000, 1020]])
  assert not click['time'][~click['mask']].any()
  buy = b['seq']['buy']
  np.testing.assert_array_equal(buy['mask'], [[0, 0], [0, 0], [0, 0], [0, 1], [0, 1]])
  np.testing.assert_array_equal(buy['ids'][:, 1, 0], [0, 0, 0, 3, 4])


def test_random_access_and_bounds():
  src = el.EventLogSource(_log(), CFG)
  assert len(src) == 5
  r = src[np.int64(4)]
  assert int(r['request']['time']) == T0 + 5000 and r['cand']['mask'].tolist() == [True, False]
  with pytest.raises(IndexError):
    src[5]


def _brute_force(log: el.EventLog, cfg: el.RequestConfig):
  """Requests straight from the definitions, one Python loop per user (the reference)."""
  requests = []
  for u in range(1, log.num_users + 1):
    imp = sorted(np.flatnonzero((log.user == u) & log.is_impression),
                 key=lambda e: (log.time[e], e))
    cur: list[int] = []
    for e in imp:
      if cur and (log.time[e] - log.time[cur[-1]] > cfg.session_gap or
                  len(cur) == cfg.num_candidates):
        requests.append(cur)
        cur = []
      cur.append(e)  # a full request (C events) starts the next chunk of the same session
    if cur:
      requests.append(cur)
  out = []
  for events in requests:
    u, t0 = int(log.user[events[0]]), int(log.time[events[0]])
    seqs = {}
    for name, member in log.in_sequence.items():
      ev = np.flatnonzero(member & (log.user == u) & (log.time < t0))
      ev = sorted(ev, key=lambda e: (log.time[e], e))[-cfg.max_len[name]:]
      seqs[name] = [(int(log.item[e]), int(log.time[e])) for e in ev]
    out.append((t0, u, [int(log.item[e]) for e in events], seqs))
  return sorted(out, key=lambda r: r[0])


def test_matches_brute_force_on_a_random_log():
  rng = np.random.default_rng(0)
  n, users, items = 3000, 40, 60
  user = rng.integers(1, users + 1, n).astype(np.int32)
  # Coarse times: many same-second ties, and gaps of exactly session_gap (5 x 37 s).
  time = (T0 + rng.integers(0, 400, n) * 37).astype(np.int64)
  log = el.EventLog(
      user=user, item=rng.integers(1, items + 1, n).astype(np.int32), time=time,
      labels=(rng.random((n, 1)) < 0.3).astype(np.float32),
      is_impression=rng.random(n) < 0.7,
      in_sequence={'a': rng.random(n) < 0.5, 'b': rng.random(n) < 0.1},
      tasks=(Task('y'),), num_users=users, num_items=items,
      item_cat={'g': rng.integers(1, 5, items + 1).astype(np.int32)})
  cfg = el.RequestConfig(session_gap=185, num_candidates=5, max_len={'a': 7, 'b': 3},
                         eval_fraction=0.2, seq_side_features=('g',))
  src = el.EventLogSource(log, cfg)
  ref = _brute_force(log, cfg)
  assert len(src) == len(ref) and int(src.index.size.sum()) == int(log.is_impression.sum())
  got = []
  for i in range(len(src)):
    r = src[i]
    seqs = {}
    for name in ('a', 'b'):
      s = r['seq'][name]
      m = s['mask']
      assert not m[:m.size - m.sum()].any()  # right-aligned
      np.testing.assert_array_equal(s['ids'][m, 1], log.item_cat['g'][s['ids'][m, 0]])
      seqs[name] = list(zip(s['ids'][m, 0].tolist(), s['time'][m].tolist()))
    items_ = r['cand']['cat'][r['cand']['mask'], 0].tolist()
    got.append((int(r['request']['time']), int(r['request']['user_id']), items_, seqs))
  # Same multiset of requests, in chronological order (ties between users in any order).
  assert [g[0] for g in got] == sorted(g[0] for g in got)
  key = lambda r: (r[0], r[1], r[2])
  assert sorted(got, key=key) == sorted(ref, key=key)


def test_split():
  assert el.chronological_split(10, 0.1) == ((0, 9), (9, 10))
  assert el.chronological_split(10, 0.01) == ((0, 9), (9, 10))   # at least one eval request
  assert el.chronological_split(3, 0.9) == ((0, 1), (1, 3))      # at least one train request
  with pytest.raises(ConfigError, match='at least 2'):
    el.chronological_split(1, 0.5)


def test_bad_logs_and_configs():
  with pytest.raises(ValueError, match=r'EventLog.item ids must lie in 1\.\.4'):
    el.EventLogSource(_log(item=np.full(8, 5, np.int32)), CFG)
  with pytest.raises(ValueError, match=r"vocab_sizes\['category'\] = 3, but an id 3 uses it"):
    el.EventLogSource(_log(vocab_sizes={'category': 3}), CFG)
  with pytest.raises(ValueError, match=r"item_num\['price'\]: expected \[5\] float32"):
    el.EventLogSource(_log(item_num={'price': np.zeros(4, np.float32)}), CFG)
  with pytest.raises(ValueError, match='reserved'):
    el.EventLogSource(_log(user_cat={'hour': np.zeros(3, np.int32)}), CFG)
  with pytest.raises(ConfigError, match='config.data.num_candidates must be >= 1'):
    el.EventLogSource(_log(), dataclasses.replace(CFG, num_candidates=0))
  with pytest.raises(ConfigError, match=r"sequences \['buy', 'click'\]"):
    el.EventLogSource(_log(), dataclasses.replace(CFG, max_len={'click': 2}))
  with pytest.raises(ConfigError, match="side feature 'brand'"):
    el.EventLogSource(_log(), dataclasses.replace(CFG, seq_side_features=('brand',)))
  with pytest.raises(ConfigError, match="event feature 'rating' is not a per-event"):
    el.EventLogSource(_log(), dataclasses.replace(CFG, seq_event_features=('rating',)))
  with pytest.raises(ValueError, match=r"event_cat\['rating'\]: expected \[8\] int32"):
    el.EventLogSource(_log(event_cat={'rating': np.ones(7, np.int32)}), CFG)
  with pytest.raises(ValueError, match=r"event_cat\['rating'\] holds ids < 1"):
    el.EventLogSource(_log(event_cat={'rating': np.zeros(8, np.int32)}), CFG)


def test_read_table_and_ids(tmp_path):
  p = tmp_path / 'x.txt'
  p.write_bytes(b'1|a\r\n\n30|b\r\n2|c\n')
  t = el.read_table(str(p), sep='|', num_fields=2, encoding='ascii', what='')
  assert t.rows == [['1', 'a'], ['30', 'b'], ['2', 'c']] and t.lines.tolist() == [1, 3, 4]
  np.testing.assert_array_equal(t.ints(0, 'id'), [1, 30, 2])
  with pytest.raises(el.DataFileError, match=r"x\.txt, line 1: name \(field 2\) is 'a', not an "
                                             'integer'):
    t.ints(1, 'name')
  known = el.dense_ids(t.ints(0, 'id'), t)
  np.testing.assert_array_equal(known, [1, 2, 30])
  np.testing.assert_array_equal(el.lookup_ids(known, [30, 1, 7, 2]), [3, 1, 0, 2])
  p.write_bytes(b'1|a\n2|b\n1|c\n')
  t = el.read_table(str(p), sep='|', num_fields=2, encoding='ascii', what='')
  with pytest.raises(el.DataFileError, match=r'line 3: item 1 is listed twice'):
    el.dense_ids(t.ints(0, 'id'), t, 'item')
  p.write_bytes(b'1|a\n2|b|c\n')
  with pytest.raises(el.DataFileError, match=r'line 2: 3 field\(s\)'):
    el.read_table(str(p), sep='|', num_fields=2, encoding='ascii', what='')
  with pytest.raises(el.DataFileError, match=r'nope\.txt: file not found; get it there'):
    el.read_table(str(tmp_path / 'nope.txt'), sep='|', num_fields=2, encoding='ascii',
                  what='get it there')
