r"""OneRank's ablations (SPEC B.6, C.6), each one config switch, on the same data, steps and seeds.

  python launch.py --config onetrans_jax/experiments/onerank_ablation.py \
      --workdir runs/onerank_ablation
  python launch.py --config onetrans_jax/experiments/onerank_ablation.py:quick \
      --workdir runs/onerank_abl_quick

Prints the full OneRank row absolute and every ablation relative % to it (AUC and GAUC per task,
C/A/O = click/add-to-cart/order over all impressions), mean ± std over seeds, and writes it to
<workdir>/sweep_table.txt. Each run logs the stability signals every 50 steps (per-task gradient
cosine on the shared encoder, per-task loss variance) to its metrics log, the evidence for the
detachment row. Model and scale as onetrans_jax/experiments/onerank_main.py: 11 variants x 3 seeds x
1000 steps, about 10 minutes a run on 2 CPU cores (5.5 hours in all: an accelerator is the better
place); ``:quick`` is 100 steps of 16 requests, one seed.
"""

import ml_collections

from onetrans_jax.experiments import common, onerank_main

VARIANTS = (
    ('OneRank', ()),
    ('one shared token (no task tokens)', (('model.task_tokens', 'shared'),)),
    ('MLP heads instead of matching', (('model.scoring', 'mlp'),)),
    ('no situation discernment (mean)', (('model.situation', 'mean'),)),
    ('constant situation query', (('model.situation', 'constant_query'),)),
    ('no cross-task attention', (('model.cross_task', False),)),
    ('task mask: parallel', (('model.task_mask', 'parallel'),)),
    ('task mask: full', (('model.task_mask', 'full'),)),
    ('task mask: hybrid (order reads click)', (('model.task_mask', 'hybrid'),
                                               ('model.task_edges', (('order', 'click'),)))),
    ('no gradient detachment', (('model.detach', False),)),
    ('BCE only (no InfoNCE)', (('loss.mode', 'joint'),)),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'quick'):
    raise ValueError(f'onetrans_jax/experiments/onerank_ablation.py: unknown variant {arg!r}; '
                     'use :quick')
  c = onerank_main.onerank_base(arg)
  c.sweep = common.sweep('onerank_ablation', 'OneRank', VARIANTS,
                         seeds=(0,) if arg == 'quick' else (0, 1, 2), tasks=onerank_main.TASKS,
                         commit=arg != 'quick', metric_labels=('AUC', 'GAUC'))
  return c
