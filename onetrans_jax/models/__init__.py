"""Model registry: ``config.model.name`` -> a Flax module over the shared batch contract.

Every model maps a request batch (schema.py) to logits [R, C, T]; models differ only in their
module and config, never in the data path or the training loop.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from onetrans_jax.errors import ConfigError
from onetrans_jax.models.pooled_mlp import ACTIVATIONS, PooledMLP
from onetrans_jax.schema import FeatureSchema

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ModelConfigError(ConfigError):
  """A model config that cannot work; the message names the field."""


def _dtype(cfg: ml_collections.ConfigDict) -> jnp.dtype:
  name = cfg.get('dtype', 'float32')
  if name not in DTYPES:
    raise ModelConfigError(f'config.model.dtype={name!r}: choose one of {sorted(DTYPES)}')
  return DTYPES[name]


def _pooled_mlp(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  if cfg.embed_dim < 1:
    raise ModelConfigError(f'config.model.embed_dim must be >= 1, got {cfg.embed_dim}')
  hidden = tuple(int(h) for h in cfg.hidden)
  if any(h < 1 for h in hidden):
    raise ModelConfigError(f'config.model.hidden must hold positive widths, got {hidden}')
  if cfg.activation not in ACTIVATIONS:
    raise ModelConfigError(f'config.model.activation={cfg.activation!r}: choose one of '
                           f'{sorted(ACTIVATIONS)}')
  return PooledMLP(schema, embed_dim=int(cfg.embed_dim), hidden=hidden,
                   activation=cfg.activation, dtype=_dtype(cfg))


MODELS: dict[str, Callable[[ml_collections.ConfigDict, FeatureSchema], nn.Module]] = {
    'pooled_mlp': _pooled_mlp,
}


def build_model(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  if cfg.name not in MODELS:
    raise ModelConfigError(f'config.model.name={cfg.name!r} is not a known model; '
                           f'choose one of {sorted(MODELS)}')
  return MODELS[cfg.name](cfg, schema)
