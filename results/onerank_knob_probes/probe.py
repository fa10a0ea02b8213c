r"""OneRank's initialisation and loss knobs, probed on the mechanism world's VALIDATION split.

  python results/onerank_knob_probes/probe.py <probe> 2000     # one probe (from the repo root)
  python results/onerank_knob_probes/probe.py --table          # the table of README.md

Each probe is the ``onerank_main.py:mechanisms`` OneRank row (seed 0) set to the knobs' earlier
values (BASE: zero biases, 1/tau = 1, InfoNCE weight 1), then one or two changes. It trains a
fixed 2000 steps (early stopping off) and is scored on the validation split every 500 steps. Its
validation curve is written to ``results/onerank_knob_probes/<probe>_2000.json``. Every run
scores the hold-out at the end, but no hold-out figure is read or kept here. The defaults in
onetrans_jax/models/onerank/config.py and onerank_main.onerank_base are chosen from these
validation curves.
"""
import glob
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
HERE = os.path.join(ROOT, 'results', 'onerank_knob_probes')

BASE = (('model.task_bias_init', 'zero'), ('model.inv_temperature_init', 1.0),
        ('loss.nce_weight', 1.0))
PROBES = {
    'base': (),
    'bias': (('model.task_bias_init', 'base_rate'),),
    'tau07': (('model.inv_temperature_init', 1 / 0.07),),
    'tau3': (('model.inv_temperature_init', 3.0),),
    'tau6': (('model.inv_temperature_init', 6.0),),
    'nce03': (('loss.nce_weight', 0.3),),
    'nce01': (('loss.nce_weight', 0.1),),
    'tau3_nce01': (('model.inv_temperature_init', 3.0), ('loss.nce_weight', 0.1)),
    # 2026-12-07: the deviation model.candidate_in_task_tokens (t_k of group i starts as t_k + c_i)
    # at the chosen 1/tau = 3.
    'tau3_cand': (('model.inv_temperature_init', 3.0), ('model.candidate_in_task_tokens', True)),
    # ... and model.candidate_reads_context (c_i's MLP also reads the raw contextual features).
    'tau3_ctx': (('model.inv_temperature_init', 3.0), ('model.candidate_reads_context', True)),
    # ... and model.request_bias (+ u_k . z_k: a request-level offset per task).
    'tau3_rbias': (('model.inv_temperature_init', 3.0), ('model.request_bias', True)),
    # The reference at the same budget: the study's OneTrans + PLE row as it is (its overrides
    # replace the whole model and the loss mode, so BASE's OneRank knobs do not reach it).
    'ple': 'OneTrans + PLE',
    # OneRank at 1.2x the PLE row's training FLOPs (d 128, 6 layers; the study's row as it is).
    'flops_matched': 'OneRank, 1.2x the FLOPs of OneTrans + PLE',
}


def main(name: str, steps: int, workdir: str) -> None:
  sys.path.insert(0, ROOT)
  from onetrans_jax.experiments import onerank_main
  from onetrans_jax.records import variant_config
  from onetrans_jax.train import train_and_evaluate
  c = onerank_main.get_config('mechanisms')
  probe = PROBES[name]
  if isinstance(probe, str):   # another row of the study, unchanged
    cfg = variant_config(c, dict(c.sweep.variants)[probe], 0)
  else:
    cfg = variant_config(c, BASE + probe, 0)   # later overrides win
  cfg.train.total_steps = steps
  cfg.train.early_stopping.patience = 100            # a fixed budget: no early stop
  out = train_and_evaluate(cfg, os.path.join(workdir, f'{name}_{steps}'))
  with open(os.path.join(HERE, f'{name}_{steps}.json'), 'w', encoding='utf-8') as f:
    json.dump({'probe': name, 'overrides': probe if isinstance(probe, str) else PROBES[name],
               'steps': steps,
               'valid_curve': out.get('valid_curve')}, f, indent=1)


def table() -> str:
  """Validation AUC / GAUC per task at steps 1000 and 2000, one line per probe."""
  lines = ['| probe | change from BASE | step | C-AUC | C-GAUC | A-AUC | A-GAUC | O-AUC | O-GAUC |',
           '|---|---|---|---|---|---|---|---|---|']
  for name in PROBES:
    path = os.path.join(HERE, f'{name}_2000.json')
    if not os.path.exists(path):
      continue
    r = json.load(open(path, encoding='utf-8'))
    change = (f"the study's {r['overrides']} row" if isinstance(r['overrides'], str) else
              ', '.join(f'{k.split(".")[-1]}={v:.3g}' if isinstance(v, float) else
                        f'{k.split(".")[-1]}={v}' for k, v in r['overrides']) or '-')
    for p in r['valid_curve']:
      if p['step'] in (1000, 2000):
        cells = [f"{p[t][m]:.4f}" for t in ('click', 'cart', 'order') for m in ('auc', 'uauc')]
        lines.append(f"| {name} | {change} | {p['step']} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  if sys.argv[1:] == ['--table']:
    print(table())
  else:
    main(sys.argv[1], int(sys.argv[2]),
         sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, 'runs', 'onerank_probes'))
