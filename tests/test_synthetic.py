"""The embedded synthetic data: deterministic by index, a real funnel, the batch contract."""

from __future__ import annotations

import numpy as np
import pytest

from onetrans_jax.data.synthetic import SyntheticConfig, SyntheticSource
from tests.helpers import SMALL_WORLD, same_tree





def test_same_seed_same_data_other_seed_other_data():
  a, b = SyntheticSource(SMALL_WORLD), SyntheticSource(SMALL_WORLD)
  c = SyntheticSource(SyntheticConfig(**{**SMALL_WORLD.__dict__, 'seed': 1}))
  for i in (0, 7, 99_999):
    assert same_tree(a[i], b[i])
  assert not same_tree(a[7], c[7])
  assert not same_tree(a[7], a[8])
  # Random access: the order of reads does not matter.
  assert same_tree(SyntheticSource(SMALL_WORLD)[5], a[5])


def test_funnel_and_probabilities():
  src = SyntheticSource(SMALL_WORLD)
  reqs = [src[i] for i in range(1500)]
  mask = np.concatenate([r['cand']['mask'] for r in reqs])
  labels = np.concatenate([r['labels'] for r in reqs])
  probs = np.concatenate([r['true_prob'] for r in reqs])
  assert np.all(labels[~mask] == 0) and np.all(probs[~mask] == 0)
  y, p = labels[mask], probs[mask]
  # A later stage implies the earlier one.
  assert np.all(y[:, 1] <= y[:, 0]) and np.all(y[:, 2] <= y[:, 1])
  assert np.all((p > 0) & (p < 1))
  # Labels are draws from the planted (conditional) probabilities.
  assert abs(y[:, 0].mean() - p[:, 0].mean()) < 0.02
  clicked = y[:, 0] == 1
  assert abs(y[clicked, 1].mean() - p[clicked, 1].mean()) < 0.04
  # Every stage has positives and negatives.
  assert 0.05 < y[:, 0].mean() < 0.6 and y[:, 1].sum() > 50 and y[:, 2].sum() > 20


def test_batch_contract_and_chronology():
  src = SyntheticSource(SMALL_WORLD)
  reqs = [src[i] for i in range(200)]
  times = [int(r['request']['time']) for r in reqs]
  assert times == sorted(times), 'request time must grow with the index (chronological split)'
  batch = {k: v for k, v in _stack(reqs).items()}
  src.schema.check_batch(batch)
  for r in reqs:
    for name, s in r['seq'].items():
      m = s['mask']
      # Right-aligned, increasing in time, strictly before the request.
      assert not np.any(m[:-1] & ~m[1:]), name
      t = s['time'][m]
      assert np.all(np.diff(t) >= 0) and np.all(t < r['request']['time']), name
      assert np.all(s['ids'][~m] == 0) and np.all(s['ids'][m, 0] > 0)
  lens = np.array([r['seq']['click']['mask'].sum() for r in reqs])
  assert lens.max() <= SMALL_WORLD.click_len and (lens > 0).mean() > 0.9


def test_sequence_carries_the_signal():
  """Candidates from the recent click intent are clicked more: the sequence x candidate signal."""
  src = SyntheticSource(SMALL_WORLD)
  hit, miss = [], []
  for i in range(1500):
    r = src[i]
    m = r['seq']['click']['mask']
    if m.sum() < 3:
      continue
    recent = set(r['seq']['click']['ids'][m][-3:, 1].tolist())
    for c in np.flatnonzero(r['cand']['mask']):
      (hit if r['cand']['cat'][c, 1] in recent else miss).append(r['true_prob'][c, 0])
  assert np.mean(hit) > np.mean(miss) + 0.05


def test_out_of_range_index_and_bad_config():
  src = SyntheticSource(SMALL_WORLD)
  with pytest.raises(IndexError, match='outside'):
    src[SMALL_WORLD.num_requests]
  with pytest.raises(ValueError, match='config.data.min_candidates'):
    SyntheticConfig(num_candidates=4, min_candidates=8)


def _stack(reqs):
  import jax
  return jax.tree.map(lambda *x: np.stack(x), *reqs)
