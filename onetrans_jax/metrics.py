"""Ranking and calibration metrics for evaluation (numpy only, host side).

OneTrans (arXiv 2510.26104) reports per task AUC and UAUC, UAUC being the per-user AUC averaged
with each user's impression count as weight (OneRank calls the same quantity GAUC). Everything
here is exact: AUC is the Mann-Whitney statistic with tied scores sharing their average rank,
so a model that outputs coarse or saturated probabilities is not flattered or penalised by the
order in which a sort happens to place equal scores. All statistics are vectorized (sorts,
``reduceat`` and ``bincount``), never a Python loop over examples or users, because a day of
next-batch evaluation holds millions of impressions and hundreds of thousands of users.

``TaskMetricsAccumulator`` collects one evaluation pass (a hold-out sweep or a next-batch "day")
batch by batch, and can be saved into and restored from a checkpoint mid-day so that a resumed
run reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ['auc', 'uauc', 'gauc', 'logloss', 'TaskMetricsAccumulator', 'macro_average']


# ---------------------------------------------------------------------------------- validation


def _as_1d(x: Any) -> np.ndarray:
  return np.asarray(x).reshape(-1)


def _check_same_shape(**arrays: Any) -> None:
  """Shapes must agree exactly: silently broadcasting [N] against [N, 1] would give garbage."""
  items = [(k, np.shape(v)) for k, v in arrays.items() if v is not None]
  ref_name, ref_shape = items[0]
  for name, shape in items[1:]:
    if shape != ref_shape:
      raise ValueError(f'{name} has shape {shape} but {ref_name} has shape {ref_shape}; '
                       'they must match')


def _check_finite(name: str, x: np.ndarray) -> None:
  if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
    raise ValueError(f'{name} must be numeric, got dtype {x.dtype}')
  bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
  if bad:
    raise ValueError(f'{name} contain {bad} non-finite values (NaN/inf)')


def _check_binary(name: str, y: np.ndarray) -> np.ndarray:
  """Returns y as a bool array; anything other than 0/1 is an error, not rounded away."""
  if y.dtype == np.bool_:
    return y
  if not np.issubdtype(y.dtype, np.number):
    raise ValueError(f'{name} must be 0/1 numbers or bools, got dtype {y.dtype}')
  ok = (y == 0) | (y == 1)
  if not np.all(ok):
    bad = np.unique(y[~ok])[:5]
    raise ValueError(f'{name} must be 0 or 1; found {int(np.size(y) - np.count_nonzero(ok))} '
                     f'other values, e.g. {bad.tolist()}')
  return y == 1


# ---------------------------------------------------------------------------------- AUC core


def _grouped_pair_stats(scores: np.ndarray, pos: np.ndarray, weights: np.ndarray,
                        groups: np.ndarray, num_groups: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per group: (sum over pos/neg pairs of w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]), W_pos, W_neg).

  Sorting by (group, score) makes each run of equal (group, score) a tie block. A positive in a
  block beats every negative in earlier blocks of its group and half-beats the negatives of its
  own block, so the numerator is sum_b Wpos_b * (Wneg before b in the group + Wneg_b / 2). This
  is the average-rank Mann-Whitney statistic, generalised to sample weights.
  """
  n = scores.shape[0]
  zeros = np.zeros(num_groups, np.float64)
  if n == 0:
    return zeros, zeros.copy(), zeros.copy()
  order = np.lexsort((scores, groups))
  s, g, p, w = scores[order], groups[order], pos[order], weights[order]
  new_block = np.ones(n, bool)
  new_block[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
  starts = np.flatnonzero(new_block)
  wpos = np.add.reduceat(np.where(p, w, 0.0), starts)
  wneg = np.add.reduceat(np.where(p, 0.0, w), starts)
  block_group = g[starts]
  neg_before = np.cumsum(wneg) - wneg  # exclusive running total over all blocks
  # Subtract the running total at the first block of each group so it restarts per group.
  first = np.ones(starts.shape[0], bool)
  first[1:] = block_group[1:] != block_group[:-1]
  first_idx = np.maximum.accumulate(np.where(first, np.arange(starts.shape[0]), 0))
  neg_before = neg_before - neg_before[first_idx]
  num = wpos * (neg_before + 0.5 * wneg)
  return (np.bincount(block_group, num, num_groups),
          np.bincount(block_group, wpos, num_groups),
          np.bincount(block_group, wneg, num_groups))


def auc(scores: Any, labels: Any, weights: Any | None = None) -> float:
  """ROC AUC = P(score of a random positive > that of a random negative), ties counting 1/2.

  ``weights`` are per-example sample weights; a pair counts with weight w_pos * w_neg. Returns NaN
  when a class is absent (or has zero total weight): AUC is undefined there, and NaN keeps such a
  window out of a ``macro_average`` instead of pretending it scored 0.5.
  """
  _check_same_shape(scores=scores, labels=labels, weights=weights)
  s = _as_1d(scores)
  _check_finite('scores', s)
  pos = _check_binary('labels', _as_1d(labels))
  if weights is None:
    w = np.ones(s.shape[0], np.float64)
  else:
    w = _as_1d(weights).astype(np.float64)
    _check_finite('weights', w)
    if np.any(w < 0):
      raise ValueError(f'weights must be >= 0; found {int(np.count_nonzero(w < 0))} negative')
  num, wp, wn = _grouped_pair_stats(s.astype(np.float64), pos, w,
                                    np.zeros(s.shape[0], np.int64), 1)
  denom = float(wp[0]) * float(wn[0])
  return float(num[0]) / denom if denom > 0 else float('nan')


def uauc(scores: Any, labels: Any, user_ids: Any) -> tuple[float, int]:
  """Impression-weighted mean of per-user AUC -> (uauc, number of users counted).

  A user whose impressions are all one class has no pairs to rank and is skipped entirely (left
  out of numerator and denominator). Weighting by impressions means sum_u n_u AUC_u / sum_u n_u,
  as in OneTrans; heavy users count more, matching how traffic is distributed. NaN, 0 when no
  user has both classes.
  """
  _check_same_shape(scores=scores, labels=labels, user_ids=user_ids)
  s = _as_1d(scores)
  _check_finite('scores', s)
  pos = _check_binary('labels', _as_1d(labels))
  users, codes = np.unique(_as_1d(user_ids), return_inverse=True)
  codes = codes.reshape(-1).astype(np.int64)
  num, npos, nneg = _grouped_pair_stats(s.astype(np.float64), pos,
                                        np.ones(s.shape[0], np.float64), codes, users.shape[0])
  counted = (npos > 0) & (nneg > 0)
  n_counted = int(np.count_nonzero(counted))
  if n_counted == 0:
    return float('nan'), 0
  imps = (npos + nneg)[counted]
  per_user = num[counted] / (npos[counted] * nneg[counted])
  return float(np.sum(imps * per_user) / np.sum(imps)), n_counted


gauc = uauc  # OneRank's name for the same impression-weighted per-user AUC


def logloss(probs: Any, labels: Any, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps].

  Clipping keeps one saturated prediction (p = 0 exactly in float32) from making the mean inf.
  Labels may be soft (in [0, 1]). NaN for empty input.
  """
  _check_same_shape(probs=probs, labels=labels)
  p = _as_1d(probs).astype(np.float64)
  y = _as_1d(labels).astype(np.float64)
  if p.shape[0] == 0:
    return float('nan')
  if np.any(np.isnan(p)):
    raise ValueError(f'probs contain {int(np.count_nonzero(np.isnan(p)))} NaN values')
  if np.any(~((y >= 0) & (y <= 1))):
    raise ValueError('labels must lie in [0, 1]')
  p = np.clip(p, eps, 1.0 - eps)
  return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


# ---------------------------------------------------------------------------------- accumulator


class TaskMetricsAccumulator:
  """Per-task predictions of one evaluation pass, kept compactly until ``compute()``.

  Only the (example, task) pairs that are in a task's evaluation population (``valid``) are kept,
  so a conditional task such as CVR is scored on clicked impressions only and padding never
  counts. AUC needs every score of the pass at once (it is not a sum of per-batch terms), hence
  storing predictions rather than running totals.
  """

  _FIELDS = ('probs', 'labels', 'user_ids')

  def __init__(self, task_names: Sequence[str]):
    self.task_names = tuple(task_names)
    if not self.task_names:
      raise ValueError('task_names must name at least one task')
    if len(set(self.task_names)) != len(self.task_names):
      raise ValueError(f'task_names must be unique, got {list(self.task_names)}')
    self.reset()

  def reset(self) -> None:
    """Forget everything added, e.g. at the start of a new next-batch day."""
    self._data: dict[str, dict[str, list[np.ndarray]]] = {
        t: {f: [] for f in self._FIELDS + ('true_probs',)} for t in self.task_names}
    self._num_rows = 0
    # None: nothing added yet; True: every add had true_probs; False: at least one did not.
    self._has_true: bool | None = None

  def __len__(self) -> int:
    """Number of example rows added since the last reset (valid for any task or not)."""
    return self._num_rows

  def add(self, probs: Any, labels: Any, user_ids: Any, valid: Any,
          true_probs: Any | None = None) -> None:
    """probs, labels, valid (bool), true_probs: [N, T]; user_ids: [N]."""
    probs, labels, valid = np.asarray(probs), np.asarray(labels), np.asarray(valid)
    user_ids = np.asarray(user_ids)
    num_tasks = len(self.task_names)
    if probs.ndim != 2 or probs.shape[1] != num_tasks:
      raise ValueError(f'probs must have shape [N, {num_tasks}] (one column per task '
                       f'{list(self.task_names)}), got {probs.shape}')
    _check_same_shape(probs=probs, labels=labels, valid=valid, true_probs=true_probs)
    if user_ids.shape != probs.shape[:1]:
      raise ValueError(f'user_ids must have shape ({probs.shape[0]},), got {user_ids.shape}')
    if valid.dtype != np.bool_:
      raise ValueError(f'valid must be a bool mask, got dtype {valid.dtype}')
    # Validate only the kept entries: padding rows may legitimately hold junk labels/probs.
    _check_finite('probs', probs[valid])
    _check_binary('labels', labels[valid])
    tp = None
    if true_probs is not None:
      tp = np.asarray(true_probs)
      _check_finite('true_probs', tp[valid])
    self._num_rows += probs.shape[0]
    self._has_true = (tp is not None) if self._has_true is None else (
        self._has_true and tp is not None)
    for i, t in enumerate(self.task_names):
      m = valid[:, i]
      d = self._data[t]
      d['probs'].append(probs[m, i].astype(np.float64))
      d['labels'].append(labels[m, i].astype(np.int8))
      d['user_ids'].append(user_ids[m])
      if self._has_true:
        d['true_probs'].append(tp[m, i].astype(np.float64))
      else:
        d['true_probs'] = []  # a batch without them: oracle metrics are off for this pass

  def _arrays(self, task: str) -> dict[str, np.ndarray]:
    """Concatenates (and compacts, so repeated calls are cheap) one task's stored arrays."""
    out = {}
    empty = {'probs': np.float64, 'labels': np.int8, 'user_ids': np.int64,
             'true_probs': np.float64}
    for f, parts in self._data[task].items():
      if f == 'true_probs' and not self._has_true:
        continue
      arr = np.concatenate(parts) if parts else np.zeros(0, empty[f])
      self._data[task][f] = [arr]
      out[f] = arr
    return out

  def compute(self) -> dict[str, dict[str, float]]:
    """Per task: auc, uauc, uauc_users, logloss, count, positive_rate, const_logloss, and
    oracle_auc / oracle_uauc when every batch carried true probabilities.

    const_logloss (the loss of always predicting the population's own positive rate, i.e. its
    entropy) is the yardstick a model's logloss must beat to have learned anything.
    """
    result: dict[str, dict[str, float]] = {}
    for t in self.task_names:
      a = self._arrays(t)
      p, y, u = a['probs'], a['labels'], a['user_ids']
      n = int(p.shape[0])
      rate = float(np.mean(y)) if n else float('nan')
      ua, users = uauc(p, y, u)
      m: dict[str, float] = {
          'auc': auc(p, y),
          'uauc': ua,
          'uauc_users': users,
          'logloss': logloss(p, y),
          'count': n,
          'positive_rate': rate,
          'const_logloss': logloss(np.full(n, rate), y) if n else float('nan'),
      }
      if self._has_true:
        m['oracle_auc'] = auc(a['true_probs'], y)
        m['oracle_uauc'] = uauc(a['true_probs'], y, u)[0]
      result[t] = m
    return result

  def state(self) -> dict[str, np.ndarray]:
    """Flat dict of numpy arrays (``{task}/probs`` etc.) for a checkpoint; exact, dtypes kept."""
    out: dict[str, np.ndarray] = {
        'num_rows': np.asarray(self._num_rows, np.int64),
        'has_true_probs': np.asarray(-1 if self._has_true is None else int(self._has_true),
                                     np.int8),
    }
    for t in self.task_names:
      for f, arr in self._arrays(t).items():
        out[f'{t}/{f}'] = arr.copy()
    return out

  @classmethod
  def from_state(cls, task_names: Sequence[str],
                 state: Mapping[str, np.ndarray]) -> TaskMetricsAccumulator:
    """Inverse of ``state()``; the task list must be the one the state was saved with."""
    acc = cls(task_names)
    for key in ('num_rows', 'has_true_probs'):
      if key not in state:
        raise ValueError(f'metrics state lacks key {key!r}; it was not made by state()')
    flag = int(np.asarray(state['has_true_probs']))
    acc._has_true = None if flag < 0 else bool(flag)
    acc._num_rows = int(np.asarray(state['num_rows']))
    fields = acc._FIELDS + (('true_probs',) if acc._has_true else ())
    for t in acc.task_names:
      arrays = []
      for f in fields:
        key = f'{t}/{f}'
        if key not in state:
          raise ValueError(f'metrics state lacks key {key!r}: saved for tasks other than '
                           f'{list(acc.task_names)}?')
        arr = np.asarray(state[key]).reshape(-1)
        acc._data[t][f] = [arr.copy()]
        arrays.append(arr)
      if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f'metrics state for task {t!r} has arrays of different lengths')
    extra = sorted({k.split('/')[0] for k in state if '/' in k} - set(acc.task_names))
    if extra:
      raise ValueError(f'metrics state holds tasks {extra} not in task_names '
                       f'{list(acc.task_names)}')
    return acc


# ---------------------------------------------------------------------------------- averaging


_SUMMED = ('count', 'uauc_users')


def macro_average(metrics: Sequence[Mapping[str, Mapping[str, float]]]
                  ) -> dict[str, dict[str, float]]:
  """Average each task's metrics over evaluation windows (the papers' daily AUC over days).

  A NaN entry (a day where, say, CVR had no conversions) is skipped for that metric only, so
  one degenerate day cannot poison the average; a metric NaN on every day stays NaN. ``count``
  and ``uauc_users`` are totals, so they are summed rather than averaged.
  """
  tasks: dict[str, dict[str, list[float]]] = {}
  for day in metrics:
    for t, m in day.items():
      per_task = tasks.setdefault(t, {})
      for k, v in m.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
          continue
        per_task.setdefault(k, []).append(float(v))
  out: dict[str, dict[str, float]] = {}
  for t, per_task in tasks.items():
    out[t] = {}
    for k, vals in per_task.items():
      finite = [v for v in vals if not math.isnan(v)]
      if k in _SUMMED:
        out[t][k] = int(sum(finite))
      else:
        out[t][k] = float(sum(finite) / len(finite)) if finite else float('nan')
  return out
