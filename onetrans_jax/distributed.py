"""Multi-process start-up: ``jax.distributed.initialize`` from launch.py's flags or the cluster.

Called once, before anything touches a jax backend. Modes:

  * ``auto`` (default): initialise when a coordinator address is given, or when the process runs
    inside a multi-process job that jax detects by itself (SLURM with several tasks, Open MPI, a
    multi-host TPU slice); otherwise run as one process.
  * ``on``: always initialise (flags where given, cluster detection for the rest).
  * ``off``: never (one process, whatever the environment says).

On the CPU backend the cross-process collectives go through gloo (jax's default CPU backend has
none), so two processes on one machine can train together: the multi-host path is testable
without a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MODES = ('auto', 'on', 'off')


def detected_cluster(env: Mapping[str, str] | None = None) -> str | None:
  """The multi-process launcher this process runs under, if any (the ones jax detects itself)."""
  env = os.environ if env is None else env

  def count(name: str) -> int:
    try:
      return int(env.get(name, '1'))
    except ValueError:
      return 1

  if 'SLURM_JOB_ID' in env and count('SLURM_NTASKS') > 1:
    return 'slurm'
  if count('OMPI_COMM_WORLD_SIZE') > 1:
    return 'openmpi'
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return 'tpu'
  return None


def initialize(mode: str = 'auto', coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               env: Mapping[str, str] | None = None) -> str:
  """Starts the distributed runtime when ``mode`` says so; returns a line describing what it did.

  Raises ValueError naming the flag when the flags are inconsistent.
  """
  if mode not in MODES:
    raise ValueError(f'--distributed={mode!r}: choose one of {list(MODES)}')
  env = os.environ if env is None else env
  given = [f for f, v in (('--coordinator_address', coordinator_address),
                          ('--num_processes', num_processes),
                          ('--process_id', process_id)) if v is not None]
  if mode == 'off':
    if given:
      raise ValueError(f'--distributed=off contradicts {", ".join(given)}; drop them or use '
                       '--distributed=auto')
    return 'single process (--distributed=off)'
  cluster = detected_cluster(env)
  if mode == 'auto' and coordinator_address is None and cluster is None:
    if given:
      raise ValueError(f'{", ".join(given)} given without --coordinator_address (host:port of '
                       'process 0); pass it too, or run under SLURM / Open MPI / a TPU slice')
    return 'single process'
  if coordinator_address is not None and cluster is None and (num_processes is None or
                                                               process_id is None):
    raise ValueError('--coordinator_address needs --num_processes and --process_id outside '
                     'SLURM / Open MPI / a TPU slice')
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be >= 1')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} must be in [0, {num_processes})')

  import jax  # local: importing this module must not start a backend
  platforms = (env.get('JAX_PLATFORMS') or jax.config.jax_platforms or '').split(',')
  if 'cpu' in platforms and platforms[0] == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return (f'process {jax.process_index()} of {jax.process_count()} '
          f'({cluster or coordinator_address}), {jax.local_device_count()} local / '
          f'{jax.device_count()} global devices')
