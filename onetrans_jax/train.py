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
"""

from __future__ import annotations

import dataclasses
import json
import os
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

from onetrans_jax import accounting, checkpointing, diagnostics, reporting, sharding, xla_options
from onetrans_jax import metrics as metrics_lib
from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError, NonFiniteLossError
from onetrans_jax.losses import LOSS_MODES, ancestor_matrix, multitask_bce, onerank_loss
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.optimizers import count_params, make_optimizer
from onetrans_jax.schema import FeatureSchema, dummy_batch, label_weights

EVAL_MODES = ('holdout', 'next_batch')

Batch = Any  # the batch contract (FeatureSchema.batch_spec): a nested dict of arrays
Metrics = dict[str, jnp.ndarray]
LossFn = Callable[[Any, Batch], tuple[jnp.ndarray, jnp.ndarray]]  # (params, batch) -> (total, [T])


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
      raise ConfigError(f'config.{section} is missing; start from experiments/default.py')
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


def make_loss_fn(config: ml_collections.ConfigDict, model: nn.Module, schema: FeatureSchema
                 ) -> tuple[LossFn, str]:
  """-> (loss_fn(params, batch) -> (total, per-task losses [T]), the loss mode), config checked.

  A task's loss is what its own channel is trained on. Shared by training and
  ``sharding_check`` so that both differentiate the same function.
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

  def loss_fn(params, batch):
    labels, cand_mask = batch['labels'], batch['cand']['mask']
    if loss_mode == 'onerank':
      logits, aux = model.apply({'params': params}, batch, train=True, aux=True)
      loss, parts = onerank_loss(logits, aux['nce_logits'], labels, cand_mask, weights, bce_w,
                                 nce_w)
      return loss, bce_w * parts['bce'] + nce_w * parts['nce']
    logits = model.apply({'params': params}, batch, train=True)
    return multitask_bce(logits, labels, cand_mask, parents, weights,
                         'conditional' if loss_mode == 'joint' else loss_mode)
  return loss_fn, loss_mode


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
# Module level so that the benchmarks (benchmarks/suite.py, profile_step.py, kv_cache.py) time
# the very program the trainer runs, not a copy of it.


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    task_names: Sequence[str]) -> TrainStep:
  """-> ``train_step(state, batch) -> (state, metrics)``, un-jitted (see ``jit_train_step``).

  One optimizer step on ``loss_fn``; metrics: the loss, the global gradient norm and each task's
  loss (``loss_{task}``). The first step whose loss is NaN/inf is kept in ``nonfinite_step``
  on device, so the check needs no host sync per step.
  """
  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    (loss, per_task), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    first_bad = jnp.where((state.nonfinite_step < 0) & ~jnp.isfinite(loss), state.step,
                          state.nonfinite_step)
    out = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
    out.update({f'loss_{t}': per_task[i] for i, t in enumerate(task_names)})
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
    return diagnostics.per_task_gradient_cosine(lambda p: loss_fn(p, batch)[1], params,
                                                diagnostics.excluding(*private))
  return gradient_cosine


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, schema: FeatureSchema,
                     mesh: Mesh, rules: Sequence[tuple[str, Any]], rng: jax.Array
                     ) -> tuple[TrainState, TrainState, TrainState, list[str]]:
  """-> (initial state, its shardings, its abstract shapes, notes on dimensions split less).

  Shardings come from the parameters' logical axes and ``rules``; the optimizer state follows its
  parameters. Initialisation runs under jit straight into those shardings, so no device ever
  holds a whole table that is split.
  """
  def init_state(rng: jax.Array) -> TrainState:
    params = partitioning.unbox(model.init(rng, dummy_batch(schema, 1))['params'])
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
  # ------------------------------------------------------------------ setup
  run = _setup(config, workdir, stop_at_step, devices)

  # ------------------------------------------------------------------ data
  train_iter = _data_iter(run, run.dataset.train_range, repeat=True)

  # ------------------------------------------------------------------ model and optimizer init, jit
  state, state_shd, abstract_state, uneven = init_train_state(
      run.model, run.tx, run.schema, run.mesh, run.rules, jax.random.key(config.seed))
  counts = count_params(state.params)
  _log_model(run, counts, uneven)
  loss_variance = diagnostics.LossVariance(run.schema.task_names,
                                           int(config.train.get('diagnostics_window', 20)))
  steps = _jit_steps(run, state_shd)

  # ------------------------------------------------------------------ checkpoint restore
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    config.train.keep_checkpoints)
  state, days = _restore(run, ckpt, state, abstract_state, state_shd, train_iter)

  # ------------------------------------------------------------------ the loop
  writer = reporting.MetricWriter(workdir)
  state, step = _train_loop(run, steps, ckpt, writer, train_iter, state, days, loss_variance)
  ckpt.wait()
  ckpt.close()
  # ``state``: the final TrainState (sharded device arrays) for callers that go on from it.
  result: dict[str, Any] = {'step': step, 'params': counts, 'state': state}
  if step < run.total_steps:  # stopped early (stop_at_step): a later call resumes
    writer.close()
    return result

  # ------------------------------------------------------------------ final report
  result.update(_final_report(run, steps, writer, state.params, step, counts, days))
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


class _Steps(NamedTuple):
  """The jitted programs of a run, each traced under the mesh and the logical-axis rules."""
  train: TrainStep
  eval: EvalStep
  gradient_cosine: Callable[[Any, Batch], jnp.ndarray]


def _setup(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None,
           devices: Sequence[Any] | None) -> _Run:
  """Mesh, config checks, dataset, model, optimizer and loss; notes on the run; config saved."""
  if 'mesh' not in config:
    raise ConfigError('config.mesh is missing; start from experiments/default.py')
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.mesh)
  check_config(config, sharding.batch_shards(mesh))
  os.makedirs(workdir, exist_ok=True)
  dataset = pipeline.build_dataset(config.data)
  schema = dataset.schema
  model = build_model(config.model, schema)
  tx = make_optimizer(config.optimizer)
  loss_fn, loss_mode = make_loss_fn(config, model, schema)
  conditional = loss_mode in ('conditional', 'esmm')
  diag_every = int(config.train.get('diagnostics_every', 0))
  total_steps = int(config.train.total_steps)
  global_batch = int(config.data.batch_size)
  run = _Run(config=config, workdir=workdir, mesh=mesh, rules=rules, dataset=dataset,
             model=model, tx=tx, loss_fn=loss_fn,
             parents=schema.task_parents if conditional else (-1,) * schema.num_tasks,
             chain=None if conditional else schema.task_parents, total_steps=total_steps,
             end_step=total_steps if stop_at_step is None else min(stop_at_step, total_steps),
             global_batch=global_batch, diag_every=diag_every)
  n_train = dataset.train_range[1] - dataset.train_range[0]
  if run.mode == 'next_batch' and total_steps * global_batch > n_train:
    raise ConfigError(
        f'next-batch evaluation needs unseen data every step: config.train.total_steps '
        f'({total_steps}) x config.data.batch_size ({global_batch}) exceeds the {n_train} training '
        'requests; lower the steps or raise config.data.num_train_requests')
  if total_steps * global_batch > n_train:
    reporting.log(f'note: {total_steps} steps x {global_batch} requests is '
                  f'{total_steps * global_batch / n_train:.2f} epochs of the training range')
  _write_config(config, workdir)
  return run


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


def _restore(run: _Run, ckpt: checkpointing.Checkpointer, state: TrainState,
             abstract_state: TrainState, state_shd: TrainState, train_iter: Any
             ) -> tuple[TrainState, _Days]:
  """The latest checkpoint's state, data position and next-batch days, if there is one."""
  task_names = run.schema.task_names
  days = _Days(daily=[], acc=metrics_lib.TaskMetricsAccumulator(task_names))
  start = ckpt.latest_step()
  if start is None:
    return state, days
  state, extra = ckpt.restore(
      start, checkpointing.abstract_with_sharding(abstract_state, state_shd), train_iter)
  days = _Days(daily=extra['daily'], acc=metrics_lib.TaskMetricsAccumulator.from_state(
      task_names, _arrays_from_json(extra['day_acc'])))
  reporting.log(f'resumed from {run.workdir}/checkpoints at step {start}')
  return state, days


def _train_loop(run: _Run, steps: _Steps, ckpt: checkpointing.Checkpointer,
                writer: reporting.MetricWriter, train_iter: Any, state: TrainState, days: _Days,
                loss_variance: diagnostics.LossVariance) -> tuple[TrainState, int]:
  """From the state's step to ``run.end_step``: (score,) train, log, diagnose, evaluate, save."""
  config, task_names, diag_every = run.config, run.schema.task_names, run.diag_every
  step = int(jax.device_get(state.step))
  progress = reporting.Progress(run.total_steps, step)
  ckpt_every = int(config.train.checkpoint_every)
  seen = 0.0
  while step < run.end_step:
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
    if diag_every and (step % diag_every == 0 or step == run.end_step):
      loss_variance.update([float(jax.device_get(out[f'loss_{t}'])) for t in task_names])
      cos = np.asarray(jax.device_get(steps.gradient_cosine(state.params, batch)))
      diag = loss_variance.summary(cos)
      writer.write(step, 'diagnostics', diag)
      reporting.log('diagnostics: ' + ', '.join(f'{k} {v:.4f}' for k, v in diag.items()
                                                 if not k.startswith('loss_mean')))
    if run.mode == 'next_batch' and step % config.eval.day_steps == 0:
      _end_day(run, writer, days, step)
    if (run.mode == 'holdout' and config.eval.every_steps and step % config.eval.every_steps == 0
        and step < run.total_steps):
      ev = _evaluate(run, steps.eval, state.params, config.eval.num_batches)
      writer.write(step, 'eval', ev)
      reporting.log(f'eval at step {step}: ' + ', '.join(
          f'{t} AUC {ev[t]["auc"]:.4f}' for t in task_names))
    if (ckpt_every and step % ckpt_every == 0) or step == run.end_step:
      _check_finite(run, state)  # never write a poisoned checkpoint
      extra = {'daily': days.daily, 'day_acc': _arrays_to_json(days.acc.state())}
      ckpt.save(step, state, train_iter, extra)
  return state, step


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


def _evaluate(run: _Run, eval_step: EvalStep, params: Any, num_batches: int
              ) -> dict[str, dict[str, float]]:
  """Hold-out metrics over the first ``num_batches`` evaluation batches (-1: all of them)."""
  acc = metrics_lib.TaskMetricsAccumulator(run.schema.task_names)
  local_batch = run.global_batch // jax.process_count()
  for i, host in enumerate(_data_iter(run, run.dataset.eval_range, repeat=False)):
    if 0 <= num_batches <= i:
      break
    batch = sharding.put_batch(pipeline.pad_requests(host, local_batch), run.mesh)
    acc.add(**_host_eval_arrays(eval_step(params, batch), run.parents, run.chain))
  return acc.compute()


def _final_report(run: _Run, steps: _Steps, writer: reporting.MetricWriter, params: Any,
                  step: int, counts: Mapping[str, int], days: _Days) -> dict[str, Any]:
  """Final metrics (hold-out, or next-batch days macro-averaged): written, logged as a table and
  saved as final_metrics.json. -> the result's 'final', 'daily' and 'table'."""
  if run.mode == 'holdout':
    final = _evaluate(run, steps.eval, params, run.config.eval.num_batches)
    title = (f'hold-out evaluation after {step} steps '
             f'(requests {run.dataset.eval_range[0]}..{run.dataset.eval_range[1] - 1})')
  else:
    if len(days.acc):
      days.daily.append(days.acc.compute())
    final = metrics_lib.macro_average(days.daily)
    title = f'next-batch evaluation, macro-average over {len(days.daily)} days of {step} steps'
  writer.write(step, 'final', final)
  writer.close()
  table = reporting.format_table(final, run.schema.task_names, title)
  reporting.log(table)
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, 'final_metrics.json'), 'w', encoding='utf-8') as f:
      json.dump({'step': step, 'mode': run.mode, 'params': counts, 'metrics': final}, f,
                indent=1, default=float)
  return {'final': final, 'daily': days.daily, 'table': table}


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
      reporting.log(f'warning: the config differs from the one saved in {path}; '
                    'resuming with the new one (the old one is kept as config.previous.json)')
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
