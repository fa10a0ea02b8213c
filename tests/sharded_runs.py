"""Runs behind tests/test_sharding.py, in a child process with 8 simulated CPU devices.

``python tests/sharded_runs.py OUT_JSON WORKDIR MESHES [resume]`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` trains OneTrans and OneRank for a few steps
on one device and on each mesh of MESHES (e.g. ``2x2x2`` or ``8x1x1,2x4x1``). With ``resume``,
OneTrans's (2,2,2) run is a resumed one: two steps on (8,1,1), a checkpoint, then the third step
on (2,2,2) from that checkpoint, so one run covers both a mesh change and the (2,2,2) step (and
the default suite saves a compilation). It writes what the tests compare: per-step losses, the
largest parameter difference from the one-device run, and on (2,2,2) the shardings of parameters
and optimizer state.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from onetrans_jax.models.onerank import config as onerank_config  # noqa: E402
from onetrans_jax.train import train_and_evaluate  # noqa: E402
from tests.helpers import small_config  # noqa: E402

STEPS = 3


def config(model: str):
  c = small_config()
  if model.startswith('onetrans'):
    from tests.helpers import onetrans_model_config
    c.model = onetrans_model_config(
        ns_layout='token_first' if model == 'onetrans_token_first' else 'token_last')
  else:
    c.model = onerank_config.defaults(width=16, num_heads=2, num_layers=2, embed_dim=8)
    c.loss.mode = 'onerank'
  c.model.embedding_row_multiple = 8   # every table's rows split evenly over 8 devices
  c.train.total_steps = STEPS
  c.train.log_every = 1
  c.train.checkpoint_every = 0
  c.eval.num_batches = 1
  c.data.num_eval_requests = 16
  return c


def losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return [r['loss'] for r in rows if r['split'] == 'train']


def run(model: str, mesh: tuple[int, int, int], workdir: str, devices, **kwargs):
  c = config(model)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  out = train_and_evaluate(c, workdir, devices=devices, **kwargs)
  return out


def specs(tree) -> dict[str, list]:
  return {jax.tree_util.keystr(p): [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec]
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def main(out_path: str, workdir: str, meshes: str, resume: bool) -> None:
  devices = jax.devices()
  assert len(devices) == 8, f'expected 8 devices, got {len(devices)}'
  report = {}
  # The default suite's run (resume): OneTrans alone, with the cross-mesh restore. OneRank and
  # the token-first NS layout (model.ns_layout) only in the longer, opt-in run over more meshes.
  for model in ('onetrans',) if resume else ('onetrans', 'onerank', 'onetrans_token_first'):
    ref_dir = os.path.join(workdir, model, 'one')
    ref = run(model, (1, 1, 1), ref_dir, devices[:1])
    ref_params = jax.device_get(ref['state'].params)
    rep = {'one': {'loss': losses(ref_dir)}}
    for name in meshes.split(','):
      mesh = tuple(int(n) for n in name.split('x'))
      d = os.path.join(workdir, model, name)
      if resume and model == 'onetrans' and mesh == (2, 2, 2):
        run(model, (8, 1, 1), d, devices, stop_at_step=2)
      out = run(model, mesh, d, devices)
      params = jax.device_get(out['state'].params)
      diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, ref_params)
      entry = {'loss': losses(d), 'max_param_diff': max(jax.tree.leaves(diff))}
      if mesh == (2, 2, 2):
        state = out['state']
        entry['param_specs'] = specs(state.params)
        entry['opt_specs'] = specs(state.opt_state)
        dev0 = devices[0]
        entry['param_bytes'] = sum(x.nbytes for x in jax.tree.leaves(state.params))
        entry['param_bytes_device0'] = sum(
            s.data.nbytes for x in jax.tree.leaves(state.params) for s in x.addressable_shards
            if s.device == dev0)
        entry['shard_rows'] = {
            jax.tree_util.keystr(p): [x.shape[0], x.addressable_shards[0].data.shape[0]]
            for p, x in jax.tree_util.tree_leaves_with_path(state.params)
            if "['embeddings']" in jax.tree_util.keystr(p)}
      if resume and model == 'onetrans' and mesh == (2, 2, 2):
        entry['resumed_at'] = 2
      rep[name] = entry
    report[model] = rep

  with open(out_path, 'w', encoding='utf-8') as f:
    json.dump(report, f)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] == ['resume'])
