"""grain pipeline: deterministic, resumable from its saved state, padded final batches."""

from __future__ import annotations

import numpy as np
import pytest

from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError


def _ids(batch):
  return batch['request']['time'].tolist()


def _iter(ds, **kw):
  args = dict(global_batch_size=8, shuffle=False, seed=0, repeat=True, num_threads=1)
  args.update(kw)
  return pipeline.make_iterator(ds, ds.train_range, **args)


def test_chronological_stream_and_restore(config):
  ds = pipeline.build_dataset(config.data)
  assert ds.train_range == (0, 50_000) and ds.eval_range == (50_000, 50_256)
  it = _iter(ds)
  first = [_ids(next(it)) for _ in range(3)]
  flat = sum(first, [])
  assert flat == sorted(flat), 'unshuffled training must stream in time order'
  state = it.get_state()
  expected = [_ids(next(it)) for _ in range(2)]
  resumed = _iter(ds)
  resumed.set_state(state)
  assert [_ids(next(resumed)) for _ in range(2)] == expected
  # Same config, same stream.
  again = _iter(ds)
  assert [_ids(next(again)) for _ in range(3)] == first


def test_shuffle_is_seeded(config):
  ds = pipeline.build_dataset(config.data)
  a = _ids(next(_iter(ds, shuffle=True, seed=1)))
  b = _ids(next(_iter(ds, shuffle=True, seed=1)))
  c = _ids(next(_iter(ds, shuffle=True, seed=2)))
  assert a == b and a != c and a != sorted(a)


def test_eval_range_padded(config):
  config.data.num_eval_requests = 20
  ds = pipeline.build_dataset(config.data)
  batches = list(pipeline.make_iterator(ds, ds.eval_range, global_batch_size=8, shuffle=False,
                                        seed=0, repeat=False, num_threads=1))
  assert [b['cand']['mask'].shape[0] for b in batches] == [8, 8, 4]
  padded = pipeline.pad_requests(batches[-1], 8)
  assert padded['cand']['mask'].shape == (8, config.data.num_candidates)
  assert not padded['cand']['mask'][4:].any() and padded['cand']['mask'][:4].any()
  np.testing.assert_array_equal(padded['labels'][:4], batches[-1]['labels'])


def test_bad_data_config(config):
  config.data.name = 'criteo'
  with pytest.raises(ConfigError, match=r"config.data.name='criteo' is not a known dataset"):
    pipeline.build_dataset(config.data)
  config.data.name = 'synthetic'
  config.data.min_candidates = 99
  with pytest.raises(ConfigError, match='config.data.min_candidates'):
    pipeline.build_dataset(config.data)


def test_histories_cut_to_their_latest_fraction(config):
  """data.history_fraction: every sequence keeps its latest ceil(f x max_len) positions (the most
  recent events, right-aligned), the world and everything else unchanged (RQ3's length axis)."""
  full = pipeline.build_dataset(config.data)
  config.data.history_fraction = 0.3
  cut = pipeline.build_dataset(config.data)
  lengths = {s.name: s.max_len for s in full.schema.sequences}
  assert {s.name: s.max_len for s in cut.schema.sequences} == {
      n: int(np.ceil(0.3 * m)) for n, m in lengths.items()}
  assert cut.train_range == full.train_range and cut.eval_range == full.eval_range
  a, b = next(_iter(full)), next(_iter(cut))
  cut.schema.check_batch(b)
  for name, seq in a['seq'].items():
    n = cut.schema.sequence(name).max_len
    for k in ('ids', 'time', 'mask'):
      np.testing.assert_array_equal(b['seq'][name][k], seq[k][:, -n:], err_msg=f'{name}/{k}')
  for part in ('request', 'cand'):
    for k, v in a[part].items():
      np.testing.assert_array_equal(b[part][k], v)
  np.testing.assert_array_equal(b['labels'], a['labels'])
  # The source's own attributes still answer (the synthetic world), its schema is the cut one.
  assert cut.source.world.cfg == full.source.world.cfg and cut.source.schema == cut.schema
  for bad in (0.0, 1.5, -0.5):
    config.data.history_fraction = bad
    with pytest.raises(ConfigError, match=r'config.data.history_fraction must lie in \(0, 1\]'):
      pipeline.build_dataset(config.data)
