"""The papers' claims a study judges (onetrans_jax/claims.py): each relation's rule on paired
per-seed differences, undecided without enough seeds, and bad claims named before any run."""

from __future__ import annotations

import pytest

from onetrans_jax import claims
from onetrans_jax.errors import ConfigError

NAMES = ['ref', 'worse', 'same', 'better', 'worst']
TASKS = ['click', 'cart']


def _records(offset: float, jitter: float = 0.0, seeds=(0, 1, 2, 3, 4)) -> list[dict]:
  """Per-seed records whose AUCs sit ``offset`` from a seed-dependent base (shared by every row:
  the pairing cancels it), with a little per-row noise ``jitter``."""
  return [{'seed': s, 'metrics': {t: {'auc': (0.7 + 0.01 * s + offset
                                              + jitter * ((-1) ** s) * (s % 3)),
                                      'uauc': 0.6 + offset}
                                  for t in TASKS}} for s in seeds]


RUNS = {'ref': _records(0.0), 'worse': _records(-0.010, 0.001), 'same': _records(0.0, 0.002),
        'better': _records(+0.010, 0.001), 'worst': _records(-0.030, 0.001)}


def _judge(*spec):
  return claims.judge(claims.validate([spec], NAMES, TASKS, 'ref'), RUNS, 'ref')[0]


def test_each_relation_is_judged_by_its_rule():
  keys = ('click/auc', 'cart/auc')
  assert _judge('w', 'worse', 'below', ('ref',), keys)['reproduced'] is True
  assert _judge('s', 'same', 'below', ('ref',), keys)['reproduced'] is False
  assert _judge('s', 'same', 'same', ('ref',), keys)['reproduced'] is True
  assert _judge('w', 'worse', 'same', ('ref',), keys)['reproduced'] is False
  assert _judge('b', 'better', 'above', ('ref', 'worse'), keys)['reproduced'] is True
  assert _judge('b', 'better', 'at_least', ('ref', 'same', 'worse'), keys)['reproduced'] is True
  assert _judge('w', 'worse', 'at_least', ('ref',), keys)['reproduced'] is False
  largest = _judge('l', 'worst', 'largest_drop', ('worse', 'same', 'better'), keys)
  assert largest['reproduced'] is True
  # Mean difference: the offset plus the jitter's mean over seeds 0-4, 0.4 x jitter.
  assert largest['evidence'][0].startswith('click/auc: worst -0.0296 [')
  assert 'the lowest other row, worse, -0.0096 [' in largest['evidence'][0]
  assert _judge('l', 'worse', 'largest_drop', ('worst',), keys)['reproduced'] is False
  got = _judge('w', 'worse', 'below', ('ref',), ('click/auc',))
  assert got['evidence'][0].startswith('click/auc vs ref: -0.0096 [')
  assert got['evidence'][0].endswith('over 5 seeds')
  assert got['cells'][0]['difference']['mean'] == pytest.approx(-0.010 + 0.4 * 0.001)


def test_a_claim_without_enough_seeds_is_undecided_not_reproduced():
  runs = {'ref': _records(0.0, seeds=(0,)), 'worse': _records(-0.01, seeds=(0,))}
  spec = claims.validate([('w', 'worse', 'below', ('ref',), ('click/auc',))], ['ref', 'worse'],
                         TASKS, 'ref')
  assert claims.judge(spec, runs, 'ref')[0]['reproduced'] is None
  # at_least reads the point estimate: one seed decides it.
  spec = claims.validate([('w', 'worse', 'at_least', ('ref',), ('click/auc',))],
                         ['ref', 'worse'], TASKS, 'ref')
  assert claims.judge(spec, runs, 'ref')[0]['reproduced'] is False
  # No shared seed at all: undecided.
  runs['worse'] = _records(-0.01, seeds=(7, 8))
  assert claims.judge(spec, runs, 'ref')[0]['reproduced'] is None
  text = '\n'.join(claims.markdown(claims.judge(spec, runs, 'ref')))
  assert "## The paper's claims" in text
  assert '**w** (rule: every mean paired difference is >= 0): undecided.' in text


@pytest.mark.parametrize('spec, message', [
    (('t', 'nope', 'below', ('ref',), ('click/auc',)), r"rows \['nope'\] are not variants"),
    (('t', 'worse', 'lower', ('ref',), ('click/auc',)), r"relation 'lower' is not one of"),
    (('t', 'worse', 'below', ('ref',), ('order/auc',)), r"key 'order/auc' is not <task>/"),
    (('t', 'worse', 'below', ('ref',), ()), r'give at least one key'),
    (('t', 'worse', 'below', (), ('click/auc',)), r'are not variants'),
    (('t', 'worse', 'largest_drop', ('ref',), ('click/auc',)), r'leave it out of row and others'),
    (('t', 'worse', 'below'), r'give \(text, row, relation, others, keys\)'),
])
def test_a_bad_claim_names_its_entry(spec, message):
  with pytest.raises(ConfigError, match=r'config.sweep.claims\[0\].*' + message):
    claims.validate([spec], NAMES, TASKS, 'ref')


def test_the_studies_judge_the_issues_targets():
  """Issue 20's and 21's "done means", as the experiment files state them."""
  from onetrans_jax.experiments import (movielens_study, onerank_ablation, onerank_main,
                                        onetrans_rq2_ablation, rq1_baselines)
  rq2 = {c[1]: c[2] for c in onetrans_rq2_ablation.get_config('mechanisms').sweep.claims}
  assert rq2 == {'group-wise tokenizer': 'below', 'timestamp-agnostic': 'below',
                 'timestamp-agnostic, no [SEP]': 'below', 'shared params for all tokens': 'below',
                 'full attention': 'same', 'no pyramid': 'same'}
  (rq1,) = rq1_baselines.get_config('mechanisms').sweep.claims
  assert rq1[1:3] == ('OneTrans_S', 'at_least') and len(rq1[3]) == 7
  (ml,) = movielens_study.get_config('100k').sweep.claims
  assert set(ml[3]) == {'DCNv2 + DIN', 'item positive rate', 'logistic regression', 'LightGBM'}
  assert set(ml[4]) == {'like/auc', 'like/uauc', 'love/auc', 'love/uauc'}
  assert movielens_study.get_config('100k_tune').sweep.claims == ()
  (main,) = onerank_main.get_config('mechanisms').sweep.claims
  assert main[1:4] == ('OneRank', 'at_least', ('OneTrans + PLE',)) and len(main[4]) == 6
  drop, tokens = onerank_ablation.get_config('mechanisms').sweep.claims
  assert drop[2] == 'largest_drop' and len(drop[3]) == 14
  assert tokens[1:4] == ('one shared token (no task tokens)', 'below', ('OneRank',))
