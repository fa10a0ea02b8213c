"""grain input pipeline: request index range -> (shuffle) -> per-process slice -> batches.

One path for every dataset: a loader only provides a random-access source of request dicts in the
batch contract (schema.py) and a chronological split into index ranges. The iterator is a grain
``DatasetIterator`` whose state (a position) is saved in every checkpoint, so a resumed run reads
exactly the batches it would have read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from onetrans_jax.data import kuairand, movielens, own_data, synthetic, taobao
from onetrans_jax.data.cache import DEFAULT_MB as DEFAULT_CACHE_MB
from onetrans_jax.data.cache import RequestCache
from onetrans_jax.data.types import DataConfigError, Dataset
from onetrans_jax.schema import FeatureSchema


def _build_synthetic(cfg: ml_collections.ConfigDict) -> Dataset:
  n_train, n_eval = int(cfg.num_train_requests), int(cfg.num_eval_requests)
  if n_train < 1 or n_eval < 1:
    raise DataConfigError('config.data.num_train_requests and config.data.num_eval_requests must '
                          f'be >= 1, got {n_train} and {n_eval}')
  fields = {f: cfg[f] for f in synthetic.SyntheticConfig.__dataclass_fields__
            if f in cfg and f != 'num_requests'}
  try:
    scfg = synthetic.SyntheticConfig(num_requests=n_train + n_eval, **fields)
  except ValueError as e:
    raise DataConfigError(str(e)) from None
  # One world per process, kept with its cache: the runs of a sweep that share the world (every
  # row of a mechanism-world study) build each request once between them.
  key = (scfg, cache_mb(cfg))
  if _WORLD[0] is None or _WORLD[0][0] != key:
    _WORLD[0] = None   # the previous world's cache goes before the next one fills
    _WORLD[0] = (key, RequestCache(synthetic.SyntheticSource(scfg), key[1]))
  source = _WORLD[0][1]
  # Request time grows with the index: train on the past, evaluate on what follows.
  return Dataset(source.schema, source, (0, n_train), (n_train, n_train + n_eval),
                 has_true_prob=True)


_WORLD: list[tuple[Any, RequestCache] | None] = [None]


def cache_mb(cfg: ml_collections.ConfigDict) -> float:
  """``data.cache_mb``, checked: the memory the requests may take once built (0: off)."""
  value = cfg.get('cache_mb', DEFAULT_CACHE_MB)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise DataConfigError(f'config.data.cache_mb must be a number of megabytes >= 0 (0: build '
                          f'every request on every read), got {value!r}')
  return float(value)


DATASETS: dict[str, Callable[[ml_collections.ConfigDict], Dataset]] = {
    'synthetic': _build_synthetic,
    'movielens_100k': movielens.build_100k,
    'movielens_1m': movielens.build_1m,
    'taobao': taobao.build,
    'kuairand': kuairand.build,
    own_data.NAME: own_data.build,  # your own CSV / Parquet files, described by a spec
}


def build_dataset(cfg: ml_collections.ConfigDict) -> Dataset:
  """The named loader's dataset, its histories cut to ``history_fraction`` (1: whole), with the
  validation split of ``valid_fraction`` carved out."""
  if cfg.name not in DATASETS:
    raise DataConfigError(f'config.data.name={cfg.name!r} is not a known dataset; '
                          f'choose one of {sorted(DATASETS)}')
  ds = DATASETS[cfg.name](cfg)
  if not isinstance(ds.source, RequestCache):   # the synthetic world's is cached already
    ds = Dataset(ds.schema, RequestCache(ds.source, cache_mb(cfg)), ds.train_range,
                 ds.eval_range, ds.has_true_prob, valid=ds.valid_range)
  ds = shorten_histories(ds, cfg.get('history_fraction', 1.0))
  return split_validation(ds, float(cfg.get('valid_fraction', 0.0)))


def history_lengths(schema: FeatureSchema, fraction: float) -> dict[str, int]:
  """Each sequence's length when the model reads only the latest ``fraction`` of it:
  ceil(fraction x max_len), at least 1."""
  return {s.name: max(1, int(np.ceil(fraction * s.max_len - 1e-9))) for s in schema.sequences}


class _LatestEvents:
  """A source whose sequences keep their latest ``lengths[name]`` positions. Every loader
  right-aligns a history (oldest first, the most recent last, padding on the left), so the last
  positions are the most recent events; everything else (candidates, labels, the planted
  probabilities of the synthetic world) is the underlying request's."""

  def __init__(self, source: Any, lengths: Mapping[str, int], schema: FeatureSchema):
    self.source, self.lengths, self.schema = source, dict(lengths), schema

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    request = self.source[index]
    request['seq'] = {name: {k: v[-self.lengths[name]:] for k, v in seq.items()}
                      for name, seq in request['seq'].items()}
    return request

  def __getattr__(self, name: str) -> Any:   # the underlying source's other methods
    return getattr(self.source, name)


def shorten_histories(ds: Dataset, fraction: Any) -> Dataset:
  """``ds`` with every behaviour sequence cut to its latest ``fraction`` (``data.history_fraction``
  in (0, 1]), the data itself unchanged: the scaling study's length axis (RQ3) varies what the
  model reads of one world, not the world."""
  try:
    fraction = float(fraction)
  except (TypeError, ValueError):
    fraction = float('nan')
  if not 0.0 < fraction <= 1.0:
    raise DataConfigError(f'config.data.history_fraction must lie in (0, 1] (1: whole '
                          f'histories), got {fraction}')
  if fraction == 1.0:
    return ds
  lengths = history_lengths(ds.schema, fraction)
  schema = dataclasses.replace(ds.schema, sequences=tuple(
      dataclasses.replace(s, max_len=lengths[s.name]) for s in ds.schema.sequences))
  return Dataset(schema, _LatestEvents(ds.source, lengths, schema), ds.train_range, ds.eval_range,
                 ds.has_true_prob, valid=ds.valid_range)


def split_validation(ds: Dataset, fraction: float) -> Dataset:
  """The last ``fraction`` of the training range (its latest requests) becomes ``valid_range``.

  Taken from the training period, never the hold-out, so choosing a step on it leaves the
  hold-out unseen; chronological, so validation lies after every request trained on. Every
  loader's requests are ordered by time, hence one implementation here for all of them.
  """
  if fraction == 0.0:
    return ds
  start, stop = ds.train_range
  if not 0.0 < fraction < 1.0:
    raise DataConfigError(f'config.data.valid_fraction must lie in [0, 1) (0: no validation '
                          f'split), got {fraction}')
  n_valid = int(round(fraction * (stop - start)))
  if n_valid < 1 or n_valid >= stop - start:
    raise DataConfigError(
        f'config.data.valid_fraction={fraction} of the {stop - start} training requests leaves '
        f'{n_valid} for validation and {stop - start - n_valid} for training; both need >= 1 '
        '(0: no validation split)')
  return Dataset(ds.schema, ds.source, (start, stop - n_valid), ds.eval_range, ds.has_true_prob,
                 valid=(stop - n_valid, stop))


def task_positive_rates(dataset: Dataset, index_range: tuple[int, int],
                        max_requests: int = 4096) -> np.ndarray:
  """Each task's positive rate over the real candidates of up to ``max_requests`` requests spread
  evenly over ``index_range`` (deterministic: no seed): the unconditional base rates [T] that a
  model may start its output biases from (onerank's ``task_bias_init='base_rate'``)."""
  start, stop = index_range
  if stop <= start:
    raise DataConfigError(f'no requests in the range {start}..{stop - 1} to measure the tasks\' '
                          'base rates on')
  idx = np.unique(np.linspace(start, stop - 1, min(max_requests, stop - start)).astype(np.int64))
  pos = np.zeros(dataset.schema.num_tasks)
  count = 0
  for i in idx:
    req = dataset.source[int(i)]
    real = np.asarray(req['cand']['mask'], bool)
    pos += np.asarray(req['labels'], np.float64)[real].sum(axis=0)
    count += int(real.sum())
  return pos / max(count, 1)


def make_iterator(dataset: Dataset, index_range: tuple[int, int], *, global_batch_size: int,
                  shuffle: bool, seed: int, repeat: bool, validate: bool = True,
                  num_threads: int = 2, worker_count: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator over batches of ``global_batch_size / process_count`` requests.

  Each process reads a disjoint strided slice of the index range (``ShardByJaxProcess`` style), so
  multi-host runs need no coordination. ``repeat`` makes an endless stream of epochs (reshuffled
  each epoch when ``shuffle``); without it the last batch may be short (callers pad it).
  """
  pc, pi = jax.process_count(), jax.process_index()
  if global_batch_size % pc:
    raise DataConfigError(f'config.data.batch_size={global_batch_size} must be divisible by the '
                          f'number of processes ({pc})')
  start, stop = index_range
  ds = grain.MapDataset.range(start, stop)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  if pc > 1:
    ds = ds.slice(slice(pi, None, pc))
  ds = ds.map(dataset.source.__getitem__)
  ds = ds.batch(global_batch_size // pc, drop_remainder=repeat)
  if validate:
    schema = dataset.schema

    def check(batch: Mapping[str, Any]) -> Mapping[str, Any]:
      schema.check_batch(batch, where=f'{_source_name(dataset.source)} batch')
      return batch

    ds = ds.map(check)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                        worker_init_fn=exit_with_parent)
  return iter(it)


def _source_name(source: Any) -> str:
  """The loader's class, under the pipeline's own wrappers (cache, shortened histories)."""
  while isinstance(source, (RequestCache, _LatestEvents)):
    source = source.source
  return type(source).__name__


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: the worker exits once the process that started it is gone.

  A parent killed with SIGKILL runs no cleanup, and its workers would otherwise live on holding
  memory (and, on an accelerator host, the data files). A daemon thread watches the parent pid;
  polling works however the worker was started (fork or spawn, from any thread), where
  PR_SET_PDEATHSIG would follow the starting thread.
  """
  del worker_index, worker_count
  import os
  import threading
  import time
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_SECONDS)
    os._exit(0)  # the parent is gone: nobody reads this worker's batches any more

  threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


PARENT_POLL_SECONDS = 0.5


def pad_requests(batch: Mapping[str, Any], num_requests: int) -> dict[str, Any]:
  """Pad a short (final eval) batch to ``num_requests`` with fully masked copies of request 0.

  Padded requests have ``cand/mask`` all False, so they never reach a loss or a metric, and the
  jitted step keeps one static shape.
  """
  r = batch['cand']['mask'].shape[0]
  if r == num_requests:
    return dict(batch)
  if r > num_requests:
    raise ValueError(f'batch has {r} requests, more than {num_requests}')

  def pad(x: np.ndarray) -> np.ndarray:
    fill = np.repeat(x[:1], num_requests - r, axis=0)
    return np.concatenate([x, fill], axis=0)

  out = jax.tree.map(pad, dict(batch))
  out['cand']['mask'][r:] = False
  return out
