"""Leak-free history statistics of the event-log loaders (event_log.history_statistics)."""

from __future__ import annotations

import numpy as np
import pytest

from onetrans_jax.data import event_log
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import Task

TASKS = (Task('like'), Task('love', parent='like'))


def _log(seed: int = 0, n: int = 400) -> event_log.EventLog:
  rng = np.random.default_rng(seed)
  like = rng.random(n) < 0.5
  labels = np.stack([like, like & (rng.random(n) < 0.4)], 1).astype(np.float32)
  return event_log.EventLog(
      user=rng.integers(1, 9, n).astype(np.int32), item=rng.integers(1, 13, n).astype(np.int32),
      time=np.sort(rng.integers(0, 200_000, n)).astype(np.int64), labels=labels,
      is_impression=np.ones(n, bool), in_sequence={'rated': np.ones(n, bool)}, tasks=TASKS,
      num_users=8, num_items=12)


CFG = event_log.RequestConfig(session_gap=600, num_candidates=4, max_len={'rated': 5},
                              eval_fraction=0.2, history_stats=True, stats_prior=10.0)


def _brute(log, t_req, mask) -> np.ndarray:
  """Features of the impressions selected by ``mask`` among those strictly before ``t_req``."""
  before = log.time < t_req
  g_n, g_pos = before.sum(), log.labels[before].sum(0)
  glob = (g_pos + 1.0) / (g_n + 2.0)
  sel = before & mask
  n, pos = sel.sum(), log.labels[sel].sum(0)
  return np.concatenate([[np.log1p(n)], (pos + 10.0 * glob) / (n + 10.0)])


def test_statistics_equal_a_brute_force_count():
  log = _log()
  src = event_log.EventLogSource(log, CFG)
  ix = src.index
  for r in range(0, len(ix), 7):
    req = src[r]
    u, t = int(ix.user[r]), int(ix.time[r])
    np.testing.assert_allclose(req['request']['num'][-3:], _brute(log, t, log.user == u),
                               rtol=1e-5)
    items = ix.impressions[ix.start[r]:ix.start[r] + ix.size[r]]
    for k, e in enumerate(items):
      np.testing.assert_allclose(req['cand']['num'][k, -3:],
                                 _brute(log, t, log.item == log.item[e]), rtol=1e-5)
  names = [f.name for f in src.schema.candidate_numeric]
  assert names == ['item_prior_log_count', 'item_prior_like_rate', 'item_prior_love_rate']


def test_a_request_never_sees_its_own_or_later_labels():
  log = _log()
  src = event_log.EventLogSource(log, CFG)
  r = len(src.index) // 2
  t = int(src.index.time[r])
  flipped = _log()
  flipped.labels[log.time >= t] = 1.0 - flipped.labels[log.time >= t]
  flipped.labels[:, 1] *= flipped.labels[:, 0]          # love stays a later stage of like
  other = event_log.EventLogSource(flipped, CFG)
  a, b = src[r], other[r]
  np.testing.assert_array_equal(a['request']['num'], b['request']['num'])
  np.testing.assert_array_equal(a['cand']['num'], b['cand']['num'])
  assert not np.array_equal(a['labels'], b['labels'])   # the flip reached this request


def test_off_by_default_and_a_bad_prior_is_refused():
  log = _log()
  plain = event_log.EventLogSource(
      log, event_log.RequestConfig(session_gap=600, num_candidates=4, max_len={'rated': 5},
                                   eval_fraction=0.2))
  assert plain.schema.candidate_numeric == () and plain[0]['cand']['num'].shape == (4, 0)
  bad = event_log.RequestConfig(session_gap=600, num_candidates=4, max_len={'rated': 5},
                                eval_fraction=0.2, history_stats=True, stats_prior=0.0)
  with pytest.raises(ConfigError, match='config.data.stats_prior must be > 0, got 0.0'):
    event_log.EventLogSource(log, bad)


def _all_stats(src) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per request stats [R, 3], per real impression stats [I, 3] and each impression's request."""
  reqs = [src[r] for r in range(len(src.index))]
  req = np.stack([q['request']['num'][-3:] for q in reqs])
  imp = np.concatenate([q['cand']['num'][q['cand']['mask']][:, -3:] for q in reqs])
  owner = np.concatenate([np.full(int(q['cand']['mask'].sum()), r) for r, q in enumerate(reqs)])
  return req, imp, owner


def test_zscore_standardises_on_the_training_range_only():
  """stats_scale='zscore': the training requests' statistics (and their impressions') have mean
  0 and std 1 per column, every value is the raw one under that one affine map, and the
  hold-out's labels do not move the map."""
  import dataclasses
  log = _log()
  z_cfg = dataclasses.replace(CFG, stats_scale='zscore')
  raw_req, raw_imp, owner = _all_stats(event_log.EventLogSource(log, CFG))
  z_req, z_imp, _ = _all_stats(event_log.EventLogSource(log, z_cfg))
  n_train = event_log.chronological_split(len(raw_req), CFG.eval_fraction)[0][1]
  train = owner < n_train
  np.testing.assert_allclose(z_req[:n_train].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z_req[:n_train].std(0), 1.0, atol=1e-4)
  np.testing.assert_allclose(z_imp[train].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z_imp[train].std(0), 1.0, atol=1e-4)
  mean, std = raw_imp[train].mean(0), raw_imp[train].std(0)
  np.testing.assert_allclose(z_imp, (raw_imp - mean) / std, rtol=1e-4, atol=1e-5)
  # Flip every hold-out label: the hold-out's own statistics may change, the map may not.
  t_cut = int(event_log.EventLogSource(log, CFG).index.time[n_train])
  flipped = _log()
  later = flipped.time >= t_cut
  flipped.labels[later, 0] = 1.0 - flipped.labels[later, 0]
  flipped.labels[:, 1] *= flipped.labels[:, 0]
  f_req, f_imp, _ = _all_stats(event_log.EventLogSource(flipped, z_cfg))
  np.testing.assert_array_equal(f_req[:n_train], z_req[:n_train])
  np.testing.assert_array_equal(f_imp[train], z_imp[train])


def test_stats_scale_is_checked_and_raw_keeps_old_fingerprints():
  import dataclasses
  import ml_collections
  from onetrans_jax import records
  log = _log()
  with pytest.raises(ConfigError, match=r"config.data.stats_scale='minmax': use one of"):
    event_log.EventLogSource(log, dataclasses.replace(CFG, stats_scale='minmax'))
  with pytest.raises(ConfigError, match='history_stats is False; set it True'):
    event_log.EventLogSource(log, dataclasses.replace(CFG, history_stats=False,
                                                      stats_scale='zscore'))
  # The new field at its old behaviour ('raw') leaves a config's fingerprint as it was.
  c = ml_collections.ConfigDict({'seed': 0, 'data': {'name': 'synthetic', 'x': 1}})
  with_raw = ml_collections.ConfigDict({'seed': 0, 'data': {'name': 'synthetic', 'x': 1,
                                                            'stats_scale': 'raw'}})
  with_z = ml_collections.ConfigDict({'seed': 0, 'data': {'name': 'synthetic', 'x': 1,
                                                          'stats_scale': 'zscore'}})
  assert records.fingerprint(c)[0] == records.fingerprint(with_raw)[0]
  assert records.fingerprint(c)[0] != records.fingerprint(with_z)[0]
