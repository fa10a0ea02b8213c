r"""RQ2: every row of OneTrans's ablation table (SPEC A.10), trained on the same data, steps, seeds.

  python launch.py --config experiments/onetrans_rq2_ablation.py --workdir runs/rq2
  python launch.py --config experiments/onetrans_rq2_ablation.py:quick --workdir runs/rq2_quick

Prints the table in the paper's layout: the OneTrans_S row absolute, every other row relative %
to it (mean ± std over seeds), with dense params and analytic training TFLOPs per batch of 2048.
CTR = click, CVR = cart given click (the synthetic funnel's conversion step).

The default trains the CPU-sized OneTrans_S (experiments/onetrans_s.py:small) 7 variants x 3 seeds
x 1000 steps. Measured on 2 CPU cores, a run of 1000 steps takes about 10 minutes with
request-level sharing; the full-attention row cannot share the user side (S tokens read the
candidate's NS tokens) and runs ~6x slower, so the whole sweep is an estimated 6 hours of 2 CPU
cores: an accelerator is the better place. ``:quick`` (16 requests a step, 100 steps, one seed)
checks the whole pipeline in about 5 minutes on 2 CPU cores (measured); its numbers are too
short-trained to read as ablation results.
``:paper`` uses the paper's OneTrans_S shapes (an accelerator is needed). An interrupted sweep
resumes where it stopped.
"""

import ml_collections

from experiments import common, onetrans_s

VARIANTS = (
    ('OneTrans_S', ()),
    ('group-wise tokenizer', (('model.ns_tokenizer', 'group_wise'),)),
    ('timestamp-agnostic', (('model.seq_merge', 'timestamp_agnostic'),)),
    ('timestamp-agnostic, no [SEP]', (('model.seq_merge', 'timestamp_agnostic'),
                                      ('model.use_sep', False))),
    ('shared params for all tokens', (('model.param_sharing', 'shared'),)),
    ('full attention', (('model.attention', 'full'),)),
    ('no pyramid', (('model.pyramid', False),)),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = onetrans_s.get_config('paper' if arg == 'paper' else 'small')
  c.train.checkpoint_every = 0
  c.sweep = common.sweep('onetrans_rq2_ablation' + ('_paper' if arg == 'paper' else ''),
                         'OneTrans_S', VARIANTS, seeds=(0, 1, 2),
                         tasks=(('click', 'CTR'), ('cart', 'CVR')), commit=arg != 'quick')
  if arg == 'quick':
    common.quick(c)
    c.sweep.seeds = (0,)
  elif arg not in (None, '', 'paper'):
    raise ValueError(f'experiments/onetrans_rq2_ablation.py: unknown variant {arg!r}; '
                     'use :quick or :paper')
  return c
