"""Shared fixtures: a small synthetic config that trains in seconds on one CPU core."""

from __future__ import annotations

import os
import sys

import pytest

# The tests run tiny shapes, so XLA's LLVM optimisation costs far more than it saves: compiling
# without it cuts the suite's compile time about threefold. Set before jax initialises its backend;
# an explicit XLA_FLAGS from the caller is kept and extended.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def small_config():
  """experiments/default.py shrunk: small world, short sequences, few steps."""
  from experiments import default
  c = default.get_config()
  c.data.num_users = 300
  c.data.num_items = 600
  c.data.num_categories = 12
  c.data.num_brands = 24
  c.data.num_candidates = 8
  c.data.min_candidates = 4
  c.data.click_len = 16
  c.data.cart_len = 8
  c.data.order_len = 4
  c.data.num_train_requests = 50_000
  c.data.num_eval_requests = 256
  c.data.batch_size = 16
  c.data.num_threads = 1
  c.model.embed_dim = 8
  c.model.hidden = (32,)
  c.train.total_steps = 8
  c.train.log_every = 4
  c.train.checkpoint_every = 4
  c.eval.day_steps = 3
  return c


@pytest.fixture
def config():
  return small_config()


def all_requests(ds) -> dict:
  """Every request of a (small, fixture) dataset in one schema-checked batch, in source order."""
  from onetrans_jax.data import pipeline
  it = pipeline.make_iterator(ds, (0, len(ds.source)), global_batch_size=len(ds.source),
                              shuffle=False, seed=0, repeat=False, num_threads=1)
  batch = next(it)
  ds.schema.check_batch(batch)
  return batch
