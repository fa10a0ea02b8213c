r"""Default experiment: OneTrans (CPU-sized ``onetrans_s:small``) on the embedded synthetic world.

Run (no download; 2 min 44 s on 2 idle CPU cores, 1.4 GB of memory, measured 2026-12-05):

  python launch.py                                   # this file is the default --config
  python launch.py --config onetrans_jax/experiments/default.py --workdir /tmp/otj_default
  python launch.py --config.train.total_steps=1000   # the longer run of onetrans_s:small

It trains 300 steps of 64 requests (8-16 candidates each), scores the hold-out (the 4,096
requests after the training range) every 100 steps and at the end, prints each task's AUC beside
the oracle's (the world's true probabilities, the Bayes limit) and draws
``<workdir>/learning_curves.png``. It ends with (jax 0.10.2, CPU; deterministic for a seed):

  task      AUC    UAUC  logloss  const logloss  oracle AUC  oracle UAUC  impressions  pos rate
  click  0.7634  0.7478   0.4735         0.5591      0.8608       0.8351       49,187    0.2471
  cart   0.6401  0.6150   0.6493         0.6815      0.7820       0.7388       12,154    0.4238
  order  0.6646  0.5875   0.6322         0.6749      0.7400       0.6634        5,151    0.5952

Why 300 steps: on this world onetrans_s:small's hold-out click AUC is 0.661 / 0.713 / 0.763 / 0.768
at steps 100 / 200 / 300 / 400 (measured with ``--config.train.total_steps=400
--config.eval.every_steps=100``), so 300 reaches what the pooled-MLP baseline
(onetrans_jax/experiments/pooled_mlp.py) reaches in 1000 steps (0.763) at a fraction of the wait,
and the curve still shows the model learning.

The synthetic world (onetrans_jax/data/synthetic.py) has 2000 users, 4000 items, 3 behaviour
sequences (click 64, cart 24, order 12 events), 17 non-sequential features, 8-16 candidates per
request and a click -> cart -> order funnel.
"""

import ml_collections

from onetrans_jax.experiments import onetrans_s


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, ''):
    raise ValueError(f'onetrans_jax/experiments/default.py: unknown variant {arg!r}; it takes '
                     'none (use onetrans_jax/experiments/onetrans_s.py:small for the longer run)')
  c = onetrans_s.get_config('small')
  c.train.total_steps = 300
  c.train.checkpoint_every = 100
  c.train.log_every = 25           # the curve's train-loss points (12); logging changes no result
  c.eval.every_steps = 100
  c.train.plot_curves = True
  return c
