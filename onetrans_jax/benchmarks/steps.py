"""The trainer's own training step, compiled as the trainer compiles it, for the benchmarks.

Shared by onetrans_jax/benchmarks/suite.py, profile_step.py and kv_cache.py (no flags here, so each
script keeps its own): every benchmark that times a training step times ``train.make_train_step``
jitted by ``train.jit_train_step`` (state sharded and donated, the trainer's compiler options).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from onetrans_jax import sharding, xla_options
from onetrans_jax.data import pipeline
from onetrans_jax.models import build_model
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.optimizers import make_optimizer
from onetrans_jax.schema import FeatureSchema
from onetrans_jax.train import (TrainState, init_train_state, jit_train_step, make_loss_fn,
                                make_train_step)


class Step(NamedTuple):
  """A config's training step, compiled as the trainer compiles it, and what it runs on."""
  compiled: Any  # (state, batch) -> (state, metrics); donates the state
  compile_seconds: float
  state: TrainState
  batch: Any  # on the mesh, split as the trainer splits it
  schema: Any
  model: Any
  mesh: Any   # the one-device mesh the step runs on (sharding.put_batch of further batches)


def median_time(fn: Callable[..., Any], *args: Any, repeats: int,
                feed: Callable[[Any], Any] | None = None, warmup: int = 1) -> float:
  """Median wall time of ``fn(*args)`` over ``repeats`` calls after ``warmup`` calls. A ``fn``
  that donates its first argument gets ``feed(previous output)`` there instead (its input buffer
  is gone)."""
  for _ in range(warmup):
    out = jax.block_until_ready(fn(*args))
    if feed is not None:
      args = (feed(out),) + tuple(args[1:])
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
    if feed is not None:
      args = (feed(out),) + tuple(args[1:])
  return float(np.median(times))


class Parts(NamedTuple):
  """What the trainer builds for a step: the un-jitted step function and its inputs."""
  fn: Any          # train.make_train_step's (state, batch) -> (state, metrics)
  state: TrainState
  state_shardings: Any
  batch: Any       # on the mesh
  schema: Any
  model: Any
  mesh: Any
  rules: Any


def trainer_parts(config: ml_collections.ConfigDict, schema: FeatureSchema, host_batch: Any
                  ) -> Parts:
  """The trainer's step function of ``config`` (train.make_train_step) on a one-device mesh,
  its initial state and ``host_batch`` on that mesh."""
  model = build_model(config.model, schema)
  tx = make_optimizer(config.optimizer)
  loss_fn, _ = make_loss_fn(config, model, schema)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.rules_from_config(config.mesh)
  state, state_shd, _, _ = init_train_state(model, tx, schema, mesh, rules,
                                            jax.random.key(config.seed))
  fn = make_train_step(loss_fn, tx, schema.task_names)
  return Parts(fn, state, state_shd, sharding.put_batch(host_batch, mesh), schema, model, mesh,
               rules)


def trainer_step(config: ml_collections.ConfigDict, schema: FeatureSchema, host_batch: Any
                 ) -> Step:
  """The trainer's own step of ``config`` (train.make_train_step, jitted by train.jit_train_step:
  state sharded and donated, the trainer's compiler options), compiled on a one-device mesh, so
  a row measures one device whatever the machine holds; its initial state and ``host_batch`` on
  that mesh."""
  p = trainer_parts(config, schema, host_batch)
  jitted = jit_train_step(p.fn, p.state_shardings, p.mesh, xla_options.compiler_options(config))
  t0 = time.perf_counter()
  with sharding.mesh_context(p.mesh, p.rules):  # as the trainer traces it: activation hints
    compiled = jitted.lower(p.state, p.batch).compile()
  return Step(compiled, time.perf_counter() - t0, p.state, p.batch, schema, p.model, p.mesh)


def first_batch(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(schema, the first training batch), read through the same iterator (and checks) as
  train.py."""
  data = pipeline.build_dataset(config.data)
  host_batch = next(pipeline.make_iterator(
      data, data.train_range, global_batch_size=config.data.batch_size, shuffle=False,
      seed=config.seed, repeat=False, num_threads=1))
  return data.schema, host_batch


def step_parts(config: ml_collections.ConfigDict) -> Parts:
  """``trainer_parts`` on the config's first training batch."""
  return trainer_parts(config, *first_batch(config))


def trace_step(parts: Parts) -> Any:
  """The step's closed jaxpr, traced as the trainer traces it (activation hints resolved)."""
  with sharding.mesh_context(parts.mesh, parts.rules):
    return jax.make_jaxpr(parts.fn)(parts.state, parts.batch)


def build_step(config: ml_collections.ConfigDict) -> Step:
  """The trainer's own step of ``config`` on its first training batch, read through the same
  iterator (and checks) as train.py."""
  return trainer_step(config, *first_batch(config))


def onetrans_step_flops(config: ml_collections.ConfigDict, schema: FeatureSchema,
                        request_level: bool) -> float:
  """Analytic training FLOPs of one OneTrans step in the layout that runs (3 x forward)."""
  return config.data.batch_size * onetrans_config.training_flops_per_request(
      config.model, schema, config.data.num_candidates, request_level)
