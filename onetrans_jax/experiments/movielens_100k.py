r"""OneTrans, DCNv2 + DIN, OneRank and three classical floors on MovieLens-100K (real GroupLens
ratings), one table.

  python launch.py --config onetrans_jax/experiments/movielens_100k.py --workdir runs/ml100k \
      --config.data.path=/path/to/ml-100k
  python launch.py --config onetrans_jax/experiments/movielens_100k.py:quick \
      --workdir runs/ml100k_quick --config.data.path=/path/to/ml-100k

The data (onetrans_jax/data/movielens.py): each rating is an impression, a request is one user's
ratings within an hour-gap session (up to 16), tasks ``like`` (rating >= 4) and ``love``
(rating 5); the ``rated`` and ``liked`` histories hold strictly earlier ratings; the latest 10% of
requests by time are the hold-out evaluation. Every row predicts both tasks *unconditionally* over
every impression (``loss.mode='joint'``; OneRank adds its InfoNCE, ``loss.mode='onerank'``), so
AUCs are over the same impressions for every row. UAUC is the per-user impression-weighted
AUC. Rows are absolute, mean ± std over seeds; the table is also written to
<workdir>/sweep_table.txt, and an interrupted sweep resumes where it stopped.

The floor rows (onetrans_jax/floors: a smoothed per-item positive rate, logistic regression and
LightGBM on one-hot ids plus leak-free user / item history statistics) are fitted on the training
requests and scored on the same hold-out impressions, so every neural row is paired with them: on
this split simple models rank well (hold-out like AUC 0.703 / 0.733 / 0.733). No floor's fit
depends on the seed: each seed repeats it (seconds), which keeps the by-seed pairing defined.

Sizes are CPU-sized: OneTrans is onetrans_jax/experiments/onetrans_s.py:small's model, OneRank the
same encoder size (onetrans_jax/experiments/onerank_main.py), DCNv2 + DIN the RQ1 baseline config.
[D] 400 steps of 64 requests (~3.6 epochs of the 7,141 training requests, shuffled each epoch).
``:quick`` runs 60 steps, one seed: a pipeline check, not a comparison.
"""

import ml_collections

from onetrans_jax.data.movielens import movielens_data
from onetrans_jax.experiments import common, onerank_main, onetrans_s
from onetrans_jax.floors import config as floors_config
from onetrans_jax.models.baselines import config as baselines_config

TASKS = (('like', 'like'), ('love', 'love'))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'quick'):
    raise ValueError(f'onetrans_jax/experiments/movielens_100k.py: unknown variant {arg!r}; '
                     'use :quick')
  onetrans = onetrans_s.get_config('small').model
  c = common.base_config(onetrans, movielens_data('100k'), total_steps=400)
  common.cpu_sized(c)               # lr 0.001 for the dense weights at batch 64
  c.loss.mode = 'joint'
  c.train.checkpoint_every = 0
  c.train.log_every = 100
  if arg == 'quick':
    c.train.total_steps = 60
    c.train.log_every = 20
  c.sweep = common.sweep(
      'movielens_100k', 'DCNv2 + DIN', (
          ('DCNv2 + DIN', (('model', baselines_config.defaults('din', 'dcnv2')),)),
          ('item positive rate', (('model', floors_config.defaults('item_rate')),)),
          ('logistic regression', (('model', floors_config.defaults('logistic')),)),
          ('LightGBM', (('model', floors_config.defaults('lightgbm')),)),
          ('OneTrans', ()),
          ('OneRank', (('model', onerank_main.onerank_cpu()), ('loss.mode', 'onerank'),
                       ('loss.nce_weight', onerank_main.NCE_WEIGHT))),
      ), seeds=(0,) if arg == 'quick' else (0, 1, 2), tasks=TASKS, commit=arg != 'quick',
      relative=False)
  return c
