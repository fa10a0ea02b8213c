"""KuaiRand: the official CSV layouts -> exact requests, columns by name, streaming, strict checks.

The fixture is one small hand-checked world written as KuaiRand-Pure files (header lines, quoted
range values, pandas-style floats and gaps in the feature files); the 27K part files, the random
log and a random world for streaming and training reuse the same writers.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from onetrans_jax.data import kuairand, pipeline
from onetrans_jax.data.event_log import DataFileError
from onetrans_jax.errors import ConfigError
from tests.helpers import all_requests
from tests.kuairand_files import DAY, FIXTURE_CONFIG, T0, write_world


def _data(path: str, **kw):
  return kuairand.kuairand_data('pure', path=path, **{**FIXTURE_CONFIG, **kw})




# ---------------------------------------------------------------------------------- exact batch
def test_fixture_batch_is_exact(tmp_path):
  ds = pipeline.build_dataset(_data(write_world(tmp_path)))
  s = ds.schema
  onehot = [f'onehot_feat{k}' for k in range(18)]
  assert [f.name for f in s.request_categorical] == (
      ['user_id', 'user_active_degree', 'follow_user_num_range', 'fans_user_num_range',
       'friend_user_num_range', 'register_days_range', 'is_lowactive_period',
       'is_live_streamer', 'is_video_author'] + onehot + ['hour', 'weekday'])
  assert [f.name for f in s.request_numeric] == list(kuairand.USER_COUNTS)
  assert [f.name for f in s.candidate_categorical] == [
      'item_id', 'author', 'video_type', 'upload_type', 'video_tag', 'video_tag_2']
  assert [f.name for f in s.candidate_numeric] == ['video_duration']
  assert [q.name for q in s.sequences] == ['clicked', 'liked', 'long_viewed']
  assert s.sequence('liked').side_features == (('video_tag', 'tag'),)
  assert s.task_names == ('click', 'like', 'long_view') and s.task_parents == (-1, -1, -1)
  sizes = s.vocab_sizes
  assert (sizes['user'], sizes['item'], sizes['author'], sizes['video_type'],
          sizes['upload_type'], sizes['tag']) == (4, 5, 3, 3, 3, 67)  # 'Zzz' of video 99: unseen
  # Requests by start time: R1 u5@0 (0 ms and 400 ms: C = 2), R2 u5@1 s, R3 u0@100 (with @200),
  # R4 u5@14 d (with +10 s), R5 u9@14 d + 5 s, R6 u0@15 d; round(0.34 * 6) = 2 evaluate.
  assert len(ds.source) == 6
  assert ds.train_range == (0, 4) and ds.eval_range == (4, 6)
  b = all_requests(ds)
  np.testing.assert_array_equal(b['request']['user_id'], [2, 2, 1, 2, 3, 1])
  np.testing.assert_array_equal(b['request']['time'] - T0,
                                [0, 1, 100, 14 * DAY, 14 * DAY + 5, 15 * DAY])
  # User features: vocabularies in sorted value order over logged users ('(0,10]' < '(50,100]',
  # '0' < '[100,1k)', '730+' < '91-180'); flags and onehot codes + 1; u9 has no row: all 0.
  u0 = [2, 1, 2, 1, 1, 1, 1, 2] + [k % 3 + 1 for k in range(18)]
  u5 = [1, 2, 1, 2, 2, 2, 1, 1] + [1, 1, 1, 1154, 0] + [1] * 13
  u9 = [0] * 26
  # 10:00 Beijing -> hour id 11; 2022-04-08 and 04-22 are Fridays (5), 04-23 a Saturday (6).
  for r, (feats, day) in enumerate([(u5, 5), (u5, 5), (u0, 5), (u5, 5), (u9, 5), (u0, 6)]):
    np.testing.assert_array_equal(b['request']['cat'][r, 1:], feats + [11, day], err_msg=r)
  np.testing.assert_allclose(b['request']['num'][[2, 0, 4]],
                             np.log1p([[5, 312, 0, 3624], [60, 0, 2, 100], [0, 0, 0, 0]]),
                             rtol=1e-6)

  # Candidates: (video, author, type, upload type, tag, tag 2); AD < NORMAL, LongImport <
  # ShortImport; authors 77 -> 1, 500 -> 2; tag t -> t + 1; video 30: no row, all 0.
  video = {1: [2, 2, 2, 13, 66], 2: [1, 1, 1, 4, 0], 3: [2, 2, 2, 0, 0], 4: [0, 0, 0, 0, 0]}
  duration = {1: np.log1p(17.2), 2: np.log1p(60.0), 3: 0.0, 4: 0.0}
  cands = [[2, 1], [3], [4, 2], [3, 4], [1], [3]]
  labels = [[[1, 0, 1], [1, 1, 0]], [[0, 1, 0]], [[1, 1, 1], [0, 0, 0]],
            [[1, 0, 1], [0, 0, 0]], [[1, 0, 0]], [[1, 0, 1]]]
  for r in range(6):
    n = len(cands[r])
    np.testing.assert_array_equal(b['cand']['mask'][r], np.arange(2) < n)
    np.testing.assert_array_equal(b['cand']['cat'][r, :n], [[i] + video[i] for i in cands[r]])
    np.testing.assert_allclose(b['cand']['num'][r, :n, 0], [duration[i] for i in cands[r]],
                               rtol=1e-6)
    np.testing.assert_array_equal(b['labels'][r, :n], labels[r], err_msg=f'request {r}')
    assert not b['cand']['cat'][r, n:].any() and not b['labels'][r, n:].any()

  # Sequences (video, its first tag) strictly before the request, in ms order within a second.
  tag = {1: 13, 2: 4, 3: 0, 4: 0}
  expect = {
      'clicked': [[], [(2, 0), (1, 0)], [], [(2, 0), (1, 0)], [], [(4, 100)]],
      'liked': [[], [(1, 0)], [], [(1, 0), (3, 1)], [], [(4, 100)]],
      'long_viewed': [[], [(2, 0)], [], [(2, 0)], [], [(4, 100)]],
  }
  for name, rows in expect.items():
    seq, length = b['seq'][name], s.sequence(name).max_len
    for r, events in enumerate(rows):
      k = len(events)
      np.testing.assert_array_equal(seq['mask'][r], np.arange(length) >= length - k,
                                    err_msg=f'{name} request {r}')
      np.testing.assert_array_equal(seq['ids'][r, length - k:].reshape(k, 2),
                                    np.array([[i, tag[i]] for i, _ in events]).reshape(k, 2))
      np.testing.assert_array_equal(seq['time'][r, length - k:] - T0, [t for _, t in events])
      assert np.all(seq['time'][r][seq['mask'][r]] < b['request']['time'][r])


def test_variants_parts_random_log_and_conditional_tasks(tmp_path):
  base = kuairand.load(write_world(tmp_path / 'whole'))
  # 27K layout: log 1 in two pieces, under data/, files named _27k.
  split = kuairand.load(write_world(tmp_path / 'k27' / 'data', v='27k', parts=2) + '/..', '27k')
  assert split.num_events == base.num_events == 9
  np.testing.assert_array_equal(split.time, base.time)
  np.testing.assert_array_equal(split.item, base.item)
  rand = pipeline.build_dataset(_data(str(tmp_path / 'whole'), include_random=True))
  assert rand.source.log.num_events == 10
  assert int(rand.source.index.size.sum()) == 10
  cond = pipeline.build_dataset(_data(str(tmp_path / 'whole'), conditional_tasks=True))
  assert cond.schema.task_parents == (-1, 0, 0)
  few = pipeline.build_dataset(_data(str(tmp_path / 'whole'), max_rows=2))
  assert few.source.log.num_events == 4  # the first 2 rows of each log file


def random_world(path, seed: int = 0, users: int = 30, videos: int = 50, n: int = 2000) -> str:
  rng = np.random.default_rng(seed)
  events = []
  for _ in range(n):
    click = int(rng.random() < 0.4)
    events.append((int(rng.integers(0, users)), int(rng.integers(0, videos)),
                   int(rng.integers(0, 20 * DAY)) * 1000 + int(rng.integers(0, 1000)), click,
                   int(rng.random() < 0.2), int(click and rng.random() < 0.6)))
  half = n // 2
  user_rows = [[u, ['high_active', 'full_active'][u % 2], 0, u % 2, 0, u, '(0,10]', u * 3,
                '[10,100)', 1, '[1,5)', 100 + u, '91-180'] + [str(u % (k + 2)) for k in range(18)]
               for u in range(users)]
  video_rows = [[v, v % 7, ['NORMAL', 'AD'][v % 5 == 0], '2021-01-01', 'ShortImport', 1,
                 f'{1000.0 * (v + 1)}', 720, 1280, 1, 1, f'{v % 9},{v % 4}'] for v in range(videos)]
  return write_world(path, events[:half], events[half:], user_rows, video_rows)


def test_streaming_chunk_size_does_not_matter(tmp_path):
  path = random_world(tmp_path)
  big = kuairand.load(path, chunk_bytes=1 << 20)
  small = kuairand.load(path, chunk_bytes=16)  # smaller than a line
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
  ds = pipeline.build_dataset(_data(path, num_candidates=8, clicked_len=10, liked_len=5,
                                    long_viewed_len=5, eval_fraction=0.2))
  it = pipeline.make_iterator(ds, ds.train_range, global_batch_size=16, shuffle=True, seed=0,
                              repeat=True, num_threads=1)
  for _ in range(3):
    batch = next(it)
    ds.schema.check_batch(batch)
    for name in kuairand.SEQUENCES:
      seq = batch['seq'][name]
      assert np.all(np.where(seq['mask'], seq['time'], 0) < batch['request']['time'][:, None])
  ix = ds.source.index
  assert ix.time[slice(*ds.train_range)].max() <= ix.time[slice(*ds.eval_range)].min()


# ---------------------------------------------------------------------------------- validation
def _rewrite(path: str, name: str, edit) -> None:
  file = os.path.join(path, name)
  with open(file, 'rb') as f:
    lines = f.read().split(b'\n')
  edit(lines)
  with open(file, 'wb') as f:
    f.write(b'\n'.join(lines))


def _build(path, **kw):
  return pipeline.build_dataset(_data(str(path), **kw))


def test_missing_files(tmp_path):
  path = write_world(tmp_path)
  os.remove(os.path.join(path, 'video_features_basic_pure.csv'))
  with pytest.raises(DataFileError, match=r'video_features_basic_pure\.csv: file not found; '
                                          'download KuaiRand-Pure'):
    _build(path)
  os.remove(os.path.join(path, 'log_standard_4_22_to_5_08_pure.csv'))
  with pytest.raises(DataFileError, match=r'log_standard_4_22_to_5_08_pure\.csv: file not found '
                                          r'\(nor its _part1'):
    _build(path)


def test_missing_required_columns(tmp_path):
  path = write_world(tmp_path)

  def drop(lines):  # remove long_view and time_ms from every line (no commas in log values)
    for k, line in enumerate(lines):
      if line:
        fields = line.split(b',')
        lines[k] = b','.join(f for j, f in enumerate(fields) if j not in (4, 11))

  _rewrite(path, 'log_standard_4_08_to_4_21_pure.csv', drop)
  with pytest.raises(DataFileError, match=r"log_standard_4_08_to_4_21_pure\.csv, line 1: missing "
                                          r"required column\(s\) \['time_ms', 'long_view'\]"):
    _build(path)
  path = write_world(tmp_path / 'u')
  _rewrite(path, 'user_features_pure.csv',
           lambda lines: lines.__setitem__(0, lines[0].replace(b'onehot_feat17', b'feat17')))
  with pytest.raises(DataFileError, match=r"user_features_pure\.csv, line 1: missing required "
                                          r"column\(s\) \['onehot_feat17'\]"):
    _build(path)


@pytest.mark.parametrize('chunk_bytes', [16, 1 << 20])
def test_bad_lines_name_the_line(tmp_path, chunk_bytes):
  log = 'log_standard_4_22_to_5_08_pure.csv'
  cases = [
      (log, 2, lambda l: l + b',7', r"line 3: 20 field\(s\) separated by ',', expected 19"),
      (log, 3, lambda l: b'x' + l, r"line 4: user_id \(field 1\) is 'x9', not an integer"),
      (log, 4, lambda l: l.replace(b',20220408,', b',20220408\xff,'),
       r"line 5: byte b'\\xff' at column \d+ is not valid utf-8"),
      (log, 1, lambda l: b','.join(l.split(b',')[:6] + [b'2'] + l.split(b',')[7:]),
       r'line 2: is_like is 2, not 0 or 1'),
      ('video_features_basic_pure.csv', 4, lambda l: b'10' + l[2:],
       r'video_features_basic_pure\.csv, line 5: video_id 10 is listed twice'),
      ('user_features_pure.csv', 2, lambda l: l.replace(b',0,0,0,1,', b',0,0,0,x,', 1),
       r"user_features_pure\.csv, line 3: follow_user_num is 'x', not a number"),
      ('user_features_pure.csv', 3, lambda l: l.replace(b'full_active,1,', b'full_active,3,'),
       r'user_features_pure\.csv, line 4: is_lowactive_period is 3, not 0 or 1'),
  ]
  for k, (name, at, edit, message) in enumerate(cases):
    path = write_world(tmp_path / str(k))
    _rewrite(path, name, lambda lines: lines.__setitem__(at, edit(lines[at])))
    with pytest.raises(DataFileError, match=message):
      _build(path, chunk_bytes=chunk_bytes)


def test_config_errors(tmp_path):
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path is not set'):
    pipeline.build_dataset(kuairand.kuairand_data('1k'))
  with pytest.raises(pipeline.DataConfigError, match=r'config\.data\.path=.* is not a directory'):
    pipeline.build_dataset(kuairand.kuairand_data(path=str(tmp_path / 'nowhere')))
  with pytest.raises(ConfigError, match=r"KuaiRand variant '2k'"):
    kuairand.kuairand_data('2k')
  path = write_world(tmp_path)
  cfg = _data(path)
  cfg.variant = '2k'
  with pytest.raises(pipeline.DataConfigError, match=r"config\.data\.variant='2k'"):
    pipeline.build_dataset(cfg)
  with pytest.raises(ConfigError, match=r'config\.data\.liked_len must be >= 1'):
    _build(path, liked_len=0)
  with pytest.raises(ConfigError, match=r'config\.data\.max_rows must be >= 1'):
    _build(path, max_rows=0)


# ---------------------------------------------------------------------------------- training
def test_training_smoke(tmp_path):
  from onetrans_jax.experiments import pooled_mlp
  from onetrans_jax.train import train_and_evaluate
  c = pooled_mlp.get_config()
  c.data = _data(random_world(tmp_path / 'data'), num_candidates=8, clicked_len=8, liked_len=4,
                 long_viewed_len=4, eval_fraction=0.3, batch_size=8)
  c.model.embed_dim = 8
  c.model.hidden = (16,)
  c.train.total_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  result = train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['step'] == 4
  for task in kuairand.TASK_NAMES:
    m = result['final'][task]
    assert m['count'] > 0 and math.isfinite(m['logloss']) and math.isfinite(m['auc']), (task, m)
