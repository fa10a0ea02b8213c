"""data/cache.py: requests kept after their first read give the same batches, build each request
once, stay within data.cache_mb, and turn themselves off for sources they cannot hold."""

from __future__ import annotations

import pickle

import jax
import ml_collections
import numpy as np
import pytest

from onetrans_jax import records
from onetrans_jax.data import cache as cache_lib
from onetrans_jax.data import pipeline
from onetrans_jax.data.cache import RequestCache
from onetrans_jax.data.types import DataConfigError


class _Counting:
  """A deterministic source that counts how often each request is built."""

  def __init__(self, n: int, ragged_at: int | None = None):
    self.n, self.ragged_at, self.builds = n, ragged_at, 0

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> dict:
    self.builds += 1
    width = 3 if index == self.ragged_at else 2
    return {'x': np.full((width,), index, np.int32), 'y': {'z': np.float32(index) / 2}}


def _batches(ds, rng, epochs=2):
  it = pipeline.make_iterator(ds, rng, global_batch_size=16, shuffle=True, seed=3, repeat=True,
                              num_threads=2)
  per_epoch = (rng[1] - rng[0]) // 16
  return [next(it) for _ in range(epochs * per_epoch)]


def _equal(a, b) -> bool:
  return all(jax.tree.all(jax.tree.map(np.array_equal, p, q)) for p, q in zip(a, b))


def test_cached_batches_equal_built_ones_and_each_request_is_built_once(config):
  config.data.num_train_requests = 2_000
  config.data.history_fraction = 0.5        # the cache sits under the shortened histories
  pipeline._WORLD[0] = None
  ds = pipeline.build_dataset(config.data)
  rng = (0, 512)
  cached = _batches(ds, rng)
  config.data.cache_mb = 0
  plain = _batches(pipeline.build_dataset(config.data), rng)
  assert len(cached) == 64 and _equal(cached, plain)
  cache = ds.source.source
  assert isinstance(cache, RequestCache) and cache.cached == 512
  assert cache.hits >= 512 - 16 * 4   # epoch 2 is read from memory (prefetch may overlap)


def test_the_world_is_built_once_per_process_and_replaced_when_its_config_changes(config):
  pipeline._WORLD[0] = None
  a = pipeline.build_dataset(config.data).source
  b = pipeline.build_dataset(config.data).source
  assert a is b                              # the runs of a sweep share one world and cache
  config.data.num_categories += 1
  assert pipeline.build_dataset(config.data).source is not a


def test_a_source_over_the_budget_is_read_directly(capsys):
  src = _Counting(1_000)
  cache = RequestCache(src, budget_mb=0.001)  # 1,000 x 12 bytes = 0.011 MB
  first = [cache[i] for i in range(10)] + [cache[i] for i in range(10)]
  assert src.builds == 20 and cache.cached == 0 and first[10]['x'].tolist() == [0, 0]
  out = capsys.readouterr().out
  assert 'not keeping its requests in memory (0 MB for 1,000 requests > data.cache_mb=0.001)' in out


def test_a_source_over_half_the_available_memory_is_read_directly(capsys, monkeypatch):
  monkeypatch.setattr(cache_lib, 'available_mb', lambda: 0.01)
  src = _Counting(1_000)
  cache = RequestCache(src, budget_mb=10)
  [cache[i] for i in (1, 1)]
  assert src.builds == 2 and cache.cached == 0
  assert ('(0 MB for 1,000 requests > half of the 0 MB of memory available now)'
          in capsys.readouterr().out)


def test_a_ragged_source_turns_the_cache_off_and_stays_exact(capsys):
  src = _Counting(100, ragged_at=7)
  cache = RequestCache(src, budget_mb=10)
  assert [cache[i]['x'].tolist() for i in (3, 3)] == [[3, 3], [3, 3]] and src.builds == 1
  assert cache[7]['x'].tolist() == [7, 7, 7]
  assert 'request 7 differs in structure, shape or dtype' in capsys.readouterr().out
  assert cache[3]['x'].tolist() == [3, 3] and src.builds == 3 and cache.cached == 0


def test_a_cached_request_is_a_copy():
  cache = RequestCache(_Counting(10), budget_mb=10)
  cache[4]
  got = cache[4]
  got['x'][:] = -1                            # a consumer editing its batch in place
  assert cache[4]['x'].tolist() == [4, 4]


def test_a_worker_process_gets_the_source_without_the_arrays():
  cache = RequestCache(_Counting(50), budget_mb=10)
  for i in range(50):
    cache[i]
  copy = pickle.loads(pickle.dumps(cache))
  assert copy.cached == 0 and copy.hits == 0 and copy[9]['y']['z'] == np.float32(4.5)
  assert len(pickle.dumps(cache)) < 50 * 12 + 2_000   # the source and settings, no columns


@pytest.mark.parametrize('value', [-1, None, True])
def test_a_bad_cache_size_names_the_field(config, value):
  config.data.cache_mb = value
  pipeline._WORLD[0] = None
  with pytest.raises(DataConfigError, match=r'config.data.cache_mb must be a number of megabytes '
                                            r'>= 0 \(0: build every request on every read\)'):
    pipeline.build_dataset(config.data)


@pytest.mark.parametrize('value', ['lots', float('nan'), -0.5])
def test_a_bad_cache_size_in_a_file_config_names_the_field(value):
  with pytest.raises(DataConfigError, match=r"config.data.cache_mb must be .* got "):
    pipeline.cache_mb(ml_collections.ConfigDict({'cache_mb': value}))


def test_the_cache_size_is_not_part_of_a_runs_identity(config):
  config.data.cache_mb = 0
  off = records.fingerprint(config)[0]
  config.data.cache_mb = 512
  assert records.fingerprint(config)[0] == off


class _OutOfRange:
  """The synthetic world's source with candidate ids past their vocabularies."""

  def __init__(self, source):
    self.source, self.schema = source, source.schema

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    request = self.source[index]
    request['cand']['cat'] = np.full_like(request['cand']['cat'], 10**6)
    return request


def test_a_bad_batch_names_the_loader_under_the_pipelines_wrappers(config):
  from onetrans_jax.data.types import Dataset
  from onetrans_jax.schema import SchemaError
  config.data.history_fraction = 0.5
  pipeline._WORLD[0] = None
  ds = pipeline.build_dataset(config.data)
  inner = ds.source.source.source                       # _LatestEvents > RequestCache > world
  bad = Dataset(ds.schema, pipeline._LatestEvents(RequestCache(_OutOfRange(inner), 100),
                                                  ds.source.lengths, ds.schema),
                ds.train_range, ds.eval_range, ds.has_true_prob)
  it = pipeline.make_iterator(bad, (0, 16), global_batch_size=8, shuffle=False, seed=0,
                              repeat=False, num_threads=1)
  with pytest.raises(SchemaError, match=r'^_OutOfRange batch: cand/cat'):
    next(it)
