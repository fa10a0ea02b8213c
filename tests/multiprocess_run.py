"""One process of tests/test_sharding.py's multi-process run (jax.distributed on the CPU backend).

``python tests/multiprocess_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR`` trains a small OneTrans
for a few steps over every process's devices and prints one ``RESULT {json}`` line: this process's
view of the final metrics and a checksum of the (sharded, global) parameters. NUM_PROCESSES=1
runs alone, as the reference.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from onetrans_jax import distributed  # noqa: E402


def main(process_id: int, num_processes: int, port: int, workdir: str) -> None:
  if num_processes > 1:
    print(distributed.initialize('auto', f'localhost:{port}', num_processes, process_id),
          flush=True)
  import jax
  import jax.numpy as jnp
  from onetrans_jax.train import train_and_evaluate
  from tests.helpers import onetrans_model_config, small_config

  c = small_config()
  c.model = onetrans_model_config()
  c.model.embedding_row_multiple = 4
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1
  c.train.total_steps = 3
  c.train.checkpoint_every = 0   # one checkpoint, at the end (every process writes its part)
  c.eval.num_batches = 2
  out = train_and_evaluate(c, workdir)
  params = out['state'].params
  # A global reduction over arrays no single process holds whole: replicated result everywhere.
  sq = jax.jit(lambda p: sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                             for x in jax.tree.leaves(p)))(params)
  print('RESULT ' + json.dumps({
      'process': jax.process_index(), 'processes': jax.process_count(),
      'devices': jax.device_count(), 'step': out['step'], 'param_sq': float(sq),
      'final': out['final']}), flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
