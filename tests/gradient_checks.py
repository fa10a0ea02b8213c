"""Runs behind tests/test_sharding.py's gradient checks, in a child with 8 simulated CPU devices.

``python tests/gradient_checks.py OUT_JSON NAME[,NAME...]``: for each model family NAME, the
relative gradient difference between one device and the (2,2,2) mesh
(``onetrans_jax.sharding_check``); for ``pattern``, the partitioner bug that
``sharding_check`` exists for, on a two-projection module, against float64 numpy gradients.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from onetrans_jax import sharding, sharding_check  # noqa: E402
from onetrans_jax.models.layers import partitioning as lp  # noqa: E402
from onetrans_jax.models.onerank import config as onerank_config  # noqa: E402
from tests.helpers import small_config  # noqa: E402


def _onetrans(**kw):
  from tests.helpers import onetrans_model_config
  return onetrans_model_config(**kw)


def _onerank(**kw):
  return onerank_config.defaults(width=16, num_heads=2, num_layers=2, embed_dim=8, **kw)


def _baseline(sequence, interaction):
  from tests.helpers import tiny_baseline
  return tiny_baseline(sequence, interaction)


def _pooled_deep():
  from onetrans_jax.experiments import pooled_mlp
  return pooled_mlp.get_config().model            # hidden (256, 128): a stack of two layers


def _baseline_deep(sequence, interaction):
  m = _baseline(sequence, interaction)
  m[sequence].hidden = (32, 16, 8)
  m[interaction].mlp_hidden = (32, 32, 32)
  return m


def _low_rank():
  m = _baseline_deep('din', 'dcnv2')
  m.dcnv2.rank = 8                               # cross layers as U (V^T x)
  return m


FAMILIES = {
    'pooled_mlp': lambda: None,
    'pooled_mlp_deep': _pooled_deep,
    'onetrans': _onetrans,
    'onetrans_ablations': lambda: _onetrans(ns_tokenizer='group_wise',
                                            seq_merge='timestamp_agnostic',
                                            param_sharing='shared', pyramid=False),
    'onetrans_mmoe': lambda: _onetrans(predictor='mmoe'),
    'onetrans_ple': lambda: _onetrans(predictor='ple'),
    'onetrans_shared_bottom': lambda: _onetrans(predictor='shared_bottom'),
    'onerank': _onerank,
    'onerank_ablations': lambda: _onerank(task_tokens='shared', situation='constant_query',
                                          task_mask='full', detach_kv_weights=True),
    'onerank_mlp_scoring': lambda: _onerank(scoring='mlp'),
    'din_dcnv2': lambda: _baseline('din', 'dcnv2'),
    'stack_din_wukong': lambda: _baseline('stack_din', 'wukong'),
    'longer_hiformer': lambda: _baseline('longer', 'hiformer'),
    'transformer_rankmixer': lambda: _baseline('transformer', 'rankmixer'),
    # Stacks of three dense layers (DIN's attention MLP, DCNv2's deep part, Wukong's FM MLP).
    'din_dcnv2_deep': lambda: _baseline_deep('din', 'dcnv2'),
    'din_dcnv2_low_rank': lambda: _low_rank(),
    'stack_din_wukong_deep': lambda: _baseline_deep('stack_din', 'wukong'),
}


def family_config(name: str) -> ml_collections.ConfigDict:
  c = small_config()
  model = FAMILIES[name]()
  if model is not None:
    c.model = model
  c.model.embedding_row_multiple = 8
  if c.model.name == 'onerank':
    c.loss.mode = 'onerank'
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  return c


class TwoProjections(nn.Module):
  """y = (s @ W) @ Wq, the kernels' logical axes as an input projection followed by an attention
  query projection: on (2,2,2), W is split (., tensor) and Wq (fsdp, tensor)."""

  @nn.compact
  def __call__(self, s):
    w = lp.param(self, 'w', nn.initializers.lecun_normal(), (s.shape[-1], 16), (None, lp.MLP))
    wq = lp.param(self, 'wq', nn.initializers.lecun_normal(), (16, 16), (lp.EMBED, lp.HEADS))
    return (s @ w) @ wq


def pattern() -> dict:
  """The partitioner's gradients against numpy's, and what sharding_check says of them."""
  s = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
  module = TwoProjections()
  boxed = module.init(jax.random.key(0), jnp.asarray(s))['params']

  def loss(p, batch):
    return jnp.sum(jnp.square(module.apply({'params': p}, batch['s'])))

  cfg = ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2, rules=None))
  mesh, rules = sharding.make_mesh(cfg), sharding.rules_from_config(cfg)
  params = jax.device_get(lp.unbox(boxed))
  # Exact gradients in float64: y = s W Wq, L = |y|^2, dL/dW = s^T 2y Wq^T, dL/dWq = (sW)^T 2y.
  w, wq = (np.asarray(params[k], np.float64) for k in ('w', 'wq'))
  h = s.astype(np.float64) @ w
  gy = 2 * h @ wq
  truth = {"['w']": s.T.astype(np.float64) @ gy @ wq.T, "['wq']": h.T @ gy}
  shd, _ = sharding.param_shardings(boxed, mesh, rules)
  grad = sharding.under_mesh(jax.jit(jax.grad(loss), out_shardings=shd), mesh, rules)
  got = jax.device_get(grad(jax.device_put(params, shd), sharding.put_batch({'s': s}, mesh)))
  mesh_vs_truth = {k: float(np.max(np.abs(got[k[2:-2]] - t)) / np.max(np.abs(t)))
                   for k, t in truth.items()}
  checked = sharding_check.compare_gradients(loss, boxed, {'s': s}, mesh, rules, jax.devices()[0])
  return {'mesh_vs_truth': mesh_vs_truth, 'sharding_check': checked,
          'verdict': sharding_check.report(checked).splitlines()[-1]}


def main(out_path: str, names: str) -> None:
  assert len(jax.devices()) == 8, f'expected 8 devices, got {len(jax.devices())}'
  out = {}
  for name in names.split(','):
    if name == 'pattern':
      out[name] = pattern()
    else:
      mismatch = sharding_check.gradient_mismatch(family_config(name))
      worst = max(mismatch, key=mismatch.get)
      out[name] = {'max': mismatch[worst], 'worst': worst, 'count': len(mismatch)}
  with open(out_path, 'w', encoding='utf-8') as f:
    json.dump(out, f)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
