"""benchmarks/dots.py: the step's matmuls read from its jaxpr, counted and timed alone."""

import jax
from jax import lax
import jax.numpy as jnp
import pytest

from onetrans_jax.benchmarks import dots, steps
from onetrans_jax.benchmarks.components import component


def _tiny(attention_impl):
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['test'])
  from onetrans_jax.benchmarks import suite
  config = suite.shape_config('tiny')
  config.model.attention_impl = attention_impl
  return config


def test_blocked_attention_recomputes_its_scores_in_the_backward_pass():
  """The blocked path skips masked blocks but recomputes the probabilities in its backward pass
  (flash-style), so its dots differ from the analytic count in both directions; the sum says
  by how much."""
  config = _tiny('blocked')
  found, parts = dots.step_dots(config)
  total = sum(d.count * d.flops for d in found)
  analytic = steps.onetrans_step_flops(config, parts.schema, parts.model.request_level)
  assert total != analytic and 0.9 < total / analytic < 1.2


def test_a_scan_body_counts_once_per_iteration():
  w = jnp.ones((8, 16))

  def f(x):
    def body(c, _):
      return jnp.tanh(c @ w.T @ w), None
    return lax.scan(body, x, None, length=5)[0]

  closed = jax.make_jaxpr(f)(jnp.ones((4, 16)))
  found = dots.jaxpr_dots(closed, lambda path: 'all')
  assert sorted(d.count for d in found) == [5, 5]
  assert sum(d.count * d.flops for d in found) == 5 * (2 * 4 * 16 * 8 + 2 * 4 * 8 * 16)


def test_flops_of_a_batched_dot():
  d = dots.Dot(((3, 4, 5), 'float32'), ((3, 5, 6), 'float32'), (((2,), (1,)), ((0,), (0,))),
               None, 'x', 1)
  assert d.flops == 2 * 3 * 4 * 6 * 5


def test_the_row_adds_up_and_its_dots_are_the_analytic_count():
  """XLA attention computes the full rectangles the analytic count assumes: the traced step's
  dots, forward and backward, add up to accounting's 3 x forward FLOPs exactly."""
  config = _tiny('xla')
  row = dots.dots_row('tiny', config, 1e11, 2,
                      lambda c, schema, model: steps.onetrans_step_flops(
                          c, schema, model.request_level))
  assert row['dot_flops'] == row['analytic_flops']
  assert {'attention', 'ffn', 'projections', 'tokenizer', 'head'} <= set(row['components'])
  assert 'optimizer' not in row['components']   # AdamW's update has no matmul
  assert row['dots_flops_per_s'] == pytest.approx(row['dot_flops'] / row['dots_seconds'])
  assert row['dots_mfu'] == pytest.approx(row['dots_flops_per_s'] / 1e11)
  comps = row['components'].values()
  assert sum(c['flops'] for c in comps) == pytest.approx(row['dot_flops'])
  assert sum(c['seconds'] for c in comps) == pytest.approx(row['dots_seconds'])
  assert sum(c['calls'] for c in comps) == row['calls'] and row['distinct'] <= row['calls']
  assert 0 < row['dispatch_seconds'] < row['dots_seconds']
  assert len(row['slowest']) == 5 and row['slowest'][0]['seconds'] > 0
  table = dots.table([dict(row, step_seconds=None)])
  assert table[1].startswith('tiny') and '1.000' in table[1]


def test_components_of_source_paths():
  assert component('jit(train_step)/jvp(OneTrans)/block_0/attention/dot_general') == 'attention'
  assert component('transpose(jvp(OneTrans))/block_0._ffn/ffn_in/dot_general') == 'ffn'
  assert component('jit(train_step)/add') == 'optimizer'
  base = 'jit(train_step)/jvp(BaselineRanker)/'
  assert component(base + 'interaction/cross_0/dot_general') == 'interaction'
  assert component(base + 'seq_order/mul') == 'sequence'
  assert component(base + 'seq_click/layer_0/layer_0.finish/ffn_in/dot_general') == 'ffn'
  assert component(base + 'embeddings.request/embeddings._lookup/select_n') == 'embeddings'


@pytest.mark.parametrize('sequence,interaction', [('transformer', 'rankmixer'),
                                                  ('din', 'dcnv2')])
def test_the_baselines_as_run_count_is_their_dots(sequence, interaction):
  """Encode-then-interact runs each sequence encoder once per request: the benchmarks' count
  (baselines.config.training_flops_per_request) equals the traced step's dots, where the
  per-impression count (the studies' convention) is larger."""
  from onetrans_jax.benchmarks import workloads
  from onetrans_jax.models import training_flops_per_example
  from onetrans_jax.models.baselines import config as baselines_config
  config = _tiny('xla')
  config.model = baselines_config.defaults(sequence, interaction)
  if interaction == 'rankmixer':   # small, for time
    config.model.rankmixer.update(num_tokens=4, width=32)
    config.model.transformer.update(width=16)
  found, parts = dots.step_dots(config)
  total = sum(d.count * d.flops for d in found)
  assert total == workloads.step_flops(config, parts.schema, parts.model)
  per_impression = (config.data.batch_size * config.data.num_candidates *
                    training_flops_per_example(config.model, parts.schema))
  assert per_impression > total
