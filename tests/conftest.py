"""Shared fixtures: a small synthetic config that trains in seconds on one CPU core.

Plain helpers (ROOT, small_config, all_requests, onetrans_model_config, tiny_baseline) live in
tests/helpers.py: test modules and scripts import them from there, never from this file.
"""

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

# After the set-up above: these import jax (without initialising it) and need ROOT on sys.path.
from onetrans_jax.data import pipeline  # noqa: E402
from tests.helpers import small_config  # noqa: E402


@pytest.fixture
def config():
  return small_config()


# The synthetic data's schema and one batch of 3 requests (true_prob dropped), built once per
# module that asks for it: the OneTrans, OneRank, serving and request-level tests share it.
@pytest.fixture(scope='module')
def data():
  c = small_config()
  ds = pipeline.build_dataset(c.data)
  it = pipeline.make_iterator(ds, ds.train_range, global_batch_size=3, shuffle=False, seed=0,
                              repeat=True, num_threads=1)
  batch = next(it)
  batch.pop('true_prob')
  return ds.schema, batch
