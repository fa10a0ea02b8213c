"""Device mesh and shardings from the config: the same program on one CPU, a GPU node or a pod.

The foundation shards the batch's request axis over a ``data`` mesh axis and replicates the
parameters (plain data parallelism, SPEC A.8: "data-parallel all-reduce"); the all-reduce of the
gradients falls out of jit's sharding propagation. Host batches become global arrays with
``jax.make_array_from_process_local_data``, so each process feeds only its own slice.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from onetrans_jax.errors import ConfigError

DATA_AXIS = 'data'


def make_mesh(cfg: ml_collections.ConfigDict) -> Mesh:
  """``config.mesh.data``: number of devices on the data axis, -1 for all of them."""
  devices = jax.devices()
  n = len(devices)
  data = int(cfg.get('data', -1))
  if data == -1:
    data = n
  if data < 1 or data != n:
    raise ConfigError(f'config.mesh.data={cfg.get("data")} must be -1 (all devices) or the number '
                      f'of devices ({n}); model-parallel axes are not configured in this mesh')
  return Mesh(np.asarray(devices).reshape(data), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (request) axis split over the data axis; every other axis whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(host_batch: Any, mesh: Mesh) -> Any:
  """This process's part of the batch -> global jax arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      host_batch)
