"""Does a mesh give the one-device gradient? A check to run before a long sharded training run.

Sharding must not change the numbers, only where they live; yet XLA's SPMD partitioner can
miscompile. Found while building this package, on jax/jaxlib 0.10.2 (CPU, simulated devices): for
``y = (s @ W) @ Wq`` with the batch of ``s`` split over ``(data, fsdp)``, ``W`` over ``(., tensor)``
and ``Wq`` over ``(fsdp, tensor)``, the forward value is right and the gradients of ``W`` and
``s`` are wrong by ~60% (``tests/test_sharding.py::test_partitioner_bug_pattern``); in whole
models it showed up in OneRank's situation discernment, DCNv2's cross layers and stacked MLPs. The
shipped models avoid it (stacks alternate their kernels' axes, ``partitioning.chain_axes``; input
projections read whole features, ``partitioning.whole_features``; the slow test checks every model
family), but a new module or a new rule set could meet it again, and only a loss curve would show
it. This check differentiates one batch's loss on one
device and on the configured mesh and compares every parameter's gradient.

    python -m onetrans_jax.sharding_check --config onetrans_jax/experiments/onerank_main.py \\
        --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2

(on one CPU, prefix ``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu``).
Exits 1 when a gradient differs by more than ``--tolerance`` (relative to its largest entry).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from onetrans_jax import sharding
from onetrans_jax.data import pipeline
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.schema import dummy_batch
from onetrans_jax.train import check_config, make_loss_fn

# Float32 reductions in another order differ by ~1e-6 relative; the miscompile above by ~1.
DEFAULT_TOLERANCE = 1e-4


def gradient_mismatch(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
                      ) -> dict[str, float]:
  """Per parameter path: max |g_mesh - g_one| / max |g_one| for the first training batch.

  The mesh is ``config.mesh`` over ``devices`` (default: all); the reference runs on the first of
  them alone. Single-process only: the reference needs the whole batch on one device.
  """
  if jax.process_count() != 1:
    raise RuntimeError('sharding_check runs in one process (it compares with one device); '
                       f'this job has {jax.process_count()}')
  devices = list(devices if devices is not None else jax.devices())
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.mesh)
  check_config(config, sharding.batch_shards(mesh))
  dataset = pipeline.build_dataset(config.data)
  model = build_model(config.model, dataset.schema)
  loss_fn, _ = make_loss_fn(config, model, dataset.schema)
  it = pipeline.make_iterator(
      dataset, dataset.train_range, global_batch_size=int(config.data.batch_size), shuffle=False,
      seed=config.seed, repeat=False, validate=config.data.validate, num_threads=1, worker_count=0)
  batch = next(iter(it))
  boxed = model.init(jax.random.key(config.seed), dummy_batch(dataset.schema, 1))['params']
  return compare_gradients(lambda p, b: loss_fn(p, b)[0], boxed, batch, mesh, rules, devices[0])


def compare_gradients(loss: Callable[[Any, Any], jax.Array], boxed: Any, batch: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]], reference_device: Any
                      ) -> dict[str, float]:
  """``loss(params, batch)``'s gradient on ``reference_device`` alone and on ``mesh``, with the
  parameters placed by their logical axes (``boxed``) and ``rules``, the batch split over
  ``(data, fsdp)``: per parameter path, max |g_mesh - g_one| / max |g_one|."""
  params = jax.device_get(partitioning.unbox(boxed))

  def grad(p, b):
    return jax.grad(loss)(p, b)

  ref = jax.jit(grad)(jax.device_put(params, reference_device),
                      jax.device_put(batch, reference_device))
  params_shd, _ = sharding.param_shardings(boxed, mesh, rules)
  step = sharding.under_mesh(jax.jit(grad, out_shardings=params_shd), mesh, rules)
  got = step(jax.device_put(params, params_shd), sharding.put_batch(batch, mesh))

  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float('inf'))

  return {jax.tree_util.keystr(path): rel(a, b) for (path, a), b in
          zip(jax.tree_util.tree_leaves_with_path(jax.device_get(got)),
              jax.tree.leaves(jax.device_get(ref)))}


def report(mismatch: dict[str, float], tolerance: float = DEFAULT_TOLERANCE, top: int = 8) -> str:
  """A table of the worst parameters and a verdict line."""
  worst = sorted(mismatch.items(), key=lambda kv: -kv[1])
  bad = [k for k, v in worst if not v <= tolerance]
  width = max(len(k) for k, _ in worst[:top])
  lines = [f'{"parameter":<{width}}  rel. gradient difference', '-' * (width + 26)]
  lines += [f'{k:<{width}}  {v:.2e}' for k, v in worst[:top]]
  verdict = (f'OK: all {len(worst)} gradients within {tolerance:g} of one device' if not bad else
             f'MISMATCH: {len(bad)} of {len(worst)} gradients differ by more than {tolerance:g} '
             'from one device; change config.mesh.rules (or the logical axes of the listed '
             'parameters) before training on this mesh')
  return '\n'.join(lines + [verdict])


def main(argv: Sequence[str]) -> None:
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cfg, tol = flags.FLAGS.config, flags.FLAGS.tolerance
  mismatch = gradient_mismatch(cfg)
  print(f'mesh {sharding.describe(sharding.make_mesh(cfg.mesh))}, model {cfg.model.name}')
  print(report(mismatch, tol))
  sys.exit(0 if all(v <= tol for v in mismatch.values()) else 1)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  from onetrans_jax import experiment_files
  sys.argv = experiment_files.resolve_argv(sys.argv)  # --config: a path or a built-in's name
  config_flags.DEFINE_config_file('config', None, 'Experiment config file (as for launch.py).',
                                  lock_config=True)
  flags.DEFINE_float('tolerance', DEFAULT_TOLERANCE, "Largest allowed gradient difference, "
                     "relative to the gradient's largest entry.")
  flags.mark_flag_as_required('config')
  app.run(main)
