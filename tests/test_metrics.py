"""Metrics against brute-force references and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onetrans_jax.metrics import (TaskMetricsAccumulator, auc, gauc, logloss, macro_average,
                                  uauc)


def _brute_auc(scores, labels, weights=None):
  """O(n^2) pairwise definition: sum over (pos, neg) of w_i w_j ([s_i > s_j] + 0.5 [tie])."""
  scores, labels = list(map(float, scores)), list(map(int, labels))
  weights = [1.0] * len(scores) if weights is None else list(map(float, weights))
  num = wpos = wneg = 0.0
  for i in range(len(scores)):
    if labels[i] == 1:
      wpos += weights[i]
    else:
      wneg += weights[i]
    if labels[i] != 1:
      continue
    for j in range(len(scores)):
      if labels[j] == 0:
        win = 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
        num += weights[i] * weights[j] * win
  return num / (wpos * wneg) if wpos * wneg > 0 else float('nan')


def _loop_uauc(scores, labels, users):
  """Per-user Python loop, each user's AUC weighted by its impression count."""
  num = den = 0.0
  counted = 0
  for u in sorted(set(users.tolist())):
    m = users == u
    if labels[m].min() == labels[m].max():
      continue
    num += m.sum() * _brute_auc(scores[m], labels[m])
    den += m.sum()
    counted += 1
  return (num / den if den else float('nan')), counted


def _tied_data(seed, n=80):
  rng = np.random.default_rng(seed)
  labels = rng.random(n) < 0.4
  scores = np.round(rng.random(n) * 0.5 + 0.3 * labels, 1)  # informative, heavily tied
  return scores, labels


# ---------------------------------------------------------------------------------- auc


@pytest.mark.parametrize('seed', range(6))
def test_auc_matches_brute_force_with_ties(seed):
  scores, labels = _tied_data(seed)
  assert len(np.unique(scores)) < len(scores) // 4  # really many ties
  assert auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)
  # labels as float / int / bool all mean the same
  assert auc(scores, labels.astype(np.float32)) == auc(scores, labels.astype(int))


@pytest.mark.parametrize('seed', range(6))
def test_weighted_auc_matches_brute_force(seed):
  scores, labels = _tied_data(seed)
  w = np.random.default_rng(100 + seed).random(len(scores)) * 3
  w[::7] = 0.0
  expected = _brute_auc(scores, labels, w)
  assert auc(scores, labels, w) == pytest.approx(expected, abs=1e-12)
  assert auc(scores, labels, w) != pytest.approx(auc(scores, labels), abs=1e-6)


def test_integer_weights_equal_duplicated_examples():
  scores, labels = _tied_data(7, n=40)
  w = np.random.default_rng(7).integers(0, 4, len(scores))
  dup_s, dup_l = np.repeat(scores, w), np.repeat(labels, w)
  assert auc(scores, labels, w) == pytest.approx(auc(dup_s, dup_l), abs=1e-12)


def test_auc_hand_cases():
  assert auc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
  assert auc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  assert auc([0.5] * 5, [0, 1, 0, 1, 1]) == 0.5
  assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
  # positive 0.5 ties negative 0.5: (1 + 0.5 + 2) / 4
  assert auc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875
  # weights: the positive 0.3 (weight 3) loses to the negative 0.6 (weight 2), beats 0.1 (1)
  assert auc([0.1, 0.3, 0.6, 0.9], [0, 1, 0, 1], [1, 3, 2, 1]) == pytest.approx(
      (3 * 1 + 1 * 1 + 1 * 2) / (4 * 3))


def test_auc_single_class_is_nan():
  assert math.isnan(auc([0.1, 0.2], [1, 1]))
  assert math.isnan(auc([0.1, 0.2], [0, 0]))
  assert math.isnan(auc([], []))
  assert math.isnan(auc([0.1, 0.2, 0.3], [0, 1, 1], [1.0, 0.0, 0.0]))  # positives weigh nothing


@pytest.mark.parametrize('kwargs, match', [
    (dict(scores=[0.1, 0.2], labels=[0, 1, 1]), 'labels'),
    (dict(scores=[0.1, np.nan, np.inf], labels=[0, 1, 1]),
     'scores contain 2 non-finite values'),
    (dict(scores=[0.1, 0.2], labels=[0, 2]), 'labels'),
    (dict(scores=[0.1, 0.2], labels=[0, 0.5]), 'labels'),
    (dict(scores=[0.1, 0.2], labels=[0, 1], weights=[1.0]), 'weights'),
    (dict(scores=[0.1, 0.2], labels=[0, 1], weights=[1.0, -1.0]), 'weights'),
])
def test_auc_bad_inputs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    auc(**kwargs)


# ---------------------------------------------------------------------------------- uauc


def test_uauc_hand_case():
  scores = [0.1, 0.2, 0.8, 0.9, 0.9, 0.1, 0.5, 0.6]
  labels = [0, 0, 1, 1, 0, 1, 1, 1]
  users = ['a', 'a', 'a', 'a', 'b', 'b', 'c', 'c']  # a: AUC 1 (4 imps), b: AUC 0 (2), c: skipped
  value, n = uauc(scores, labels, users)
  assert n == 2
  assert value == pytest.approx(4 / 6)
  assert gauc is uauc


def test_uauc_weights_by_impressions_not_users():
  # user 1: 2 impressions, AUC 1; user 2: 6 impressions, AUC 0
  s = np.array([0.2, 0.8, 0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
  y = np.array([0, 1, 0, 0, 0, 1, 1, 1])
  u = np.array([1, 1, 2, 2, 2, 2, 2, 2])
  value, n = uauc(s, y, u)
  assert n == 2
  assert value == pytest.approx((2 * 1.0 + 6 * 0.0) / 8)
  assert value != pytest.approx((1.0 + 0.0) / 2)


@pytest.mark.parametrize('seed', range(4))
def test_uauc_matches_per_user_loop(seed):
  rng = np.random.default_rng(seed)
  n = 300
  users = rng.integers(0, 40, n) * 7 - 50  # sparse, negative ids too
  labels = (rng.random(n) < 0.3).astype(np.float32)
  scores = np.round(rng.random(n) * 0.6 + 0.3 * labels, 1)
  perm = rng.permutation(n)  # order of examples must not matter
  got = uauc(scores[perm], labels[perm], users[perm])
  want = _loop_uauc(scores, labels, users)
  assert got[1] == want[1] and want[1] > 10
  assert got[0] == pytest.approx(want[0], abs=1e-12)


def test_uauc_degenerate_and_bad_inputs():
  value, n = uauc([0.1, 0.2, 0.3], [1, 1, 0], [0, 0, 1])
  assert math.isnan(value) and n == 0
  with pytest.raises(ValueError, match='user_ids'):
    uauc([0.1, 0.2], [0, 1], [1, 2, 3])
  with pytest.raises(ValueError, match='scores contain 1 non-finite'):
    uauc([0.1, np.nan], [0, 1], [1, 1])


# ---------------------------------------------------------------------------------- logloss


def test_logloss_hand_computed():
  p, y = [0.9, 0.2, 0.6], [1, 0, 0]
  want = -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3
  assert logloss(p, y) == pytest.approx(want, rel=1e-12)
  assert logloss([0.0, 1.0], [1, 0], eps=1e-3) == pytest.approx(-math.log(1e-3))
  assert math.isnan(logloss([], []))
  with pytest.raises(ValueError, match='labels'):
    logloss([0.5, 0.5], [1])


# ---------------------------------------------------------------------------------- accumulator


TASKS = ('ctr', 'cvr')


def _batch(rng, n, with_true=True):
  true = rng.random((n, 2))
  labels = (rng.random((n, 2)) < true).astype(np.float32)
  probs = np.clip(true + rng.normal(0, 0.2, (n, 2)), 0.01, 0.99).astype(np.float32)
  valid = np.ones((n, 2), bool)
  valid[:, 1] = labels[:, 0] == 1  # cvr only on clicked
  valid[-2:] = False  # padding rows
  labels[-2:] = -1.0  # junk labels on padding must not matter
  out = dict(probs=probs, labels=labels, user_ids=rng.integers(0, 15, n), valid=valid)
  if with_true:
    out['true_probs'] = true
  return out


def _concat(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for t in a:
    assert a[t].keys() == b[t].keys()
    for k in a[t]:
      assert a[t][k] == b[t][k] or (math.isnan(a[t][k]) and math.isnan(b[t][k])), (t, k)


def test_accumulator_batches_equal_one_batch_and_valid_mask():
  rng = np.random.default_rng(0)
  batches = [_batch(rng, n) for n in (50, 1, 70, 33)]
  acc = TaskMetricsAccumulator(TASKS)
  for b in batches:
    acc.add(**b)
  one = TaskMetricsAccumulator(TASKS)
  full = _concat(batches)
  one.add(**full)
  _assert_same(acc.compute(), one.compute())
  assert len(acc) == len(one) == 154

  res = acc.compute()
  for i, t in enumerate(TASKS):
    m = full['valid'][:, i]
    p, y = full['probs'][m, i], full['labels'][m, i]
    assert res[t]['count'] == m.sum()
    assert res[t]['auc'] == pytest.approx(_brute_auc(p, y), abs=1e-12)
    assert res[t]['uauc'] == pytest.approx(_loop_uauc(p, y, full['user_ids'][m])[0], abs=1e-12)
    assert res[t]['uauc_users'] == _loop_uauc(p, y, full['user_ids'][m])[1]
    assert res[t]['logloss'] == pytest.approx(logloss(p, y))
    assert res[t]['positive_rate'] == pytest.approx(y.mean())
    assert res[t]['oracle_auc'] == pytest.approx(auc(full['true_probs'][m, i], y))
  assert res['cvr']['count'] < res['ctr']['count']
  assert res['cvr']['positive_rate'] != pytest.approx(res['ctr']['positive_rate'])


def test_accumulator_const_logloss_is_entropy():
  rng = np.random.default_rng(1)
  acc = TaskMetricsAccumulator(TASKS)
  acc.add(**_batch(rng, 200))
  for t, m in acc.compute().items():
    r = m['positive_rate']
    assert 0 < r < 1
    assert m['const_logloss'] == pytest.approx(-(r * math.log(r) + (1 - r) * math.log(1 - r)))


def test_accumulator_oracle_keys_only_when_true_probs_always_given():
  rng = np.random.default_rng(2)
  acc = TaskMetricsAccumulator(TASKS)
  acc.add(**_batch(rng, 30))
  assert 'oracle_auc' in acc.compute()['ctr'] and 'oracle_uauc' in acc.compute()['cvr']
  acc.add(**_batch(rng, 30, with_true=False))
  acc.add(**_batch(rng, 30))
  assert 'oracle_auc' not in acc.compute()['ctr']
  acc.reset()
  acc.add(**_batch(rng, 30, with_true=False))
  assert 'oracle_uauc' not in acc.compute()['ctr']


@pytest.mark.parametrize('with_true', [True, False])
def test_accumulator_state_round_trip(with_true):
  rng = np.random.default_rng(3)
  batches = [_batch(rng, 40, with_true) for _ in range(3)]
  acc = TaskMetricsAccumulator(TASKS)
  for b in batches[:2]:
    acc.add(**b)
  state = acc.state()
  assert all(isinstance(v, np.ndarray) for v in state.values())
  assert 'ctr/probs' in state and ('cvr/true_probs' in state) == with_true
  restored = TaskMetricsAccumulator.from_state(TASKS, state)
  _assert_same(acc.compute(), restored.compute())
  for b in batches[2:]:  # and it keeps accumulating identically
    acc.add(**b)
    restored.add(**b)
  _assert_same(acc.compute(), restored.compute())
  assert len(restored) == len(acc) == 120


def test_accumulator_empty_state_and_reset():
  acc = TaskMetricsAccumulator(TASKS)
  restored = TaskMetricsAccumulator.from_state(TASKS, acc.state())
  res = restored.compute()
  assert res['ctr']['count'] == 0 and len(restored) == 0
  assert math.isnan(res['ctr']['auc']) and math.isnan(res['cvr']['logloss'])
  assert 'oracle_auc' not in res['ctr']
  restored.add(**_batch(np.random.default_rng(4), 20))
  restored.reset()
  assert restored.compute()['ctr']['count'] == 0 and len(restored) == 0
  with pytest.raises(ValueError, match='lacks key'):
    TaskMetricsAccumulator.from_state(('ctr', 'other'), acc.state())


def test_accumulator_bad_inputs():
  acc = TaskMetricsAccumulator(TASKS)
  b = _batch(np.random.default_rng(5), 10)
  with pytest.raises(ValueError, match='probs'):
    acc.add(**{**b, 'probs': b['probs'][:, :1]})
  with pytest.raises(ValueError, match='user_ids'):
    acc.add(**{**b, 'user_ids': b['user_ids'][:3]})
  bad = b['probs'].copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match='probs contain 1 non-finite'):
    acc.add(**{**b, 'probs': bad})
  assert len(acc) == 0  # a rejected batch leaves nothing behind


# ---------------------------------------------------------------------------------- macro


def test_macro_average_skips_nan_and_sums_count():
  days = [
      {'ctr': {'auc': 0.7, 'uauc': 0.6, 'count': 10}, 'cvr': {'auc': float('nan'), 'count': 0}},
      {'ctr': {'auc': 0.8, 'uauc': float('nan'), 'count': 5},
       'cvr': {'auc': float('nan'), 'count': 3}},
      {'ctr': {'auc': 0.9, 'uauc': 0.7, 'count': 1}, 'cvr': {'auc': float('nan'), 'count': 0}},
  ]
  out = macro_average(days)
  assert out['ctr']['auc'] == pytest.approx(0.8)
  assert out['ctr']['uauc'] == pytest.approx(0.65)
  assert out['ctr']['count'] == 16
  assert math.isnan(out['cvr']['auc'])
  assert out['cvr']['count'] == 3
  assert macro_average([]) == {}
