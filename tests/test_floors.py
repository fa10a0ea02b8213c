"""Classical floor rows (onetrans_jax/floors): leak-free history statistics, the item-rate floor's
exact rates, the hold-out impressions shared with a neural run, determinism, config errors, a
sweep with a floor row, and (slow) the three floors on the real MovieLens-100K.

The data are MovieLens-100K files written here: a hand-made six-request log whose rates are
computed by hand, and a random log large enough to fit on.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from onetrans_jax import accounting, models, study_report
from onetrans_jax.data import movielens, pipeline
from onetrans_jax.errors import ConfigError
from onetrans_jax.floors import config as floors_config
from onetrans_jax.floors import features
from onetrans_jax.floors.fit import fit_and_evaluate
from onetrans_jax.schema import label_weights
from tests.helpers import ROOT

REAL_100K = os.path.join(ROOT, '..', 'shared', 'data', 'ml-100k')
T0 = 880_000_000


# ---------------------------------------------------------------------------------- the data
def _write_100k(path: str, users: list[tuple], movies: list[tuple],
                ratings: list[tuple]) -> str:
  """MovieLens-100K files: users (id, age, gender, occupation, zip), movies (id, genres),
  ratings (user, movie, rating, seconds after T0)."""
  os.makedirs(path, exist_ok=True)
  genres = movielens.GENRES

  def write(name: str, lines: list[str]) -> None:
    with open(os.path.join(path, name), 'w', encoding='latin-1') as f:
      f.write(''.join(line + '\n' for line in lines))
  write('u.genre', [f'{g}|{i}' for i, g in enumerate(genres)] + [''])
  write('u.item', [f'{m}|Movie {m} (1995)|01-Jan-1995||http://x|' +
                   '|'.join('1' if g in gs else '0' for g in genres) for m, gs in movies])
  write('u.user', [f'{u}|{a}|{g}|{o}|{z}' for u, a, g, o, z in users])
  write('u.data', [f'{u}\t{m}\t{r}\t{T0 + t}' for u, m, r, t in ratings])
  return path


# Six requests (C = 4, an hour's gap ends one): 0..3 train, 4 and 5 the hold-out.
HAND_RATINGS = [(1, 1, 5, 0), (1, 2, 3, 10), (2, 1, 4, 5000), (2, 3, 2, 5010),
                (3, 1, 1, 10000), (3, 2, 4, 10010), (1, 3, 5, 20000),
                (2, 2, 5, 30000), (2, 4, 4, 30010), (3, 3, 3, 40000), (3, 4, 1, 40010)]
HAND_USERS = [(1, 24, 'M', 'technician', '85711'), (2, 53, 'F', 'other', '94043'),
              (3, 33, 'M', 'writer', '10003')]
HAND_MOVIES = [(1, ('Comedy',)), (2, ('Drama',)), (3, ('Action', 'Drama')), (4, ('Horror',))]


def _random_ratings(seed: int = 0, num_users: int = 40, num_movies: int = 30
                    ) -> tuple[list, list, list]:
  """Users who rate in bursts (sessions of 2-7 ratings, days apart); a rating is a user bias
  plus a movie bias plus noise, so there is something to fit."""
  rng = np.random.default_rng(seed)
  user_bias, movie_bias = rng.normal(0, 0.8, num_users), rng.normal(0, 0.8, num_movies)
  occupations, genres = movielens.OCCUPATIONS_100K, movielens.GENRES[1:]
  users = [(u + 1, int(rng.integers(15, 70)), 'MF'[u % 2], occupations[u % len(occupations)],
            f'{int(rng.integers(10000, 99999))}') for u in range(num_users)]
  movies = [(m + 1, tuple(rng.choice(genres, size=int(rng.integers(1, 4)), replace=False)))
            for m in range(num_movies)]
  ratings = []
  for u in range(num_users):
    seen = rng.permutation(num_movies)
    k, t = 0, int(rng.integers(0, 86400 * 5))
    while k < num_movies - 7:
      for j in range(int(rng.integers(2, 8))):
        m = int(seen[k])
        r = int(np.clip(np.round(3.2 + user_bias[u] + movie_bias[m] + rng.normal(0, 0.7)), 1, 5))
        ratings.append((u + 1, m + 1, r, t + 30 * j))
        k += 1
      t += int(rng.integers(2, 6)) * 86400
  return users, movies, ratings


def _data(path: str, **overrides) -> ml_collections.ConfigDict:
  fields = dict(num_candidates=4, rated_len=8, liked_len=6, eval_fraction=0.2, batch_size=16,
                num_threads=1)
  fields.update(overrides)
  return movielens.movielens_data('100k', path=path, **fields)


def _config(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None = None,
            mode: str = 'conditional') -> ml_collections.ConfigDict:
  """onetrans_jax/experiments/pooled_mlp.py on ``data``: a tiny pooled MLP, 2 steps (or ``model``,
  a floor)."""
  from onetrans_jax.experiments import pooled_mlp
  c = pooled_mlp.get_config()
  c.data = data
  c.model.embed_dim = 4
  c.model.hidden = (8,)
  if model is not None:
    c.model = model
  c.loss.mode = mode
  c.train.total_steps = 2
  c.train.log_every = 2
  c.train.checkpoint_every = 0
  return c


@pytest.fixture(scope='module')
def random_data(tmp_path_factory):
  return _data(_write_100k(str(tmp_path_factory.mktemp('ml_random')), *_random_ratings()))


def _predictions(run_dir) -> dict[str, np.ndarray]:
  with np.load(os.path.join(run_dir, 'eval_predictions.npz')) as z:
    return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------- statistics
def _random_log(seed: int, r: int = 14, c: int = 3):
  rng = np.random.default_rng(seed)
  user = rng.integers(1, 4, r)
  item = rng.integers(1, 6, (r, c))
  mask = np.ones((r, c), np.bool_)
  mask[rng.random((r, c)) < 0.3] = False
  mask[:, 0] = True
  labels = (rng.random((r, c, 2)) < 0.5).astype(np.float32) * mask[..., None]
  return user, item, mask, labels


def _stats(user, item, mask, labels, parents=(-1, 0), batch: int = 5, prior: float = 2.0):
  """Per request, the statistics of its impressions, streamed in batches of ``batch``."""
  counter = features.HistoryCounter(2, prior)
  out = []
  for a in range(0, len(user), batch):
    sl = slice(a, a + batch)
    pop = label_weights(labels[sl], mask[sl], parents) > 0
    s = counter.observe(user[sl], item[sl], mask[sl], labels[sl], pop)
    req = np.nonzero(mask[sl])[0]
    out += [s[req == k] for k in range(mask[sl].shape[0])]
  return out


def _brute_force(user, item, mask, labels, parents=(-1, 0), prior: float = 2.0):
  """The definition, one impression at a time: counts over earlier requests only."""
  pop = label_weights(labels, mask, parents) > 0
  out = []
  for i in range(len(user)):
    before = np.arange(len(user)) < i
    g_n = pop[before].sum((0, 1))
    g_pos = (pop[before] * labels[before]).sum((0, 1))
    p0 = (g_pos + 1) / (g_n + 2)
    rows = []
    for j in np.flatnonzero(mask[i]):
      cols = []
      for keys in (before[:, None] & (user[:, None] == user[i]) & mask,
                   before[:, None] & (item == item[i, j]) & mask):
        n = pop[keys].sum(0)
        pos = (pop[keys] * labels[keys]).sum(0)
        cols += [np.log1p(n), (pos + prior * p0) / (n + prior)]
      rows.append(np.concatenate(cols))
    out.append(np.array(rows, np.float32))
  return out


@pytest.mark.parametrize('batch', [1, 5, 14])
def test_history_statistics_are_the_definition_in_any_batching(batch):
  log = _random_log(0)
  for got, want in zip(_stats(*log, batch=batch), _brute_force(*log)):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_history_statistics_are_leak_free():
  user, item, mask, labels = _random_log(1)
  base = _stats(user, item, mask, labels)
  i = 6
  # Request i's and every later request's labels changed: nothing up to request i moves.
  flipped = labels.copy()
  flipped[i:] = (1 - flipped[i:]) * mask[i:, :, None]
  after = _stats(user, item, mask, flipped)
  for k in range(i + 1):
    np.testing.assert_array_equal(after[k], base[k], err_msg=f'request {k}')
  assert any(not np.array_equal(after[k], base[k]) for k in range(i + 1, len(user)))
  # An earlier request's label changed: a later request of the same user sees it.
  j = 2
  earlier = labels.copy()
  earlier[j, 0, 0] = 1 - earlier[j, 0, 0]
  moved = _stats(user, item, mask, earlier)
  for k in range(j + 1):
    np.testing.assert_array_equal(moved[k], base[k])
  later_same_user = next(k for k in range(j + 1, len(user)) if user[k] == user[j])
  assert not np.array_equal(moved[later_same_user], base[later_same_user])


# ---------------------------------------------------------------------------------- item rate
@pytest.mark.parametrize('mode', ['joint', 'conditional'])
def test_item_rate_is_the_hand_computed_smoothed_rate(tmp_path, mode):
  data = _data(_write_100k(str(tmp_path / 'data'), HAND_USERS, HAND_MOVIES, HAND_RATINGS),
               eval_fraction=1 / 3)
  c = _config(data, floors_config.defaults('item_rate', prior_strength=10.0), mode)
  result = fit_and_evaluate(c, str(tmp_path / 'run'))
  pred = _predictions(tmp_path / 'run')
  # Training impressions per movie (ratings): 1: 5, 4, 1; 2: 3, 4; 3: 2, 5; 4: none.
  # Hold-out: user 2 rates movies 2 (5) and 4 (4); user 3 movies 3 (3) and 4 (1).
  like = 4 / 7
  np.testing.assert_allclose(pred['like.probs'], [(1 + 10 * like) / 12, like,
                                                  (1 + 10 * like) / 12, like])
  np.testing.assert_array_equal(pred['like.labels'], [1, 1, 0, 0])
  np.testing.assert_array_equal(pred['like.user_ids'], [2, 2, 3, 3])
  if mode == 'joint':  # love over every impression: movie 1 one of 3, movie 3 one of 2
    love = 2 / 7
    np.testing.assert_allclose(pred['love.probs'], [(0 + 10 * love) / 12, love,
                                                    (1 + 10 * love) / 12, love])
    np.testing.assert_array_equal(pred['love.labels'], [1, 0, 0, 0])
  else:  # love given like: movie 1 one of its 2 likes, movie 2 none of 1; the hold-out's likes
    love = 2 / 4
    np.testing.assert_allclose(pred['love.probs'], [(0 + 10 * love) / 11, love])
    np.testing.assert_array_equal(pred['love.labels'], [1, 0])
  assert result['params'] == {'dense': 4 * 2, 'sparse': 0}
  assert result['step'] == 0 and result['final']['like']['count'] == 4


# ---------------------------------------------------------------------------------- vs neural
@pytest.fixture(scope='module')
def neural_run(random_data, tmp_path_factory):
  from onetrans_jax.train import train_and_evaluate
  run_dir = tmp_path_factory.mktemp('neural')
  train_and_evaluate(_config(random_data), str(run_dir))
  return run_dir


@pytest.mark.parametrize('name', floors_config.NAMES)
def test_floor_scores_the_neural_runs_hold_out(name, random_data, neural_run, tmp_path):
  c = _config(random_data, floors_config.defaults(name))
  result = fit_and_evaluate(c, str(tmp_path))
  floor, neural = _predictions(tmp_path), _predictions(neural_run)
  assert sorted(floor) == sorted(neural)
  for task in ('like', 'love'):
    for f in ('labels', 'user_ids'):
      np.testing.assert_array_equal(floor[f'{task}.{f}'], neural[f'{task}.{f}'])
    assert floor[f'{task}.probs'].shape == neural[f'{task}.probs'].shape
    assert np.all((floor[f'{task}.probs'] > 0) & (floor[f'{task}.probs'] < 1))
  # love is conditional: scored on the liked impressions only, as the neural run scores it.
  assert floor['love.labels'].size == int(floor['like.labels'].sum())
  # num_rows differs by design: the neural run counts its padded final batch's rows too.
  np.testing.assert_array_equal(floor['has_true_probs'], neural['has_true_probs'])
  with open(tmp_path / 'final_metrics.json', encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['metrics'] == json.loads(json.dumps(result['final'], default=float))
  for task in ('like', 'love'):
    m = result['final'][task]
    assert all(math.isfinite(m[k]) for k in ('auc', 'uauc', 'logloss')), (task, m)
  assert result['params']['dense'] > 0 and (tmp_path / 'config.json').exists()
  assert not (tmp_path / 'metrics.jsonl').exists()


def test_lightgbm_is_deterministic_and_stops_early_on_validation(random_data, tmp_path):
  data = ml_collections.ConfigDict(random_data.to_dict())
  data.valid_fraction = 0.2
  c = _config(data, floors_config.defaults('lightgbm', num_boost_round=400, learning_rate=0.3))
  first = fit_and_evaluate(c, str(tmp_path / 'a'))
  second = fit_and_evaluate(c, str(tmp_path / 'b'))
  a, b = _predictions(tmp_path / 'a'), _predictions(tmp_path / 'b')
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert first['fit'] == second['fit']
  for task in ('like', 'love'):
    assert first['fit'][task]['early_stopping'] and first['fit'][task]['rounds'] < 400


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize('name, field, value, allowed', [
    ('item_rate', 'prior_strength', 0.0, 'must be a number > 0'),
    ('logistic', 'C', -1.0, 'must be a number > 0'),
    ('logistic', 'max_iter', 0, 'must be a positive integer'),
    ('logistic', 'history_prior', -2.0, 'must be a number >= 0'),
    ('lightgbm', 'num_leaves', 1, 'must be an integer >= 2'),
    ('lightgbm', 'learning_rate', 'fast', 'must be a number > 0'),
    ('lightgbm', 'categorical', 'yes', r'choose one of \[True, False\]'),
    ('lightgbm', 'num_threads', 0, 'must be a positive integer'),
])
def test_bad_fields_raise_one_line_naming_them(name, field, value, allowed, tmp_path):
  cfg = ml_collections.ConfigDict({**floors_config.defaults(name).to_dict(), field: value})
  with pytest.raises(ConfigError, match=rf'^config\.model\.{field}={value!r}: {allowed}$') as e:
    fit_and_evaluate(_config(_data(str(tmp_path)), cfg), str(tmp_path / 'run'))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'run').exists()  # refused before anything is read or written


def test_names_typos_and_modes_are_refused(random_data, tmp_path):
  with pytest.raises(ConfigError, match=r"^config\.model\.name='svm': not a floor"):
    floors_config.defaults('svm')
  cfg = floors_config.defaults('logistic')
  cfg.c = 1.0
  with pytest.raises(ConfigError, match=r"unknown field\(s\) \['c'\]"):
    floors_config.resolve(cfg)
  ints = ml_collections.ConfigDict({**floors_config.defaults('logistic').to_dict(), 'C': 1,
                                    'history_prior': 0})
  assert floors_config.resolve(ints).C == 1.0 and floors_config.resolve(ints).history_prior == 0.0
  c = _config(random_data, floors_config.defaults('item_rate'))
  c.eval.mode = 'next_batch'
  with pytest.raises(ConfigError, match=r"config\.eval\.mode='next_batch': .* hold-out only"):
    fit_and_evaluate(c, str(tmp_path))
  with pytest.raises(ConfigError, match=r"config\.model\.name='lightgbm': a classical floor"):
    models.build_model(floors_config.defaults('lightgbm'), None)


def test_the_registry_counts_floors(random_data):
  schema = pipeline.build_dataset(random_data).schema
  for name in floors_config.NAMES:
    cfg = floors_config.defaults(name)
    assert accounting.batch_tflops(cfg, schema) == 0.0
    assert models.training_flops_per_example(cfg, schema) == 0.0
    assert accounting.dense_params(cfg, schema)['sparse'] == 0
  assert accounting.dense_params(floors_config.defaults('item_rate'), schema)['dense'] == 30 * 2


# ---------------------------------------------------------------------------------- sweep
def test_a_sweep_with_a_floor_row(random_data, tmp_path):
  from onetrans_jax import sweep
  c = _config(random_data)
  c.sweep = ml_collections.ConfigDict(dict(
      reference='MLP', seeds=(0,), tasks=(('like', 'like'), ('love', 'love')), bootstrap=20,
      variants=(('MLP', ()),
                ('LightGBM', (('model', floors_config.defaults('lightgbm', num_boost_round=20)),)))))
  c.sweep.dry_run = True
  plan = sweep.run_sweep(c, str(tmp_path))
  assert plan['estimate_seconds'][('LightGBM', 0)] == sweep.FLOOR_SECONDS
  c.sweep.dry_run = False
  out = sweep.run_sweep(c, str(tmp_path))
  with open(tmp_path / 'summary.json', encoding='utf-8') as f:
    rows = {r['variant']: r for r in json.load(f)['rows']}
  floor = rows['LightGBM']
  record = out['results']['LightGBM']['records'][0]
  assert floor['params'] == record['params']['dense'] > 0   # leaves fitted, not the bound
  assert floor['train_flops_per_example'] == 0.0
  assert 0.0 < floor['metrics']['like/auc']['mean'] < 1.0
  # Paired with the neural row on the same impressions: the one-seed bootstrap interval exists.
  assert floor['metrics']['like/auc']['ci_method'].startswith('bootstrap over')
  assert not (tmp_path / 'LightGBM' / 'seed_0' / 'metrics.jsonl').exists()
  assert (tmp_path / 'learning_curves.png').stat().st_size > 0
  assert 'LightGBM' in (tmp_path / 'report.md').read_text()


def test_learning_curves_tolerate_runs_without_a_log(tmp_path):
  (tmp_path / 'floor').mkdir()
  assert not study_report.plot_learning_curves(str(tmp_path / 'curves.png'),
                                               {'floor': [str(tmp_path / 'floor')]}, ['like'])
  assert not (tmp_path / 'curves.png').exists()


def test_learning_curves_draw_a_committed_records_validation_curve(tmp_path):
  """A run reused from a committed record has no local log: its record's curve is drawn."""
  (tmp_path / 'run').mkdir()
  record = {'valid_curve': [{'step': s, 'like': {'auc': a, 'uauc': a - 0.05}}
                            for s, a in ((50, 0.61), (100, 0.66))]}
  assert study_report._curve_records(record) == [
      {'split': 'valid', 'step': 50, 'like/auc': 0.61, 'like/uauc': 0.61 - 0.05},
      {'split': 'valid', 'step': 100, 'like/auc': 0.66, 'like/uauc': 0.66 - 0.05}]
  assert study_report._curve_records({'valid_curve': None}) == []
  assert study_report.plot_learning_curves(str(tmp_path / 'curves.png'),
                                           {'row': [str(tmp_path / 'run')]}, ['like'],
                                           {'row': [record]})
  assert (tmp_path / 'curves.png').stat().st_size > 0


# ---------------------------------------------------------------------------------- real data
@pytest.mark.slow  # ~1 min: the three floors on MovieLens-100K
def test_floors_on_real_movielens_100k(tmp_path):
  if not os.path.isfile(os.path.join(REAL_100K, 'u.data')):
    pytest.skip(f'MovieLens 100K not found at {REAL_100K}')
  from onetrans_jax.experiments import movielens_100k
  from onetrans_jax.sweep import variant_config
  config = movielens_100k.get_config()
  config.data.path = REAL_100K
  floors = [(n, o) for n, o in config.sweep.variants
            if 'model' in dict(o) and models.is_floor(dict(o)['model'])]
  assert [n for n, _ in floors] == ['item positive rate', 'logistic regression', 'LightGBM']
  for name, overrides in floors:
    result = fit_and_evaluate(variant_config(config, overrides, 0), str(tmp_path / name))
    for task in ('like', 'love'):
      m = result['final'][task]
      assert 0.5 < m['auc'] < 1.0 and m['logloss'] < m['const_logloss'], (name, task, m)
    if name == 'item positive rate':
      assert result['final']['like']['uauc'] > 0.5
