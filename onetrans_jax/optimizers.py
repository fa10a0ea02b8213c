"""The paper's optimizer split (SPEC A.8): Adagrad for embedding tables, RMSProp for the rest.

``optax.multi_transform`` routes each parameter by its path: everything under an
``embeddings`` module is "sparse", everything else "dense". Global-norm clipping runs first over all
gradients together.

Defaults [D]: the paper prints Adagrad "beta1=0.1, beta2=1.0", read as learning rate 0.1 and initial
accumulator 1.0; RMSProp lr 0.005 and decay 0.99999. With decay that close to 1 and a zero
initial accumulator, plain RMSProp's first steps divide by sqrt(1e-5 g^2) and move every weight by
~316 x lr; ``bias_correction=True`` (the default here) divides the accumulator by 1 - decay^t,
which keeps the paper's long memory without that blow-up.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from onetrans_jax.errors import ConfigError
from onetrans_jax.models.layers.embeddings import EMBEDDINGS


class OptimizerConfigError(ConfigError):
  """An optimizer config that cannot work; the message names the field."""


def param_labels(params: Any) -> Any:
  """'sparse' for every leaf under a module named ``embeddings`` (at any depth), else 'dense'."""
  def label(path, _):
    keys = [getattr(p, 'key', None) for p in path]
    return 'sparse' if EMBEDDINGS in keys else 'dense'
  return jax.tree_util.tree_map_with_path(label, params)


def _make_one(cfg: ml_collections.ConfigDict, field: str) -> optax.GradientTransformation:
  """One side's optimizer; ``weight_decay`` > 0 adds an L2 gradient (weight_decay * w) before
  the adaptive step (coupled L2, as an L2 loss term would), on every parameter of the side: for
  the sparse side, rows a batch does not touch shrink too, towards the table's zero prior."""
  wd = cfg.get('weight_decay', 0.0)
  if not wd >= 0.0:
    raise OptimizerConfigError(f'config.optimizer.{field}.weight_decay must be >= 0, got {wd}')
  opt = _adaptive(cfg, field)
  return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt


def _adaptive(cfg: ml_collections.ConfigDict, field: str) -> optax.GradientTransformation:
  if cfg.learning_rate <= 0:
    raise OptimizerConfigError(f'config.optimizer.{field}.learning_rate must be > 0, '
                               f'got {cfg.learning_rate}')
  if cfg.name == 'adagrad':
    return optax.adagrad(cfg.learning_rate,
                         initial_accumulator_value=cfg.get('initial_accumulator_value', 0.1),
                         eps=cfg.get('eps', 1e-7))
  if cfg.name == 'rmsprop':
    decay = cfg.get('decay', 0.9)
    if not 0.0 < decay < 1.0:
      raise OptimizerConfigError(f'config.optimizer.{field}.decay must be in (0, 1), got {decay}')
    return optax.rmsprop(cfg.learning_rate, decay=decay, eps=cfg.get('eps', 1e-8),
                         initial_scale=cfg.get('initial_scale', 0.0),
                         bias_correction=cfg.get('bias_correction', True))
  if cfg.name == 'adam':
    return optax.adam(cfg.learning_rate, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999))
  if cfg.name == 'sgd':
    return optax.sgd(cfg.learning_rate)
  raise OptimizerConfigError(f'config.optimizer.{field}.name={cfg.name!r}: choose one of '
                             "['adagrad', 'adam', 'rmsprop', 'sgd']")


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  parts = []
  clip = cfg.get('clip_global_norm', None)
  if clip is not None:
    if clip <= 0:
      raise OptimizerConfigError(f'config.optimizer.clip_global_norm must be > 0 or None, got {clip}')
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.multi_transform(
      {'sparse': _make_one(cfg.sparse, 'sparse'), 'dense': _make_one(cfg.dense, 'dense')},
      param_labels))
  return optax.chain(*parts)


def count_params(params: Any) -> dict[str, int]:
  """Dense parameters (the paper's "Params": no embedding tables) and embedding parameters."""
  counts = {'dense': 0, 'sparse': 0}
  for lab, leaf in zip(jax.tree.leaves(param_labels(params)), jax.tree.leaves(params)):
    counts[lab] += int(leaf.size)
  return counts
