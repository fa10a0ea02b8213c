"""Tests for onetrans_jax.stats: exact numbers, not just shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onetrans_jax import stats

# ---------------------------------------------------------------------------------- t quantile

# Textbook two-sided 95% critical values, t_{0.975, df}, to 6 decimals.
T_TABLE = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 9: 2.262157, 29: 2.045230,
           1000: 1.962339}


@pytest.mark.parametrize('df,expected', sorted(T_TABLE.items()))
def test_t_quantile_matches_table(df, expected):
  assert abs(stats.t_quantile(0.975, df) - expected) < 1e-6
  assert abs(stats.t_quantile(0.025, df) + expected) < 1e-6  # symmetry


@pytest.mark.parametrize('p', [1e-10, 0.001, 0.3, 0.5000001, 0.6, 0.9, 0.975, 0.995, 0.9999])
def test_t_quantile_closed_forms(p):
  # df=1 is Cauchy: tan(pi (p - 1/2)) (evaluated via the tail to stay exact for tiny p);
  # df=2 has t = (2p - 1) / sqrt(2 p (1 - p)).
  cauchy = -1.0 / math.tan(math.pi * p) if p < 0.5 else 1.0 / math.tan(math.pi * (1.0 - p))
  assert stats.t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-9)
  assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                                                 rel=1e-9)


def test_t_quantile_large_df_is_continuous_and_tends_to_normal():
  # Below 1e5 the incomplete-beta route is used, from 1e5 the Cornish-Fisher expansion; the two
  # must agree at the switch (dt/ddf ~ -2.4e-10 there), and t -> z = 1.959963984540054.
  below, at = stats.t_quantile(0.975, 99_999), stats.t_quantile(0.975, 100_000)
  assert 0 < below - at < 3e-10
  assert stats.t_quantile(0.975, 10**12) == pytest.approx(1.959963984540054, abs=1e-11)
  assert stats.t_quantile(0.5, 7) == 0.0
  qs = [stats.t_quantile(p, 5) for p in (0.01, 0.2, 0.5, 0.8, 0.99)]
  assert qs == sorted(qs)


@pytest.mark.parametrize('p,df,name', [(0.0, 3, 'p'), (1.0, 3, 'p'), (1.5, 3, 'p'),
                                       (0.975, 0, 'df'), (0.975, 2.5, 'df'),
                                       (0.975, True, 'df')])
def test_t_quantile_rejects_bad_input(p, df, name):
  with pytest.raises(ValueError, match=f'^{name} '):
    stats.t_quantile(p, df)


# ---------------------------------------------------------------------------------- mean_std


def test_mean_std():
  mean, std, n = stats.mean_std([1.0, 2.0, 3.0, 4.0])
  assert (mean, n) == (2.5, 4)
  assert std == pytest.approx(math.sqrt(5.0 / 3.0), rel=1e-14)  # sum sq dev 5, ddof=1
  mean, std, n = stats.mean_std([0.7])
  assert mean == 0.7 and n == 1 and math.isnan(std)
  with pytest.raises(ValueError, match='values must not be empty'):
    stats.mean_std([])
  with pytest.raises(ValueError, match='values has a non-finite value nan at index 1'):
    stats.mean_std([0.7, float('nan')])


# ---------------------------------------------------------------------------------- paired t


def test_paired_difference_matches_hand_computation():
  a = [0.71, 0.72, 0.70]
  b = [0.70, 0.70, 0.69]
  # diffs = [0.01, 0.02, 0.01]; mean = 0.04 / 3 = 0.0133333
  # deviations = [-1/300, 2/300, -1/300]; sd = sqrt((1 + 4 + 1) / 90000 / 2) = 0.0057735
  # t_{0.975, 2} = 4.302653; half-width = 4.302653 * 0.0057735 / sqrt(3) = 0.0143422
  # CI = [0.0133333 - 0.0143422, 0.0133333 + 0.0143422] = [-0.0010088, 0.0276755] -> contains 0
  # mean_b = 2.09 / 3 = 0.6966667; relative difference = 0.0133333 / 0.6966667 = 1.913876 %
  r = stats.paired_difference(a, b)
  assert r.n == 3 and r.level == 0.95
  assert r.mean_diff == pytest.approx(0.0133333, abs=1e-7)
  assert r.std_diff == pytest.approx(0.0057735, abs=1e-7)
  assert r.t_crit == pytest.approx(4.302653, abs=1e-6)
  assert r.ci_high - r.mean_diff == pytest.approx(0.0143422, abs=1e-7)
  assert r.ci_low == pytest.approx(-0.0010088, abs=1e-7)
  assert r.ci_high == pytest.approx(0.0276755, abs=1e-7)
  assert r.mean_a == pytest.approx(0.71) and r.mean_b == pytest.approx(0.6966667, abs=1e-7)
  assert r.rel_diff_pct == pytest.approx(1.913876, abs=1e-6)
  assert r.rel_ci_low_pct == pytest.approx(-0.0010088 / 0.6966667 * 100, abs=1e-4)
  assert r.rel_ci_high_pct == pytest.approx(0.0276755 / 0.6966667 * 100, abs=1e-4)
  assert not r.significant


def test_paired_difference_significance_flips():
  a, b = [0.71, 0.72, 0.70], [0.70, 0.70, 0.69]
  # At 80%: t_{0.9, 2} = 1.885618, half-width = 1.885618 * 0.0057735 / sqrt(3) = 0.0062854,
  # CI = [0.0070479, 0.0196187] excludes 0.
  r80 = stats.paired_difference(a, b, level=0.80)
  assert r80.t_crit == pytest.approx(1.885618, abs=1e-6)
  assert r80.ci_low == pytest.approx(0.0070479, abs=1e-7)
  assert r80.ci_high == pytest.approx(0.0196187, abs=1e-7)
  assert r80.significant
  # A fourth seed agreeing with the others: diffs [.01,.02,.01,.015], mean .01375,
  # sd .0047871, t_{0.975,3} = 3.182446, half-width .0076174 -> [.0061326, .0213674].
  r4 = stats.paired_difference(a + [0.715], b + [0.70])
  assert r4.ci_low == pytest.approx(0.0061326, abs=1e-7) and r4.significant
  # Swapping the arms negates everything and stays significant (CI below 0).
  swapped = stats.paired_difference(b + [0.70], a + [0.715])
  assert swapped.ci_high == pytest.approx(-r4.ci_low) and swapped.significant
  assert swapped.rel_diff_pct < 0


def test_paired_difference_relative_sign_for_negative_metric():
  # A loss-like metric with negative values: relative % keeps the sign of the difference.
  r = stats.paired_difference([-0.9, -0.8], [-1.0, -1.0])
  assert r.mean_diff == pytest.approx(0.15) and r.rel_diff_pct == pytest.approx(15.0)


def test_paired_difference_errors_name_the_argument():
  with pytest.raises(ValueError, match='a and b must pair the same seeds: a has 3 values, b has 2'):
    stats.paired_difference([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match='at least 2 paired seeds'):
    stats.paired_difference([1.0], [0.5])
  with pytest.raises(ValueError, match='b has a non-finite value nan at index 2'):
    stats.paired_difference([1, 2, 3], [1, 2, float('nan')])
  with pytest.raises(ValueError, match='a has a non-finite value inf at index 0'):
    stats.paired_difference([float('inf'), 2], [1, 2])
  for level in (0.0, 1.0, 95):
    with pytest.raises(ValueError, match='level must lie strictly between 0 and 1'):
      stats.paired_difference([1, 2], [1, 3], level=level)


# ---------------------------------------------------------------------------------- weighted AUC


def _brute_force_auc(labels, scores, weights):
  pos, neg = labels == 1, labels == 0
  num = den = 0.0
  for i in np.flatnonzero(pos):
    for j in np.flatnonzero(neg):
      w = weights[i] * weights[j]
      num += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
      den += w
  return num / den


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_weighted_auc_equals_brute_force_and_repeated_arrays(seed):
  rng = np.random.default_rng(seed)
  n = 60
  labels = rng.integers(0, 2, n)
  scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)  # rounding creates many ties
  weights = rng.integers(0, 4, n)  # includes zero weights, like an undrawn user
  assert len(np.unique(scores)) < n  # ties are really there
  got = stats.weighted_auc(labels, scores, weights)
  assert got == pytest.approx(_brute_force_auc(labels, scores, weights), rel=1e-12)
  repeated = stats.weighted_auc(np.repeat(labels, weights), np.repeat(scores, weights))
  assert got == pytest.approx(repeated, rel=1e-12)
  unweighted = _brute_force_auc(labels, scores, np.ones(n))
  assert stats.weighted_auc(labels, scores) == pytest.approx(unweighted, rel=1e-12)


def test_weighted_auc_hand_example_and_one_class():
  # Positives 0.8 and 0.5, negatives 0.5 and 0.2: pairs (0.8,0.5)=1, (0.8,0.2)=1, (0.5,0.5)=1/2,
  # (0.5,0.2)=1 -> 3.5 / 4; weighting the tied positive by 3: (1+1+3*(0.5+1)) / (4*2) = 6.5 / 8.
  labels, scores = np.array([1, 1, 0, 0]), np.array([0.8, 0.5, 0.5, 0.2])
  assert stats.weighted_auc(labels, scores) == 0.875
  assert stats.weighted_auc(labels, scores, np.array([1, 3, 1, 1])) == 6.5 / 8
  assert math.isnan(stats.weighted_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


# ---------------------------------------------------------------------------------- bootstrap


def _grouped_data(seed, n_users=200, signal_a=1.0, signal_b=1.0):
  """Impressions of n_users users (1-15 each) with a user effect, and two noisy scorers."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, 16, n_users)
  groups = np.repeat(np.arange(n_users) * 7 + 3, sizes)  # arbitrary, non-contiguous ids
  n = groups.shape[0]
  user_effect = np.repeat(rng.normal(size=n_users), sizes)
  latent = user_effect + rng.normal(size=n)
  labels = (latent > 0.3).astype(np.int64)
  scores_a = signal_a * latent + rng.normal(size=n)
  scores_b = signal_b * latent + rng.normal(size=n)
  return labels, scores_a, scores_b, groups


def test_paired_bootstrap_contains_observed_and_is_deterministic():
  labels, sa, sb, groups = _grouped_data(0, signal_a=1.0, signal_b=0.6)
  r = stats.paired_bootstrap(labels, sa, sb, groups, n_boot=300, seed=5)
  assert r.metric_a == pytest.approx(stats.weighted_auc(labels, sa), rel=1e-15)
  assert r.metric_b == pytest.approx(stats.weighted_auc(labels, sb), rel=1e-15)
  assert r.observed == pytest.approx(r.metric_a - r.metric_b, rel=1e-15)
  assert r.ci_low < r.observed < r.ci_high
  assert r.n_groups == 200 and r.n_boot == 300 and r.n_invalid == 0
  assert r.observed > 0.02 and r.significant  # the stronger scorer wins clearly
  assert r.std > 0 and r.ci_high - r.ci_low < 6 * r.std
  again = stats.paired_bootstrap(labels, sa, sb, groups, n_boot=300, seed=5)
  assert again == r
  other = stats.paired_bootstrap(labels, sa, sb, groups, n_boot=300, seed=6)
  assert other.observed == r.observed and other.ci_low != r.ci_low


def test_paired_bootstrap_same_distribution_is_centred_near_zero():
  labels, sa, sb, groups = _grouped_data(1)
  r = stats.paired_bootstrap(labels, sa, sb, groups, n_boot=400, seed=0)
  assert r.ci_low < 0 < r.ci_high and not r.significant
  centre, width = 0.5 * (r.ci_low + r.ci_high), r.ci_high - r.ci_low
  assert abs(centre) < 0.35 * width
  assert abs(r.observed) < 0.35 * width
  # Identical scores: every replicate differs by exactly 0.
  same = stats.paired_bootstrap(labels, sa, sa.copy(), groups, n_boot=50)
  assert (same.observed, same.ci_low, same.ci_high, same.std) == (0.0, 0.0, 0.0, 0.0)
  assert not same.significant


def test_paired_bootstrap_passes_group_multiplicities_as_weights():
  labels, sa, sb, groups = _grouped_data(2, n_users=30)
  seen = []

  def metric(y, s, w):
    seen.append(w.copy())
    return stats.weighted_auc(y, s, w)

  stats.paired_bootstrap(labels, sa, sb, groups, metric=metric, n_boot=20, seed=3)
  assert len(seen) == 2 + 2 * 20
  np.testing.assert_array_equal(seen[0], np.ones(labels.shape[0]))
  _, first_idx, codes = np.unique(groups, return_index=True, return_inverse=True)
  for w in seen[2:]:
    assert w.dtype == np.float64 and np.all(w == np.round(w)) and np.all(w >= 0)
    # One multiplicity per user, and 30 users drawn in total.
    np.testing.assert_array_equal(w, w[first_idx][codes])
    assert w[first_idx].sum() == 30
  np.testing.assert_array_equal(seen[2], seen[3])  # a and b see the same resample


def test_paired_bootstrap_drops_undefined_replicates():
  # Only user 0 has positives; resamples without user 0 have one class -> NaN AUC, dropped.
  labels = np.array([1, 0, 0, 0, 0, 0])
  groups = np.array([0, 0, 1, 1, 2, 2])
  sa = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
  r = stats.paired_bootstrap(labels, sa, sa[::-1].copy(), groups, n_boot=200, seed=0)
  # P(user 0 never drawn in 3 draws) = (2/3)^3 = 0.296.
  assert r.n_boot + r.n_invalid == 200 and 40 < r.n_invalid < 80


def test_paired_bootstrap_errors_name_the_argument():
  labels, sa, sb, groups = _grouped_data(3, n_users=20)
  with pytest.raises(ValueError, match='scores_b has 5 entries but labels has'):
    stats.paired_bootstrap(labels, sa, sb[:5], groups)
  with pytest.raises(ValueError, match='groups has 5 entries but labels has'):
    stats.paired_bootstrap(labels, sa, sb, groups[:5])
  with pytest.raises(ValueError, match='labels is empty'):
    stats.paired_bootstrap([], [], [], [])
  with pytest.raises(ValueError, match='level must lie strictly between 0 and 1'):
    stats.paired_bootstrap(labels, sa, sb, groups, level=1.0)
  with pytest.raises(ValueError, match='n_boot must be an integer >= 1'):
    stats.paired_bootstrap(labels, sa, sb, groups, n_boot=0)
  with pytest.raises(ValueError, match='groups must hold at least 2 distinct groups'):
    stats.paired_bootstrap(labels, sa, sb, np.zeros_like(groups))
  bad = sa.copy()
  bad[4] = np.nan
  with pytest.raises(ValueError, match='scores_a has a non-finite value nan at index 4'):
    stats.paired_bootstrap(labels, bad, sb, groups)
  with pytest.raises(ValueError, match='scores_a must be 1-D'):
    stats.paired_bootstrap(labels, sa[:, None], sb, groups)
  with pytest.raises(ValueError, match='metric is not finite on the full data'):
    stats.paired_bootstrap(np.zeros_like(labels), sa, sb, groups)
  with pytest.raises(ValueError, match='metric must be callable'):
    stats.paired_bootstrap(labels, sa, sb, groups, metric='auc')
