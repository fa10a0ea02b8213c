"""Shared fixtures: a small synthetic config that trains in seconds on one CPU core.

Plain helpers (ROOT, small_config, all_requests, onetrans_model_config, tiny_baseline) live in
tests/helpers.py: test modules and scripts import them from there, never from this file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

# The tests run tiny shapes, so XLA's LLVM optimisation costs far more than it saves: compiling
# without it cuts the suite's compile time about threefold. Set before jax initialises its backend;
# an explicit XLA_FLAGS from the caller is kept and extended.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

# Many tests train the same tiny configs, and each train_and_evaluate traces and compiles its step
# afresh (jax's in-memory cache is keyed by function object). A persistent compilation cache, new
# and empty for every pytest session and shared by the xdist workers and the child processes they
# start (they inherit the environment), compiles each distinct program once: the default suite
# went from 539 s to 429 s on 2 cores (2026-12-06; README, Test). Programs are keyed by their HLO,
# options and devices, so a hit is the same executable; a torn read from a concurrent write fails
# decompression and jax recompiles (with a warning). A caller's own JAX_COMPILATION_CACHE_DIR is
# kept (and not removed).
_OWN_CACHE = None
if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  _OWN_CACHE = tempfile.mkdtemp(prefix='onetrans_jax_tests_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')


def pytest_sessionfinish(session, exitstatus):
  # The process that made the cache removes it (the controller under xdist: the workers inherit
  # the variable, so _OWN_CACHE is None in them).
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
