"""The training program end to end: resume equivalence, learning, next-batch mode, NaN guard."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from onetrans_jax.errors import ConfigError, NonFiniteLossError
from onetrans_jax.train import train_and_evaluate


def _params(workdir: str):
  """The saved parameters of the latest checkpoint, as numpy."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_handlers={'state': ocp.StandardCheckpointHandler()})
  state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, state['state']['params'])


def _assert_same_run(a: dict, b: dict, dir_a: str, dir_b: str):
  assert a['step'] == b['step']
  pa, pb = _params(dir_a), _params(dir_b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), pa, pb)
  for task, ma in a['final'].items():
    for k, v in ma.items():
      np.testing.assert_allclose(v, b['final'][task][k], rtol=1e-6, err_msg=f'{task}/{k}')


# next_batch (the per-step online eval) only in the opt-in run: holdout exercises the same resume.
@pytest.mark.parametrize('mode', ['holdout', pytest.param('next_batch', marks=pytest.mark.slow)])
def test_resume_equals_straight_run(config, tmp_path, mode):
  config.eval.mode = mode
  config.train.total_steps = 8
  config.train.checkpoint_every = 0  # only the forced save at the stop and at the end
  straight = train_and_evaluate(config, str(tmp_path / 'straight'))
  first = train_and_evaluate(config, str(tmp_path / 'resumed'), stop_at_step=4)
  assert first['step'] == 4 and 'final' not in first
  # Mid-"day" stop (day_steps=3): the next-batch buffers must survive the restart too.
  resumed = train_and_evaluate(config, str(tmp_path / 'resumed'))
  _assert_same_run(straight, resumed, str(tmp_path / 'straight'), str(tmp_path / 'resumed'))
  if mode == 'next_batch':
    assert len(straight['daily']) == 3  # days end at steps 3, 6 and a partial day at 8
    assert straight['daily'] == resumed['daily']


def test_same_seed_same_metrics_other_seed_other_params(config, tmp_path):
  a = train_and_evaluate(config, str(tmp_path / 'a'))
  b = train_and_evaluate(config, str(tmp_path / 'b'))
  assert a['final'] == b['final']
  config.seed = 1
  train_and_evaluate(config, str(tmp_path / 'c'))
  assert not np.allclose(_params(str(tmp_path / 'a'))['task_logits']['kernel'],
                         _params(str(tmp_path / 'c'))['task_logits']['kernel'])


def test_outputs_written(config, tmp_path):
  result = train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  splits = [r['split'] for r in records]
  assert splits.count('train') == 2 and splits[-1] == 'final'
  assert {'loss', 'examples_per_s', 'eta_s', 'loss_click'} <= set(records[0])
  assert 'click/oracle_auc' in records[-1]
  final = json.load(open(tmp_path / 'final_metrics.json'))
  assert final['metrics']['click']['auc'] == pytest.approx(result['final']['click']['auc'])
  assert final['params']['dense'] > 0 and final['params']['sparse'] > 0
  assert os.listdir(tmp_path / 'tensorboard')
  assert 'oracle AUC' in result['table'] and 'click' in result['table']
  assert not (tmp_path / 'learning_curves.png').exists()   # train.plot_curves is off
  # Two log intervals: the second one's seconds per step (the first holds the compile).
  assert 0 < result['train_step_seconds'] < 60


def test_learning_curves_png_on_request(config, tmp_path):
  """train.plot_curves draws the run's train loss and periodic hold-out AUC (off, the default,
  no file: test_outputs_written); it is left out of the fingerprint (it changes no result)."""
  from onetrans_jax import records
  config.train.total_steps, config.train.log_every, config.eval.every_steps = 4, 1, 2
  config.train.plot_curves = True
  train_and_evaluate(config, str(tmp_path / 'on'))
  png = (tmp_path / 'on' / 'learning_curves.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
  evals = [json.loads(l) for l in open(tmp_path / 'on' / 'metrics.jsonl')]
  # What the AUC panels draw: the periodic evaluation (step 4's is the final one).
  assert [(r['step'], r['split']) for r in evals if r['split'] in ('eval', 'final')] == [
      (2, 'eval'), (4, 'final')]
  off = config.copy_and_resolve_references()
  off.train.plot_curves = False
  assert records.fingerprint(config)[0] == records.fingerprint(off)[0]


def test_nonfinite_loss_names_the_step(config, tmp_path):
  config.optimizer.dense.name = 'sgd'
  config.optimizer.dense.learning_rate = 1e30
  config.optimizer.clip_global_norm = None
  with pytest.raises(NonFiniteLossError, match=r'NaN/inf at step \d+'):
    train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints' / '4'), 'a NaN state must not be saved'


def test_inconsistent_configs(config, tmp_path):
  config.eval.mode = 'daily'
  with pytest.raises(ConfigError, match=r"config.eval.mode='daily'"):
    train_and_evaluate(config, str(tmp_path))
  config.eval.mode = 'next_batch'
  config.train.total_steps = 10_000
  with pytest.raises(ConfigError, match='next-batch evaluation needs unseen data'):
    train_and_evaluate(config, str(tmp_path))
  config.eval.mode = 'holdout'
  config.data.batch_size = 0
  with pytest.raises(ConfigError, match='config.data.batch_size=0'):
    train_and_evaluate(config, str(tmp_path))
  config.data.batch_size = 16
  config.loss.mode = 'focal'
  with pytest.raises(ConfigError, match="config.loss.mode='focal'"):
    train_and_evaluate(config, str(tmp_path))
  config.loss.mode = 'esmm'
  config.loss.task_weights = (1.0, 2.0)
  with pytest.raises(ConfigError, match='task_weights has 2 entries for 3 tasks'):
    train_and_evaluate(config, str(tmp_path))


def test_short_run_learns(config, tmp_path):
  """Eval AUC well above chance, logloss below the constant predictor, AUC below the oracle."""
  config.data.batch_size = 64
  config.data.num_eval_requests = 2048
  config.train.total_steps = 300
  config.train.log_every = 100
  config.train.checkpoint_every = 0
  config.model.hidden = (64, 32)
  final = train_and_evaluate(config, str(tmp_path))['final']
  click = final['click']
  assert click['auc'] > 0.65, final
  assert click['auc'] < click['oracle_auc']
  assert click['logloss'] < click['const_logloss'] - 0.02
  assert click['uauc'] > 0.6 and click['uauc'] < click['oracle_uauc'] + 0.02
  assert final['cart']['auc'] > 0.55
