"""Validation split, periodic validation, early stopping and the best-step checkpoint.

The hold-out is scored with the weights of the step that validated best, so these tests pin down
each link: the split never touches the hold-out, the stopping rule, the kept checkpoint is that
step's state, the hold-out number is that step's, and a resume makes the same choices.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.train import EarlyStopping, train_and_evaluate
from tests.helpers import small_config


def _params(directory: str, step: int | None = None):
  """The parameters saved under ``directory`` at ``step`` (default: its latest), as numpy."""
  mngr = ocp.CheckpointManager(os.path.abspath(directory),
                               item_handlers={'state': ocp.StandardCheckpointHandler()})
  step = mngr.latest_step() if step is None else step
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return jax.tree.map(np.asarray, state['state']['params'])


def _assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _validating(config, every: int = 2, fraction: float = 0.002):
  """``config`` scoring 100 validation requests (0.002 of 50k) every ``every`` steps."""
  config.data.valid_fraction = fraction
  config.train.eval_every = every
  return config


def _records(workdir, split: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


# ---------------------------------------------------------------------------------- the split
def test_split_is_chronological_disjoint_and_leaves_the_holdout():
  c = small_config()
  plain = pipeline.build_dataset(c.data)
  assert plain.valid_range is None  # default: no split, ranges untouched
  c.data.valid_fraction = 0.1
  ds = pipeline.build_dataset(c.data)
  (t0, t1), (v0, v1), (e0, e1) = ds.train_range, ds.valid_range, ds.eval_range
  assert (t0, v1) == plain.train_range  # carved from the training period only
  assert ds.eval_range == plain.eval_range  # the hold-out is not touched
  assert t0 < t1 == v0 < v1 == e0 < e1  # disjoint, and in time order: train, valid, hold-out
  assert v1 - v0 == 5_000
  # Request time grows with the index: every validation request follows every training one.
  times = [int(ds.source[i]['request']['time']) for i in (t1 - 1, v0, v1 - 1, e0)]
  assert times == sorted(times)


@pytest.mark.parametrize('fraction, counts', [
    (1e-6, '0 for validation and 50000 for training'),
    (0.999999, '50000 for validation and 0 for training'),
])
def test_split_that_empties_a_side_is_a_config_error(fraction, counts):
  c = small_config()
  c.data.valid_fraction = fraction
  with pytest.raises(ConfigError, match=f'config.data.valid_fraction={fraction} .*{counts}'):
    pipeline.build_dataset(c.data)
  c.data.valid_fraction = -0.1
  with pytest.raises(ConfigError, match=r'config.data.valid_fraction must lie in \[0, 1\)'):
    pipeline.build_dataset(c.data)


# ---------------------------------------------------------------------------------- the rule
def test_early_stopping_rule_max_with_min_delta():
  rule = EarlyStopping(mode='max', patience=2, min_delta=0.005)
  curve = [0.50, 0.60, 0.60, 0.61, 0.605, 0.60, 0.70]
  improved, stops = [], []
  for step, value in enumerate(curve, start=1):
    improved.append(rule.update(step * 10, value))
    stops.append(rule.stop)
    if rule.stop:
      break
  # 0.60 -> 0.60 is no improvement; 0.61 beats 0.60 by more than 0.005; then two misses: stop.
  assert improved == [True, True, False, True, False, False]
  assert stops == [False] * 5 + [True]
  assert (rule.best, rule.best_step, rule.since_best) == (0.61, 40, 2)


def test_early_stopping_rule_min_nan_and_exact_delta():
  rule = EarlyStopping(mode='min', patience=3, min_delta=0.1)
  assert not rule.update(1, math.nan) and rule.best is None  # NaN never improves
  assert rule.update(2, 0.5)
  assert not rule.update(3, 0.4)  # exactly min_delta better: not more than it
  assert rule.update(4, 0.39) and rule.best_step == 4 and rule.since_best == 0
  for step in (5, 6):
    assert not rule.update(step, 0.6) and not rule.stop
  assert not rule.update(7, math.nan) and rule.stop
  restored = EarlyStopping(mode='min', patience=3, min_delta=0.1)
  restored.load(json.loads(json.dumps(rule.state())))  # the checkpoint's JSON round trip
  assert restored == rule


def test_tracking_only_never_stops():
  rule = EarlyStopping(mode='max', patience=None)
  for step in range(1, 50):
    rule.update(step, 1.0 / step)
  assert not rule.stop and rule.best_step == 1


# ---------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize('change, field', [
    (dict(eval_every=-1), r'config.train.eval_every must be >= 0'),
    (dict(eval_every=2, valid_fraction=0.0), r'config.train.eval_every=2 .*valid_fraction=0.0'),
    (dict(eval_every=2, mode='next_batch'), r"config.train.eval_every=2 needs config.eval.mode"),
    (dict(eval_every=0, metric='valid/click/auc'),
     r"config.train.early_stopping.metric='valid/click/auc' needs validation"),
    (dict(valid_fraction=0.0, eval_every=0, metric='valid/click/auc'),
     r"config.train.early_stopping.metric='valid/click/auc' needs validation"),
    (dict(metric='valid/clicks/auc'),
     r"config.train.early_stopping.metric='valid/clicks/auc'.*\['click', 'cart', 'order'\]"
     r".*\['auc', 'uauc', 'logloss'\]"),
    (dict(metric='valid/click/f1'), r"config.train.early_stopping.metric='valid/click/f1'"),
    (dict(metric='click/auc'), r"config.train.early_stopping.metric='click/auc'"),
    (dict(metric='valid/click/auc', patience=0), r'config.train.early_stopping.patience'),
    (dict(metric='valid/click/auc', es_mode='up'), r"config.train.early_stopping.mode='up'"),
    (dict(metric='valid/click/logloss', es_mode='max'),
     r"config.train.early_stopping.mode='max' .*use mode='min'"),
    (dict(metric='valid/click/auc', min_delta=-0.1), r'config.train.early_stopping.min_delta'),
])
def test_bad_validation_config_names_the_field(tmp_path, change, field):
  c = _validating(small_config())
  c.data.valid_fraction = change.pop('valid_fraction', c.data.valid_fraction)
  c.train.eval_every = change.pop('eval_every', c.train.eval_every)
  c.eval.mode = change.pop('mode', c.eval.mode)
  c.train.early_stopping.mode = change.pop('es_mode', None)
  c.train.early_stopping.update(change)
  with pytest.raises(ConfigError, match=field) as e:
    train_and_evaluate(c, str(tmp_path))
  assert '\n' not in str(e.value)
  assert not os.path.exists(tmp_path / 'checkpoints')


# ---------------------------------------------------------------------------------- end to end
def test_early_stop_scores_the_holdout_with_the_best_step(tmp_path):
  """min_delta=1 (AUC can never improve by more): the first evaluation stays best, and with
  patience 2 the run stops at the third. Its hold-out must be that of a 2-step run."""
  c = _validating(small_config())
  c.train.total_steps = 30
  c.train.checkpoint_every = 0
  c.train.early_stopping.update(dict(metric='valid/click/auc', patience=2, min_delta=1.0))
  run = str(tmp_path / 'early')
  result = train_and_evaluate(c, run)
  assert (result['step'], result['best_step'], result['stopped_at']) == (6, 2, 6)
  assert result['early_stopped']
  assert [r['step'] for r in _records(run, 'valid')] == [2, 4, 6]
  assert [r['step'] for r in _records(run, 'train')] == [4]  # stopped at 6: nothing past it
  valid_at_2 = _records(run, 'valid')[0]
  assert result['best_valid']['click']['auc'] == pytest.approx(valid_at_2['click/auc'])
  saved = json.load(open(os.path.join(run, 'final_metrics.json'), encoding='utf-8'))
  assert (saved['best_step'], saved['stopped_at'], saved['step']) == (2, 6, 6)
  assert saved['selected_by'] == {'metric': 'valid/click/auc', 'mode': 'max',
                                  'value': pytest.approx(valid_at_2['click/auc'])}
  assert 'of step 2, the best valid/click/auc' in result['table']
  assert os.listdir(os.path.join(run, 'best_checkpoint')) == ['2']

  # The same data and seed trained for exactly 2 steps, no validation: the same weights and the
  # same hold-out metrics.
  c2 = small_config()
  c2.data.valid_fraction = c.data.valid_fraction
  c2.train.total_steps = 2
  c2.train.checkpoint_every = 0
  short = train_and_evaluate(c2, str(tmp_path / 'short'))
  _assert_same_params(_params(os.path.join(run, 'best_checkpoint'), 2),
                      _params(str(tmp_path / 'short' / 'checkpoints')))
  assert result['final'] == short['final']

  # Re-running the finished, early-stopped run resumes into its final report, not more training.
  again = train_and_evaluate(c, run)
  assert (again['step'], again['best_step']) == (6, 2) and again['final'] == result['final']


def test_best_checkpoint_is_the_best_steps_state_and_resume_is_exact(tmp_path):
  """Validation every 3 steps, tracking the best click AUC; interrupted at step 5 (between two
  evaluations), resumed: the same choices, the same best weights, the same final metrics."""
  c = _validating(small_config(), every=3)
  c.train.total_steps = 12
  c.train.checkpoint_every = 0
  straight = train_and_evaluate(c, str(tmp_path / 'straight'))
  first = train_and_evaluate(c, str(tmp_path / 'resumed'), stop_at_step=5)
  assert first['step'] == 5 and 'final' not in first
  resumed = train_and_evaluate(c, str(tmp_path / 'resumed'))
  for key in ('step', 'best_step', 'stopped_at', 'early_stopped', 'best_valid', 'final',
              'valid_curve'):
    assert straight[key] == resumed[key], key
  assert not straight['early_stopped'] and straight['stopped_at'] == 12

  valid = _records(str(tmp_path / 'straight'), 'valid')
  assert [r['step'] for r in valid] == [3, 6, 9, 12]
  aucs = [r['click/auc'] for r in valid]
  # The curve the run's record carries is the logged one (the resumed run's included).
  assert [p['step'] for p in resumed['valid_curve']] == [3, 6, 9, 12]
  assert [p['click']['auc'] for p in resumed['valid_curve']] == pytest.approx(aucs)
  assert straight['best_step'] == valid[int(np.argmax(aucs))]['step']
  best = straight['best_step']
  best_params = _params(str(tmp_path / 'straight' / 'best_checkpoint'), best)
  _assert_same_params(best_params, _params(str(tmp_path / 'resumed' / 'best_checkpoint'), best))
  # The kept state is that step's: a run of the same data stopped at the best step holds it.
  train_and_evaluate(c, str(tmp_path / 'to_best'), stop_at_step=best)
  _assert_same_params(best_params, _params(str(tmp_path / 'to_best' / 'checkpoints')))


def test_resume_after_a_crash_redoes_best_checkpoints_newer_than_the_latest(tmp_path):
  """A crash after a best-step save but before the next resumable checkpoint: the resume drops
  the orphaned best state, redoes it from its own weights and ends as the uninterrupted run."""
  c = _validating(small_config())
  c.train.total_steps = 12
  c.train.checkpoint_every = 4
  c.train.early_stopping.update(dict(metric='valid/click/logloss', patience=100))
  straight = train_and_evaluate(c, str(tmp_path / 'straight'))
  assert straight['selected_by']['mode'] == 'min' and not straight['early_stopped']
  crashed = tmp_path / 'crashed'
  train_and_evaluate(c, str(crashed), stop_at_step=8)
  shutil.rmtree(crashed / 'checkpoints' / '8')  # lost: resume from step 4
  orphans = [int(s) for s in os.listdir(crashed / 'best_checkpoint')]
  assert orphans and max(orphans) > 4, 'the scenario needs a best state newer than step 4'
  resumed = train_and_evaluate(c, str(crashed))
  for key in ('step', 'best_step', 'best_valid', 'selected_by', 'final'):
    assert straight[key] == resumed[key], key
  best = straight['best_step']
  _assert_same_params(_params(str(tmp_path / 'straight' / 'best_checkpoint'), best),
                      _params(str(crashed / 'best_checkpoint'), best))
