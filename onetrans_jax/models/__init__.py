"""Model registry: ``config.model.name`` -> a Flax module over the shared batch contract.

Every model maps a request batch (schema.py) to logits [R, C, T]; models differ only in their
module and config, never in the data path or the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from onetrans_jax.errors import ConfigError
from onetrans_jax.models import multitask_heads, pyramid, tokenizer
from onetrans_jax.models.attention import IMPLEMENTATIONS
from onetrans_jax.models.baselines import baseline_from_config
from onetrans_jax.models.embeddings import check_row_multiple
from onetrans_jax.models.onerank import onerank_from_config
from onetrans_jax.models.onetrans import REMAT_POLICIES, OneTrans
from onetrans_jax.models.onetrans_block import FFN_ACTIVATIONS
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


def _choice(cfg: ml_collections.ConfigDict, field: str, choices) -> Any:
  value = cfg.get(field)
  if value not in choices:
    raise ModelConfigError(f'config.model.{field}={value!r}: choose one of {list(choices)}')
  return value


def _positive(cfg: ml_collections.ConfigDict, *fields: str) -> None:
  for f in fields:
    if not isinstance(cfg.get(f), int) or cfg.get(f) < 1:
      raise ModelConfigError(f'config.model.{f} must be a positive integer, got {cfg.get(f)!r}')


def _pooled_mlp(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  _positive(cfg, 'embed_dim')
  hidden = tuple(int(h) for h in cfg.hidden)
  if any(h < 1 for h in hidden):
    raise ModelConfigError(f'config.model.hidden must hold positive widths, got {hidden}')
  return PooledMLP(schema, embed_dim=int(cfg.embed_dim), hidden=hidden,
                   activation=_choice(cfg, 'activation', ACTIVATIONS), dtype=_dtype(cfg),
                   embedding_row_multiple=check_row_multiple(cfg.get('embedding_row_multiple', 1)))


def _switch(cfg: ml_collections.ConfigDict, field: str, possible: bool, needs: str) -> bool:
  """A switch whose default (None) follows whether it can work; True where it cannot is refused."""
  value = cfg.get(field, None)
  if value is None:
    return possible
  if value and not possible:
    raise ModelConfigError(f'config.model.{field}=True needs {needs}')
  return bool(value)


def _use_sep(cfg: ml_collections.ConfigDict, merge: str) -> bool:
  """[SEP] tokens: on by default for the timestamp-agnostic merge, meaningless for the aware one."""
  return _switch(cfg, 'use_sep', merge == 'timestamp_agnostic',
                 "config.model.seq_merge='timestamp_agnostic' ([SEP] tokens separate "
                 'concatenated sequences)')


def _request_level(cfg: ml_collections.ConfigDict, attention: str) -> bool:
  """Request-level sharing of the S side (SPEC A.6): on by default, exact only when causal."""
  return _switch(cfg, 'request_level', attention == 'causal',
                 "config.model.attention='causal': under full attention the S tokens read each "
                 "candidate's NS tokens, so there is no per-request S side to share")


def onetrans_layout(cfg: ml_collections.ConfigDict, schema: FeatureSchema
                    ) -> tuple[int, int, tuple[int, ...]]:
  """(L_S, L_NS, pyramid schedule) of a OneTrans config: static Python ints."""
  merge = _choice(cfg, 'seq_merge', tokenizer.SEQ_MERGES)
  l_s = tokenizer.merged_length(schema, merge, _use_sep(cfg, merge))
  l_ns = int(cfg.num_ns_tokens)
  total = l_s + l_ns
  layers = int(cfg.num_layers)
  if cfg.get('pyramid_schedule', None) is not None:
    if not cfg.get('pyramid', True):
      raise ModelConfigError('config.model.pyramid_schedule is set but config.model.pyramid is '
                             'False; drop the schedule or enable the pyramid')
    sched = pyramid.check_schedule(cfg.pyramid_schedule, total, l_ns, layers)
  elif cfg.get('pyramid', True):
    sched = pyramid.linear_schedule(total, l_ns, layers, int(cfg.get('pyramid_multiple', 32)))
  else:
    sched = (total,) * layers  # the paper's "no pyramid" row: every layer at full length
  return l_s, l_ns, sched


def _onetrans(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  _positive(cfg, 'width', 'num_heads', 'num_layers', 'num_ns_tokens', 'embed_dim', 'ffn_mult')
  if cfg.width % cfg.num_heads:
    raise ModelConfigError(f'config.model.num_heads={cfg.num_heads} must divide '
                           f'config.model.width={cfg.width}')
  _choice(cfg, 'activation', FFN_ACTIVATIONS)
  ns_tok = _choice(cfg, 'ns_tokenizer', tokenizer.NS_TOKENIZERS)
  sharing = _choice(cfg, 'param_sharing', ('mixed', 'shared'))
  attention = _choice(cfg, 'attention', ('causal', 'full'))
  impl = _choice(cfg, 'attention_impl', IMPLEMENTATIONS)
  remat = _choice(cfg, 'remat', REMAT_POLICIES)
  groups = cfg.get('ns_groups', None)
  if groups is not None:
    if ns_tok != 'group_wise':
      raise ModelConfigError("config.model.ns_groups is set but config.model.ns_tokenizer is not "
                             "'group_wise'")
    groups = tuple(tuple(g) for g in groups)
    tokenizer.check_groups(schema, groups, cfg.num_ns_tokens)
  elif ns_tok == 'group_wise':
    tokenizer.default_groups(schema, cfg.num_ns_tokens)  # raises if too few features
  if impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ModelConfigError("config.model.attention_impl='cudnn' needs a GPU (this backend is "
                           f"{jax.default_backend()!r}); use 'auto'")
  _, l_ns, sched = onetrans_layout(cfg, schema)
  multitask_heads.predictor_from_config(cfg, schema.num_tasks)  # validates the predictor fields
  predictor = tuple((f, cfg.get(f)) for f in multitask_heads.PREDICTOR_FIELDS if f in cfg)
  s_position = cfg.get('s_position', 'from_recent')  # configs written before the field existed
  if s_position not in tokenizer.S_POSITIONS:
    raise ModelConfigError(f'config.model.s_position={s_position!r}: choose one of '
                           f'{list(tokenizer.S_POSITIONS)}')
  order = cfg.get('agnostic_order', None)
  if order is not None:
    tokenizer.agnostic_order(schema, order)
  return OneTrans(
      schema, width=cfg.width, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
      num_ns_tokens=l_ns, schedule=sched, embed_dim=cfg.embed_dim, ffn_mult=cfg.ffn_mult,
      activation=cfg.activation, ns_tokenizer=ns_tok, ns_groups=groups,
      ns_hidden=int(cfg.get('ns_hidden', 0)), seq_merge=cfg.seq_merge,
      use_sep=_use_sep(cfg, cfg.seq_merge),
      seq_order=None if order is None else tuple(order),
      time_gap_buckets=int(cfg.get('time_gap_buckets', 0)), s_position=s_position,
      shared_params=sharing == 'shared',
      causal=attention == 'causal', request_level=_request_level(cfg, attention),
      attention_impl=impl, remat=remat,
      head_hidden=int(cfg.get('head_hidden', 0)), predictor=predictor, dtype=_dtype(cfg),
      embedding_row_multiple=check_row_multiple(cfg.get('embedding_row_multiple', 1)))


MODELS: dict[str, Callable[[ml_collections.ConfigDict, FeatureSchema], nn.Module]] = {
    'pooled_mlp': _pooled_mlp,
    'onetrans': _onetrans,
    'onerank': onerank_from_config,
    'baseline': baseline_from_config,
}


def build_model(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  if cfg.name not in MODELS:
    raise ModelConfigError(f'config.model.name={cfg.name!r} is not a known model; '
                           f'choose one of {sorted(MODELS)}')
  return MODELS[cfg.name](cfg, schema)
