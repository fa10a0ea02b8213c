"""XLA compiler options for the training programs, chosen by measurement (`onetrans benchmark`).

CPU (jax/jaxlib 0.10.2): by default every dot becomes its own YNNPACK call with its operands in
the library's layout. A weight-gradient dot contracts over the token rows, so XLA hands it a
transposed copy of the [tokens, 4d] FFN activation gradient, written by the elementwise fusion
before it with strided stores: at the CPU bench shape that one fusion took 0.71 s of a 4.3 s
step. With YNN *dot fusions* (``LIBRARY_FUSION_TYPE_DOT``) the dots take their neighbours and
layouts without those copies: the FFN alone runs forward + backward 2.5x faster and the whole
bench step 4.3 s -> 2.9 s (55.6 -> 83 GFLOP/s on 2 cores; the suite's 'unfused dots' row measures
it in every run). The option is per program (``jax.jit(compiler_options=...)``), not a process-wide
XLA_FLAGS, so it never leaks into a user's other computations. Off: ``config.train.cpu_fused_dots``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from onetrans_jax.errors import ConfigError

CPU_FUSED_DOTS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


def compiler_options(config: Any) -> dict[str, str] | None:
  """Options for ``jax.jit(..., compiler_options=...)`` of the config's training programs."""
  train = config.get('train', None) if hasattr(config, 'get') else None
  fused = True if train is None else train.get('cpu_fused_dots', True)
  if not isinstance(fused, (bool, np.bool_)):
    raise ConfigError(f'config.train.cpu_fused_dots must be True or False, got {fused!r}')
  if jax.default_backend() != 'cpu' or not fused:
    return None
  return dict(CPU_FUSED_DOTS)
