"""Accounting (SPEC A.9): paper-shape dense params, analytic FLOPs against XLA's count."""

from __future__ import annotations

import jax
import pytest

from onetrans_jax import accounting
from onetrans_jax import models
from onetrans_jax.data import pipeline
from onetrans_jax.experiments import onetrans_l, onetrans_s
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.models.onerank import config as onerank_config
from onetrans_jax.models.onetrans import config as onetrans_config
from onetrans_jax.models.onetrans.config import layout as onetrans_layout
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config


def _schema(cfg):
  return pipeline.build_dataset(cfg.data).schema


@pytest.mark.parametrize('module, paper_params, paper_schedule', [
    (onetrans_s, 91e6, (1190, 960, 704, 480, 256, 12)),
    (onetrans_l, 330e6, (1500, 1280, 1088, 864, 640, 448, 224, 16)),
])
def test_paper_shapes(module, paper_params, paper_schedule):
  cfg = module.get_config()
  schema = _schema(cfg)
  assert onetrans_layout(cfg.model, schema)[2] == paper_schedule
  dense = accounting.dense_params(cfg.model, schema)['dense']
  assert abs(dense / paper_params - 1) <= 0.02, dense


def test_shared_params_ablation_matches_paper_order():
  cfg = onetrans_s.get_config()
  cfg.model.param_sharing = 'shared'
  dense = accounting.dense_params(cfg.model, _schema(cfg))['dense']
  assert abs(dense / 24e6 - 1) <= 0.08, dense  # the paper's 24M


def test_pyramid_and_size_orderings():
  """The chosen readings (onetrans_jax/experiments/onetrans_s.py) give the paper's FLOP ratios:
  OneTrans_L over OneTrans_S 8.62 / 2.64 = 3.27x, no pyramid over the pyramid 8.08 / 2.64 =
  3.06x."""
  s, l = onetrans_s.get_config(), onetrans_l.get_config()
  fs = models.training_flops_per_example(s.model, _schema(s))
  fl = models.training_flops_per_example(l.model, _schema(l))
  assert abs(fl / fs / 3.27 - 1) < 0.01, fl / fs
  s.model.pyramid, s.model.pyramid_start = False, None
  f_flat = models.training_flops_per_example(s.model, _schema(s))
  assert abs(f_flat / fs / 3.06 - 1) < 0.01, f_flat / fs


@pytest.mark.parametrize('request_level', [False, True])
def test_analytic_flops_match_xla(config, request_level):
  """Per-candidate pass: C x the per-example count; request-level: user + C x candidate."""
  mcfg = onetrans_model_config(request_level=request_level)
  schema = _schema(config)
  model = build_model(mcfg, schema)
  batch = dummy_batch(schema, 1)
  params = jax.eval_shape(
      lambda: partitioning.unbox(model.init(jax.random.key(0), batch)['params']))
  params = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), params)
  xla = accounting.xla_flops(lambda p, b: model.apply({'params': p}, b), params, batch)
  c = schema.num_candidates
  if request_level:
    split = onetrans_config.shared_forward_flops(mcfg, schema)
    analytic = split['user'] + c * split['candidate']
    assert analytic < 0.7 * c * onetrans_config.forward_flops(mcfg, schema)['total']
  else:
    analytic = onetrans_config.forward_flops(mcfg, schema)['total'] * c
  assert 0.7 < xla / analytic < 1.5, (xla, analytic)
  # What a run's time estimate and the workloads' MFU charge a request: the layout that runs.
  assert models.training_flops_per_request(mcfg, schema, c) == pytest.approx(3 * analytic)


def test_cached_candidate_cost_is_linear_in_sequence_length(config):
  """SPEC A.6: a cached candidate costs O(L_NS x L); the per-candidate pass grows faster."""
  cost = {}
  for click_len in (64, 256):
    cfg = config.copy_and_resolve_references()
    cfg.data.click_len = click_len
    mcfg = onetrans_model_config(pyramid=False)
    schema = _schema(cfg)
    cost[click_len] = (onetrans_config.shared_forward_flops(mcfg, schema)['candidate'],
                       onetrans_config.forward_flops(mcfg, schema)['total'])
  (c0, f0), (c1, f1) = cost[64], cost[256]
  l0, l1 = 64 + 8 + 4, 256 + 8 + 4  # S tokens: click + cart + order of the test world
  assert c1 / c0 < l1 / l0           # attention to the longer S list, nothing quadratic
  assert f1 / f0 > l1 / l0           # the full pass: S projections, FFN and L^2 attention


@pytest.mark.parametrize('overrides', [
    {},                                                     # matching, cascade, detach
    {'scoring': 'mlp', 'task_tokens': 'shared'},
    pytest.param({'situation': 'constant_query', 'detach': False}, marks=pytest.mark.slow),
    pytest.param({'situation': 'mean', 'cross_task': False}, marks=pytest.mark.slow),
])
def test_onerank_flops_match_xla(config, overrides):
  """OneRank's analytic count (request work + C x candidate work) against XLA's, per switch."""
  mcfg = onerank_config.defaults(width=32, num_heads=4, num_layers=2, embed_dim=8, **overrides)
  schema = _schema(config)
  model = build_model(mcfg, schema)
  batch = dummy_batch(schema, 2)
  params = partitioning.unbox(jax.jit(model.init)(jax.random.key(0), batch)['params'])
  xla = accounting.xla_flops(lambda p, b: model.apply({'params': p}, b), params, batch)
  f = onerank_config.forward_flops(mcfg, schema)
  analytic = 2 * (f['request'] + schema.num_candidates * f['candidate'])
  assert 0.7 < xla / analytic < 1.5, (xla, analytic)
  per_example = models.training_flops_per_example(mcfg, schema)
  assert per_example == pytest.approx(3 * (f['request'] / schema.num_candidates + f['candidate']))
