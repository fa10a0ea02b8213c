"""The one validation helper of every family's ``config.py``, and the one dtype map.

Every check raises ``ModelConfigError`` in one form, naming the field, the bad value and what is
allowed:  ``config.model.<field>=<value>: <what is allowed>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from onetrans_jax.errors import ConfigError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Kinds of ``check``: a name below, or a collection of allowed values.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    'int': (lambda v: _is_int(v) and v >= 1, 'must be a positive integer'),
    'int0': (lambda v: _is_int(v) and v >= 0, 'must be an integer >= 0'),
    'width': (lambda v: _is_int(v) and v >= 0,
              'must be an integer >= 0 (0: the input width d)'),
    'rank': (lambda v: v is None or (_is_int(v) and v >= 1),
             'must be None (full rank) or a positive integer'),
    'ints': (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and
             all(_is_int(x) and x >= 1 for x in v),
             'must be a non-empty tuple of positive widths, e.g. (64, 32)'),
    'bool': (lambda v: isinstance(v, (bool, np.bool_)), 'choose one of [True, False]'),
}


class ModelConfigError(ConfigError):
  """A model config that cannot work; the message names the field."""


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def error(field: str, value: Any, allowed: str) -> ModelConfigError:
  """``config.model.<field>=<value>: <allowed>``, the one message form."""
  return ModelConfigError(f'config.model.{field}={value!r}: {allowed}')


def check(field: str, value: Any, kind: str | Iterable[Any], suffix: str = '') -> Any:
  """``value`` if it is of ``kind`` (ints as int, 'ints' as a tuple), else a ModelConfigError.

  ``kind``: 'int' (>= 1), 'int0' / 'width' (>= 0), 'rank' (None or >= 1), 'ints' (non-empty
  tuple of positive widths), 'bool', 'dtype' (returns the jnp dtype), or the allowed values.
  ``suffix`` is appended to the message (e.g. the condition under which the field is read).
  """
  if kind == 'dtype':
    if value not in DTYPES:
      raise error(field, value, f'choose one of {sorted(DTYPES)}{suffix}')
    return DTYPES[value]
  if isinstance(kind, str):
    ok, allowed = _KINDS[kind]
    if not ok(value):
      raise error(field, value, allowed + suffix)
    if kind == 'ints':
      return tuple(int(v) for v in value)
    return int(value) if _is_int(value) else value
  choices = list(kind)
  if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
    raise error(field, value, f'choose one of {choices}{suffix}')
  return value


def switch(cfg: Mapping[str, Any], field: str, possible: bool, needs: str) -> bool:
  """A typed-None switch: None follows whether it can work; True where it cannot is refused."""
  value = cfg.get(field, None)
  if value is None:
    return possible
  check(field, value, 'bool')
  if value and not possible:
    raise ModelConfigError(f'config.model.{field}=True needs {needs}')
  return bool(value)


def use_sep(cfg: Mapping[str, Any], merge: str) -> bool:
  """[SEP] tokens: on by default for the timestamp-agnostic merge, meaningless for the aware one
  (OneTrans's and OneRank's history tokenizer read the field alike)."""
  return switch(cfg, 'use_sep', merge == 'timestamp_agnostic',
                "config.model.seq_merge='timestamp_agnostic' ([SEP] tokens separate "
                'concatenated sequences)')


TIME_GAP_BUCKETS = 16  # [D] log2 time-gap buckets on timestamp-aware S tokens (SPEC A.2)


def time_gap_buckets(cfg: Mapping[str, Any], merge: str) -> int:
  """Time-gap buckets on the history tokens: None follows the merge (16 when timestamp-aware, 0
  when agnostic). The timestamp-agnostic rows of the paper's ablation (SPEC A.10) carry no time
  signal at all, so a positive value with the agnostic merge is refused rather than kept."""
  value = cfg.get('time_gap_buckets', None)
  if value is None:
    return TIME_GAP_BUCKETS if merge == 'timestamp_aware' else 0
  value = check('time_gap_buckets', value, 'int0')
  if value and merge != 'timestamp_aware':
    raise error('time_gap_buckets', value,
                "must be 0 (or unset) under config.model.seq_merge='timestamp_agnostic': the "
                'agnostic merge carries no time signal, and time-gap buckets are one')
  return value


def with_defaults(cfg: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """``cfg`` over its family's defaults: a missing field takes the default, an unknown one (a
  typo) is refused with the known fields listed. Returns a fresh, unlocked ConfigDict."""
  known = set(defaults.keys())
  unknown = sorted(set(cfg.keys()) - known)
  if unknown:
    raise ModelConfigError(f'config.model has unknown field(s) {unknown} for '
                           f'config.model.name={cfg.get("name")!r}; known: {sorted(known)}')
  merged = defaults.to_dict()
  merged.update(cfg.to_dict())
  return ml_collections.ConfigDict(merged)
