"""Device mesh, logical-axis rules and shardings: one program on a CPU, a GPU node or a pod.

The mesh has three named axes (MaxText's layout, trimmed to what a ranking model needs):

  * ``data``: pure data parallelism; parameters replicated along it.
  * ``fsdp``: data parallelism whose parameters and optimizer state are split along it too (ZeRO-3
    style: XLA all-gathers a weight where it is used and reduce-scatters its gradient).
  * ``tensor``: tensor parallelism; attention heads and FFN hidden units split along it.

Every parameter carries logical axis names (``models/layers/partitioning.py``); ``config.mesh.rules``
maps them to mesh axes. Embedding-table rows (``vocab``) are split over the whole mesh by default,
so a table larger than one device's memory trains. A dimension that its mesh axes do not divide is
split over the longest prefix of them that does (and reported), so odd vocabulary sizes never stop
a run; ``config.model.embedding_row_multiple`` pads tables to split evenly.

Host batches become global arrays with ``jax.make_array_from_process_local_data``, so each process
feeds only its own requests.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from onetrans_jax.errors import ConfigError
from onetrans_jax.models.layers import partitioning as lp

DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = 'data', 'fsdp', 'tensor'
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Logical name -> mesh axes, in priority order (flax semantics: a mesh axis already used by an
# earlier dimension of the same array is skipped). Unlisted names are not split.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (lp.BATCH, (DATA_AXIS, FSDP_AXIS)),
    (lp.VOCAB, (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)),
    (lp.EMBED, FSDP_AXIS),
    (lp.MLP, TENSOR_AXIS),
    (lp.HEADS, TENSOR_AXIS),
    (lp.ACT_HEADS, TENSOR_AXIS),
    (lp.ACT_MLP, TENSOR_AXIS),
    (lp.EXPERTS, None),
    (lp.TOKENS, None),
    (lp.TASKS, None),
    (lp.NORM, None),
    (lp.LENGTH, None),
    (lp.ACT_EMBED, None),
)


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Axis sizes from ``config.mesh.{data,fsdp,tensor}``; at most one may be -1 (inferred)."""
  sizes = {a: int(cfg.get(a, -1 if a == DATA_AXIS else 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad or len(free) > 1:
    raise ConfigError(
        f'config.mesh: sizes {sizes} must be >= 1, with at most one -1 (inferred from the '
        f'{num_devices} devices); e.g. --config.mesh.data=-1 --config.mesh.fsdp=2')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f'config.mesh: {num_devices} devices do not divide into '
          f'{" x ".join(f"{a}={s}" for a, s in sizes.items() if s != -1)}; choose sizes whose '
          f'product divides {num_devices}')
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(
        f'config.mesh: data x fsdp x tensor = {sizes["data"]} x {sizes["fsdp"]} x '
        f'{sizes["tensor"]} = {math.prod(sizes.values())}, but {num_devices} devices are present; '
        'set one of them to -1 to infer it')
  return sizes


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over ``devices`` (default: all of them, every process).

  ``jax.make_mesh`` orders devices for the interconnect (ICI / NVLink neighbours on the inner
  ``tensor`` axis). Axes are ``Auto``: shardings propagate from the in/out shardings and hints.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(cfg, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def rules_from_config(cfg: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  """``config.mesh.rules`` (pairs of logical name, mesh axis / tuple / None), checked."""
  raw = cfg.get('rules', None)
  rules = DEFAULT_RULES if raw is None else tuple(tuple(r) for r in raw)
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f'config.mesh.rules: {rule!r} is not a (logical name, mesh axes) pair')
    name, target = rule
    if name not in lp.AXES:
      raise ConfigError(f'config.mesh.rules: unknown logical axis {name!r}; the model uses '
                        f'{list(lp.AXES)}')
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f'config.mesh.rules: {name!r} -> {target!r} names mesh axes {unknown}; '
                        f'the mesh axes are {list(MESH_AXES)}')
  return rules


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (request) axis split over data x fsdp; replicated over tensor."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(host_batch: Any, mesh: Mesh) -> Any:
  """This process's part of the batch -> global jax arrays split over data x fsdp."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      host_batch)


def param_shardings(boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]
                    ) -> tuple[Any, list[str]]:
  """NamedShardings for (abstract) boxed parameters, and a line per dimension left less split.

  Returns shardings in the unboxed tree's structure. An unannotated leaf is replicated.
  """
  logical = lp.logical_axes(boxed)
  plain = lp.unbox(boxed)
  sizes = dict(mesh.shape)
  notes: list[str] = []

  def one(path, leaf, names):
    spec = tuple(nn.logical_to_mesh_axes(tuple(names), rules))
    fitted = lp.fit_spec(spec, leaf.shape, sizes)
    if tuple(fitted) != tuple(spec) + (None,) * (len(leaf.shape) - len(spec)):
      notes.append(f'{jax.tree_util.keystr(path)} {tuple(leaf.shape)}: {P(*spec)} -> {P(*fitted)}')
    return NamedSharding(mesh, P(*fitted))

  shardings = jax.tree_util.tree_map_with_path(
      one, plain, logical, is_leaf=lambda x: isinstance(x, P))
  return shardings, notes


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, params_shd: Any,
                        mesh: Mesh) -> Any:
  """Optimizer state sharded like its parameters (Adagrad / RMSProp / Adam moments), the rest
  (step counts) replicated.

  A moment leaf mirrors its parameter: the dict keys at the end of its path are the parameter's
  path and its shape is the parameter's. Matching on that works through ``multi_transform`` and
  masking, where ``optax.tree_map_params`` trips over the masked placeholders.
  """
  def dict_keys(path) -> tuple[Any, ...]:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))

  by_path = {dict_keys(path): (leaf.shape, shd) for (path, leaf), shd in zip(
      jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree.leaves(params_shd))}
  repl = replicated(mesh)

  def one(path, leaf):
    keys = dict_keys(path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
        return hit[1]
    return repl

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """The mesh and rules under which activation hints (``partitioning.constrain``) resolve."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def under_mesh(fn: Callable[..., Any], mesh: Mesh, rules: Sequence[tuple[str, Any]]
               ) -> Callable[..., Any]:
  """``fn`` (a jitted step) traced and run inside ``mesh_context``."""
  @functools.wraps(fn)
  def call(*args, **kwargs):
    with mesh_context(mesh, rules):
      return fn(*args, **kwargs)
  return call


def describe(mesh: Mesh) -> str:
  return ' x '.join(f'{a}={mesh.shape[a]}' for a in MESH_AXES)
