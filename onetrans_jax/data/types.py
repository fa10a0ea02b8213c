"""The dataset types every loader returns and the pipeline consumes: a leaf module, so that the
loaders (which build them) and the pipeline (which imports the loaders) never import each other.
"""

from __future__ import annotations

from typing import Any, Protocol

from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import FeatureSchema


class RequestSource(Protocol):
  """What a dataset provides: ``source[i]`` is request ``i`` in the batch contract, unbatched."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class DataConfigError(ConfigError):
  """A data config that cannot work; the message names the field."""


class Dataset:
  """A schema, a random-access source and the chronological split as index ranges.

  ``valid_range``: the latest requests of the training period, held out of training to choose a
  step (``config.data.valid_fraction``, set by ``pipeline.build_dataset``); None when off.
  """

  def __init__(self, schema: FeatureSchema, source: RequestSource, train: tuple[int, int],
               eval: tuple[int, int], has_true_prob: bool,  # pylint: disable=redefined-builtin
               valid: tuple[int, int] | None = None):
    self.schema, self.source = schema, source
    self.train_range, self.eval_range, self.valid_range = train, eval, valid
    self.has_true_prob = has_true_prob
