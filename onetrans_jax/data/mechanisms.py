"""Oracle analysis of the mechanism world: how much label signal each planted mechanism carries.

The mechanisms themselves (what each plants, which OneTrans component it tests and why a model
without that component is at a disadvantage) are documented and generated in ``synthetic.py``
(``SyntheticConfig.mechanisms``). Measured here without training: the oracle AUC of the true
probabilities against the "ablated oracle" whose score drops one mechanism's term (replaced by
its global mean, a constant): the most an ablated component can cost if the rest of the truth
were learned exactly. AUCs are expectations over the label draws (each impression counts as a
positive with weight p and as a negative with weight 1 - p; the cart AUC over clicked
impressions weights each impression by its true click probability), so they carry no
label-sampling noise.

  python -m onetrans_jax.data.mechanisms --out results/mechanism_world/oracle.md

``capture`` asks the converse of a trained run: how much of each planted click term its click
logit carries (``--capture WORKDIR [WORKDIR ...]``, on the run's validation split by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from onetrans_jax import metrics
from onetrans_jax.data.synthetic import MECHANISMS, SyntheticConfig, SyntheticWorld


def soft_auc(scores: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
  """AUC expected over the label draws: impression i is a positive with probability p_i.

  Each impression enters as a positive with weight w p and as a negative with weight w (1 - p);
  its pair with itself (impossible) is taken back out, so this is the ratio of the expected
  numbers of correctly ordered and of all positive-negative pairs.
  """
  w = np.ones_like(p, np.float64) if weights is None else weights.astype(np.float64)
  p = p.astype(np.float64)
  wp, wn = w * p, w * (1 - p)
  a = metrics.auc(np.concatenate([scores, scores]), np.concatenate([np.ones_like(p), 0 * p]),
                  np.concatenate([wp, wn]))
  den = wp.sum() * wn.sum()
  self_pairs = float((wp * wn).sum())
  return (a * den - 0.5 * self_pairs) / (den - self_pairs)


def collect(cfg: SyntheticConfig, num_requests: int, start: int = 0) -> dict[str, Any]:
  """Logits, true probabilities and mechanism terms of requests ``start..start+n`` (valid
  candidates only, in request then slot order), and each impression's request index."""
  world = SyntheticWorld(cfg)
  probs, requests, terms = [], [], {m: [] for m in cfg.mechanisms}
  for i in range(start, start + num_requests):
    r, t = world.request_with_terms(i)
    m = r['cand']['mask']
    probs.append(r['true_prob'][m])
    requests.append(np.full(int(m.sum()), i, np.int64))
    for name in t:
      terms[name].append(t[name])
  p = np.concatenate(probs).astype(np.float64)
  p = np.clip(p, 1e-7, 1 - 1e-7)
  return {'prob': p, 'logit': np.log(p / (1 - p)), 'request': np.concatenate(requests),
          'terms': {k: np.concatenate(v) for k, v in terms.items()}}


def oracle_row(cfg: SyntheticConfig, num_requests: int, start: int = 0) -> dict[str, Any]:
  """Oracle AUCs, positive rates and, per active mechanism, the oracle-AUC drop when its term is
  replaced by its global mean (click over all impressions; cart over clicked impressions)."""
  d = collect(cfg, num_requests, start)
  p, logit = d['prob'], d['logit'][:, :2]

  def aucs(score: np.ndarray) -> tuple[float, float]:
    return soft_auc(score[:, 0], p[:, 0]), soft_auc(score[:, 1], p[:, 1], p[:, 0])

  click_auc, cart_auc = aucs(logit)
  drops = {}
  for name, term in d['terms'].items():
    a = aucs(logit - cfg.mechanism_strength * term)
    drops[name] = (click_auc - a[0], cart_auc - a[1])
  return {'mechanisms': list(cfg.mechanisms), 'click_auc': click_auc, 'cart_auc': cart_auc,
          'drop': drops, 'click_rate': float(p[:, 0].mean()),
          'cart_given_click_rate': float((p[:, 0] * p[:, 1]).sum() / p[:, 0].sum()),
          'impressions': int(len(p))}


def oracle_report(base: SyntheticConfig, num_requests: int = 4000, start: int = 0
                  ) -> tuple[list[dict[str, Any]], str]:
  """Rows for no mechanisms, each alone and all five, and their markdown table."""
  settings = [()] + [(m,) for m in MECHANISMS] + [MECHANISMS]
  rows = [oracle_row(dataclasses.replace(base, mechanisms=s), num_requests, start)
          for s in settings]
  head = (['mechanisms', 'click AUC', 'cart AUC'] + [f'drop {m} (click / cart)' for m in MECHANISMS]
          + ['click rate', 'cart / click rate'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    name = ('none' if not r['mechanisms'] else
            'all five' if len(r['mechanisms']) == len(MECHANISMS) else r['mechanisms'][0])
    cells = [name, f"{r['click_auc']:.4f}", f"{r['cart_auc']:.4f}"]
    cells += [f"{r['drop'][m][0]:+.4f} / {r['drop'][m][1]:+.4f}" if m in r['drop'] else ''
              for m in MECHANISMS]
    cells += [f"{r['click_rate']:.3f}", f"{r['cart_given_click_rate']:.3f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return rows, '\n'.join(lines)


def capture(workdir: str, split: str = 'valid') -> dict[str, Any]:
  """What a trained run's click logit holds of each planted click term, on ``split``.

  Least squares of the run's click logit (its best, else latest, checkpoint) on the true click
  logit's parts over the split's impressions: one column per active mechanism's term and one for
  the rest (the world's base logit: taste, intent, popularity and offsets), plus an intercept.
  The oracle's coefficients are all 1 (the mechanisms' strength); a model whose logit is c x the
  truth has all c. A mechanism's coefficient over the rest's says how much of its term the model
  learned relative to how much of the base it learned: 1 as fully, 0 not at all. Also the run's
  soft AUC (expected over label draws) against the true probabilities, and the oracle's.
  """
  from onetrans_jax import inference, saved_run  # the training stack: not for the oracle table
  from onetrans_jax.errors import ConfigError
  run = saved_run.load(workdir, log=lambda _: None)
  cfg = getattr(run.dataset.source, 'cfg', None)
  if not isinstance(cfg, SyntheticConfig) or not cfg.mechanisms:
    raise ConfigError(f'{workdir}: capture needs a run on the mechanism world (data.name '
                      f"'synthetic' with data.mechanisms); this run's data is "
                      f'{run.config.data.get("name")!r}')
  a, b = inference.split_range(run.dataset, split, run.config)
  tables = list(inference.predictions(run, run.dataset, (a, b), labels=False))
  p_run = np.clip(np.concatenate([t.column('p_click').to_numpy() for t in tables])
                  .astype(np.float64), 1e-7, 1 - 1e-7)
  request = np.concatenate([t.column('request').to_numpy() for t in tables])
  d = collect(cfg, b - a, a)
  if len(p_run) != len(d['prob']) or not np.array_equal(request, d['request']):
    raise RuntimeError(f'{workdir}: the run\'s {len(p_run)} predictions of requests {a}..{b - 1} '
                       f'do not line up with the world\'s {len(d["prob"])} impressions of them')
  y = np.log(p_run / (1 - p_run))
  terms = {m: cfg.mechanism_strength * t[:, 0] for m, t in d['terms'].items()}
  return {'workdir': workdir, 'split': split, 'step': run.step, 'requests': [a, b],
          'impressions': int(len(y)), **decompose(y, d['logit'][:, 0], terms),
          'auc': soft_auc(y, d['prob'][:, 0]),
          'oracle_auc': soft_auc(d['logit'][:, 0], d['prob'][:, 0]),
          **between_within(y, d['logit'][:, 0], d['prob'][:, 0], request)}


def between_within(score: np.ndarray, logit: np.ndarray, prob: np.ndarray, request: np.ndarray
                   ) -> dict[str, float]:
  """Where a score's ranking is lost: across requests or within them.

  Both the score and the true logit split into their request means and the deviations from
  them. 'corr_between' / 'corr_within': the correlation of the score's part with the truth's.
  'auc_true_between': the soft AUC of the score's within part plus the truth's request means,
  i.e. the score with its across-request ranking made perfect; 'auc_true_within': its request
  means plus the truth's within part. The truth's part enters in the score's units: scaled by the
  least-squares slope of the score's other part on the truth's (the within slope for the request
  means, the across slope for the within part). The larger of the two AUCs marks the part whose
  error costs more.
  """
  _, inv = np.unique(request, return_inverse=True)
  count = np.bincount(inv)
  s_mean, t_mean = np.bincount(inv, score) / count, np.bincount(inv, logit) / count
  s_in, t_in = score - s_mean[inv], logit - t_mean[inv]
  slope_b = np.polyfit(t_mean, s_mean, 1)[0]
  slope_w = np.polyfit(t_in, s_in, 1)[0]
  return {'corr_between': float(np.corrcoef(s_mean, t_mean)[0, 1]),
          'corr_within': float(np.corrcoef(s_in, t_in)[0, 1]),
          'auc_true_between': soft_auc(s_in + slope_w * t_mean[inv], prob),
          'auc_true_within': soft_auc(s_mean[inv] + slope_b * t_in, prob)}


def decompose(score: np.ndarray, logit: np.ndarray, terms: dict[str, np.ndarray]
              ) -> dict[str, Any]:
  """Least squares of ``score`` on [1, logit - sum(terms), term_1 .. term_M] (``capture``):
  -> {'rest': the base part's coefficient, 'terms': {name: coefficient}, 'r2'}."""
  names = list(terms)
  t = np.stack([terms[m] for m in names], -1) if names else np.zeros((len(logit), 0))
  x = np.column_stack([np.ones_like(logit), logit - t.sum(-1), t])
  coef, *_ = np.linalg.lstsq(x, score, rcond=None)
  resid = score - x @ coef
  r2 = 1.0 - float((resid ** 2).sum() / ((score - score.mean()) ** 2).sum())
  return {'rest': float(coef[1]), 'terms': {m: float(c) for m, c in zip(names, coef[2:])},
          'r2': r2}


def capture_table(rows: Sequence[dict[str, Any]]) -> str:
  """One line per run: soft click AUC, the rest's coefficient, each term's relative to it."""
  names = list(dict.fromkeys(m for r in rows for m in r['terms']))   # runs on other worlds: —
  lines = ['| run | step | click soft AUC (oracle) | base coef | ' +
           ' | '.join(f'{m} / base' for m in names) + ' | R^2 | corr across / within requests '
           '| AUC, across made true | AUC, within made true |',
           '|' + '---|' * (8 + len(names))]
  for r in rows:
    cells = [os.path.basename(os.path.normpath(r['workdir'])), str(r['step']),
             f"{r['auc']:.4f} ({r['oracle_auc']:.4f})", f"{r['rest']:.3f}"]
    cells += [f"{r['terms'][m] / r['rest']:.2f}" if m in r['terms'] else '—' for m in names]
    cells += [f"{r['r2']:.3f}"]
    cells += [f"{r['corr_between']:.3f} / {r['corr_within']:.3f}",
              f"{r['auc_true_between']:.4f}", f"{r['auc_true_within']:.4f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--capture', nargs='+', default=None, metavar='WORKDIR',
                  help="trained runs on the mechanism world: each one's capture of the planted "
                  'click terms (capture()), instead of the oracle table')
  ap.add_argument('--split', default='valid', help='--capture: the split scored')
  ap.add_argument('--num_requests', type=int, default=4000)
  ap.add_argument('--start', type=int, default=0, help='first request index')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--strength', type=float, default=1.0)
  # Defaults: the sizes of onetrans_jax/experiments/common.py::mechanism_data.
  ap.add_argument('--click_len', type=int, default=32)
  ap.add_argument('--cart_len', type=int, default=12)
  ap.add_argument('--order_len', type=int, default=8)
  ap.add_argument('--num_candidates', type=int, default=8)
  ap.add_argument('--min_candidates', type=int, default=4)
  ap.add_argument('--out', default='', help='write the table here (.md) and the rows beside it '
                  '(.json)')
  a = ap.parse_args(argv)
  if a.capture:
    rows = [capture(w, a.split) for w in a.capture]
    table = capture_table(rows)
    print(table)
    if a.out:
      _write(a.out, table, rows)
    return
  cfg = SyntheticConfig(seed=a.seed, mechanism_strength=a.strength, click_len=a.click_len,
                        cart_len=a.cart_len, order_len=a.order_len,
                        num_candidates=a.num_candidates, min_candidates=a.min_candidates)
  rows, table = oracle_report(cfg, a.num_requests, a.start)
  title = (f'Oracle AUC of the mechanism world ({a.num_requests} requests from index {a.start}, '
           f'seed {a.seed}, strength {a.strength}, click/cart/order lengths '
           f'{a.click_len}/{a.cart_len}/{a.order_len}, {a.min_candidates}-{a.num_candidates} '
           'candidates). Drop: oracle AUC minus that of the oracle whose score replaces the '
           "mechanism's term by a constant; AUCs are expectations over the label draws.")
  print(title + '\n\n' + table)
  if a.out:
    _write(a.out, f'{title}\n\n{table}', {'args': vars(a), 'rows': rows})


def _write(out: str, text: str, payload: Any) -> None:
  """``text`` under the command that regenerates it to ``out`` (.md), ``payload`` beside it
  (.json)."""
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out, 'w') as f:
    command = 'python -m onetrans_jax.data.mechanisms ' + ' '.join(sys.argv[1:])
    f.write(f'Regenerate: `{command.strip()}`\n\n{text}\n')
  with open(os.path.splitext(out)[0] + '.json', 'w') as f:
    json.dump(payload, f, indent=1)


if __name__ == '__main__':
  main()
