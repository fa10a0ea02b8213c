"""The training program: one read, top to bottom.

``train_and_evaluate`` reads in sections, each a small function below it: setup -> data -> model
and optimizer init (eval_shape, shardings, jit) -> checkpoint restore -> the loop (with next-batch
or hold-out evaluation) -> final evaluation and report. Every model runs through this one loop;
models differ only in their module and config. The step functions (``make_train_step``,
``make_eval_step``) and the train step's state and jit (``init_train_state``, ``jit_train_step``)
are module level, so the benchmarks time exactly the program the trainer runs.

Evaluation modes (``config.eval.mode``):
  * ``holdout``: train on the earlier requests, evaluate on the later ones (chronological split).
  * ``next_batch``: the paper's protocol (SPEC A.8): each training batch is scored with the current
    parameters before it is trained on; metrics are computed per "day" of ``config.eval.day_steps``
    steps and macro-averaged over days.

Validation (``config.data.valid_fraction`` > 0 and ``config.train.eval_every`` > 0): the latest
requests of the training period are held out of training and scored every ``eval_every`` steps;
the best-scoring step's state is kept (``checkpointing.BestCheckpointer``), the run may stop early
(``config.train.early_stopping``), and the hold-out is scored with the best step's weights, so the
reported number never depends on a choice made by looking at the hold-out.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from onetrans_jax import accounting, checkpointing, diagnostics, records, reporting, sharding
from onetrans_jax import workdir as workdir_lib
from onetrans_jax import xla_options
from onetrans_jax import metrics as metrics_lib
from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError, Interrupted, NonFiniteLossError
from onetrans_jax.losses import (LOSS_MODES, ancestor_matrix, listwise_infonce, multitask_bce,
                                 onerank_loss)
from onetrans_jax import models
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.optimizers import count_params, make_optimizer
from onetrans_jax.schema import FeatureSchema, dummy_batch, label_weights

EVAL_MODES = ('holdout', 'next_batch')
PREDICTIONS_FILE = records.PREDICTIONS_FILE  # the hold-out's scored impressions, per task
# The validation metrics a step can be chosen by, each with the direction that is better.
SELECTION_METRICS = {'auc': 'max', 'uauc': 'max', 'logloss': 'min'}
CURVE_METRICS = tuple(SELECTION_METRICS)  # what the validation curve keeps of each evaluation

Batch = Any  # the batch contract (FeatureSchema.batch_spec): a nested dict of arrays
Metrics = dict[str, jnp.ndarray]
# (params, batch) -> (total, {'task': each task's training loss [T], 'bce': its BCE alone [T]})
LossFn = Callable[[Any, Batch], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  opt_state: Any
  # First step whose loss was NaN/inf (-1: none). Kept on device so the check costs no sync.
  nonfinite_step: jnp.ndarray


TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
EvalStep = Callable[[Any, Batch], Metrics]  # (params, batch) -> outputs for the metrics


def task_weights(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> tuple[float, ...]:
  weights = cfg.get('task_weights', None)
  if weights is None:
    return (1.0,) * schema.num_tasks
  if isinstance(weights, Mapping):
    unknown = set(weights) - set(schema.task_names)
    if unknown:
      raise ConfigError(f'config.loss.task_weights names unknown task(s) {sorted(unknown)}; '
                        f'tasks: {list(schema.task_names)}')
    return tuple(float(weights.get(t, 1.0)) for t in schema.task_names)
  weights = tuple(float(w) for w in weights)
  if len(weights) != schema.num_tasks:
    raise ConfigError(f'config.loss.task_weights has {len(weights)} entries for '
                      f'{schema.num_tasks} tasks {list(schema.task_names)}')
  return weights


def check_config(config: ml_collections.ConfigDict, batch_shards: int) -> None:
  """Cross-field checks that no single builder can make; each names the field and the fix."""
  for section in ('data', 'model', 'optimizer', 'train', 'eval', 'mesh'):
    if section not in config:
      raise ConfigError(f'config.{section} is missing; start from '
                        'onetrans_jax/experiments/default.py')
  t, e = config.train, config.eval
  if t.total_steps < 1:
    raise ConfigError(f'config.train.total_steps must be >= 1, got {t.total_steps}')
  if t.log_every < 1:
    raise ConfigError(f'config.train.log_every must be >= 1, got {t.log_every}')
  if t.checkpoint_every < 0:
    raise ConfigError(f'config.train.checkpoint_every must be >= 0 (0: only at the end), '
                      f'got {t.checkpoint_every}')
  if t.keep_checkpoints < 1:
    raise ConfigError(f'config.train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}')
  if e.mode not in EVAL_MODES:
    raise ConfigError(f'config.eval.mode={e.mode!r}: choose one of {list(EVAL_MODES)}')
  if e.mode == 'next_batch' and e.day_steps < 1:
    raise ConfigError(f'config.eval.day_steps must be >= 1, got {e.day_steps}')
  if e.every_steps < 0:
    raise ConfigError(f'config.eval.every_steps must be >= 0 (0: only at the end), '
                      f'got {e.every_steps}')
  b = config.data.batch_size
  if b < 1 or b % batch_shards:
    raise ConfigError(f'config.data.batch_size={b} (requests per step) must be a positive '
                      f'multiple of the batch shards, mesh data x fsdp = {batch_shards}')


def check_validation(config: ml_collections.ConfigDict, task_names: Sequence[str],
                     has_valid_split: bool | None = None) -> str | None:
  """Checks the validation and early-stopping fields; -> the metric that chooses the best step
  ('valid/<task>/<metric>'; the first task's AUC without early stopping), None when off.

  ``has_valid_split``: whether the dataset has a validation split (default: whether
  ``config.data.valid_fraction`` > 0; a dataset may also carve one by time, e.g. own_data's
  ``valid_start``)."""
  every = int(config.train.get('eval_every', 0))
  frac = float(config.data.get('valid_fraction', 0.0))
  has_split = frac > 0 or bool(has_valid_split)
  es = config.train.get('early_stopping', None)
  es = ml_collections.ConfigDict() if es is None else es
  metric = es.get('metric', None)
  if every < 0:
    raise ConfigError(f'config.train.eval_every must be >= 0 (0: no validation), got {every}')
  if every and not has_split:
    raise ConfigError(f'config.train.eval_every={every} scores the validation split, but '
                      f'config.data.valid_fraction={frac}; set it > 0 (e.g. 0.05)')
  if every and config.eval.mode != 'holdout':
    raise ConfigError(f'config.train.eval_every={every} needs config.eval.mode=\'holdout\' (the '
                      f'best step is scored on the hold-out), got {config.eval.mode!r}')
  mode = es.get('mode', None)
  if mode not in (None, 'max', 'min'):
    raise ConfigError(f"config.train.early_stopping.mode={mode!r}: choose 'max' or 'min'")
  if int(es.get('patience', 1)) < 1:
    raise ConfigError(f'config.train.early_stopping.patience must be >= 1 (evaluations without '
                      f'improvement before stopping), got {es.patience}')
  if float(es.get('min_delta', 0.0)) < 0:
    raise ConfigError(f'config.train.early_stopping.min_delta must be >= 0, got {es.min_delta}')
  if metric is None:
    return f'valid/{task_names[0]}/auc' if every else None
  if not every or not has_split:
    raise ConfigError(f'config.train.early_stopping.metric={metric!r} needs validation: '
                      f'config.data.valid_fraction > 0 (got {frac}) and config.train.eval_every '
                      f'> 0 (got {every})')
  parts = str(metric).split('/')
  if (len(parts) != 3 or parts[0] != 'valid' or parts[1] not in task_names
      or parts[2] not in SELECTION_METRICS):
    raise ConfigError(f'config.train.early_stopping.metric={metric!r}: name it '
                      f'valid/<task>/<metric> with a task of {list(task_names)} and a metric of '
                      f'{list(SELECTION_METRICS)}, e.g. valid/{task_names[0]}/auc')
  if mode is not None and mode != SELECTION_METRICS[parts[2]]:
    raise ConfigError(f'config.train.early_stopping.mode={mode!r} with metric {metric!r}: '
                      f'a {"higher" if SELECTION_METRICS[parts[2]] == "max" else "lower"} '
                      f'{parts[2]} is better; use mode={SELECTION_METRICS[parts[2]]!r} (or None: '
                      'the metric\'s own direction)')
  return str(metric)


@dataclasses.dataclass
class EarlyStopping:
  """The stopping rule on one validation metric: a plain record, saved with every checkpoint.

  An evaluation improves when it beats the best so far by more than ``min_delta`` (a NaN never
  does); after ``patience`` evaluations in a row without improvement ``stop`` turns True.
  ``patience=None`` only tracks the best (validation on, early stopping off).
  """
  mode: str = 'max'
  patience: int | None = None
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  since_best: int = 0  # evaluations since the last improvement
  stop: bool = False

  def update(self, step: int, value: float) -> bool:
    """Records the evaluation at ``step``; -> whether it is the new best."""
    sign = 1.0 if self.mode == 'max' else -1.0
    improved = not math.isnan(value) and (
        self.best is None or sign * (value - self.best) > self.min_delta)
    if improved:
      self.best, self.best_step, self.since_best = float(value), int(step), 0
    else:
      self.since_best += 1
    self.stop = self.patience is not None and self.since_best >= self.patience
    return improved

  def state(self) -> dict[str, Any]:
    return {'best': self.best, 'best_step': self.best_step, 'since_best': self.since_best,
            'stop': self.stop}

  def load(self, state: Mapping[str, Any]) -> None:
    self.best, self.best_step = state['best'], state['best_step']
    self.since_best, self.stop = int(state['since_best']), bool(state['stop'])


def make_loss_fn(config: ml_collections.ConfigDict, model: nn.Module, schema: FeatureSchema
                 ) -> tuple[LossFn, str]:
  """-> (loss_fn(params, batch) -> (total, {'task': [T], 'bce': [T]}), the loss mode), config
  checked.

  'task': what each task's own channel is trained on (BCE plus any list-wise term); 'bce': the
  per-task BCE alone, one loss definition for every model and loss mode, which the stability
  diagnostics compare across rows. Shared by training and ``sharding_check`` so that both
  differentiate the same function.
  """
  loss_cfg = config.get('loss', ml_collections.ConfigDict())
  weights = task_weights(loss_cfg, schema)
  loss_mode = loss_cfg.get('mode', 'conditional')
  if loss_mode not in LOSS_MODES:
    raise ConfigError(f'config.loss.mode={loss_mode!r}: choose one of {list(LOSS_MODES)}')
  if (loss_mode == 'onerank') != (config.model.name == 'onerank') and loss_mode != 'joint':
    raise ConfigError(
        f"config.loss.mode={loss_mode!r} with config.model.name={config.model.name!r}: "
        "the 'onerank' loss (BCE + InfoNCE) needs the OneRank model, and OneRank's matching scores "
        "are unconditional, so it trains with config.loss.mode='onerank' or 'joint'")
  parents = schema.task_parents if loss_mode in ('conditional', 'esmm') else (
      (-1,) * schema.num_tasks)
  bce_w, nce_w = float(loss_cfg.get('bce_weight', 1.0)), float(loss_cfg.get('nce_weight', 1.0))
  if loss_mode == 'onerank' and not (bce_w >= 0 and nce_w >= 0 and bce_w + nce_w > 0):
    raise ConfigError(f'config.loss.bce_weight={bce_w} and config.loss.nce_weight={nce_w}: use '
                      'weights >= 0, not both 0 (0 drops that term: BCE only or InfoNCE only)')
  list_w = float(loss_cfg.get('listwise_weight', 0.0))
  if not list_w >= 0.0:
    raise ConfigError(f'config.loss.listwise_weight={list_w}: use a weight >= 0 (0: BCE only)')
  if list_w and loss_mode != 'joint':
    raise ConfigError(
        f"config.loss.listwise_weight={list_w} with config.loss.mode={loss_mode!r}: the list-wise "
        "term ranks each request's candidates on unconditional labels, so it needs "
        "config.loss.mode='joint'" + (" (OneRank's own list-wise term is config.loss.nce_weight)"
                                      if loss_mode == 'onerank' else ''))

  def loss_fn(params, batch):
    labels, cand_mask = batch['labels'], batch['cand']['mask']
    if loss_mode == 'onerank':
      logits, aux = model.apply({'params': params}, batch, train=True, aux=True)
      loss, parts = onerank_loss(logits, aux['nce_logits'], labels, cand_mask, weights, bce_w,
                                 nce_w)
      return loss, {'task': bce_w * parts['bce'] + nce_w * parts['nce'], 'bce': parts['bce']}
    logits = model.apply({'params': params}, batch, train=True)
    total, bce = multitask_bce(logits, labels, cand_mask, parents, weights,
                               'conditional' if loss_mode == 'joint' else loss_mode)
    per_task = bce
    if list_w:  # the task logits themselves as list-wise scores (temperature 1)
      nce, _ = listwise_infonce(logits, labels, cand_mask)
      total = total + list_w * jnp.sum(jnp.asarray(weights, jnp.float32) * nce)
      per_task = per_task + list_w * nce
    return total, {'task': per_task, 'bce': bce}
  return loss_fn, loss_mode


def metric_parents(config: ml_collections.ConfigDict, schema: FeatureSchema
                   ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
  """(parents, chain) for ``_host_eval_arrays``: which impressions each task's metrics cover.
  Conditional tasks live where their parent is 1; 'joint' and 'onerank' logits are unconditional,
  over every impression (``chain``: the schema's parents, to chain the oracle's conditionals)."""
  mode = config.get('loss', ml_collections.ConfigDict()).get('mode', 'conditional')
  if mode in ('conditional', 'esmm'):
    return schema.task_parents, None
  return (-1,) * schema.num_tasks, schema.task_parents


def _host_eval_arrays(out: Mapping[str, Any], parents: tuple[int, ...],
                      chain: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
  """Replicated device outputs of one batch -> flat [R*C, T] arrays for the accumulator.

  ``chain``: the schema's task parents when the model predicts unconditional labels; the planted
  conditional probabilities are then multiplied along it into the oracle's joint ones.
  """
  probs, labels = np.asarray(out['probs']), np.asarray(out['labels'])
  r, c, t = probs.shape
  valid = label_weights(labels, np.asarray(out['cand_mask']), parents) > 0
  arrays = {
      'probs': probs.reshape(r * c, t),
      'labels': labels.reshape(r * c, t),
      'user_ids': np.repeat(np.asarray(out['user_id']), c),
      'valid': valid.reshape(r * c, t),
  }
  if 'true_prob' in out:
    truth = np.asarray(out['true_prob'], np.float64)
    if chain is not None:  # P(t and its ancestors) = prod of the conditionals along the chain
      truth = np.exp(np.log(np.maximum(truth, 1e-300)) @ ancestor_matrix(chain).T)
    arrays['true_probs'] = truth.astype(np.float32).reshape(r * c, t)
  return arrays


# ---------------------------------------------------------------------------------- the steps
# Module level so that the benchmarks (onetrans_jax/benchmarks/suite.py, profile_step.py,
# kv_cache.py) time the very program the trainer runs, not a copy of it.


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    task_names: Sequence[str]) -> TrainStep:
  """-> ``train_step(state, batch) -> (state, metrics)``, un-jitted (see ``jit_train_step``).

  One optimizer step on ``loss_fn``; metrics: the loss, the global gradient norm, each task's
  training loss (``loss_{task}``) and its BCE alone (``bce_{task}``). The first step whose loss is NaN/inf is kept in ``nonfinite_step``
  on device, so the check needs no host sync per step.
  """
  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Steps are numbered from 1 as in the logs: the step computed from state.step = 0 is step 1.
    first_bad = jnp.where((state.nonfinite_step < 0) & ~jnp.isfinite(loss), state.step + 1,
                          state.nonfinite_step)
    out = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
    out.update({f'loss_{t}': parts['task'][i] for i, t in enumerate(task_names)})
    out.update({f'bce_{t}': parts['bce'][i] for i, t in enumerate(task_names)})
    return TrainState(state.step + 1, params, opt_state, first_bad), out
  return train_step


def make_eval_step(model: nn.Module) -> EvalStep:
  """-> ``eval_step(params, batch) -> outputs``, un-jitted: eval-mode probabilities and what the
  metrics need beside them (labels, candidate mask, user ids, the oracle's ``true_prob``)."""
  def eval_step(params: Any, batch: Batch) -> Metrics:
    logits = model.apply({'params': params}, batch, train=False)
    out = {'probs': jax.nn.sigmoid(logits), 'labels': batch['labels'],
           'cand_mask': batch['cand']['mask'], 'user_id': batch['request']['user_id']}
    if 'true_prob' in batch:
      out['true_prob'] = batch['true_prob']
    return out
  return eval_step


def make_gradient_cosine(model: nn.Module, loss_fn: LossFn
                         ) -> Callable[[Any, Batch], jnp.ndarray]:
  """-> ``gradient_cosine(params, batch)``: the [T, T] cosine of the tasks' gradients on the
  shared encoder (SPEC C.6 stability signal); the model's task-private parameters are left out."""
  private = getattr(type(model), 'TASK_PRIVATE', ())

  def gradient_cosine(params: Any, batch: Batch) -> jnp.ndarray:
    return diagnostics.per_task_gradient_cosine(lambda p: loss_fn(p, batch)[1]['task'], params,
                                                diagnostics.excluding(*private))
  return gradient_cosine


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, schema: FeatureSchema,
                     mesh: Mesh, rules: Sequence[tuple[str, Any]], rng: jax.Array,
                     init_params: Callable[[Any], Any] | None = None
                     ) -> tuple[TrainState, TrainState, TrainState, list[str]]:
  """-> (initial state, its shardings, its abstract shapes, notes on dimensions split less).

  Shardings come from the parameters' logical axes and ``rules``; the optimizer state follows its
  parameters. Initialisation runs under jit straight into those shardings, so no device ever
  holds a whole table that is split. ``init_params`` maps the module's initial parameters to the
  run's (``models.data_init``: values measured on the training data), before the optimizer's
  state is made from them.
  """
  def init_state(rng: jax.Array) -> TrainState:
    params = partitioning.unbox(model.init(rng, dummy_batch(schema, 1))['params'])
    if init_params is not None:
      params = init_params(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))

  repl = sharding.replicated(mesh)
  abstract_state = jax.eval_shape(init_state, rng)
  boxed = jax.eval_shape(lambda r: model.init(r, dummy_batch(schema, 1))['params'], rng)
  params_shd, uneven = sharding.param_shardings(boxed, mesh, rules)
  state_shd = TrainState(
      step=repl, params=params_shd,
      opt_state=sharding.opt_state_shardings(abstract_state.opt_state, abstract_state.params,
                                               params_shd, mesh),
      nonfinite_step=repl)
  state = jax.jit(init_state, out_shardings=state_shd)(rng)
  return state, state_shd, abstract_state, uneven


def jit_train_step(train_step: TrainStep, state_shardings: TrainState, mesh: Mesh,
                   compiler_options: Mapping[str, str] | None) -> Any:
  """The trainer's jit of ``train_step``: state in and out in ``state_shardings`` and donated
  (its buffers are reused in place), the batch split over data x fsdp, metrics replicated.

  Trace it (call or ``.lower``) inside ``sharding.mesh_context(mesh, rules)``, so the models'
  activation hints (batch over data x fsdp, heads and FFN units over tensor) resolve to mesh axes.
  """
  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=compiler_options)


# ---------------------------------------------------------------------------------- the trainer
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None,
                       devices: Sequence[Any] | None = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint) and returns the final report.

  ``stop_at_step`` ends the run early after saving a checkpoint there, as a preemption would; the
  same call without it then resumes and finishes the identical run. ``devices``: the devices the
  mesh spans (default: every device of every process).
  """
  cleanup = workdir_lib.prepare(workdir)
  lock = workdir_lib.WorkdirLock(workdir, reporting.log)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _train_and_evaluate(config, workdir, stop_at_step, devices)
  except BaseException:
    lock.release()
    cleanup()  # a start refused before writing anything leaves no empty workdir behind
    raise
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop_at_step: int | None, devices: Sequence[Any] | None
                        ) -> dict[str, Any]:
  """train_and_evaluate's body, run while holding the workdir's lock."""
  # ------------------------------------------------------------------ setup
  run = _setup(config, workdir, stop_at_step, devices)

  # ------------------------------------------------------------------ data
  train_iter = _data_iter(run, run.dataset.train_range, repeat=True)

  # ------------------------------------------------------------------ model and optimizer init, jit
  state, state_shd, abstract_state, uneven = init_train_state(
      run.model, run.tx, run.schema, run.mesh, run.rules, jax.random.key(config.seed),
      functools.partial(models.data_init, config.model, task_rates=_task_rates(run)))
  counts = count_params(state.params)
  _log_model(run, counts, uneven)
  loss_variance = diagnostics.LossVariance(run.schema.task_names,
                                           int(config.train.get('diagnostics_window', 20)))
  steps = _jit_steps(run, state_shd)

  # ------------------------------------------------------------------ checkpoint restore
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    config.train.keep_checkpoints)
  valid = _make_validation(run)  # None unless config.train.eval_every > 0
  state, days = _restore(run, ckpt, state, abstract_state, state_shd, train_iter, valid)
  _write_config(config, workdir)  # only once the checkpoint (if any) was found compatible

  # ------------------------------------------------------------------ the loop
  writer = reporting.MetricWriter(workdir, start_step=int(jax.device_get(state.step)))
  if run.diag_every:   # a resume refills the stability window (no log read otherwise)
    _refill_loss_variance(loss_variance, workdir, run.schema.task_names)
  state, step, step_seconds = _train_loop(run, steps, ckpt, writer, train_iter, state, days,
                                          loss_variance, valid)
  ckpt.wait()
  ckpt.close()
  # ``state``: the final TrainState (sharded device arrays) for callers that go on from it;
  # ``train_step_seconds``: this process's median training step, evaluations and saves left out.
  result: dict[str, Any] = {'step': step, 'params': counts, 'state': state,
                            'train_step_seconds': step_seconds}
  if step < run.total_steps and not _stopped(valid):  # stop_at_step: a later call resumes
    writer.close()
    if valid is not None:
      valid.best_ckpt.close()
    return result

  # ------------------------------------------------------------------ final report
  params = state.params
  if valid is not None:  # the hold-out is scored with the best-validating step's weights
    params = _best_params(valid, checkpointing.abstract_with_sharding(abstract_state, state_shd),
                          state)
    valid.best_ckpt.close()
  result.update(_final_report(run, steps, writer, params, step, counts, days, valid))
  return result


# ---------------------------------------------------------------------------------- its sections
@dataclasses.dataclass(frozen=True)
class _Run:
  """What setup decided for one run; every later section reads it."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  dataset: Dataset
  model: nn.Module
  tx: optax.GradientTransformation
  loss_fn: LossFn
  # Which impressions each task's loss and metrics cover: conditional tasks live where their
  # parent is 1; 'joint' and 'onerank' logits are unconditional, over every impression.
  parents: tuple[int, ...]
  chain: tuple[int, ...] | None  # for _host_eval_arrays: the oracle's conditionals -> joint
  total_steps: int
  end_step: int  # total_steps, or stop_at_step when that comes first
  global_batch: int
  diag_every: int  # config.train.diagnostics_every (0: no stability diagnostics)
  valid_every: int  # config.train.eval_every (0: no validation)
  valid_metric: str | None  # what chooses the best step, 'valid/<task>/<metric>' (check_validation)

  @property
  def schema(self) -> FeatureSchema:
    return self.dataset.schema

  @property
  def mode(self) -> str:
    return self.config.eval.mode


@dataclasses.dataclass
class _Days:
  """Next-batch evaluation's record: finished days' metrics and the day in progress. Saved with
  every checkpoint (empty in holdout mode), so a resumed run goes on with the same day."""
  daily: list[dict[str, dict[str, float]]]
  acc: metrics_lib.TaskMetricsAccumulator


@dataclasses.dataclass
class _Validation:
  """Periodic validation's record: the stopping rule, the best step's validation metrics and its
  checkpoint. The rule and metrics are saved with every checkpoint, so a resumed run makes the
  same decisions as an uninterrupted one."""
  metric: str  # 'valid/<task>/<metric>'
  rule: EarlyStopping
  best_ckpt: checkpointing.BestCheckpointer
  best_valid: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  # Every evaluation's AUC / UAUC / logloss per task: the learning curve, carried into the run's
  # record so that a committed study can draw it on a machine that never had the run's log.
  curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def value(self, metrics: Mapping[str, Mapping[str, float]]) -> float:
    _, task, name = self.metric.split('/')
    return float(metrics[task][name])

  def state(self) -> dict[str, Any]:
    return {'rule': self.rule.state(), 'best_valid': self.best_valid, 'curve': self.curve}

  def load(self, state: Mapping[str, Any]) -> None:
    self.rule.load(state['rule'])
    self.best_valid = dict(state['best_valid'])
    self.curve = list(state.get('curve', []))  # checkpoints written before the curve was kept

  def add_point(self, step: int, metrics: Mapping[str, Mapping[str, float]]) -> None:
    self.curve.append({'step': step, **{t: {k: float(m[k]) for k in CURVE_METRICS if k in m}
                                        for t, m in metrics.items()}})


def _stopped(valid: _Validation | None) -> bool:
  """Whether early stopping ended the run."""
  return valid is not None and valid.rule.stop


class _Steps(NamedTuple):
  """The jitted programs of a run, each traced under the mesh and the logical-axis rules."""
  train: TrainStep
  eval: EvalStep
  gradient_cosine: Callable[[Any, Batch], jnp.ndarray]


def _setup(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None,
           devices: Sequence[Any] | None) -> _Run:
  """Mesh, config checks, dataset, model, optimizer and loss; notes on the run; config saved."""
  if 'mesh' not in config:
    raise ConfigError('config.mesh is missing; start from onetrans_jax/experiments/default.py')
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.mesh)
  check_config(config, sharding.batch_shards(mesh))
  dataset = pipeline.build_dataset(config.data)
  schema = dataset.schema
  model = build_model(config.model, schema)
  tx = make_optimizer(config.optimizer)
  loss_fn, _ = make_loss_fn(config, model, schema)
  parents, chain = metric_parents(config, schema)
  diag_every = int(config.train.get('diagnostics_every', 0))
  total_steps = int(config.train.total_steps)
  global_batch = int(config.data.batch_size)
  run = _Run(config=config, workdir=workdir, mesh=mesh, rules=rules, dataset=dataset,
             model=model, tx=tx, loss_fn=loss_fn,
             parents=parents, chain=chain, total_steps=total_steps,
             end_step=total_steps if stop_at_step is None else min(stop_at_step, total_steps),
             global_batch=global_batch, diag_every=diag_every,
             valid_every=int(config.train.get('eval_every', 0)),
             valid_metric=check_validation(config, schema.task_names,
                                           dataset.valid_range is not None))
  _check_ranges(run)
  return run


def _check_ranges(run: _Run) -> None:
  """Enough training requests for next-batch evaluation; notes on epochs and on validation."""
  total_steps, global_batch, ds = run.total_steps, run.global_batch, run.dataset
  n_train = ds.train_range[1] - ds.train_range[0]
  if run.mode == 'next_batch' and total_steps * global_batch > n_train:
    raise ConfigError(
        f'next-batch evaluation needs unseen data every step: config.train.total_steps '
        f'({total_steps}) x config.data.batch_size ({global_batch}) exceeds the {n_train} training '
        'requests; lower the steps or raise config.data.num_train_requests')
  if total_steps * global_batch > n_train:
    reporting.log(f'note: {total_steps} steps x {global_batch} requests is '
                  f'{total_steps * global_batch / n_train:.2f} epochs of the training range')
  if ds.valid_range is not None:
    (a, b), (c, d) = ds.train_range, ds.valid_range
    reporting.log(f'validation split: requests {c}..{d - 1}, the latest of the training period '
                  f'(training on {a}..{b - 1})' + (
                      f'; scored every {run.valid_every} steps, the best {run.valid_metric} '
                      'chooses the step scored on the hold-out' if run.valid_every else
                      '; never scored (config.train.eval_every=0)'))


def _task_rates(run: _Run) -> Callable[[], np.ndarray]:
  """-> a memoised measurement of the tasks' base rates on the training range (for
  ``models.data_init``; measured, and logged, only if the model's config asks for them)."""
  memo: list[np.ndarray] = []

  def rates() -> np.ndarray:
    if not memo:
      memo.append(pipeline.task_positive_rates(run.dataset, run.dataset.train_range))
      reporting.log('tasks\' base rates on the training range (the initial output biases): ' +
                    ', '.join(f'{t} {r:.4f}' for t, r in zip(run.schema.task_names, memo[0])))
    return memo[0]
  return rates


def _data_iter(run: _Run, index_range: tuple[int, int], repeat: bool) -> Any:
  """This process's batches of ``index_range``; the training range shuffles and repeats."""
  c = run.config
  return pipeline.make_iterator(
      run.dataset, index_range, global_batch_size=run.global_batch,
      shuffle=repeat and c.data.shuffle, seed=c.seed, repeat=repeat, validate=c.data.validate,
      num_threads=c.data.num_threads, worker_count=c.data.worker_count)


def _log_model(run: _Run, counts: Mapping[str, int], uneven: Sequence[str]) -> None:
  """A line on the model (sizes, FLOPs, pyramid, mesh); a note on splits the mesh fell short of."""
  tflops = accounting.batch_tflops(run.config.model, run.schema)
  flops = '' if np.isnan(tflops) else (
      f', {tflops * 1e3 / accounting.PAPER_BATCH:.3f} training GFLOPs per example '
      f'({tflops:.3f} TFLOPs per batch of {accounting.PAPER_BATCH})')
  if getattr(run.model, 'schedule', None) is not None:
    flops += f', pyramid {run.model.schedule}'
  reporting.log(f'model {run.config.model.name}: {counts["dense"]:,} dense parameters, '
                f'{counts["sparse"]:,} embedding parameters{flops}; mesh '
                f'{sharding.describe(run.mesh)} over {jax.process_count()} process(es)')
  if uneven and run.mesh.size > 1:
    reporting.log(f'note: {len(uneven)} parameter dimension(s) are split over fewer mesh axes '
                  'than the rules ask, because those axes do not divide them (pad embedding '
                  'tables with config.model.embedding_row_multiple): ' + '; '.join(uneven[:8]) +
                  (' ...' if len(uneven) > 8 else ''))


def _jit_steps(run: _Run, state_shd: TrainState) -> _Steps:
  """The train, eval and diagnostics programs, jitted with the run's shardings and options."""
  mesh, rules, repl = run.mesh, run.rules, sharding.replicated(run.mesh)
  batch_shd = sharding.batch_sharding(mesh)
  opts = xla_options.compiler_options(run.config)
  train_step = jit_train_step(make_train_step(run.loss_fn, run.tx, run.schema.task_names),
                              state_shd, mesh, opts)
  # Outputs replicated: every process sees the whole global batch's predictions and labels, so
  # metrics are global on every host without a separate gather.
  eval_step = jax.jit(make_eval_step(run.model), in_shardings=(state_shd.params, batch_shd),
                      out_shardings=repl, compiler_options=opts)
  cosine = jax.jit(make_gradient_cosine(run.model, run.loss_fn),
                   in_shardings=(state_shd.params, batch_shd), out_shardings=repl,
                   compiler_options=opts)
  return _Steps(train=sharding.under_mesh(train_step, mesh, rules),
                eval=sharding.under_mesh(eval_step, mesh, rules),
                gradient_cosine=sharding.under_mesh(cosine, mesh, rules))


def _make_validation(run: _Run) -> _Validation | None:
  """The validation record and best-step checkpointer of a run that validates (None if not)."""
  if not run.valid_every:
    return None
  es = run.config.train.get('early_stopping', None)
  early = es is not None and es.get('metric', None) is not None
  mode = SELECTION_METRICS[run.valid_metric.split('/')[2]]
  rule = EarlyStopping(mode=mode, patience=int(es.patience) if early else None,
                       min_delta=float(es.get('min_delta', 0.0)) if early else 0.0)
  best_ckpt = checkpointing.BestCheckpointer(os.path.join(run.workdir, 'best_checkpoint'),
                                             run.valid_metric, mode)
  return _Validation(run.valid_metric, rule, best_ckpt)


def _restore(run: _Run, ckpt: checkpointing.Checkpointer, state: TrainState,
             abstract_state: TrainState, state_shd: TrainState, train_iter: Any,
             valid: _Validation | None) -> tuple[TrainState, _Days]:
  """The latest checkpoint's state, data position, next-batch days and validation record, if
  there is one. Best-step checkpoints newer than it are dropped: the resumed run redoes them."""
  task_names = run.schema.task_names
  days = _Days(daily=[], acc=metrics_lib.TaskMetricsAccumulator(task_names))
  target = checkpointing.abstract_with_sharding(abstract_state, state_shd)
  found = checkpointing.restore_latest_intact(
      ckpt, target, train_iter, _config_changes(run.config, run.workdir), reporting.log)
  start = None if found is None else found[0]
  if valid is not None:
    valid.best_ckpt.drop_after(start or 0)
  if found is None:
    return state, days
  _, state, extra = found
  days = _Days(daily=extra['daily'], acc=metrics_lib.TaskMetricsAccumulator.from_state(
      task_names, _arrays_from_json(extra['day_acc'])))
  if valid is not None and 'validation' in extra:
    valid.load(extra['validation'])
  reporting.log(f'resumed from {run.workdir}/checkpoints at step {start}')
  # ``start`` may be older than the run got (a corrupt newer step was set aside): its
  # metrics.jsonl / TensorBoard records past ``start`` are redone, so they go (MetricWriter).
  return state, days


def _train_loop(run: _Run, steps: _Steps, ckpt: checkpointing.Checkpointer,
                writer: reporting.MetricWriter, train_iter: Any, state: TrainState, days: _Days,
                loss_variance: diagnostics.LossVariance, valid: _Validation | None
                ) -> tuple[TrainState, int, float | None]:
  """From the state's step to ``run.end_step`` or an early stop: (score,) train, log, diagnose,
  evaluate, validate, save; SIGTERM / SIGINT save and raise ``Interrupted``. -> the state, its
  step and the measured training seconds per step (Progress.step_seconds)."""
  step = int(jax.device_get(state.step))
  progress = reporting.Progress(run.total_steps, step)
  ckpt_every = int(run.config.train.checkpoint_every)
  seen = 0.0
  with _StopSignals() as signals:
    while step < run.end_step and not _stopped(valid):
      state, step, seen = _one_step(run, steps, ckpt, writer, train_iter, state, days,
                                    loss_variance, valid, progress, step, seen, ckpt_every)
      if signals.received is not None:  # preempted: save where we are, exit cleanly
        if ckpt.latest_step() != step:
          _save(run, ckpt, train_iter, state, days, valid, step)
        ckpt.wait()
        writer.close()
        raise Interrupted(signals.received, step, os.path.join(run.workdir, 'checkpoints'))
  return state, step, progress.step_seconds()


class _StopSignals:
  """SIGTERM / SIGINT during training set a flag the loop reads after the step in flight; the
  loop then saves a checkpoint and stops (a preempted job resumes where it was). Outside the
  main thread no handler can be installed and signals keep their default effect."""

  def __init__(self):
    self.received: int | None = None
    self._old: dict[int, Any] = {}

  def _handler(self, signum: int, frame: Any) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.received = signum
    reporting.log(f'{signal.Signals(signum).name} received: saving a checkpoint after this '
                  'step, then stopping')

  def __enter__(self) -> '_StopSignals':
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc: Any) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _one_step(run: _Run, steps: _Steps, ckpt: checkpointing.Checkpointer,
              writer: reporting.MetricWriter, train_iter: Any, state: TrainState, days: _Days,
              loss_variance: diagnostics.LossVariance, valid: _Validation | None,
              progress: reporting.Progress, step: int, seen: float, ckpt_every: int
              ) -> tuple[TrainState, int, float]:
  """One training step and what follows it at that step: log, diagnose, evaluate, save."""
  config, task_names, diag_every = run.config, run.schema.task_names, run.diag_every
  host = next(train_iter)
  seen += float(np.sum(host['cand']['mask']))
  batch = sharding.put_batch(host, run.mesh)
  if run.mode == 'next_batch':  # score in eval mode before training on it
    days.acc.add(**_host_eval_arrays(steps.eval(state.params, batch), run.parents, run.chain))
  state, out = steps.train(state, batch)
  step += 1

  if step % config.train.log_every == 0 or step == run.end_step:
    out = jax.device_get(out)
    _check_finite(run, state)
    stats = progress.update(step, seen)
    seen = 0.0
    reporting.log(progress.line(step, float(out['loss']), stats))
    writer.write(step, 'train', {**out, **stats})
  other = time.perf_counter()  # what follows is not the training step's time (Progress.pause)
  if diag_every and (step % diag_every == 0 or step == run.end_step):
    _diagnose(run, steps, writer, loss_variance, state.params, batch, out, step)
  if run.mode == 'next_batch' and step % config.eval.day_steps == 0:
    _end_day(run, writer, days, step)
  if (run.mode == 'holdout' and config.eval.every_steps and step % config.eval.every_steps == 0
      and step < run.total_steps):
    ev = _evaluate(run, steps.eval, state.params, config.eval.num_batches,
                   run.dataset.eval_range)
    writer.write(step, 'eval', ev)
    reporting.log(f'eval at step {step}: ' + ', '.join(
        f'{t} AUC {ev[t]["auc"]:.4f}' for t in task_names))
  if valid is not None and (step % run.valid_every == 0 or step == run.total_steps):
    _validate(run, steps.eval, writer, valid, state, step)
  if (ckpt_every and step % ckpt_every == 0) or step == run.end_step or _stopped(valid):
    _save(run, ckpt, train_iter, state, days, valid, step)
  progress.pause(time.perf_counter() - other)
  return state, step, seen


def _diagnose(run: _Run, steps: _Steps, writer: reporting.MetricWriter,
              loss_variance: diagnostics.LossVariance, params: Any, batch: Batch,
              out: Metrics, step: int) -> None:
  """Stability diagnostics (SPEC C.6): the tasks' gradient cosine on the shared encoder (of
  their training losses) and the detrended variance of their BCE (one loss definition for every
  model and loss, so rows compare), recorded."""
  bce = [float(jax.device_get(out[f'bce_{t}'])) for t in run.schema.task_names]
  loss_variance.update(bce)
  cos = np.asarray(jax.device_get(steps.gradient_cosine(params, batch)))
  diag = loss_variance.summary(cos)
  # The step's own BCEs too: a resumed run refills its window from them (_refill_loss_variance).
  writer.write(step, 'diagnostics', {**diag, **{f'bce/{t}': v
                                                for t, v in zip(run.schema.task_names, bce)}})
  # 4 significant digits: a detrended BCE variance is often ~1e-5, which '.4f' printed as 0.
  reporting.log('diagnostics: ' + ', '.join(f'{k} {v:.4g}' for k, v in diag.items()
                                             if not k.startswith(('loss_mean', 'loss_var_raw'))))


def _validate(run: _Run, eval_step: EvalStep, writer: reporting.MetricWriter,
              valid: _Validation, state: TrainState, step: int) -> None:
  """Score the validation split; keep the state if it is the best so far; decide on stopping."""
  _check_finite(run, state)
  ev = _evaluate(run, eval_step, state.params, run.config.eval.num_batches,
                 run.dataset.valid_range)
  writer.write(step, 'valid', ev)
  valid.add_point(step, ev)
  value, rule = valid.value(ev), valid.rule
  if rule.update(step, value):
    valid.best_valid = ev
    valid.best_ckpt.save(step, state, value)
  best = 'none yet' if rule.best is None else f'{rule.best:.4f} at step {rule.best_step}'
  wait = f', {rule.since_best}/{rule.patience} without improvement' if rule.patience else ''
  reporting.log(f'valid at step {step}: ' + ', '.join(
      f'{t} AUC {ev[t]["auc"]:.4f}' for t in run.schema.task_names) +
      f' | {valid.metric} {value:.4f}, best {best}{wait}')
  if rule.stop:
    reporting.log(f'early stopping at step {step}: {valid.metric} has not improved by more than '
                  f'{rule.min_delta} in {rule.patience} evaluations (best {best})')


def _save(run: _Run, ckpt: checkpointing.Checkpointer, train_iter: Any, state: TrainState,
          days: _Days, valid: _Validation | None, step: int) -> None:
  """A resumable checkpoint: state, data position, next-batch days, validation record."""
  _check_finite(run, state)  # never write a poisoned checkpoint
  extra = {'daily': days.daily, 'day_acc': _arrays_to_json(days.acc.state())}
  if valid is not None:
    valid.best_ckpt.wait()  # the best step this checkpoint names is on disk before it
    extra['validation'] = valid.state()
  ckpt.save(step, state, train_iter, extra)


def _end_day(run: _Run, writer: reporting.MetricWriter, days: _Days, step: int) -> None:
  """Close a next-batch day: its metrics recorded, written and logged, a fresh day begun."""
  day = days.acc.compute()
  days.daily.append(day)
  days.acc.reset()
  writer.write(step, 'next_batch', day)
  reporting.log(f'day {len(days.daily)} (step {step}): ' + ', '.join(
      f'{t} AUC {day[t]["auc"]:.4f}' for t in run.schema.task_names))


def _check_finite(run: _Run, state: TrainState) -> None:
  """Raise, naming the step and the fixes, once any step's loss was NaN/inf (one host sync)."""
  bad = int(jax.device_get(state.nonfinite_step))
  if bad >= 0:
    raise NonFiniteLossError(
        f'the training loss became NaN/inf at step {bad} (config.model.name='
        f'{run.config.model.name}); lower config.optimizer.dense.learning_rate or '
        'config.optimizer.clip_global_norm, or check the input features for extreme values')


def _evaluate(run: _Run, eval_step: EvalStep, params: Any, num_batches: int,
              index_range: tuple[int, int], save_to: str | None = None
              ) -> dict[str, dict[str, float]]:
  """Metrics over the first ``num_batches`` batches (-1: all) of ``index_range``: the hold-out
  or the validation split, scored by the same code. ``save_to``: also keep the scored
  impressions (per task: probabilities, labels, user ids, in evaluation order) as .npz, which
  lets a single-seed comparison bootstrap over users (study_report.py)."""
  acc = metrics_lib.TaskMetricsAccumulator(run.schema.task_names)
  local_batch = run.global_batch // jax.process_count()
  for i, host in enumerate(_data_iter(run, index_range, repeat=False)):
    if 0 <= num_batches <= i:
      break
    batch = sharding.put_batch(pipeline.pad_requests(host, local_batch), run.mesh)
    acc.add(**_host_eval_arrays(eval_step(params, batch), run.parents, run.chain))
  if save_to is not None and jax.process_index() == 0:
    np.savez_compressed(save_to, **{k.replace('/', '.'): v for k, v in acc.state().items()})
  return acc.compute()


def _best_params(valid: _Validation, abstract_state: TrainState, state: TrainState) -> Any:
  """The best-validating step's parameters from its checkpoint (``abstract_state`` carries the
  shardings); the final ones when no validation score was finite (no best step)."""
  step = valid.rule.best_step
  if step is None:
    reporting.log(f'warning: no finite {valid.metric} in any evaluation; the hold-out is scored '
                  'with the final weights')
    return state.params
  return valid.best_ckpt.restore(step, abstract_state).params


def _selection(valid: _Validation, step: int) -> dict[str, Any]:
  """What chose the weights the hold-out was scored with: for the log, the result and
  final_metrics.json (keys present only when validation is on)."""
  rule = valid.rule
  return {'best_step': rule.best_step, 'best_valid': valid.best_valid, 'stopped_at': step,
          'early_stopped': rule.stop, 'valid_curve': valid.curve,
          'selected_by': {'metric': valid.metric, 'mode': rule.mode, 'value': rule.best}}


def _final_report(run: _Run, steps: _Steps, writer: reporting.MetricWriter, params: Any,
                  step: int, counts: Mapping[str, int], days: _Days,
                  valid: _Validation | None) -> dict[str, Any]:
  """Final metrics (hold-out, or next-batch days macro-averaged): written, logged as a table and
  saved as final_metrics.json. -> the result's 'final', 'daily' and 'table' (and, with
  validation, how the scored step was chosen: 'best_step', 'best_valid', 'stopped_at', ...)."""
  chosen = {} if valid is None else _selection(valid, step)
  if run.mode == 'holdout':
    final = _evaluate(run, steps.eval, params, run.config.eval.num_batches,
                      run.dataset.eval_range, os.path.join(run.workdir, PREDICTIONS_FILE))
    requests = f'requests {run.dataset.eval_range[0]}..{run.dataset.eval_range[1] - 1}'
    title = f'hold-out evaluation after {step} steps ({requests})'
    if chosen and chosen['best_step'] is not None:
      title = (f'hold-out evaluation of step {chosen["best_step"]}, the best {valid.metric} '
               f'({valid.rule.best:.4f}) of training '
               f'{"stopped early" if valid.rule.stop else "ended"} at step {step} ({requests})')
  else:
    if len(days.acc):
      days.daily.append(days.acc.compute())
    final = metrics_lib.macro_average(days.daily)
    title = f'next-batch evaluation, macro-average over {len(days.daily)} days of {step} steps'
  writer.write(step, 'final', final)
  writer.close()
  table = reporting.format_table(final, run.schema.task_names, title)
  reporting.log(table)
  if jax.process_index() == 0:  # atomic, and strict JSON even when a metric is NaN
    workdir_lib.write_json(os.path.join(run.workdir, 'final_metrics.json'),
                           {'step': step, 'mode': run.mode, 'params': counts, 'metrics': final,
                            **chosen})
    if run.config.train.get('plot_curves', False):
      _plot_curves(run)
  diag = (_diagnostics_series(run.workdir) if run.diag_every and jax.process_index() == 0
          else [])
  return {'final': final, 'daily': days.daily, 'table': table, **chosen,
          **({'diagnostics': diag} if diag else {})}


DIAGNOSTIC_KEYS = ('loss_var/', 'grad_cos/')


def _diagnostics_log(workdir: str) -> list[dict[str, Any]]:
  """The 'diagnostics' records of the run's metrics.jsonl, in order (none without the file)."""
  return [r for r in reporting.read_metrics(workdir) if r.get('split') == 'diagnostics']


def _refill_loss_variance(loss_variance: diagnostics.LossVariance, workdir: str,
                          tasks: Sequence[str]) -> None:
  """A resumed run's loss window starts where the interrupted one left it: its last
  ``window`` logged BCEs (metrics.jsonl, already cut back to the resumed step), so the diagnostics
  equal those of an uninterrupted run. Logs older than the BCEs' logging refill nothing."""
  logged = [r for r in _diagnostics_log(workdir)
            if all(r.get(f'bce/{t}') is not None for t in tasks)]
  for rec in logged[-loss_variance.window:]:
    loss_variance.update([rec[f'bce/{t}'] for t in tasks])


def _diagnostics_series(workdir: str) -> list[dict[str, float]]:
  """The run's stability diagnostics (``_diagnose``: each task's detrended BCE variance and the
  tasks' gradient cosines), every logged step of every invocation, read back from metrics.jsonl
  so that the run record carries them (a study report on another machine has no run directory).
  6 significant digits; empty when the run logged none."""
  return [{'step': int(rec['step']),
           **{k: float(f'{v:.6g}') for k, v in rec.items()
              if k.startswith(DIAGNOSTIC_KEYS) and v is not None}}
          for rec in _diagnostics_log(workdir)]


def _plot_curves(run: _Run) -> None:
  """learning_curves.png from the run's metrics.jsonl (study_report's plot, one line)."""
  from onetrans_jax import study_report  # local: matplotlib only where a plot is asked for
  path = os.path.join(run.workdir, 'learning_curves.png')
  name = run.config.model.get('name', 'model')
  if study_report.plot_learning_curves(path, {name: [run.workdir]}, run.schema.task_names):
    reporting.log(f'learning curves: {path}')


def _config_changes(config: ml_collections.ConfigDict, workdir: str) -> str:
  """How ``config`` differs from the one saved in ``workdir`` ('' when the same or none saved)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return ''
  try:
    with open(path, encoding='utf-8') as f:
      old = records.flat_config(json.load(f))
  except (OSError, ValueError):
    return ''
  new = records.canonical(records.flat_config(json.loads(
      config.to_json_best_effort(sort_keys=True))))
  if records.canonical(old) == new:
    return ''
  return records.config_changes(records.canonical(old), new)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Keep the run's config beside its checkpoints; say so when a resume changes it."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=1, sort_keys=True)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = f.read()
    if old != text:
      what = _config_changes(config, workdir)   # '' for an unreadable or reformatted file
      reporting.log(f'warning: the config differs from the one saved in {path}'
                    f'{f" ({what})" if what else ""}; resuming with the new one (the old one is '
                    'kept as config.previous.json)')
      os.replace(path, os.path.join(workdir, 'config.previous.json'))
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def _arrays_to_json(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Exact JSON form of a few numpy arrays (a partly filled next-batch day), dtype kept."""
  return {k: {'dtype': np.asarray(v).dtype.str, 'shape': list(np.shape(v)),
              'data': np.asarray(v).ravel().tolist()} for k, v in arrays.items()}


def _arrays_from_json(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v['data'], dtype=np.dtype(v['dtype'])).reshape(v['shape'])
          for k, v in tree.items()}
