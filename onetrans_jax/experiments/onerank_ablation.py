r"""OneRank's ablations (SPEC B.6, C.6), each one config switch, on the same data, steps and seeds.

  python launch.py --config onetrans_jax/experiments/onerank_ablation.py \
      --workdir runs/onerank_ablation
  python launch.py --config onetrans_jax/experiments/onerank_ablation.py:mechanisms \
      --workdir runs/onerank_ablation_mech --config.sweep.dry_run=True   # the study's plan
  python launch.py --config onetrans_jax/experiments/onerank_ablation.py:quick \
      --workdir runs/onerank_abl_quick

Prints the full OneRank row absolute and every ablation relative % to it (AUC and GAUC per task,
C/A/O = click/add-to-cart/order over all impressions), mean ± std over seeds, and writes it to
<workdir>/sweep_table.txt. Each row changes one thing (VARIANTS below): situation discernment off,
uniform or with a constant query; one shared task token; the four task masks; detachment; no
cross-task attention; the MLP head on [z_k ; r_k^i] in place of the inner product; InfoNCE only,
BCE only and the InfoNCE weights {0.1, 0.3, 1}; the temperature fixed at its initial value.

Each run logs the stability signals to its metrics log (split 'diagnostics'), the evidence for
the detachment row: the tasks' gradient cosine on the shared encoder, and each task's BCE
variance over a window of logged steps around the window's trend line (the same BCE definition
in every row, onetrans_jax/diagnostics.py). Scale as onetrans_jax/experiments/onerank_main.py;
``:mechanisms`` is the study (the mechanism world, early stopping on validation, 5 seeds),
``:quick`` 100 steps of 16 requests, one seed."""

import ml_collections

from onetrans_jax.experiments import common, onerank_main

# Each row changes one thing against the full OneRank row (the first) and nothing else.
VARIANTS = (
    ('OneRank', ()),
    # situation discernment (B.4): removed, uniform weights, a query that ignores the context
    ('no situation discernment (a learned task vector)', (('model.situation', 'off'),)),
    ('situation: mean over the candidates', (('model.situation', 'mean'),)),
    ('situation: constant query', (('model.situation', 'constant_query'),)),
    ('one shared token (no task tokens)', (('model.task_tokens', 'shared'),)),
    # cross-task interaction (B.5): the mask (cascade is the full row's), detachment, removal
    ('task mask: parallel', (('model.task_mask', 'parallel'),)),
    ('task mask: full', (('model.task_mask', 'full'),)),
    ('task mask: hybrid (order reads click)', (('model.task_mask', 'hybrid'),
                                               ('model.task_edges', (('order', 'click'),)))),
    ('no gradient detachment', (('model.detach', False),)),
    ('no cross-task attention', (('model.cross_task', False),)),
    # scoring and losses (B.6)
    ('MLP head instead of matching', (('model.scoring', 'mlp'),)),
    ('InfoNCE only (no BCE)', (('loss.bce_weight', 0.0),)),
    ('BCE only (no InfoNCE)', (('loss.nce_weight', 0.0),)),
    ('InfoNCE weight 0.1', (('loss.nce_weight', 0.1),)),
    ('InfoNCE weight 0.3', (('loss.nce_weight', 0.3),)),
    ('InfoNCE weight 1', (('loss.nce_weight', 1.0),)),
    ('temperature fixed', (('model.learn_temperature', False),)),
)


def claims(variants: tuple) -> tuple:
  """SPEC B.7's ablation directions (issue 21), judged on every task's AUC: removing situation
  discernment is the largest drop of all the rows, and task tokens help (one shared token scores
  below the full row)."""
  keys = tuple(f'{t}/auc' for t, _ in onerank_main.TASKS)
  off = 'no situation discernment (a learned task vector)'
  return (('removing situation discernment is the largest drop', off, 'largest_drop',
           tuple(n for n, _ in variants if n not in ('OneRank', off)), keys),
          ('task tokens help: one shared token scores below OneRank',
           'one shared token (no task tokens)', 'below', ('OneRank',), keys))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'quick', 'mechanisms'):
    raise ValueError(f'onetrans_jax/experiments/onerank_ablation.py: unknown variant {arg!r}; '
                     'use :quick or :mechanisms')
  c = onerank_main.onerank_base(arg)
  # The InfoNCE-weight rows name every value of {0.1, 0.3, 1}: the one equal to the full row's
  # weight is the full row itself, so it is left out rather than run twice.
  variants = tuple(v for v in VARIANTS
                   if v[1] != (('loss.nce_weight', float(c.loss.nce_weight)),))
  if arg == 'mechanisms':   # every row at OneRank's tuned rate and width (onerank_main.TUNED)
    variants = tuple((name, onerank_main.tuned('OneRank') + o) for name, o in variants)
  seeds = {'quick': (0,), 'mechanisms': (0, 1, 2, 3, 4)}.get(arg, (0, 1, 2))
  c.sweep = common.sweep('onerank_ablation' + ('_mechanisms' if arg == 'mechanisms' else ''),
                         'OneRank', variants, seeds=seeds, tasks=onerank_main.TASKS,
                         commit=arg != 'quick', metric_labels=('AUC', 'GAUC'),
                         claims=claims(variants))
  # SPEC C.6's claim, judged in the report's stability section (onetrans_jax/stability.py).
  c.sweep.stability_check = ('no gradient detachment', 'cart')
  return c
