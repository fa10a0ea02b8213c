"""Logical axis names for parameters and activations, and the helpers that attach them.

Every parameter carries a tuple of logical axis names, one per dimension (flax
``LogicallyPartitioned`` boxes, created by wrapping its initializer); ``config.mesh.rules`` maps
the names onto the mesh axes ``data``, ``fsdp`` and ``tensor`` (``onetrans_jax/sharding.py``).
The model code says what a dimension *is*; the config decides how it is split, so one model runs
data-parallel, FSDP or tensor-parallel without a code change (the MaxText convention).

Wrapping an initializer does not change the values it draws: a model initialises to the same
numbers with or without the boxes. ``model.init`` returns boxed parameters; ``unbox`` strips the
boxes (``model.apply`` accepts either form).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

# Parameter and activation dimensions.
BATCH = 'batch'        # requests of a batch (activations)
LENGTH = 'length'      # token positions (activations)
VOCAB = 'vocab'        # embedding-table rows
EMBED = 'embed'        # the model width / a kernel's input features
MLP = 'mlp'            # hidden or output features of a kernel
HEADS = 'heads'        # attention projections' output features (heads x head width)
TOKENS = 'tokens'      # a stack of per-token weights (NS tokens, feature tokens, sequences)
TASKS = 'tasks'        # a stack of per-task weights
EXPERTS = 'experts'    # a stack of per-expert weights
NORM = 'norm'          # gains, biases and other vectors: small, kept whole
# Activation feature dimensions: named apart from the weights' so that FSDP (weights' EMBED split
# over ``fsdp``) does not split the activations' features too.
ACT_EMBED = 'act_embed'  # the width of a token stream
ACT_HEADS = 'act_heads'  # the head axis of queries / keys / values
ACT_MLP = 'act_mlp'      # FFN hidden activations

AXES = (BATCH, LENGTH, VOCAB, EMBED, MLP, HEADS, TOKENS, TASKS, EXPERTS, NORM, ACT_EMBED,
        ACT_HEADS, ACT_MLP)

Init = Callable[..., Any]


def init(fn: Init, axes: Sequence[str | None]) -> Init:
  """``fn`` (an initializer) with its result labelled by ``axes`` (one name per dimension)."""
  return nn.with_logical_partitioning(fn, tuple(axes))


def param(module: nn.Module, name: str, fn: Init, shape: Sequence[int],
          axes: Sequence[str | None], *args: Any) -> jax.Array:
  """``module.param(name, fn, shape, *args)`` with logical axes; returns the plain array."""
  if len(axes) != len(shape):
    raise ValueError(f'parameter {name!r} of shape {tuple(shape)} got {len(axes)} logical axes '
                     f'{tuple(axes)}: give one name per dimension')
  return module.param(name, init(fn, axes), tuple(shape), *args)


def dense(in_axis: str | None = EMBED, out_axis: str | None = MLP, kernel_init: Init | None = None,
          bias_init: Init | None = None) -> dict[str, Init]:
  """``nn.Dense`` keyword arguments: its kernel [in, out] and bias [out] with logical axes.

  The defaults are ``nn.Dense``'s own initializers, so values are unchanged.
  """
  return {'kernel_init': init(kernel_init or nn.initializers.lecun_normal(), (in_axis, out_axis)),
          'bias_init': init(bias_init or nn.initializers.zeros_init(), (out_axis,))}


def chain_axes(i: int) -> tuple[str, str]:
  """Logical (input, output) axes of the i-th kernel in a stack of dense layers.

  Alternating (EMBED, MLP), (MLP, EMBED), ... is the Megatron pairing (one reduction per two
  layers), and it avoids a partitioner miscompile that two consecutive (EMBED, MLP) kernels meet
  under FSDP x tensor: wrong gradients, right forward values (``onetrans_jax/sharding_check.py``).
  A layer's bias takes its output axis; what reads the stack's output takes
  ``chain_axes(len(stack))[0]`` as its input axis.
  """
  return (EMBED, MLP) if i % 2 == 0 else (MLP, EMBED)


def norm(bias: bool = True) -> dict[str, Init]:
  """``nn.LayerNorm`` (``bias=True``) / ``nn.RMSNorm`` (``bias=False``) keyword arguments."""
  kw = {'scale_init': init(nn.initializers.ones, (NORM,))}
  if bias:
    kw['bias_init'] = init(nn.initializers.zeros, (NORM,))
  return kw


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Activation sharding hint; a no-op outside ``sharding.mesh_context`` (no rules, no mesh).

  A dimension keeps only the leading mesh axes of its rule whose product divides it (a batch of
  6 requests on a data axis of 4 is left whole rather than failing to compile).
  """
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  if len(axes) != x.ndim:
    raise ValueError(f'constrain: {len(axes)} logical axes {tuple(axes)} for an array of rank '
                     f'{x.ndim}')
  spec = nn.logical_to_mesh_axes(tuple(axes), rules)
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.PartitionSpec(*fit_spec(spec, x.shape, dict(mesh.shape))))


def whole_features(x: jax.Array) -> jax.Array:
  """``x`` [batch, ..., features] with every feature on each device (the batch still split).

  What an input projection (an (EMBED, MLP) kernel) reads: after another input projection the
  features are split over ``tensor``, and contracting them with a kernel split over (fsdp, tensor)
  is the pattern the partitioner miscompiles (``onetrans_jax/sharding_check.py``). Free when the
  features are whole already.
  """
  return constrain(x, (BATCH,) + (None,) * (x.ndim - 1))


def fit_spec(spec: Sequence[Any], shape: Sequence[int], mesh_shape: dict[str, int]
             ) -> tuple[Any, ...]:
  """Per dimension, the longest prefix of its mesh axes whose size product divides the dimension."""
  out = []
  for entry, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    kept, prod = [], 1
    for n in names:
      if size % (prod * mesh_shape[n]):
        break
      kept.append(n)
      prod *= mesh_shape[n]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return tuple(out)


def unbox(tree: Any) -> Any:
  """Parameters without their logical-axis boxes (plain arrays).

  Unlike ``nn.meta.unbox`` this never adds a sharding constraint (which would need every split
  dimension to divide evenly); placement is decided once, by ``sharding.param_shardings``.
  """
  def strip(x):
    return x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x.unbox()
  return nn.meta.map_axis_meta(strip, tree)


def logical_axes(tree: Any) -> Any:
  """The PartitionSpec of logical names of every leaf (an unannotated leaf: ``PartitionSpec()``)."""
  return nn.get_partition_spec(tree)


def unannotated(tree: Any) -> list[str]:
  """Paths of the array leaves that carry no logical axes (should be none)."""
  out = []

  def visit(path, leaf):
    if not isinstance(leaf, nn.LogicallyPartitioned):
      out.append(jax.tree_util.keystr(path))

  jax.tree_util.tree_map_with_path(visit, tree,
                                   is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return out
