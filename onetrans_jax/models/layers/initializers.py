"""The weight initializers every model uses, defined once.

All dense kernels are fan-in truncated normals (variance 1 / fan_in). Stacked kernels [N, d_in,
d_out] (one per token, task or expert) treat their leading axes as batch axes, so each slice is
initialised like its own [d_in, d_out] kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

Initializer = nn.initializers.Initializer


def fan_in() -> Initializer:
  """A plain [d_in, d_out] kernel (or [..., d_in, d_out] with no batch axes)."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def stacked_fan_in(batch_axis: Sequence[int] = (0,), in_axis: int | Sequence[int] = -2,
                   out_axis: int | Sequence[int] = -1) -> Initializer:
  """A stack of kernels [N, ..., d_in, d_out]: fan-in over ``in_axis`` only, ``batch_axis``
  (default: the leading stack axis) independent."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=in_axis,
                                          out_axis=out_axis, batch_axis=tuple(batch_axis))


def token_mix_fan_in() -> Initializer:
  """A token recombination W [n_out, n_in] applied as W X: the fan-in is n_in (axis -1)."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=-1,
                                          out_axis=-2)
