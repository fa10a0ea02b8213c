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
