"""A floor run: fit on the training period, score the hold-out, write what a neural run writes.

``fit_and_evaluate(config, workdir)`` is the floors' ``train.train_and_evaluate``: it writes
``config.json``, ``final_metrics.json`` and ``eval_predictions.npz`` into ``workdir`` (no
``metrics.jsonl``: a fit has no learning curve) and returns a result of the same shape, so a sweep
records it and study_report.py pairs it with the neural rows. The hold-out's impressions and each
task's valid mask come from the code a neural run uses (``train._host_eval_arrays`` with the
``parents`` that ``train._setup`` derives from ``config.loss.mode``), its metrics from
``metrics.TaskMetricsAccumulator``. One model per task, fitted on the training range's impressions
in that task's population (a conditional task: where its parent is positive); the validation
split, when ``config.data.valid_fraction > 0``, only stops LightGBM's boosting.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from onetrans_jax import metrics as metrics_lib
from onetrans_jax import reporting, train
from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError
from onetrans_jax.floors import config as floors_config
from onetrans_jax.floors import features
from onetrans_jax.losses import LOSS_MODES
from onetrans_jax.schema import FeatureSchema

STREAM_BATCH = 256  # requests per read of the stream (any size gives the same features)

# (model config, stream, schema, training / validation / hold-out rows, seed) ->
#   (hold-out probabilities [N_eval, T], parameters fitted, per-task notes)
Fitter = Callable[..., tuple[np.ndarray, int, dict[str, dict[str, Any]]]]


def _populations(config: ml_collections.ConfigDict, schema: FeatureSchema
                 ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
  """(parents, chain) as train._setup derives them: conditional tasks live where their parent
  is 1; 'joint' and 'onerank' score every task on every impression."""
  mode = config.get('loss', ml_collections.ConfigDict()).get('mode', 'conditional')
  if mode not in LOSS_MODES:
    raise ConfigError(f'config.loss.mode={mode!r}: choose one of {list(LOSS_MODES)}')
  if mode in ('conditional', 'esmm'):
    return schema.task_parents, None
  return (-1,) * schema.num_tasks, schema.task_parents


def _hold_out_stop(config: ml_collections.ConfigDict, dataset: Dataset) -> int:
  """End of the hold-out requests a neural run scores (``config.eval.num_batches`` of
  ``config.data.batch_size`` requests; -1: all)."""
  start, stop = dataset.eval_range
  n = int(config.eval.get('num_batches', -1))
  return stop if n < 0 else min(stop, start + n * int(config.data.batch_size))


def _constant(y: np.ndarray) -> float:
  return float(np.mean(y)) if y.size else 0.5


def _fit_item_rate(cfg: ml_collections.ConfigDict, s: features.Stream, schema: FeatureSchema,
                   rows: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, int, dict]:
  """Each item's positive rate over the training range, with ``prior_strength`` impressions at
  the task's training rate added; an unseen item gets the task's rate."""
  del seed
  size = floors_config.item_vocab_size(schema)
  train_rows, labels = rows['train'], s.impression_labels
  item = np.minimum(s.item, size - 1)
  probs = np.zeros((int(rows['eval'].sum()), schema.num_tasks))
  notes = {}
  for t, task in enumerate(schema.task_names):
    keep = train_rows & s.population[:, t]
    n = np.bincount(item[keep], minlength=size)
    pos = np.bincount(item[keep], weights=labels[keep, t], minlength=size)
    rate = _constant(labels[keep, t])
    table = (pos + cfg.prior_strength * rate) / (n + cfg.prior_strength)
    probs[:, t] = table[item[rows['eval']]]
    notes[task] = {'train_impressions': int(keep.sum()), 'rate': rate,
                   'items_seen': int(np.count_nonzero(n))}
  return probs, (size - 1) * schema.num_tasks, notes


def _design(s: features.Stream, schema: FeatureSchema, train_rows: np.ndarray) -> Any:
  """Sparse [N, one-hot + numeric]: every categorical id one-hot over its whole vocabulary, the
  numeric columns standardised with the training rows' mean and spread."""
  from scipy import sparse  # local: only the logistic floor needs it
  sizes = np.array([schema.vocab_sizes[f.vocab] for f in
                    schema.request_categorical + schema.candidate_categorical], np.int64)
  n, f = s.cat.shape
  cols = np.minimum(s.cat, sizes - 1) + np.concatenate([[0], np.cumsum(sizes)[:-1]])
  one_hot = sparse.csr_matrix((np.ones(n * f, np.float64), cols.ravel(),
                               np.arange(0, n * f + 1, f)), shape=(n, int(sizes.sum())))
  mean = s.num[train_rows].mean(0) if train_rows.any() else np.zeros(s.num.shape[1])
  std = s.num[train_rows].std(0) if train_rows.any() else np.ones(s.num.shape[1])
  dense = (s.num - mean) / np.where(std > 0, std, 1.0)
  return sparse.hstack([one_hot, sparse.csr_matrix(dense)], format='csr')


def _fit_logistic(cfg: ml_collections.ConfigDict, s: features.Stream, schema: FeatureSchema,
                  rows: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, int, dict]:
  """L2 logistic regression (lbfgs) per task on the one-hot ids and the numeric columns."""
  from sklearn.exceptions import ConvergenceWarning  # local: only the floors need scikit-learn
  from sklearn.linear_model import LogisticRegression
  x = _design(s, schema, rows['train'])
  x_eval, labels = x[rows['eval']], s.impression_labels
  probs = np.zeros((x_eval.shape[0], schema.num_tasks))
  params, notes = 0, {}
  for t, task in enumerate(schema.task_names):
    keep = rows['train'] & s.population[:, t]
    y = labels[keep, t]
    notes[task] = {'train_impressions': int(keep.sum())}
    params += x.shape[1] + 1
    if np.unique(y).size < 2:  # nothing to separate: the training rate
      probs[:, t] = _constant(y)
      notes[task]['constant'] = True
      continue
    model = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', ConvergenceWarning)
      model.fit(x[keep], y)
    notes[task]['iterations'] = int(np.max(model.n_iter_))
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
      notes[task]['converged'] = False
      reporting.log(f'note: the logistic floor of {task} stopped at config.model.max_iter='
                    f'{cfg.max_iter} iterations before converging')
    probs[:, t] = model.predict_proba(x_eval)[:, 1]
  return probs, params, notes


def _fit_lightgbm(cfg: ml_collections.ConfigDict, s: features.Stream, schema: FeatureSchema,
                  rows: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, int, dict]:
  """Gradient-boosted trees per task on the ids (categorical, or numeric codes) and the numeric
  columns; ``num_boost_round`` rounds, or fewer chosen by early stopping on the validation split."""
  import lightgbm as lgb  # local: the rest of the package never needs it
  x = np.concatenate([s.cat.astype(np.float64), s.num.astype(np.float64)], axis=1)
  names = ([f.name for f in schema.request_categorical + schema.candidate_categorical] +
           [n.replace('/', '__') for n in features.numeric_names(schema)])
  cats = list(range(s.cat.shape[1])) if cfg.categorical else []
  params = {'objective': 'binary', 'metric': 'binary_logloss', 'learning_rate': cfg.learning_rate,
            'num_leaves': cfg.num_leaves, 'min_data_in_leaf': cfg.min_data_in_leaf,
            'seed': seed, 'deterministic': True, 'force_row_wise': True,
            'num_threads': cfg.num_threads, 'verbose': -1}
  labels = s.impression_labels
  probs = np.zeros((int(rows['eval'].sum()), schema.num_tasks))
  leaves, notes = 0, {}
  for t, task in enumerate(schema.task_names):
    keep = rows['train'] & s.population[:, t]
    y = labels[keep, t]
    notes[task] = {'train_impressions': int(keep.sum())}
    if np.unique(y).size < 2:
      probs[:, t] = _constant(y)
      notes[task]['constant'] = True
      leaves += 1
      continue
    data = lgb.Dataset(x[keep], label=y, feature_name=names, categorical_feature=cats,
                       free_raw_data=False)
    valid = rows['valid'] & s.population[:, t]
    valid_sets, callbacks = [], []
    if valid.any():
      valid_sets = [lgb.Dataset(x[valid], label=labels[valid, t], reference=data)]
      callbacks = [lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)]
    booster = lgb.train(params, data, num_boost_round=cfg.num_boost_round,
                        valid_sets=valid_sets, callbacks=callbacks)
    rounds = int(booster.best_iteration) if valid_sets and booster.best_iteration > 0 else (
        booster.current_iteration())
    probs[:, t] = booster.predict(x[rows['eval']], num_iteration=rounds)
    tree_leaves = sum(int(tree['num_leaves']) for tree in
                      booster.dump_model(num_iteration=rounds)['tree_info'])
    leaves += tree_leaves
    notes[task].update(rounds=rounds, leaves=tree_leaves, early_stopping=bool(valid_sets))
  return probs, leaves, notes


FITTERS: dict[str, Fitter] = {'item_rate': _fit_item_rate, 'logistic': _fit_logistic,
                              'lightgbm': _fit_lightgbm}


def fit_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits the floor ``config.model`` and scores the hold-out; -> train_and_evaluate's result
  shape: 'step' (0: no gradient steps), 'params' ({'dense': fitted, 'sparse': 0}), 'final',
  'daily' ([]), 'table', and 'fit' (per task: impressions, rounds, leaves, ...)."""
  cfg = floors_config.resolve(config.model)
  if config.eval.mode != 'holdout':
    raise ConfigError(f'config.eval.mode={config.eval.mode!r}: the floor {cfg.name!r} scores the '
                      "hold-out only; use config.eval.mode='holdout'")
  if jax.process_count() > 1:
    raise ConfigError(f'the floor {cfg.name!r} fits on one process; run it without '
                      f'--distributed ({jax.process_count()} processes)')
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  dataset = pipeline.build_dataset(config.data)
  schema = dataset.schema
  parents, chain = _populations(config, schema)
  train._write_config(config, workdir)  # pylint: disable=protected-access
  stop = _hold_out_stop(config, dataset)
  s = features.stream(dataset, stop, parents, cfg.get('history_prior', 0.0),
                      batch_size=STREAM_BATCH, validate=config.data.validate,
                      num_threads=config.data.num_threads, worker_count=config.data.worker_count)
  hold_out = (dataset.eval_range[0], stop)
  rows = {'train': s.rows(dataset.train_range), 'valid': s.rows(dataset.valid_range),
          'eval': s.rows(hold_out)}
  probs, n_params, notes = FITTERS[cfg.name](cfg, s, schema, rows, int(config.seed))

  # The hold-out in the accumulator's layout: [R, C, T] over its requests, as a neural run's
  # eval step returns them, through the same valid-mask code.
  first = hold_out[0] - s.start
  mask = s.cand_mask[first:]
  full = np.full(mask.shape + (schema.num_tasks,), 0.5, np.float32)
  full[mask] = probs
  out = {'probs': full, 'labels': s.labels[first:], 'cand_mask': mask,
         'user_id': s.user_id[first:]}
  if s.true_prob is not None:
    out['true_prob'] = s.true_prob[first:]
  acc = metrics_lib.TaskMetricsAccumulator(schema.task_names)
  acc.add(**train._host_eval_arrays(out, parents, chain))  # pylint: disable=protected-access
  np.savez_compressed(os.path.join(workdir, train.PREDICTIONS_FILE),
                      **{k.replace('/', '.'): v for k, v in acc.state().items()})
  final = acc.compute()
  seconds = time.perf_counter() - t0
  (a, b), (c, d) = dataset.train_range, hold_out
  title = (f'hold-out evaluation of the {cfg.name} floor fitted on requests {a}..{b - 1} '
           f'(requests {c}..{d - 1}; {n_params:,} fitted parameters, {seconds:.1f} s)')
  table = reporting.format_table(final, schema.task_names, title)
  reporting.log(table)
  counts = {'dense': int(n_params), 'sparse': 0}
  with open(os.path.join(workdir, 'final_metrics.json'), 'w', encoding='utf-8') as f:
    json.dump({'step': 0, 'mode': 'holdout', 'params': counts, 'metrics': final,
               'floor': cfg.name, 'fit': notes, 'fit_seconds': seconds}, f, indent=1,
              default=float)
  return {'step': 0, 'params': counts, 'final': final, 'daily': [], 'table': table,
          'fit': notes}
