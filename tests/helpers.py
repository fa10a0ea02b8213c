"""Plain helpers shared by several test modules and by the scripts the tests run as subprocesses.

They live here, not in conftest.py or a test module, so that no test module or script imports
another test module (that couples unrelated test files and hides where a name comes from) or
conftest.py (pytest loads that itself). Fixtures, such as the shared ``data``, stay in conftest.py.

Importing this module imports jax (through the model packages) but never initialises a backend:
conftest.py sets XLA_FLAGS before it imports this module, and the scripts put ROOT on sys.path
first.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from onetrans_jax.data.synthetic import SyntheticConfig
from onetrans_jax.models.baselines import config as baselines_config

# The repository root: scripts and subprocesses run from here and put it on sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config():
  """onetrans_jax/experiments/pooled_mlp.py shrunk: small world, short sequences, few steps."""
  from onetrans_jax.experiments import pooled_mlp
  c = pooled_mlp.get_config()
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



def sweep_config() -> ml_collections.ConfigDict:
  """small_config as a two-row sweep ('base' and a wider 'wide'), seeds 0 and 1, a few steps:
  the sweep and report tests' study."""
  c = small_config()
  c.train.total_steps = 3
  c.train.log_every = 3
  c.train.checkpoint_every = 0
  c.data.num_eval_requests = 64
  c.sweep = ml_collections.ConfigDict()
  c.sweep.reference = 'base'
  c.sweep.variants = (('base', ()), ('wide', (('model.hidden', (48,)),)))
  c.sweep.seeds = (0, 1)
  c.sweep.tasks = (('click', 'CTR'), ('cart', 'CVR'))
  return c

def all_requests(ds) -> dict:
  """Every request of a (small, fixture) dataset in one schema-checked batch, in source order."""
  from onetrans_jax.data import pipeline
  it = pipeline.make_iterator(ds, (0, len(ds.source)), global_batch_size=len(ds.source),
                              shuffle=False, seed=0, repeat=False, num_threads=1)
  batch = next(it)
  ds.schema.check_batch(batch)
  return batch


def onetrans_model_config(**overrides) -> ml_collections.ConfigDict:
  """A tiny OneTrans (width 16, 3 layers, pyramid 32 -> 16 -> 4) for the small config's data.

  Shared by the OneTrans, OneRank, serving, accounting and sharding tests and scripts.
  """
  from onetrans_jax.experiments import onetrans_s
  m = onetrans_s.get_config('small').model
  m.update(dict(width=16, num_heads=2, num_layers=3, num_ns_tokens=4, embed_dim=4,
                pyramid_multiple=8))
  m.update(overrides)
  return m


# Tiny sizes of every module: the mechanisms at test speed.
TINY = {
    'din': dict(hidden=(16, 8)),
    'stack_din': dict(num_layers=2, hidden=(16, 8)),
    'longer': dict(width=16, num_heads=2, num_layers=2, merge=2, num_recent=4, ffn_mult=2),
    'transformer': dict(width=16, num_heads=2, num_layers=1, ffn_mult=2),
    'dcnv2': dict(num_cross_layers=2, structure='stacked', mlp_hidden=(32,), rank=None),
    'wukong': dict(num_layers=2, num_fm_tokens=4, num_lcb_tokens=4, fm_rank=4, mlp_hidden=(32,)),
    'hiformer': dict(num_layers=1, num_heads=2, head_dim=8, rank=16, ffn_mult=2),
    'rankmixer': dict(num_tokens=4, width=32, num_layers=1, ffn_mult=2),
}


def tiny_baseline(sequence: str, interaction: str, **overrides):
  """A baseline composite (sequence encoder + feature interaction) at the TINY sizes.

  Shared by the baseline and ranking param-axes tests and tests/gradient_checks.py.
  """
  m = baselines_config.defaults(sequence, interaction, embed_dim=8, head_hidden=16)
  m[sequence].update(TINY[sequence])
  m[interaction].update(TINY[interaction])
  m.update(overrides)
  return m


# A small synthetic world that generates in milliseconds: the generator's and the mechanism
# world's tests read it.
SMALL_WORLD = SyntheticConfig(num_users=200, num_items=500, num_categories=10, num_brands=20,
                              num_candidates=8, min_candidates=4, click_len=16, cart_len=8,
                              order_len=4, num_requests=100_000)


def leaves(tree, prefix=''):
  """(path, array) of every leaf of a nested request dict, keys sorted."""
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from leaves(tree[k], f'{prefix}/{k}')
  else:
    yield prefix, np.asarray(tree)


def same_tree(a, b) -> bool:
  """Whether two nested request dicts have the same keys and bit-identical arrays."""
  return all(ka == kb and np.array_equal(va, vb)
             for (ka, va), (kb, vb) in zip(leaves(a), leaves(b), strict=True))
