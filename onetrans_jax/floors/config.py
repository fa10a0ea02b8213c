"""The floors' ``config.model``: names, defaults, validation, fitted-parameter counts.

A floor has no gradient steps: its training FLOPs per example are 0, and its parameter count is
what the fit produced (item_rate: items x tasks; logistic: coefficients and intercepts; LightGBM:
leaves over all trees, known only after fitting, so the registry gives the upper bound
``num_boost_round x num_leaves x tasks`` and the run's record the fitted count).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from onetrans_jax.models import fields
from onetrans_jax.schema import FeatureSchema

NAMES = ('item_rate', 'logistic', 'lightgbm')


def defaults(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """``config.model`` of floor ``name`` with every field; experiment files start from it."""
  if name not in NAMES:
    raise fields.error('name', name, f'not a floor; choose one of {list(NAMES)}')
  m = ml_collections.ConfigDict()
  m.name = name
  if name == 'item_rate':
    m.prior_strength = 10.0       # pseudo-impressions at the task's training rate added to each
                                  # item's counts: an item seen n times weighs n / (n + 10)
  else:
    m.history_prior = 10.0        # the same smoothing for the user / item rates of the history
                                  # statistics, toward the running global rate
  if name == 'logistic':
    m.C = 0.01                    # [D] inverse L2 strength (scikit-learn's C); on MovieLens-100K's
                                  # validation split (the training period's latest 10%) like AUC
                                  # rises from C=1 (0.705) to 0.01 (0.738) and is flat below
    m.max_iter = 1000             # lbfgs iterations
  if name == 'lightgbm':
    m.learning_rate = 0.05
    m.num_leaves = 31
    m.num_boost_round = 100       # [D] fixed rounds; with config.data.valid_fraction > 0 the
                                  # most, early stopping on the validation split choosing fewer
                                  # (on MovieLens-100K's it stops at 100 and 82 of 1000)
    m.early_stopping_rounds = 20  # rounds without a better validation logloss before stopping
    m.min_data_in_leaf = 20
    m.categorical = False         # [D] True: ids as LightGBM categorical features; on
                                  # MovieLens-100K's validation split they overfit (like AUC 0.697
                                  # against 0.735 as numeric codes) and fit 3x slower
    m.num_threads = 2             # part of the result: LightGBM is deterministic per thread count
  m.update(overrides)
  return m


def _positive(field: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise fields.error(field, value, 'must be a number > 0')
  return float(value)


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.model`` over its floor's defaults, every field checked and typed (an int where a
  float is meant is taken as that float); a bad one raises a ModelConfigError naming it
  (``config.model.<field>=<value>: <allowed>``)."""
  name = cfg.get('name', None)
  if name not in NAMES:
    raise fields.error('name', name, f'not a floor; choose one of {list(NAMES)}')
  m = fields.with_defaults(cfg, defaults(name)).to_dict()
  if name == 'item_rate':
    m['prior_strength'] = _positive('prior_strength', m['prior_strength'])
    return ml_collections.ConfigDict(m)
  prior = m['history_prior']
  if isinstance(prior, bool) or not isinstance(prior, (int, float)) or prior < 0:
    raise fields.error('history_prior', prior, 'must be a number >= 0')
  m['history_prior'] = float(prior)
  if name == 'logistic':
    m['C'] = _positive('C', m['C'])
    m['max_iter'] = fields.check('max_iter', m['max_iter'], 'int')
    return ml_collections.ConfigDict(m)
  m['learning_rate'] = _positive('learning_rate', m['learning_rate'])
  leaves = m['num_leaves']
  if isinstance(leaves, bool) or not isinstance(leaves, int) or leaves < 2:
    raise fields.error('num_leaves', leaves, 'must be an integer >= 2')
  for f in ('num_boost_round', 'early_stopping_rounds', 'min_data_in_leaf', 'num_threads'):
    m[f] = fields.check(f, m[f], 'int')
  m['categorical'] = fields.check('categorical', m['categorical'], 'bool')
  return ml_collections.ConfigDict(m)


def one_hot_width(schema: FeatureSchema) -> int:
  """Columns of the logistic regression's one-hot block: every categorical feature's whole
  vocabulary (ids index it directly, so the width is known before the data is read)."""
  sizes = schema.vocab_sizes
  return sum(sizes[f.vocab] for f in schema.request_categorical + schema.candidate_categorical)


def numeric_width(schema: FeatureSchema) -> int:
  """Dense columns beside the one-hot block (features.numeric_names)."""
  return (len(schema.request_numeric) + len(schema.candidate_numeric) + len(schema.sequences) +
          4 * schema.num_tasks)


def item_vocab_size(schema: FeatureSchema) -> int:
  """Size of the candidates' item-id vocabulary (the feature named item_id, else the first)."""
  feats = schema.candidate_categorical
  pick = next((f for f in feats if f.name == 'item_id'), feats[0] if feats else None)
  if pick is None:
    raise fields.ModelConfigError('the floors need a candidate item id feature; the schema has '
                                  'no candidate categorical feature')
  return schema.vocab_sizes[pick.vocab]


def param_count(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, int]:
  """{'dense': fitted parameters (LightGBM: the upper bound, see the module docstring),
  'sparse': 0}."""
  cfg = resolve(cfg)
  t = schema.num_tasks
  if cfg.name == 'item_rate':
    dense = (item_vocab_size(schema) - 1) * t
  elif cfg.name == 'logistic':
    dense = (one_hot_width(schema) + numeric_width(schema) + 1) * t
  else:
    dense = cfg.num_boost_round * cfg.num_leaves * t
  return {'dense': int(dense), 'sparse': 0}


def forward_flops(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> dict[str, float]:
  """No matmuls worth counting: a lookup, a sparse dot product or tree traversals."""
  del cfg, schema
  return {'total': 0.0}


def training_flops_per_example(cfg: ml_collections.ConfigDict, schema: FeatureSchema) -> float:
  """0.0: no gradient training in the FLOP sense the neural rows are counted in."""
  del cfg, schema
  return 0.0
