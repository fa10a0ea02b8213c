r"""Where the ML-100K rows lose per-user ranking: users new at the hold-out against known users.

  python results/ml100k_rq1/cold_start.py --data ../shared/data/ml-100k   # writes cold_start.md

Reads the committed hold-out predictions of every row (``runs/<row>/seed_*.predictions.npz``,
the study's own scored impressions, in evaluation order) and splits the 9,630 hold-out
impressions by their user: 'new' when the user has no rating before the hold-out's first request
(the chronological split puts whole new users there), 'known' otherwise. Per group: AUC and UAUC
(onetrans_jax.metrics, as the study scores them), mean over the row's seeds. Nothing here chose
anything: it reads finished hold-out results.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from onetrans_jax import metrics
from onetrans_jax.data import movielens
from onetrans_jax.data.event_log import build_requests, chronological_split

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ('DCNv2_DIN', 'item_positive_rate', 'logistic_regression', 'LightGBM', 'Wukong_DIN',
        'RankMixer_StackDIN', 'OneTrans_S', 'OneTrans_L')
TASKS = ('like', 'love')


def holdout_users(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(user of every hold-out impression in evaluation order, its earlier ratings count)."""
  cfg = movielens.movielens_data('100k', path=path)
  log = movielens.load_100k(path, 'error')
  index = build_requests(log, movielens._request_config(cfg))   # pylint: disable=protected-access
  (_, cut), (_, n) = chronological_split(len(index), float(cfg.eval_fraction))
  events = np.concatenate([index.impressions[index.start[r]:index.start[r] + index.size[r]]
                           for r in range(cut, n)])
  earlier = np.bincount(log.user[log.time < index.time[cut]], minlength=log.num_users + 1)
  users = log.user[events]
  return users, earlier[users]


def table(path: str) -> str:
  users, earlier = holdout_users(path)
  new = earlier == 0
  lines = [f'Hold-out impressions: {users.size:,}; of users new at the hold-out '
           f'({np.unique(users[new]).size} of {np.unique(users).size} users): {new.mean():.1%}.',
           '', '| row | seeds | ' + ' | '.join(
               f'{t} {m} {g}' for t in TASKS for m in ('AUC', 'UAUC') for g in ('new', 'known'))
           + ' |', '|---|---|' + '---|' * 8]
  for row in ROWS:
    files = sorted(glob.glob(os.path.join(HERE, 'runs', row, 'seed_*.predictions.npz')))
    cells = []
    for t in TASKS:
      per_seed = []
      for f in files:
        z = np.load(f)
        p, y, u = z[f'{t}.probs'], z[f'{t}.labels'], z[f'{t}.user_ids']
        if not np.array_equal(u, users):
          raise ValueError(f'{f}: its impressions are not the hold-out read from {path}')
        per_seed.append([metrics.auc(p[new], y[new]), metrics.auc(p[~new], y[~new]),
                         metrics.uauc(p[new], y[new], u[new])[0],
                         metrics.uauc(p[~new], y[~new], u[~new])[0]])
      mean = np.mean(per_seed, 0)
      cells += [f'{m:.4f}' for m in mean]   # AUC new, known; UAUC new, known
    lines.append(f'| {row} | {len(files)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--data', default=os.path.join(HERE, '..', '..', '..', 'shared', 'data',
                                                 'ml-100k'))
  a = ap.parse_args()
  text = table(a.data)
  print(text)
  with open(os.path.join(HERE, 'cold_start.md'), 'w', encoding='utf-8') as f:
    f.write('# ML-100K hold-out: users new at the hold-out against known users\n\n'
            'Regenerate: `python results/ml100k_rq1/cold_start.py --data ../shared/data/ml-100k`'
            '\n\n' + text + '\n')


if __name__ == '__main__':
  main()
