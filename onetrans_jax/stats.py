"""Statistics for comparing model variants in a way a reviewer can check (numpy + math only).

A gain of +0.1% AUC means nothing without its uncertainty. Two tools cover the two situations:

* several seeds per variant: ``paired_difference`` pairs the variant's and the reference's runs
  seed by seed (same data order, same init key) and gives a Student-t confidence interval of the
  mean difference. Pairing removes the seed-to-seed variance the two runs share, which is
  usually most of it, so the interval is much tighter than comparing two unpaired means.
* one run per variant: ``paired_bootstrap`` resamples the evaluation *users* with replacement
  and recomputes the metric of both variants on each resample. Users, not impressions, are the
  unit because impressions of one user are correlated; resampling impressions would understate
  the variance.

scipy is not a dependency, so the Student-t quantile is computed here from the regularized
incomplete beta function (``t_quantile``), accurate to ~1e-11 or better for any df.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from onetrans_jax import metrics

__all__ = ['t_quantile', 'mean_std', 'PairedResult', 'paired_difference', 'BootstrapResult',
           'paired_bootstrap', 'weighted_auc']


# ---------------------------------------------------------------------------------- validation


def _check_level(level: float) -> float:
  level = float(level)
  if not 0.0 < level < 1.0:
    raise ValueError(f'level must lie strictly between 0 and 1 (e.g. 0.95), got {level}')
  return level


def _finite_vector(name: str, values: Any) -> np.ndarray:
  """1-D float64 copy of ``values``; a NaN/inf is an error naming its index, never skipped."""
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {x.shape}')
  bad = np.flatnonzero(~np.isfinite(x))
  if bad.size:
    raise ValueError(f'{name} has a non-finite value {x[bad[0]]} at index {int(bad[0])} '
                     f'({bad.size} non-finite in all); a failed run must be rerun or dropped '
                     'from both sides explicitly')
  return x


# ---------------------------------------------------------------------------------- Student t


_CF_EPS = 1e-15
_CF_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
  """Continued fraction of I_x(a, b), evaluated by the modified Lentz method.

  Converges quickly for x < (a + 1) / (a + b + 2); the caller uses the symmetry
  I_x(a, b) = 1 - I_{1-x}(b, a) otherwise. Terms: d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),
  d_{2m} = m (b-m) x / ((a+2m-1)(a+2m)).
  """
  max_iter = 200 + int(20 * math.sqrt(max(a, b)))
  c = 1.0
  d = 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
  h = d
  for m in range(1, max_iter + 1):
    for coef in (m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
                 -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))):
      d = 1.0 + coef * d
      d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
      c = 1.0 + coef / c
      c = c if abs(c) > _CF_TINY else _CF_TINY
      delta = c * d
      h *= delta
    if abs(delta - 1.0) < _CF_EPS:
      return h
  raise ArithmeticError(f'incomplete beta continued fraction did not converge (a={a}, b={b}, '
                        f'x={x})')


_STIRLING = (1.0 / 12.0, -1.0 / 360.0, 1.0 / 1260.0, -1.0 / 1680.0, 1.0 / 1188.0)


def _log_beta(a: float, b: float) -> float:
  """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b), exact to ~1e-15 absolute for any df.

  For a large argument (big df) lgamma(a + b) - lgamma(a) cancels catastrophically (at df=1e12
  it loses 1e-3), so that difference is taken from Stirling's series written in log1p form.
  """
  small, big = min(a, b), max(a, b)
  if big < 50.0:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
  # lgamma(big + small) - lgamma(big); series terms beyond these are below 1e-18 for big >= 50.
  diff = (big - 0.5) * math.log1p(small / big) + small * math.log(big + small) - small
  diff += sum(c * ((big + small) ** -(2 * k + 1) - big ** -(2 * k + 1))
              for k, c in enumerate(_STIRLING))
  return math.lgamma(small) - diff


def _betainc_log(a: float, b: float, u: float) -> float:
  """Regularized incomplete beta function I_x(a, b) at x = exp(u), for a, b > 0 and u < 0.

  Taking log(x) gives 1 - x = -expm1(u) to full relative precision (no 1 - x cancellation near
  t = 0) and resolves tiny x in far tails. The continued fraction in x itself still loses about
  a * 1e-16 for x next to 1, which is why t_quantile switches to an expansion for huge df.
  """
  x, y = math.exp(u), -math.expm1(u)
  if y <= 0.0:
    return 1.0
  log_front = a * u + b * math.log(y) - _log_beta(a, b)
  front = math.exp(log_front)
  if x < (a + 1.0) / (a + b + 2.0):
    return front * _beta_cf(a, b, x) / a
  return 1.0 - front * _beta_cf(b, a, y) / b


_LARGE_DF = 100_000


def _normal_upper_quantile(tail: float) -> float:
  """z >= 0 with P(Z > z) = tail for tail in (0, 0.5], by bisection on math.erfc (exact to ulps)."""
  lo, hi = 0.0, 40.0  # P(Z > 40) ~ 4e-350 is below any float tail
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if mid <= lo or mid >= hi:
      break
    if 0.5 * math.erfc(mid / math.sqrt(2.0)) > tail:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def t_quantile(p: float, df: int) -> float:
  """Student-t quantile: the t with P(T <= t) = p for T ~ t(df), e.g. ``t_quantile(0.975, 4)``.

  With few seeds the normal 1.96 badly understates an interval (df=2 needs 4.30), hence the exact
  quantile. For t > 0, P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2); the x solving
  that is found by bisection on u = log(x) (so tiny x in far tails stays resolved), and
  t = sqrt(df * (1/x - 1)) = sqrt(df * expm1(-u)) without cancellation near t = 0.
  """
  p = float(p)
  if not 0.0 < p < 1.0:
    raise ValueError(f'p must lie strictly between 0 and 1, got {p}')
  if isinstance(df, bool) or int(df) != df or df < 1:
    raise ValueError(f'df must be an integer >= 1, got {df!r}')
  df = int(df)
  if p == 0.5:
    return 0.0
  tail = min(p, 1.0 - p)  # P(T > |t|); taken from p directly when p < 0.5, so no rounding
  if df >= _LARGE_DF:
    # The beta route loses ~df * 1e-16 (x = df / (df + t^2) rounds next to 1), while the
    # Cornish-Fisher expansion of t around the normal quantile (Abramowitz & Stegun 26.7.5)
    # truncated after 1/df^4 errs by < 1e-15 here (~1e-20 at p = 0.975).
    z = _normal_upper_quantile(tail)
    z2 = z * z
    g = (z * (z2 + 1.0) / 4.0,
         z * ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0,
         z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0,
         z * ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) / 92160.0)
    t = z + sum(gk / df ** (k + 1) for k, gk in enumerate(g))
    return t if p > 0.5 else -t
  target = 2.0 * tail  # = I_x(df/2, 1/2), increasing in x
  a, b = 0.5 * df, 0.5
  lo, hi = -700.0, 0.0  # u = log(x); x = exp(-700) is ~1e-304
  if _betainc_log(a, b, lo) >= target:
    raise ValueError(f'p={p} is too close to 0 or 1 for df={df}: |t| would exceed ~1e150')
  for _ in range(2000):
    mid = 0.5 * (lo + hi)
    if mid <= lo or mid >= hi or hi - lo <= 1e-16 * max(abs(lo), abs(hi)):
      break
    if _betainc_log(a, b, mid) < target:
      lo = mid
    else:
      hi = mid
  t = math.sqrt(df * math.expm1(-0.5 * (lo + hi)))
  return t if p > 0.5 else -t


# ---------------------------------------------------------------------------------- seeds


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample std with ddof=1, n); std is NaN for n = 1 since one run shows no spread.

  Reporting "std 0" for one seed would read as a perfectly stable result, hence NaN.
  """
  x = _finite_vector('values', values)
  n = int(x.shape[0])
  if n == 0:
    raise ValueError('values must not be empty')
  std = float(np.std(x, ddof=1)) if n > 1 else float('nan')
  return float(np.mean(x)), std, n


class PairedResult(NamedTuple):
  """Seed-paired comparison of a variant (a) against a reference (b); all differences are a - b.

  ``rel_*_pct`` are in % of |mean_b|, so their sign is the sign of the difference even for a
  negative-valued metric; NaN when mean_b is 0. ``significant``: the interval excludes 0.
  """
  mean_diff: float
  std_diff: float
  n: int
  ci_low: float
  ci_high: float
  level: float
  t_crit: float
  mean_a: float
  mean_b: float
  rel_diff_pct: float
  rel_ci_low_pct: float
  rel_ci_high_pct: float
  significant: bool


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95
                      ) -> PairedResult:
  """t-interval of mean(a_i - b_i), a_i and b_i being the same seed's metric for variant/reference.

  d ± t_{(1+level)/2, n-1} * sd / sqrt(n). Index i of a and of b must be the same seed: pairing
  is what cancels the shared seed noise, and mismatched pairs would silently break it.
  """
  level = _check_level(level)
  xa = _finite_vector('a', a)
  xb = _finite_vector('b', b)
  if xa.shape[0] != xb.shape[0]:
    raise ValueError(f'a and b must pair the same seeds: a has {xa.shape[0]} values, '
                     f'b has {xb.shape[0]}')
  n = int(xa.shape[0])
  if n < 2:
    raise ValueError(f'a and b need at least 2 paired seeds for an interval, got {n}')
  diff = xa - xb
  d = float(np.mean(diff))
  sd = float(np.std(diff, ddof=1))
  t_crit = t_quantile(0.5 * (1.0 + level), n - 1)
  half = t_crit * sd / math.sqrt(n)
  lo, hi = d - half, d + half
  mean_a, mean_b = float(np.mean(xa)), float(np.mean(xb))
  scale = 100.0 / abs(mean_b) if mean_b != 0.0 else float('nan')
  return PairedResult(mean_diff=d, std_diff=sd, n=n, ci_low=lo, ci_high=hi, level=level,
                      t_crit=t_crit, mean_a=mean_a, mean_b=mean_b, rel_diff_pct=d * scale,
                      rel_ci_low_pct=lo * scale, rel_ci_high_pct=hi * scale,
                      significant=bool(lo > 0.0 or hi < 0.0))


# ---------------------------------------------------------------------------------- bootstrap


def weighted_auc(labels: Any, scores: Any, weights: Any | None = None) -> float:
  """ROC AUC with per-impression weights (float64, tied scores count 1/2); NaN if a class is absent.

  A bootstrap resample that draws a user k times equals weighting the user's impressions by k,
  so this scores a resample without materialising repeated arrays. The rank statistic itself is
  ``metrics.auc`` (note its (scores, labels) argument order), so the two can never disagree.
  """
  return metrics.auc(scores, labels, weights)


class BootstrapResult(NamedTuple):
  """Group-bootstrap comparison of two score sets on one evaluation set; differences are a - b.

  ``ci_low``/``ci_high`` are percentile bounds of the replicate differences and ``std`` their
  standard deviation (the bootstrap standard error). ``n_boot`` counts the replicates used;
  ``n_invalid`` those dropped because the metric was NaN there (e.g. a resample with one class).
  """
  observed: float
  metric_a: float
  metric_b: float
  ci_low: float
  ci_high: float
  std: float
  level: float
  n_boot: int
  n_invalid: int
  n_groups: int
  significant: bool


def paired_bootstrap(labels: Any, scores_a: Any, scores_b: Any, groups: Any,
                     metric: Callable[[np.ndarray, np.ndarray, np.ndarray], float] = weighted_auc,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
  """Percentile CI of metric(a) - metric(b) under resampling of ``groups`` (users) with replacement.

  For single-seed comparisons. Each replicate draws as many groups as there are, with
  replacement, and calls ``metric(labels, scores, weights)`` with ``weights`` the impressions'
  multiplicity in that draw (0 for groups not drawn) -- the same weights for a and b, which is
  what makes the comparison paired. A fixed ``seed`` gives the same interval every time.
  """
  level = _check_level(level)
  if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
    raise ValueError(f'n_boot must be an integer >= 1, got {n_boot!r}')
  n_boot = int(n_boot)
  if not callable(metric):
    raise ValueError(f'metric must be callable(labels, scores, weights), got {metric!r}')
  arrays = {'labels': labels, 'scores_a': scores_a, 'scores_b': scores_b, 'groups': groups}
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  for name, x in arrays.items():
    if x.ndim != 1:
      raise ValueError(f'{name} must be 1-D, got shape {x.shape}')
  n = arrays['labels'].shape[0]
  for name, x in arrays.items():
    if x.shape[0] != n:
      raise ValueError(f'{name} has {x.shape[0]} entries but labels has {n}; one entry per '
                       'impression in all four')
  if n == 0:
    raise ValueError('labels is empty: nothing to evaluate')
  y = arrays['labels']
  sa = _finite_vector('scores_a', arrays['scores_a'])
  sb = _finite_vector('scores_b', arrays['scores_b'])
  if np.issubdtype(y.dtype, np.number):
    _finite_vector('labels', y)
  _, codes = np.unique(arrays['groups'], return_inverse=True)
  codes = codes.reshape(-1)
  n_groups = int(codes.max()) + 1
  if n_groups < 2:
    raise ValueError('groups must hold at least 2 distinct groups to resample, got 1')

  ones = np.ones(n, np.float64)
  metric_a, metric_b = float(metric(y, sa, ones)), float(metric(y, sb, ones))
  observed = metric_a - metric_b
  if not math.isfinite(observed):
    raise ValueError(f'metric is not finite on the full data (a: {metric_a}, b: {metric_b}); '
                     'e.g. AUC needs both classes in labels')

  rng = np.random.default_rng(seed)
  diffs = np.empty(n_boot, np.float64)
  for i in range(n_boot):
    counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    w = counts[codes].astype(np.float64)
    diffs[i] = float(metric(y, sa, w)) - float(metric(y, sb, w))
  valid = diffs[np.isfinite(diffs)]
  n_invalid = n_boot - int(valid.shape[0])
  if valid.shape[0] < max(2, n_boot // 2):
    raise ValueError(f'metric was undefined (NaN) on {n_invalid} of {n_boot} resamples; too few '
                     'groups with both classes for a group bootstrap')
  alpha = 0.5 * (1.0 - level)
  lo, hi = (float(q) for q in np.quantile(valid, [alpha, 1.0 - alpha]))
  return BootstrapResult(observed=observed, metric_a=metric_a, metric_b=metric_b, ci_low=lo,
                         ci_high=hi, std=float(np.std(valid, ddof=1)), level=level,
                         n_boot=int(valid.shape[0]), n_invalid=n_invalid, n_groups=n_groups,
                         significant=bool(lo > 0.0 or hi < 0.0))
