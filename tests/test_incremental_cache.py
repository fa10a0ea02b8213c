"""The incremental user cache (SPEC A.6): appending events equals encoding the whole history."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from onetrans_jax import serving
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.schema import dummy_batch
from tests.helpers import onetrans_model_config

STABLE = dict(s_position='none', time_gap_buckets=0)


def _empty(batch: dict) -> dict:
  """The user side of ``batch`` with no events at all."""
  return {'request': batch['request'],
          'seq': {n: {k: np.zeros_like(np.asarray(v)) for k, v in ev.items()}
                  for n, ev in batch['seq'].items()}}


def _later(user: dict, counts: dict[str, list[int]], width: int | None = None,
           seed: int = 0) -> dict:
  """New events: row r gets counts[seq][r] of them per sequence (random small ids) at distinct
  times after everything in ``user``, the sequences interleaved in time; each sequence padded to
  ``width`` slots (default: the most any row gets, as a server would batch them)."""
  width = width or max(max(c) for c in counts.values())
  rng = np.random.default_rng(seed)
  out = {}
  start = max(int(np.max(np.where(ev['mask'], ev['time'], 0))) for ev in user['seq'].values())
  kinds = len(user['seq'])
  for j, (name, ev) in enumerate(user['seq'].items()):
    r, _, f = np.shape(ev['ids'])
    ids = np.zeros((r, width, f), np.int32)
    time = np.zeros((r, width), np.int32)
    mask = np.zeros((r, width), bool)
    for i in range(r):
      k = counts[name][i]
      ids[i, width - k:] = rng.integers(1, 6, size=(k, f))
      time[i, width - k:] = start + 1 + j + kinds * np.arange(k)
      mask[i, width - k:] = True
    out[name] = {'ids': ids, 'time': time, 'mask': mask}
  return {'seq': out}


def _history(schema, batch: dict, counts: dict[str, list[int]]) -> dict:
  """A user side whose rows hold counts[seq][r] events per sequence."""
  empty = _empty(batch)
  return _concat(schema, empty, _later(empty, counts, width=16, seed=1))


def _concat(schema, old: dict, new: dict) -> dict:
  """What the data pipeline gives for the whole history: per sequence its last max_len events."""
  seq = {}
  for q in schema.sequences:
    a, b = old['seq'][q.name], new['seq'][q.name]
    r = a['mask'].shape[0]
    out = {k: np.zeros((r, q.max_len) + np.shape(a[k])[2:], np.asarray(a[k]).dtype) for k in a}
    for i in range(r):
      rows = {k: np.concatenate([np.asarray(a[k])[i][np.asarray(a['mask'][i])],
                                 np.asarray(b[k])[i][np.asarray(b['mask'][i])]])[-q.max_len:]
              for k in a}
      n = rows['mask'].shape[0]
      for k in a:
        out[k][i, q.max_len - n:] = rows[k]
    seq[q.name] = out
  return {'request': old['request'], 'seq': seq}


@pytest.fixture(scope='module')
def stable_model(data):
  schema, _ = data
  model = build_model(onetrans_model_config(num_layers=4, **STABLE), schema)
  params = partitioning.unbox(
      jax.jit(model.init)(jax.random.key(5), dummy_batch(schema, 1))['params'])
  start, append = serving.incremental_user_fns(model)
  return model, params, start, append


def _valid_rows(x, valid):
  return np.asarray(x)[np.asarray(valid)]


def _assert_same_state(model, got, want):
  assert np.array_equal(got['valid'], want['valid'])
  v = want['valid']
  np.testing.assert_array_equal(_valid_rows(got['time'], v), _valid_rows(want['time'], v))
  np.testing.assert_array_equal(_valid_rows(got['kind'], v), _valid_rows(want['kind'], v))
  np.testing.assert_allclose(_valid_rows(got['tokens'], v), _valid_rows(want['tokens'], v),
                             atol=1e-6)
  for i in range(model.num_layers):
    lv = want['cache']['valid'][i]
    assert np.array_equal(got['cache']['valid'][i], lv), i
    for name in ('k', 'v'):
      np.testing.assert_allclose(_valid_rows(got['cache'][name][i], lv),
                                 _valid_rows(want['cache'][name][i], lv), atol=1e-5,
                                 err_msg=f'layer {i} {name}')
    kept_valid = lv[:, lv.shape[1] - got['kept'][i].shape[1]:]
    np.testing.assert_allclose(_valid_rows(got['kept'][i], kept_valid),
                               _valid_rows(want['kept'][i], kept_valid), atol=1e-5,
                               err_msg=f'layer {i} kept')


# (events already cached, events appended) per sequence and row; the plan they must take.
# Test schema: click 16, cart 8, order 4 -> L_S = 28; 4 layers, pyramid schedule (32, 24, 16, 4)
# with 4 NS tokens: S input windows per layer (28, 28, 20, 12), S outputs kept (28, 20, 12, 0).
SCENARIOS = {
    'fits_every_layer': (dict(click=[2, 3, 0], cart=[1, 0, 2], order=[1, 1, 0]),
                         dict(click=[2, 1, 3], cart=[1, 2, 0], order=[0, 1, 1]), (4, 4)),
    'overflows_the_pyramid_tail': (dict(click=[10, 12, 9], cart=[5, 4, 6], order=[2, 3, 2]),
                                   dict(click=[3, 1, 2], cart=[1, 2, 0], order=[1, 0, 1]),
                                   (3, 2)),
    'evicts_old_events': (dict(click=[14, 16, 10], cart=[8, 5, 7], order=[4, 2, 3]),
                          dict(click=[4, 1, 9], cart=[1, 5, 0], order=[1, 3, 1]), (1, 0)),
}


@pytest.mark.parametrize('scenario', list(SCENARIOS))
def test_append_equals_encoding_the_whole_history(data, stable_model, scenario):
  schema, batch = data
  model, params, start, append = stable_model
  cached, arriving, plan = SCENARIOS[scenario]
  old = _history(schema, batch, cached)
  new = _later(old, arriving)
  assert serving.plan_append(model, start(params, old), new) == plan
  got = append(params, start(params, old), new)
  whole = _concat(schema, old, new)
  _assert_same_state(model, got, start(params, whole))
  # The bar of item 1 holds after the append: scores equal the per-candidate forward pass.
  naive = build_model(onetrans_model_config(num_layers=4, request_level=False, **STABLE), schema)
  full = dict(whole, cand=batch['cand'])
  reference = naive.apply({'params': params}, full)
  _, score = serving.cached_scoring_fns(model)
  logits = score(params, serving.candidate_part(full), got['cache'])
  assert np.max(np.abs(np.asarray(logits) - np.asarray(reference))) <= 1e-5


def test_appends_chain(data, stable_model):
  """Three appends in a row (growing, then overflowing the pyramid, then evicting) stay exact."""
  schema, batch = data
  model, params, start, append = stable_model
  history = _history(schema, batch, dict(click=[1, 2, 0], cart=[0, 1, 1], order=[1, 0, 0]))
  state = start(params, history)
  plans = []
  for counts in ([2, 1, 3], [5, 6, 4], [9, 9, 9]):
    new = _later(history, dict(click=counts, cart=[c // 2 for c in counts],
                               order=[c // 3 for c in counts]))
    plans.append(serving.plan_append(model, state, new))
    state = append(params, state, new)
    history = _concat(schema, history, new)
    _assert_same_state(model, state, start(params, history))
  assert plans == [(4, 4), (4, 3), (1, 0)]


def test_reuse_is_real_and_the_pyramid_caveat_holds(data, stable_model):
  """Reusing layer 2's outputs once the history overflows its 20-slot window is wrong (SPEC A.6):
  the planned update is exact, the over-eager one is not, so the reuse path is really taken."""
  schema, batch = data
  model, params, start, _ = stable_model
  cached, arriving, plan = SCENARIOS['overflows_the_pyramid_tail']
  old = _history(schema, batch, cached)
  new = _later(old, arriving)
  want = start(params, _concat(schema, old, new))
  extend = jax.jit(lambda p, st, ev, kv, out: model.apply(
      {'params': p}, st, ev, kv, out, method=type(model).extend_user_state), static_argnums=(3, 4))
  v = np.asarray(want['valid'])[:, -12:]
  err = lambda got: np.max(np.abs(_valid_rows(got['kept'][2], v) - _valid_rows(want['kept'][2], v)))
  assert err(extend(params, start(params, old), new, *plan)) <= 1e-5
  assert err(extend(params, start(params, old), new, 4, 3)) > 1e-3
  with pytest.raises(ValueError, match=r'need 0 <= out_layers \(3\) <= kv_layers \(2\)'):
    extend(params, start(params, old), new, 2, 3)


def test_append_refuses_events_that_are_not_later(data, stable_model):
  schema, batch = data
  model, params, start, append = stable_model
  old = _history(schema, batch, dict(click=[3, 3, 3], cart=[1, 1, 1], order=[0, 0, 0]))
  new = _later(old, dict(click=[1, 1, 1], cart=[0, 0, 0], order=[0, 0, 0]), width=2)
  last = int(np.max(np.where(old['seq']['click']['mask'][1], old['seq']['click']['time'][1], 0)))
  new['seq']['click']['time'][1, -1] = last  # a tie with the cached history
  with pytest.raises(ValueError, match=f'row 1: a new event at time {last} is not later'):
    append(params, start(params, old), new)
  del new['seq']['cart']
  with pytest.raises(ValueError, match='appended events need seq/cart/ids, mask and time'):
    serving.plan_append(model, start(params, old), new)


@pytest.mark.parametrize('overrides,match', [
    (dict(), "s_position='none' and config.model.time_gap_buckets=0"),
    (dict(s_position='none'), 'config.model.time_gap_buckets=0'),
    (dict(STABLE, seq_merge='timestamp_agnostic'), "seq_merge='timestamp_aware'"),
    (dict(STABLE, attention='full'), "config.model.attention='causal'"),
])
def test_incremental_cache_refused_for_unstable_layouts(data, overrides, match):
  schema, _ = data
  with pytest.raises(ValueError, match=match):
    serving.incremental_user_fns(build_model(onetrans_model_config(**overrides), schema))
