r"""OneRank against OneTrans + shared-bottom / MMoE / PLE (SPEC B.7's main table), CPU-sized.

  python launch.py --config onetrans_jax/experiments/onerank_main.py --workdir runs/onerank_main
  python launch.py --config onetrans_jax/experiments/onerank_main.py:quick \
      --workdir runs/onerank_main_quick

Prints the paper's layout (every row absolute; AUC and GAUC per task, C = click, A = add-to-cart,
O = order; GAUC is the per-user impression-weighted AUC, UAUC in this codebase), with dense
params, mean ± std over seeds, and writes it to <workdir>/sweep_table.txt. All rows share the
data, steps, seeds and task definition: every task is predicted *unconditionally* over all
impressions (``loss.mode='joint'``; OneRank adds its InfoNCE, ``loss.mode='onerank'``), as in the
OneRank paper, so A-AUC and O-AUC are measured over every impression of the funnel.

Both encoders are CPU-sized (d=64, 3 layers, 4 heads); the OneTrans encoder is
onetrans_jax/experiments/onetrans_s.py:small's. Every run logs the tasks' gradient cosine on the
shared encoder and their loss variance every 50 steps (``train.diagnostics_every``). The default is
4 models x 3 seeds x 1000 steps of 64 requests: about 10 minutes a run on 2 CPU cores, 2 hours in
all. ``:quick`` (100 steps of 16 requests, one seed) checks the pipeline in a few minutes; its
numbers are too short-trained to compare models.
"""

import ml_collections

from onetrans_jax.experiments import common, onetrans_s
from onetrans_jax.models.onerank import config as onerank_config

TASKS = (('click', 'C'), ('cart', 'A'), ('order', 'O'))


def onerank_cpu(**overrides) -> ml_collections.ConfigDict:
  """OneRank at the size of onetrans_s:small's encoder (d=64; 4 heads and 3 layers are both
  families' defaults)."""
  return onerank_config.defaults(**dict(dict(width=64), **overrides))


def onerank_base(arg: str | None) -> ml_collections.ConfigDict:
  """onetrans_s:small's data, optimizer and steps, with the OneRank model and loss."""
  c = onetrans_s.get_config('small')
  c.model = onerank_cpu()
  c.loss.mode = 'onerank'
  c.train.checkpoint_every = 0
  c.train.diagnostics_every = 50
  if arg == 'quick':
    common.quick(c)
    c.train.diagnostics_every = 25
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'quick'):
    raise ValueError(f'onetrans_jax/experiments/onerank_main.py: unknown variant {arg!r}; '
                     'use :quick')
  c = onerank_base(arg)
  small = onetrans_s.get_config('small').model
  onetrans = lambda predictor: ml_collections.ConfigDict(dict(small.to_dict(),
                                                              predictor=predictor))
  joint = ('loss.mode', 'joint')
  c.sweep = common.sweep(
      'onerank_main', 'OneRank', (
          ('OneTrans + shared-bottom', (('model', onetrans('shared_bottom')), joint)),
          ('OneTrans + MMoE', (('model', onetrans('mmoe')), joint)),
          ('OneTrans + PLE', (('model', onetrans('ple')), joint)),
          ('OneRank', ()),
      ), seeds=(0,) if arg == 'quick' else (0, 1, 2), tasks=TASKS, commit=arg != 'quick',
      relative=False, metric_labels=('AUC', 'GAUC'))
  return c
