"""The floors' inputs: the request stream flattened to its real impressions, with leak-free
history statistics.

History statistics of an impression, per task: the user's and the item's earlier impressions in
the task's population (conditional tasks: where the parent is positive) and their positive rates,
smoothed toward the running global rate. Request i's statistics come from counters that hold the
labels of requests before i only; request i's labels are added after. Requests stream in index
order, which is time order in every loader (training, then validation, then hold-out), so a
hold-out request sees the labels of every earlier request, hold-out ones included, as the neural
models' behaviour sequences do, and never its own or a later one's.

Each batch is one vectorised step: the counters as of the batch's first request, plus per
impression what the batch's earlier requests add (an exclusive prefix sum per key over requests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.schema import FeatureSchema, label_weights

STATS = ('user_log_count', 'user_rate', 'item_log_count', 'item_rate')  # per task


def _earlier_in_batch(key: np.ndarray, request: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Per row, the sum of ``values`` over rows with the same key and a smaller request.

  Rows of one request never count for each other (a request's labels are unknown when it is
  scored); ``request`` is non-decreasing. Sorting by (key, request) makes each key a run and each
  (key, request) a block inside it: the answer is the exclusive cumulative sum at the block's
  start minus the one at the key's start.
  """
  n = key.shape[0]
  if n == 0:
    return np.zeros_like(values)
  order = np.lexsort((request, key))
  k, r, v = key[order], request[order], values[order]
  before = np.cumsum(v, axis=0) - v
  new_key = np.r_[True, k[1:] != k[:-1]]
  new_block = new_key | np.r_[True, r[1:] != r[:-1]]
  idx = np.arange(n)
  key_start = np.maximum.accumulate(np.where(new_key, idx, 0))
  block_start = np.maximum.accumulate(np.where(new_block, idx, 0))
  out = np.empty_like(values)
  out[order] = before[block_start] - before[key_start]
  return out


class HistoryCounter:
  """Running per-user, per-item and global (population, positive) counts per task.

  ``observe`` returns the statistics of a batch's impressions as of each impression's request,
  then adds the batch's labels: call it on consecutive batches of the stream, in order.
  """

  def __init__(self, num_tasks: int, prior: float):
    self.num_tasks, self.prior = num_tasks, float(prior)
    self.user = np.zeros((0, 2 * num_tasks))     # [id, (population | positives) x task]
    self.item = np.zeros((0, 2 * num_tasks))
    self.total = np.zeros(2 * num_tasks)

  @staticmethod
  def _grown(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    need = int(ids.max()) + 1 if ids.size else 0
    if need <= table.shape[0]:
      return table
    return np.pad(table, ((0, max(need, 2 * table.shape[0]) - table.shape[0]), (0, 0)))

  def observe(self, user: np.ndarray, item: np.ndarray, mask: np.ndarray, labels: np.ndarray,
              population: np.ndarray) -> np.ndarray:
    """user [R], item [R, C], mask [R, C], labels and population [R, C, T] -> the statistics
    [M, 4 T] of the M real impressions (``np.nonzero(mask)`` order), columns STATS x task."""
    req, slot = np.nonzero(mask)
    u = np.asarray(user, np.int64)[req]
    v = np.asarray(item, np.int64)[req, slot]
    pop = np.asarray(population[req, slot], np.float64)
    counts = np.concatenate([pop, pop * labels[req, slot]], axis=1)   # [M, 2T]
    self.user, self.item = self._grown(self.user, u), self._grown(self.item, v)
    user_prev = self.user[u] + _earlier_in_batch(u, req, counts)
    item_prev = self.item[v] + _earlier_in_batch(v, req, counts)
    total_prev = self.total + _earlier_in_batch(np.zeros_like(req), req, counts)
    np.add.at(self.user, u, counts)
    np.add.at(self.item, v, counts)
    self.total += counts.sum(0)
    t = self.num_tasks
    prior_rate = (total_prev[:, t:] + 1.0) / (total_prev[:, :t] + 2.0)
    cols = []
    for prev in (user_prev, item_prev):
      n, pos = prev[:, :t], prev[:, t:]
      denom = n + self.prior
      rate = np.where(denom > 0, (pos + self.prior * prior_rate) / np.maximum(denom, 1e-12),
                      prior_rate)
      cols += [np.log1p(n), rate]
    # Columns: STATS-major, task-minor (user_log_count/task0, user_log_count/task1, ...).
    return np.concatenate(cols, axis=1).astype(np.float32)


def item_column(schema: FeatureSchema) -> int:
  """Column of the item id in ``cand/cat``: the feature named item_id, else the first."""
  names = [f.name for f in schema.candidate_categorical]
  return names.index('item_id') if 'item_id' in names else 0


def numeric_names(schema: FeatureSchema) -> tuple[str, ...]:
  """Names of ``Stream.num``'s columns."""
  return (tuple(f.name for f in schema.request_numeric) +
          tuple(f.name for f in schema.candidate_numeric) +
          tuple(f'{s.name}_log_length' for s in schema.sequences) +
          tuple(f'{stat}/{task}' for stat in STATS for task in schema.task_names))


@dataclasses.dataclass
class Stream:
  """Requests ``[start, start + R)`` of a dataset; impressions are the real candidates in
  request-major order (``np.nonzero(cand_mask)``), the order the hold-out accumulator sees."""
  start: int
  user_id: np.ndarray        # [R] per request
  cand_mask: np.ndarray      # [R, C]
  labels: np.ndarray         # [R, C, T]
  true_prob: np.ndarray | None  # [R, C, T] where the data plants them
  request: np.ndarray        # [N] absolute request index of each impression
  item: np.ndarray           # [N] item id
  cat: np.ndarray            # [N, F_req + F_cand] categorical ids, request then candidate
  num: np.ndarray            # [N, K] float32, columns numeric_names(schema)
  population: np.ndarray     # [N, T] bool: the impression is in the task's population

  @property
  def impression_labels(self) -> np.ndarray:
    """[N, T] labels of the impressions."""
    return self.labels[self.cand_mask]

  def rows(self, index_range: tuple[int, int] | None) -> np.ndarray:
    """[N] bool: the impressions of requests in ``index_range`` (none for None)."""
    if index_range is None:
      return np.zeros(self.request.shape[0], np.bool_)
    return (self.request >= index_range[0]) & (self.request < index_range[1])


def stream(dataset: Dataset, stop: int, parents: Sequence[int], history_prior: float, *,
           batch_size: int = 256, validate: bool = True, num_threads: int = 2,
           worker_count: int = 0) -> Stream:
  """Reads requests ``[train start, stop)`` in order, one batch at a time, into a Stream with
  each impression's ids, numeric features (the request's and candidate's own, the length of
  each behaviour sequence, the history statistics) and task populations (``parents``: the
  evaluation's, -1 for a task scored on every impression)."""
  schema = dataset.schema
  start = dataset.train_range[0]
  counter = HistoryCounter(schema.num_tasks, history_prior)
  col = item_column(schema)
  parts: dict[str, list[np.ndarray]] = {k: [] for k in (
      'user_id', 'cand_mask', 'labels', 'true_prob', 'request', 'item', 'cat', 'num')}
  offset = start
  it = pipeline.make_iterator(dataset, (start, stop), global_batch_size=batch_size, shuffle=False,
                              seed=0, repeat=False, validate=validate, num_threads=num_threads,
                              worker_count=worker_count)
  for batch in it:
    mask = np.asarray(batch['cand']['mask'])
    labels = np.asarray(batch['labels'], np.float32)
    req, slot = np.nonzero(mask)
    population = label_weights(labels, mask, parents) > 0
    cand_cat = np.asarray(batch['cand']['cat'])
    stats = counter.observe(batch['request']['user_id'], cand_cat[..., col], mask, labels,
                            population)
    lengths = np.stack([np.asarray(batch['seq'][s.name]['mask']).sum(1) for s in schema.sequences],
                       -1) if schema.sequences else np.zeros((mask.shape[0], 0))
    parts['num'].append(np.concatenate([
        np.asarray(batch['request']['num'], np.float32)[req],
        np.asarray(batch['cand']['num'], np.float32)[req, slot],
        np.log1p(lengths[req]).astype(np.float32), stats], axis=1))
    parts['cat'].append(np.concatenate([np.asarray(batch['request']['cat'])[req],
                                        cand_cat[req, slot]], axis=1).astype(np.int32))
    parts['item'].append(cand_cat[req, slot, col].astype(np.int64))
    parts['request'].append(offset + req.astype(np.int64))
    parts['user_id'].append(np.asarray(batch['request']['user_id']).astype(np.int64))
    parts['cand_mask'].append(mask)
    parts['labels'].append(labels)
    if 'true_prob' in batch:
      parts['true_prob'].append(np.asarray(batch['true_prob'], np.float32))
    offset += mask.shape[0]
  if offset != stop:
    raise ValueError(f'the stream read requests {start}..{offset - 1}, expected up to {stop - 1}')
  if len(parts['true_prob']) != len(parts['labels']):  # kept only where every batch has them
    parts['true_prob'] = []
  cat = {k: np.concatenate(v) for k, v in parts.items() if v}
  return Stream(start=start, user_id=cat['user_id'], cand_mask=cat['cand_mask'],
                labels=cat['labels'], true_prob=cat.get('true_prob'), request=cat['request'],
                item=cat['item'], cat=cat['cat'], num=cat['num'],
                population=label_weights(cat['labels'], cat['cand_mask'], parents)[
                    cat['cand_mask']] > 0)
