r"""RQ1: the OneTrans paper's main comparison (SPEC A.10) at CPU size, every row in one command.

  python launch.py --config onetrans_jax/experiments/rq1_baselines.py --workdir runs/rq1
  python launch.py --config onetrans_jax/experiments/rq1_baselines.py:quick \
      --workdir runs/rq1_quick

Trains the seven baselines (onetrans_jax/models/baselines/) and OneTrans_S / OneTrans_L
(onetrans_jax/experiments/onetrans_s.py:small, onetrans_l.py:small) on the same synthetic data,
steps, optimizer and seeds, and prints the paper's table: DCNv2 + DIN absolute, every other row
relative % to it (mean ± std over seeds), CTR = click and CVR = cart given click, AUC and UAUC,
dense params (M) and analytic training TFLOPs per batch of 2048 (each model's reference
per-candidate pass); the table is also written to <workdir>/sweep_table.txt.

The default is 9 models x 3 seeds x 1000 steps of 64 requests; on 2 CPU cores a run takes 2-15
minutes (the baselines are the quick ones), so the whole table is hours: an accelerator is the
better place. ``:quick`` (100 steps of 16 requests, one seed) checks every row end to end; its
numbers are too short-trained to compare models. An interrupted sweep resumes where it stopped.
``:mechanisms`` is the study on the mechanism world
(onetrans_jax/experiments/common.mechanism_study: early stopping on validation click AUC, 3 seeds),
records committed under results/rq1_mechanisms/runs/.
"""

import ml_collections

from onetrans_jax.experiments import common, onetrans_l, onetrans_s
from onetrans_jax.models.baselines import config as baselines_config

BASELINES = (
    ('DCNv2 + DIN', 'din', 'dcnv2'),
    ('Wukong + DIN', 'din', 'wukong'),
    ('HiFormer + DIN', 'din', 'hiformer'),
    ('RankMixer + DIN', 'din', 'rankmixer'),
    ('RankMixer + StackDIN', 'stack_din', 'rankmixer'),
    ('RankMixer + LONGER', 'longer', 'rankmixer'),
    ('RankMixer + Transformer', 'transformer', 'rankmixer'),
)

# Issue 20's target on the mechanism world, judged in the report (onetrans_jax/claims.py).
CLAIM = ('OneTrans_S is at least as good as every RQ1 baseline in CTR and CVR AUC', 'OneTrans_S',
         'at_least', tuple(name for name, _, _ in BASELINES), ('click/auc', 'cart/auc'))

# SPEC A.10: each row's dense params (M) and training TFLOPs per batch of 2048 in the paper.
PAPER = {
    'DCNv2 + DIN': (10, 0.06),
    'Wukong + DIN': (28, 0.54),
    'HiFormer + DIN': (108, 1.35),
    'RankMixer + DIN': (107, 1.31),
    'RankMixer + StackDIN': (108, 1.43),
    'RankMixer + LONGER': (109, 1.87),
    'RankMixer + Transformer': (109, 2.51),
    'OneTrans_S': (91, 2.64),
    'OneTrans_L': (330, 8.62),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', 'quick', 'mechanisms'):
    raise ValueError(f'onetrans_jax/experiments/rq1_baselines.py: unknown variant {arg!r}; '
                     'use :quick or :mechanisms')
  c = onetrans_s.get_config('small')        # data, optimizer, steps: shared by every row
  c.model = baselines_config.defaults('din', 'dcnv2')
  c.train.checkpoint_every = 0
  if arg == 'quick':
    common.quick(c)
  elif arg == 'mechanisms':
    common.mechanism_study(c)
  variants = tuple(
      (name, (('model', baselines_config.defaults(seq, inter)),)) for name, seq, inter in BASELINES
  ) + (('OneTrans_S', (('model', onetrans_s.get_config('small').model),)),
       ('OneTrans_L', (('model', onetrans_l.get_config('small').model),)))
  c.sweep = common.sweep('rq1_mechanisms' if arg == 'mechanisms' else 'rq1_baselines',
                         'DCNv2 + DIN', variants,
                         seeds=(0,) if arg == 'quick' else (0, 1, 2),
                         tasks=(('click', 'CTR'), ('cart', 'CVR')), commit=arg != 'quick',
                         claims=(CLAIM,))
  c.sweep.paper = tuple((name, *v) for name, v in PAPER.items())  # accounting's ratios
  return c
