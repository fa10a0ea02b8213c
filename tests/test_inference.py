"""`onetrans eval`, `predict` and `export` on a trained workdir (onetrans_jax/inference.py,
saved_run.py): the run's best step, its own table again, every candidate scored, the exported
model scoring as the trained one, and one-line errors.

One tiny synthetic run (the tests' pooled-MLP config, 8 steps, validated every 4) is trained once
for the module; each test works on it or on a copy.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import pyarrow.csv as pa_csv
import pytest

from onetrans_jax import inference, saved_run
from onetrans_jax.data import pipeline
from onetrans_jax.serving_runtime import load_scorer
from onetrans_jax.train import train_and_evaluate
from tests.helpers import small_config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('inference') / 'run')
  c = small_config()
  c.data.valid_fraction = 0.002  # the 100 latest of the 50,000 training requests
  c.train.eval_every = 4
  c.train.total_steps = 8
  c.eval.num_batches = 4         # as train scored: eval's default
  result = train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    final = json.load(f)
  assert final['best_step'] in (4, 8)
  return workdir, result, final


def _same_metrics(a, b) -> None:
  assert a.keys() == b.keys()
  for task in a:
    for k, v in a[task].items():
      assert (v is None and b[task][k] is None) or math.isclose(v, b[task][k], rel_tol=1e-9), (
          task, k, v, b[task][k])


def test_eval_scores_the_best_step_and_reproduces_trains_tables(run, capsys):
  workdir, _, final = run
  inference.cli_eval(['onetrans eval', '--workdir', workdir, '--split', 'holdout'])
  out = capsys.readouterr().out
  assert (f'scoring with the best-validating step {final["best_step"]}' in out and
          f'holdout evaluation of step {final["best_step"]}, the best-validating checkpoint'
          in out)
  with open(os.path.join(workdir, 'eval_holdout.json')) as f:
    saved = json.load(f)
  assert (saved['step'], saved['checkpoint'], saved['split']) == (
      final['best_step'], 'best', 'holdout')
  _same_metrics(saved['metrics'], final['metrics'])  # the run's own final table
  inference.cli_eval(['onetrans eval', '--workdir', workdir, '--split', 'valid'])
  with open(os.path.join(workdir, 'eval_valid.json')) as f:
    _same_metrics(json.load(f)['metrics'], final['best_valid'])  # what chose the step


def test_without_a_best_checkpoint_the_latest_is_scored_and_said(run, tmp_path, capsys):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(run[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'best_checkpoint'))
  inference.cli_eval(['onetrans eval', '--workdir', workdir])
  assert ('scoring with the latest step 8: the run did not validate (config.train.eval_every=0), '
          'so no best checkpoint') in capsys.readouterr().out
  # A run without a validation split has no 'valid' to score.
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  config['data']['valid_fraction'] = 0.0
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(SystemExit) as e:
    inference.cli_eval(['onetrans eval', '--workdir', workdir, '--split', 'valid'])
  assert e.value.code == 2
  assert capsys.readouterr().err == (
      'error: this run has no validation split (config.data.valid_fraction=0.0); choose train or '
      'holdout\n')


def test_eval_errors_are_one_line(run, tmp_path, capsys):
  missing = str(tmp_path / 'nope')
  cases = [
      (['--workdir', missing], f'error: workdir: --workdir {missing} does not exist; give the '
                               'directory a training run wrote (onetrans train --workdir ...)\n'),
      (['--workdir', str(tmp_path)], f'error: workdir: {tmp_path} holds no config.json, so it '
                                     "is not a training run's workdir (onetrans train writes one "
                                     'when it starts); check --workdir\n')]
  empty = tmp_path / 'empty'
  empty.mkdir()
  shutil.copy(os.path.join(run[0], 'config.json'), empty / 'config.json')
  cases.append((['--workdir', str(empty)],
                f'error: workdir: {empty} holds no checkpoint ({empty}/checkpoints is empty or '
                'missing): the run stopped before saving one; train it (the same command '
                'resumes)\n'))
  for args, message in cases:
    with pytest.raises(SystemExit) as e:
      inference.cli_eval(['onetrans eval', *args])
    assert e.value.code == 2 and capsys.readouterr().err == message
  with pytest.raises(SystemExit) as e:
    inference.cli_eval(['onetrans eval', '--workdir', run[0], '--split', 'test'])
  assert e.value.code == 2
  err = capsys.readouterr().err  # argparse's own line (its quoting varies across Pythons)
  assert "onetrans eval: error: argument --split: invalid choice: 'test' (choose from " in err
  assert all(s in err for s in ('train', 'valid', 'holdout'))


def test_predict_writes_a_row_per_candidate_of_the_split(run, tmp_path, capsys):
  workdir = run[0]
  out = tmp_path / 'scores.csv'
  inference.cli_predict(['onetrans predict', '--workdir', workdir, '--split', 'valid',
                         '--output', str(out)])
  table = pa_csv.read_csv(out).to_pydict()
  assert list(table) == ['request', 'user_id', 'item_id', 'time', 'p_click', 'p_cart',
                         'p_order', 'label_click', 'label_cart', 'label_order']
  ds = pipeline.build_dataset(saved_run.load_config(workdir).data)
  a, b = ds.valid_range
  masks = [ds.source[i]['cand']['mask'] for i in range(a, b)]
  assert len(table['request']) == sum(int(m.sum()) for m in masks)
  assert sorted(set(table['request'])) == list(range(a, b))
  first = ds.source[a]
  n = int(first['cand']['mask'].sum())
  assert table['item_id'][:n] == first['cand']['cat'][:n, 0].tolist()
  assert table['label_click'][:n] == first['labels'][:n, 0].astype(int).tolist()
  assert f'wrote {len(table["request"]):,} rows ({b - a} requests)' in capsys.readouterr().out
  with pytest.raises(SystemExit):
    inference.cli_predict(['onetrans predict', '--workdir', workdir, '--output',
                           str(tmp_path / 'scores.txt')])
  assert capsys.readouterr().err == (f'error: --output {tmp_path}/scores.txt: end the file name '
                                     'in .csv, .parquet, .pq (the ending chooses CSV or '
                                     'Parquet)\n')
  assert not os.path.exists(tmp_path / 'scores.txt')


def test_export_writes_the_runs_model_and_it_scores_as_the_run(run, tmp_path, capsys):
  workdir = run[0]
  inference.cli_export(['onetrans export', '--workdir', workdir, '--output',
                        str(tmp_path / 'export')])
  assert 'exported pooled_mlp (forward) of step' in capsys.readouterr().out
  loaded = saved_run.load(workdir, log=lambda _: None)
  batch = next(pipeline.make_iterator(loaded.dataset, loaded.dataset.eval_range,
                                      global_batch_size=5, shuffle=False, seed=0, repeat=False,
                                      num_threads=1))
  expected = jax.jit(lambda p, b: loaded.model.apply({'params': p}, b))(loaded.params, batch)
  scorer = load_scorer(str(tmp_path / 'export'))
  assert scorer.manifest['model'] == 'pooled_mlp'
  np.testing.assert_allclose(scorer.predict(batch), expected, atol=1e-5, rtol=0)
