"""The mechanism world: the base world untouched, each mechanism planted as documented, strong."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools

import numpy as np
import pytest

from onetrans_jax.experiments import common
from onetrans_jax import metrics
from onetrans_jax.data import mechanisms, pipeline
from onetrans_jax.data.synthetic import (MECHANISMS, TRIPLES, SyntheticConfig, SyntheticSource,
                                         synthetic_schema)
from onetrans_jax.data.types import DataConfigError
from onetrans_jax.models.onetrans import tokenizer
from tests.helpers import SMALL_WORLD, leaves, same_tree

# The sizes of onetrans_jax/experiments/common.py::mechanism_data.
STUDY = SyntheticConfig(click_len=32, cart_len=12, order_len=8, num_candidates=8,
                        min_candidates=4)
SEQS = ('click', 'cart', 'order')


def _digest(src: SyntheticSource, indices) -> str:
  h = hashlib.sha256()
  for i in indices:
    for name, v in leaves(src[i]):
      h.update(f'{name}{v.dtype}{v.shape}'.encode())
      h.update(np.ascontiguousarray(v).tobytes())
  return h.hexdigest()



def test_no_mechanisms_is_the_base_world_bit_for_bit():
  # sha256 of every array (name, dtype, shape, bytes) of these requests, computed with the
  # generator as it was before the mechanisms were added: mechanisms=() must stay that world.
  assert _digest(SyntheticSource(SMALL_WORLD), range(21)) == (
      '90df8c24251c05ecbbb4de6247ce3e531e0e61f83acc83ac47ab8c90f3ede5d8')
  assert _digest(SyntheticSource(SyntheticConfig()), [0, 1, 2, 3, 4, 123_456, 9_999_999]) == (
      'a627874e183957a3ec76af697e6187472a085b4c585f3533e323d1b9472190a3')


def test_each_mechanism_changes_the_truth_deterministically():
  base = SyntheticSource(SMALL_WORLD)
  for m in MECHANISMS:
    cfg = dataclasses.replace(SMALL_WORLD, mechanisms=(m,))
    a, b = SyntheticSource(cfg).world, SyntheticSource(cfg).world
    changed = 0
    for i in (3, 0, 7, 1, 2, 4, 5, 6, 8, 9, 10, 11):  # out of order: random access
      (ra, ta), (rb, tb) = a.request_with_terms(i), b.request_with_terms(i)
      assert same_tree(ra, rb) and set(ta) == {m} and np.array_equal(ta[m], tb[m]), (m, i)
      assert ta[m].shape == (int(ra['cand']['mask'].sum()), 2)
      changed += not np.allclose(ra['true_prob'], base[i]['true_prob'])
    assert changed >= 10, m
    assert not np.array_equal(a.request_with_terms(1)[1][m], a.request_with_terms(2)[1][m])
  # The base world's draws are left alone: users, contexts and click histories are the same.
  every = SyntheticSource(dataclasses.replace(SMALL_WORLD, mechanisms=MECHANISMS))
  for i in range(10):
    assert same_tree(every[i]['request'], base[i]['request'])
    assert same_tree(every[i]['seq']['click'], base[i]['seq']['click'])


def test_config_names_order_and_strength():
  assert SyntheticConfig(mechanisms=('recent_tail', 'interplay')).mechanisms == (
      'interplay', 'recent_tail')
  assert SyntheticConfig(mechanisms='deep_match, cross_group').mechanisms == (
      'cross_group', 'deep_match')
  with pytest.raises(ValueError, match='mechanism_strength'):
    SyntheticConfig(mechanisms=MECHANISMS, mechanism_strength=-1.0)
  # Strength 0: no planted terms (histories and candidates are still the mechanism world's).
  zero = SyntheticSource(dataclasses.replace(SMALL_WORLD, mechanisms=('heterogeneous',),
                                             mechanism_strength=0.0))
  assert same_tree(zero[3], SyntheticSource(SMALL_WORLD)[3])


def test_unknown_mechanism_is_a_config_error_through_the_pipeline():
  with pytest.raises(DataConfigError, match=r'config\.data\.mechanisms.*pyramid.*interplay'):
    pipeline.build_dataset(common.mechanism_data(mechanisms=('interplay', 'pyramid')))
  ds = pipeline.build_dataset(common.mechanism_data(num_train_requests=1000))
  assert ds.source.cfg.mechanisms == MECHANISMS and ds.source.cfg.click_len == 32
  assert ds.train_range == (0, 1000) and ds.eval_range == (1000, 1000 + 4096)


def test_interplay_interleaves_the_sequences_in_time():
  def latest_kinds(src: SyntheticSource, n: int) -> collections.Counter:
    kinds = collections.Counter()
    for i in range(n):
      r = src[i]
      last = []
      for k, name in enumerate(SEQS):
        s = r['seq'][name]
        t = s['time'][s['mask']].astype(np.int64)
        assert np.all(np.diff(t) > 0) and np.all(t < int(r['request']['time'])), (i, name)
        if len(t):
          last.append((t[-1], k))
      kinds[max(last)[1]] += 1
    return kinds

  n = 400
  planted = latest_kinds(SyntheticSource(dataclasses.replace(STUDY, mechanisms=('interplay',))), n)
  assert all(planted[k] > 0.15 * n for k in range(3)), planted
  assert latest_kinds(SyntheticSource(STUDY), n)[0] > 0.8 * n  # base: almost always a click


def test_interplay_term_follows_the_merged_timeline():
  """The term as documented, recomputed from the batch by a plain (slow) merge of all events."""
  w = SyntheticSource(dataclasses.replace(STUDY, mechanisms=('interplay',))).world
  weights = {0: (1.2, 0.7), 1: (2.4, 2.4), 2: (-1.8, -2.4)}  # click, cart, order events
  for i in range(30):
    r, t = w.request_with_terms(i)
    events = sorted((int(r['seq'][n]['time'][j]), k, int(r['seq'][n]['ids'][j, 1]))
                    for k, n in enumerate(SEQS) for j in np.flatnonzero(r['seq'][n]['mask']))
    cats = r['cand']['cat'][r['cand']['mask'], 1]
    expect = np.zeros((len(cats), 2))
    for (_, kind, cat), half in zip(events[::-1][:2], (1.0, 0.5)):
      expect += half * (cats == cat)[:, None] * np.array(weights[kind])
    np.testing.assert_allclose(t['interplay'], expect, err_msg=str(i))


def test_cross_group_triples_straddle_the_default_groups():
  schema = synthetic_schema(SyntheticConfig())
  for num_tokens in (8, 12):
    group = {f: g for g, names in enumerate(tokenizer.default_groups(schema, num_tokens))
             for f in names}
    for triple in TRIPLES:
      assert len({group[f] for f in triple}) == 3, (num_tokens, triple)
  # The term is the named features' tables, which have no main effects or 2-way margins.
  w = SyntheticSource(dataclasses.replace(SMALL_WORLD, mechanisms=('cross_group',))).world
  req = [f.name for f in schema.request_categorical]
  cand = [f.name for f in schema.candidate_categorical]
  for table in (c[-1] for c in w.mech.cross):
    real = table[1:, 1:, 1:]
    for axes in ((1, 2), (0, 2), (0, 1), (0,), (1,), (2,)):
      np.testing.assert_allclose(real.mean(axis=axes), 0.0, atol=1e-12)
  for i in range(5):
    r, t = w.request_with_terms(i)
    rc, cc = r['request']['cat'], r['cand']['cat'][r['cand']['mask']]
    expect = sum(c[-1][rc[req.index(a)], rc[req.index(b)], cc[:, cand.index(f)]]
                 for (a, b, f), c in zip(TRIPLES, w.mech.cross))
    np.testing.assert_allclose(t['cross_group'], expect)


def test_deep_match_candidates_meet_the_older_history():
  w = SyntheticSource(dataclasses.replace(STUDY, mechanisms=('deep_match',))).world
  clicked_before = total = 0
  for i in range(200):
    r, t = w.request_with_terms(i)
    s = r['seq']['click']
    old = s['ids'][s['mask'], 0][:int(s['mask'].sum()) // 2]
    cand = r['cand']['cat'][r['cand']['mask'], 0]
    clicked_before += np.isin(cand, old).sum()
    total += len(cand)
  assert clicked_before > 0.12 * total  # 15% re-target an older click (and a few by chance)


def test_soft_auc_is_the_ratio_of_expected_pair_counts():
  rng = np.random.default_rng(0)
  p, s, w = rng.uniform(0.1, 0.9, 4), np.array([0.3, 0.1, 0.3, 0.8]), rng.uniform(0.5, 2, 4)
  num = den = 0.0
  for y in itertools.product((0, 1), repeat=4):  # every labelling, by its probability
    y = np.array(y)
    prob = np.prod(np.where(y == 1, p, 1 - p))
    if 0 < y.sum() < 4:
      pairs = np.sum(w[y == 1]) * np.sum(w[y == 0])
      num += prob * metrics.auc(s, y, w) * pairs
      den += prob * pairs
  assert mechanisms.soft_auc(s, p, w) == pytest.approx(num / den, abs=1e-12)


def test_every_mechanism_carries_label_signal():
  row = mechanisms.oracle_row(dataclasses.replace(STUDY, mechanisms=MECHANISMS), 300)
  # Measured on these 300 requests: click drops 0.022-0.029, cart drops 0.018-0.043.
  for m in MECHANISMS:
    assert row['drop'][m][0] > 0.01 and row['drop'][m][1] > 0.005, (m, row['drop'][m])
  assert 0.1 < row['click_rate'] < 0.3 and 0.15 < row['cart_given_click_rate'] < 0.4, row
  base = mechanisms.oracle_row(STUDY, 300)
  assert base['drop'] == {} and row['click_auc'] > base['click_auc'] + 0.03


def test_decompose_recovers_how_much_of_each_term_a_score_holds():
  """The oracle's own logit has every coefficient 1; an affine copy has them all equal to its
  slope; a score blind to one term has that term's coefficient 0 and the rest's unchanged."""
  rng = np.random.default_rng(0)
  n = 2000
  terms = {'interplay': rng.normal(size=n), 'cross_group': 0.5 * rng.normal(size=n)}
  logit = rng.normal(size=n) - 1.5 + terms['interplay'] + terms['cross_group']
  oracle = mechanisms.decompose(logit, logit, terms)
  assert oracle['rest'] == pytest.approx(1.0) and oracle['r2'] == pytest.approx(1.0)
  assert oracle['terms'] == pytest.approx({'interplay': 1.0, 'cross_group': 1.0})
  scaled = mechanisms.decompose(0.2 * logit + 3.0, logit, terms)
  assert scaled['rest'] == pytest.approx(0.2)
  assert scaled['terms'] == pytest.approx({'interplay': 0.2, 'cross_group': 0.2})
  blind = mechanisms.decompose(logit - terms['cross_group'], logit, terms)
  assert blind['terms']['cross_group'] == pytest.approx(0.0, abs=1e-9)
  assert blind['terms']['interplay'] == pytest.approx(1.0) and blind['rest'] == pytest.approx(1.0)
  noisy = mechanisms.decompose(logit + rng.normal(size=n), logit, terms)
  assert 0.3 < noisy['r2'] < 0.9


def test_between_within_finds_the_part_a_score_gets_wrong():
  """A score with the truth's within-request order but noisy request means loses only across
  requests: making that part true recovers the oracle AUC, making the within part true does not;
  and the converse."""
  rng = np.random.default_rng(1)
  request = np.repeat(np.arange(400), 6)
  logit = rng.normal(size=400)[request] * 1.5 + rng.normal(size=len(request)) * 2.0 - 1.5
  prob = 1 / (1 + np.exp(-logit))
  oracle = mechanisms.soft_auc(logit, prob)
  _, inv = np.unique(request, return_inverse=True)
  t_mean = (np.bincount(inv, logit) / np.bincount(inv))[inv]
  bad_across = (logit - t_mean) + rng.normal(size=400)[request] * 1.5
  r = mechanisms.between_within(bad_across, logit, prob, request)
  assert r['corr_within'] == pytest.approx(1.0) and r['corr_between'] < 0.3
  assert r['auc_true_between'] == pytest.approx(oracle, abs=1e-9)
  assert r['auc_true_within'] < oracle - 0.02
  noise = rng.normal(size=len(request)) * 2.0
  bad_within = t_mean + noise - (np.bincount(inv, noise) / np.bincount(inv))[inv]
  r = mechanisms.between_within(bad_within, logit, prob, request)
  assert r['corr_between'] == pytest.approx(1.0) and r['corr_within'] < 0.3
  assert r['auc_true_within'] == pytest.approx(oracle, abs=1e-9)
  assert r['auc_true_between'] < oracle - 0.02


def test_capture_reads_a_trained_runs_validation_predictions(tmp_path):
  """End to end on a tiny trained run: one coefficient per planted term, over exactly the
  validation split's real impressions; a run off the mechanism world is refused by name."""
  from onetrans_jax.errors import ConfigError
  from onetrans_jax.train import train_and_evaluate
  from tests.helpers import small_config
  c = small_config()
  c.data.mechanisms = ('interplay', 'cross_group')
  c.data.mechanism_strength = 1.0
  c.data.valid_fraction = 0.002
  c.train.total_steps = 4
  c.train.eval_every = 4
  workdir = str(tmp_path / 'run')
  train_and_evaluate(c, workdir)
  row = mechanisms.capture(workdir)
  ds = pipeline.build_dataset(c.data)
  a, b = ds.valid_range
  real = sum(int(np.asarray(ds.source[i]['cand']['mask']).sum()) for i in range(a, b))
  assert row['requests'] == [a, b] and row['impressions'] == real and row['step'] == 4
  assert set(row['terms']) == {'interplay', 'cross_group'}
  assert all(np.isfinite(v) for v in row['terms'].values()) and 0.0 <= row['r2'] <= 1.0
  assert 0.85 < row['oracle_auc'] < 1.0 and 0.3 < row['auc'] < row['oracle_auc']
  assert max(row['auc_true_between'], row['auc_true_within']) <= row['oracle_auc']
  assert mechanisms.capture_table([row]).splitlines()[2].startswith('| run | 4 |')
  plain = small_config()
  plain.data.valid_fraction = 0.002
  plain.train.total_steps = 2
  plain.train.eval_every = 2
  train_and_evaluate(plain, str(tmp_path / 'plain'))
  with pytest.raises(ConfigError, match='capture needs a run on the mechanism world'):
    mechanisms.capture(str(tmp_path / 'plain'))
