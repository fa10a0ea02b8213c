"""The training program: one read, top to bottom.

Sections: setup -> data -> model and optimizer init (eval_shape, shardings, jit) -> checkpoint
restore -> the loop (with next-batch or hold-out evaluation) -> final evaluation and report.
Every model runs through this one loop; models differ only in their module and config.

Evaluation modes (``config.eval.mode``):
  * ``holdout``: train on the earlier requests, evaluate on the later ones (chronological split).
  * ``next_batch``: the paper's protocol (SPEC A.8): each training batch is scored with the current
    parameters before it is trained on; metrics are computed per "day" of ``config.eval.day_steps``
    steps and macro-averaged over days.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from onetrans_jax import accounting, checkpointing, diagnostics, reporting, sharding, xla_options
from onetrans_jax import metrics as metrics_lib
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError, NonFiniteLossError
from onetrans_jax.losses import LOSS_MODES, ancestor_matrix, multitask_bce, onerank_loss
from onetrans_jax.models import build_model, partitioning
from onetrans_jax.optimizers import count_params, make_optimizer
from onetrans_jax.schema import FeatureSchema, label_weights

EVAL_MODES = ('holdout', 'next_batch')


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  opt_state: Any
  # First step whose loss was NaN/inf (-1: none). Kept on device so the check costs no sync.
  nonfinite_step: jnp.ndarray


def dummy_batch(schema: FeatureSchema, num_requests: int) -> dict[str, Any]:
  """Zeros in the batch contract (all candidates valid), for init and shape inference."""
  spec = schema.batch_spec(num_requests)
  batch = jax.tree.map(lambda s: np.zeros(s[0], s[1]), spec, is_leaf=lambda x: isinstance(x, tuple))
  batch['cand']['mask'][:] = True
  return batch


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
                 ) -> tuple[Callable[[Any, Any], tuple[jnp.ndarray, jnp.ndarray]], str]:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None,
                       devices: Sequence[Any] | None = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint) and returns the final report.

  ``stop_at_step`` ends the run early after saving a checkpoint there, as a preemption would; the
  same call without it then resumes and finishes the identical run. ``devices``: the devices the
  mesh spans (default: every device of every process).
  """
  # ------------------------------------------------------------------ setup
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
  # Which impressions each task's loss and metrics cover: conditional tasks live where their
  # parent is 1; 'joint' and 'onerank' logits are unconditional, over every impression.
  parents = schema.task_parents if loss_mode in ('conditional', 'esmm') else (
      (-1,) * schema.num_tasks)
  chain = None if loss_mode in ('conditional', 'esmm') else schema.task_parents
  diag_every = int(config.train.get('diagnostics_every', 0))
  batch_shd, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  total_steps = int(config.train.total_steps)
  end_step = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
  mode = config.eval.mode
  global_batch = int(config.data.batch_size)
  n_train = dataset.train_range[1] - dataset.train_range[0]
  if mode == 'next_batch' and total_steps * global_batch > n_train:
    raise ConfigError(
        f'next-batch evaluation needs unseen data every step: config.train.total_steps '
        f'({total_steps}) x config.data.batch_size ({global_batch}) exceeds the {n_train} training '
        'requests; lower the steps or raise config.data.num_train_requests')
  if total_steps * global_batch > n_train:
    reporting.log(f'note: {total_steps} steps x {global_batch} requests is '
                  f'{total_steps * global_batch / n_train:.2f} epochs of the training range')
  _write_config(config, workdir)

  # ------------------------------------------------------------------ data
  def data_iter(index_range, repeat):
    return pipeline.make_iterator(
        dataset, index_range, global_batch_size=global_batch, shuffle=repeat and config.data.shuffle,
        seed=config.seed, repeat=repeat, validate=config.data.validate,
        num_threads=config.data.num_threads, worker_count=config.data.worker_count)

  train_iter = data_iter(dataset.train_range, repeat=True)
  local_batch = global_batch // jax.process_count()

  # ------------------------------------------------------------------ model and optimizer
  def init_state(rng: jax.Array) -> TrainState:
    params = partitioning.unbox(model.init(rng, dummy_batch(schema, 1))['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))

  # Shardings from the parameters' logical axes and the config's rules; the optimizer state
  # follows its parameters. Initialisation runs under jit straight into those shardings, so no
  # device ever holds a whole table that is split.
  rng = jax.random.key(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  boxed = jax.eval_shape(lambda r: model.init(r, dummy_batch(schema, 1))['params'], rng)
  params_shd, uneven = sharding.param_shardings(boxed, mesh, rules)
  state_shd = TrainState(
      step=repl, params=params_shd,
      opt_state=sharding.opt_state_shardings(abstract_state.opt_state, abstract_state.params,
                                               params_shd, mesh),
      nonfinite_step=repl)
  state = jax.jit(init_state, out_shardings=state_shd)(rng)
  counts = count_params(state.params)
  tflops = accounting.batch_tflops(config.model, schema)
  flops = '' if np.isnan(tflops) else (
      f', {tflops * 1e3 / accounting.PAPER_BATCH:.3f} training GFLOPs per example '
      f'({tflops:.3f} TFLOPs per batch of {accounting.PAPER_BATCH})')
  if getattr(model, 'schedule', None) is not None:
    flops += f', pyramid {model.schedule}'
  reporting.log(f'model {config.model.name}: {counts["dense"]:,} dense parameters, '
                f'{counts["sparse"]:,} embedding parameters{flops}; mesh {sharding.describe(mesh)}'
                f' over {jax.process_count()} process(es)')
  if uneven and mesh.size > 1:
    reporting.log(f'note: {len(uneven)} parameter dimension(s) are split over fewer mesh axes '
                  'than the rules ask, because those axes do not divide them (pad embedding '
                  'tables with config.model.embedding_row_multiple): ' + '; '.join(uneven[:8]) +
                  (' ...' if len(uneven) > 8 else ''))

  def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    (loss, per_task), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    first_bad = jnp.where((state.nonfinite_step < 0) & ~jnp.isfinite(loss), state.step,
                          state.nonfinite_step)
    out = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
    out.update({f'loss_{t}': per_task[i] for i, t in enumerate(schema.task_names)})
    return TrainState(state.step + 1, params, opt_state, first_bad), out

  def eval_step(params, batch) -> dict[str, jnp.ndarray]:
    logits = model.apply({'params': params}, batch, train=False)
    out = {'probs': jax.nn.sigmoid(logits), 'labels': batch['labels'],
           'cand_mask': batch['cand']['mask'], 'user_id': batch['request']['user_id']}
    if 'true_prob' in batch:
      out['true_prob'] = batch['true_prob']
    return out

  def gradient_cosine(params, batch) -> jnp.ndarray:
    """[T, T] cosine of the tasks' gradients on the shared encoder (SPEC C.6 stability signal)."""
    private = getattr(type(model), 'TASK_PRIVATE', ())
    return diagnostics.per_task_gradient_cosine(lambda p: loss_fn(p, batch)[1], params,
                                                diagnostics.excluding(*private))

  loss_variance = diagnostics.LossVariance(schema.task_names,
                                           int(config.train.get('diagnostics_window', 20)))
  # Each step is traced under the mesh and the logical-axis rules, so the models' activation
  # hints (batch over data x fsdp, heads and FFN units over tensor) resolve to mesh axes.
  opts = xla_options.compiler_options(config)
  gradient_cosine = sharding.under_mesh(
      jax.jit(gradient_cosine, in_shardings=(state_shd.params, batch_shd), out_shardings=repl,
              compiler_options=opts), mesh, rules)
  train_step = sharding.under_mesh(
      jax.jit(train_step, in_shardings=(state_shd, batch_shd), out_shardings=(state_shd, repl),
              donate_argnums=0, compiler_options=opts), mesh, rules)
  # Outputs replicated: every process sees the whole global batch's predictions and labels, so
  # metrics are global on every host without a separate gather.
  eval_step = sharding.under_mesh(
      jax.jit(eval_step, in_shardings=(state_shd.params, batch_shd), out_shardings=repl,
              compiler_options=opts), mesh, rules)

  def check_finite(state: TrainState) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
      raise NonFiniteLossError(
          f'the training loss became NaN/inf at step {bad} (config.model.name='
          f'{config.model.name}); lower config.optimizer.dense.learning_rate or '
          'config.optimizer.clip_global_norm, or check the input features for extreme values')

  def evaluate(params, num_batches: int) -> dict[str, dict[str, float]]:
    acc = metrics_lib.TaskMetricsAccumulator(schema.task_names)
    it = data_iter(dataset.eval_range, repeat=False)
    for i, host in enumerate(it):
      if 0 <= num_batches <= i:
        break
      batch = sharding.put_batch(pipeline.pad_requests(host, local_batch), mesh)
      acc.add(**_host_eval_arrays(eval_step(params, batch), parents, chain))
    return acc.compute()

  # ------------------------------------------------------------------ checkpoint restore
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    config.train.keep_checkpoints)
  day_acc = metrics_lib.TaskMetricsAccumulator(schema.task_names)
  daily: list[dict[str, dict[str, float]]] = []
  start = ckpt.latest_step()
  if start is not None:
    state, extra = ckpt.restore(
        start, checkpointing.abstract_with_sharding(abstract_state, state_shd), train_iter)
    daily = extra['daily']
    day_acc = metrics_lib.TaskMetricsAccumulator.from_state(
        schema.task_names, _arrays_from_json(extra['day_acc']))
    reporting.log(f'resumed from {workdir}/checkpoints at step {start}')
  step = int(jax.device_get(state.step))

  def save() -> None:
    check_finite(state)  # never write a poisoned checkpoint
    extra = {'daily': daily, 'day_acc': _arrays_to_json(day_acc.state())}
    ckpt.save(step, state, train_iter, extra)

  # ------------------------------------------------------------------ the loop
  writer = reporting.MetricWriter(workdir)
  progress = reporting.Progress(total_steps, step)
  seen = 0.0
  ckpt_every = int(config.train.checkpoint_every)
  while step < end_step:
    host = next(train_iter)
    seen += float(np.sum(host['cand']['mask']))
    batch = sharding.put_batch(host, mesh)
    if mode == 'next_batch':  # score in eval mode before training on it
      day_acc.add(**_host_eval_arrays(eval_step(state.params, batch), parents, chain))
    state, out = train_step(state, batch)
    step += 1

    if step % config.train.log_every == 0 or step == end_step:
      out = jax.device_get(out)
      check_finite(state)
      stats = progress.update(step, seen)
      seen = 0.0
      reporting.log(progress.line(step, float(out['loss']), stats))
      writer.write(step, 'train', {**out, **stats})
    if diag_every and (step % diag_every == 0 or step == end_step):
      loss_variance.update([float(jax.device_get(out[f'loss_{t}'])) for t in schema.task_names])
      cos = np.asarray(jax.device_get(gradient_cosine(state.params, batch)))
      diag = loss_variance.summary(cos)
      writer.write(step, 'diagnostics', diag)
      reporting.log('diagnostics: ' + ', '.join(f'{k} {v:.4f}' for k, v in diag.items()
                                                 if not k.startswith('loss_mean')))
    if mode == 'next_batch' and step % config.eval.day_steps == 0:
      day = day_acc.compute()
      daily.append(day)
      day_acc.reset()
      writer.write(step, 'next_batch', day)
      reporting.log(f'day {len(daily)} (step {step}): ' + ', '.join(
          f'{t} AUC {day[t]["auc"]:.4f}' for t in schema.task_names))
    if (mode == 'holdout' and config.eval.every_steps and step % config.eval.every_steps == 0
        and step < total_steps):
      ev = evaluate(state.params, config.eval.num_batches)
      writer.write(step, 'eval', ev)
      reporting.log(f'eval at step {step}: ' + ', '.join(
          f'{t} AUC {ev[t]["auc"]:.4f}' for t in schema.task_names))
    if (ckpt_every and step % ckpt_every == 0) or step == end_step:
      save()

  ckpt.wait()
  ckpt.close()
  # ``state``: the final TrainState (sharded device arrays) for callers that go on from it.
  result: dict[str, Any] = {'step': step, 'params': counts, 'state': state}
  if step < total_steps:  # stopped early (stop_at_step): a later call resumes
    writer.close()
    return result

  # ------------------------------------------------------------------ final report
  if mode == 'holdout':
    final = evaluate(state.params, config.eval.num_batches)
    title = (f'hold-out evaluation after {step} steps '
             f'(requests {dataset.eval_range[0]}..{dataset.eval_range[1] - 1})')
  else:
    if len(day_acc):
      daily.append(day_acc.compute())
    final = metrics_lib.macro_average(daily)
    title = f'next-batch evaluation, macro-average over {len(daily)} days of {step} steps'
  writer.write(step, 'final', final)
  writer.close()
  table = reporting.format_table(final, schema.task_names, title)
  reporting.log(table)
  result.update({'final': final, 'daily': daily, 'table': table})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w', encoding='utf-8') as f:
      json.dump({'step': step, 'mode': mode, 'params': counts, 'metrics': final}, f, indent=1,
                default=float)
  return result


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
