"""The model registry: ``config.model.name`` -> its family's config module.

Every model maps a request batch (schema.py) to logits [R, C, T]; models differ only in their
module and config, never in the data path or the training loop. A family is one package
(``models/<family>/``) whose ``config.py`` holds everything a run reads from ``config.model``:

  NAME                           the registry key (``config.model.name``)
  defaults(**overrides)          every field with its default; experiment files start from it
  from_config(cfg, schema)       the Flax module, every bad field refused with the field named
  param_count(cfg, schema)       analytic dense and embedding-table parameter counts
  forward_flops(cfg, schema)     analytic forward matmul FLOPs, by component
  training_flops_per_example(cfg, schema)   3 x forward, per impression
  data_init(cfg, params, task_rates)        optional: initial parameters set from the training
                                 data (``task_rates()`` -> [T] base rates, computed on demand)

Shared building blocks live once, below the families, in ``models/layers/``; the multi-task
predictors (towers, shared-bottom, MMoE, PLE) in ``models/multitask/``; the one validation helper
and dtype map in ``models/fields.py``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from onetrans_jax.models import fields
from onetrans_jax.models.baselines import config as baselines
from onetrans_jax.models.onerank import config as onerank
from onetrans_jax.models.onetrans import config as onetrans
from onetrans_jax.models.pooled_mlp import config as pooled_mlp
from onetrans_jax.schema import FeatureSchema

FAMILIES: dict[str, types.ModuleType] = {
    family.NAME: family for family in (pooled_mlp, onetrans, onerank, baselines)
}

ModelConfigError = fields.ModelConfigError


def family(cfg: ml_collections.ConfigDict) -> types.ModuleType:
  """The config module of ``cfg.name``; an unknown name is refused with the known ones."""
  name = cfg.get('name', None)
  if name not in FAMILIES:
    if _floor(cfg) is not None:
      raise fields.error('name', name, 'a classical floor row (onetrans_jax/floors), fitted by '
                         'onetrans_jax.floors.fit.fit_and_evaluate (a sweep dispatches it), not '
                         f'a model to train; models: {sorted(FAMILIES)}')
    raise fields.error('name', name, f'not a known model; choose one of {sorted(FAMILIES)}')
  return FAMILIES[name]


def _floor(cfg: ml_collections.ConfigDict) -> types.ModuleType | None:
  """The floors' config module when ``cfg`` names a floor (onetrans_jax/floors), else None.
  Imported here, not at the top: the floors' config imports ``models.fields``."""
  from onetrans_jax.floors import config as floors_config
  return floors_config if cfg.get('name', None) in floors_config.NAMES else None


def is_floor(cfg: ml_collections.ConfigDict) -> bool:
  """Whether ``config.model`` is a classical floor row, fitted rather than trained."""
  return _floor(cfg) is not None


def build_model(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> nn.Module:
  """``config.model`` -> its Flax module."""
  return family(cfg).from_config(cfg, schema)


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """Analytic {'dense', 'sparse'} parameter counts of ``config.model`` (a floor: its fitted
  parameters, see onetrans_jax/floors/config.py)."""
  return (_floor(cfg) or family(cfg)).param_count(cfg, schema)


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """Analytic training FLOPs per impression (3 x forward) of ``config.model``; 0 for a floor."""
  return (_floor(cfg) or family(cfg)).training_flops_per_example(cfg, schema)


def training_flops_per_request(cfg: ml_collections.ConfigDict, schema: FeatureSchema,
                               candidates: int) -> float:
  """Analytic training FLOPs of one request of ``candidates`` candidates in the layout the model
  runs (what a step costs, for time estimates and MFU): the family's
  ``training_flops_per_request`` where its request side is shared (OneTrans under request-level
  sharing, the encode-then-interact baselines' sequence encoders), else ``candidates`` x the
  per-impression count (OneRank's count already spreads its shared prefix over the slots)."""
  module = _floor(cfg) or family(cfg)
  per_request = getattr(module, 'training_flops_per_request', None)
  if per_request is not None:
    return per_request(cfg, schema, candidates)
  return candidates * module.training_flops_per_example(cfg, schema)


def data_init(cfg: ml_collections.ConfigDict, params: Any, task_rates: Callable[[], Any]) -> Any:
  """``params`` with the family's data-dependent initial values (its ``data_init``), if any;
  ``task_rates`` is called only by a family whose config asks for the base rates."""
  hook = getattr(family(cfg), 'data_init', None)
  return params if hook is None else hook(cfg, params, task_rates)
