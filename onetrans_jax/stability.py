"""Training stability across a study's rows, from the run records' diagnostics (issue 21).

Each run logs, every ``train.diagnostics_every`` steps (train.py ``_diagnose``), every task's
detrended BCE variance over the last ``train.diagnostics_window`` logged steps (one loss definition
for every row, the trend line removed so that a falling loss does not count as noise) and the
tasks' gradient cosines on the shared encoder; the record keeps that series. Here a run is
summarised by the median of its variances over the logged steps whose window is full (the first
window's points mix in the start-up transient; a run too short to fill one uses every point) and
by the mean of its cosines over the same points. Rows are compared with the reference seed by
seed: the ratio of the variances, a 95% t-interval on the mean log-ratio over the seeds both ran.
OneRank's paper (SPEC C.6) claims that without detachment the add-to-cart task trains less
stably: ``sweep.stability_check = (row, task)`` states that claim's verdict (ratio interval above
1: reproduced).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onetrans_jax import stats


def run_summary(record: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float] | None:
  """{'loss_var/<task>': median detrended variance, 'grad_cos/<a>__<b>': mean cosine} of one run
  record over its full-window diagnostics points; None when the record has no diagnostics."""
  series = record.get('diagnostics') or []
  if not series:
    return None
  window = int((record.get('config') or {}).get('train.diagnostics_window') or 1)
  full = series[window - 1:] or series
  out: dict[str, float] = {}
  for task in tasks:
    vals = [p[f'loss_var/{task}'] for p in full if p.get(f'loss_var/{task}') is not None]
    if vals:
      out[f'loss_var/{task}'] = float(np.median(vals))
  for key in sorted({k for p in full for k in p if k.startswith('grad_cos/')}):
    vals = [p[key] for p in full if p.get(key) is not None]
    out[key] = float(np.mean(vals))
  return out


def analyse(run_records: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str],
            reference: str, tasks: Sequence[str]) -> dict[str, Any]:
  """Per row: each signal's mean and std over seeds and, against ``reference``, each task's
  variance ratio (geometric mean over the paired seeds) with its 95% interval. Empty when no
  record has diagnostics."""
  per_run = {n: {int(r['seed']): s for r in run_records.get(n, ())
                 if (s := run_summary(r, tasks)) is not None} for n in names}
  if not any(per_run.values()):
    return {}
  rows: dict[str, Any] = {}
  for name in names:
    runs = per_run[name]
    if not runs:
      continue
    keys = sorted({k for s in runs.values() for k in s})
    row: dict[str, Any] = {'seeds': sorted(runs), 'signals': {}, 'vs_reference': {}}
    for key in keys:
      vals = [s[key] for s in runs.values() if key in s]
      row['signals'][key] = {'mean': float(np.mean(vals)),
                             'std': float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                             'n': len(vals)}
    if name != reference:
      ref = per_run.get(reference, {})
      for task in tasks:
        key = f'loss_var/{task}'
        seeds = [s for s in sorted(runs) if s in ref and runs[s].get(key, 0) > 0
                 and ref[s].get(key, 0) > 0]
        if not seeds:
          continue
        logs = [math.log(runs[s][key] / ref[s][key]) for s in seeds]
        cell: dict[str, Any] = {'ratio': math.exp(float(np.mean(logs))), 'n': len(seeds),
                                'ci95': None}
        if len(seeds) > 1:
          pr = stats.paired_difference(logs, [0.0] * len(logs))
          cell['ci95'] = [math.exp(pr.ci_low), math.exp(pr.ci_high)]
        row['vs_reference'][task] = cell
    rows[name] = row
  return {'reference': reference, 'tasks': list(tasks), 'rows': rows}


def check(analysis: Mapping[str, Any], row: str, task: str) -> dict[str, Any]:
  """The claim that ``row`` trains ``task`` less stably than the reference: reproduced when its
  variance ratio's 95% interval lies above 1."""
  claim = (f'{row} trains {task} less stably than {analysis.get("reference")} (paper: without '
           'detachment, add-to-cart training is less stable)')
  cell = ((analysis.get('rows') or {}).get(row) or {}).get('vs_reference', {}).get(task)
  if cell is None:
    return {'claim': claim, 'reproduced': None, 'evidence': f'no diagnostics of {row} and the '
            'reference on the same seeds'}
  ci = cell['ci95']
  where = 'no interval (one seed)' if ci is None else f'95% CI [{ci[0]:.2f}, {ci[1]:.2f}]'
  return {'claim': claim, 'reproduced': None if ci is None else bool(ci[0] > 1.0),
          'evidence': f'{task} detrended BCE variance ratio {cell["ratio"]:.2f}, {where}, '
                      f'over {cell["n"]} paired seeds'}


def markdown(analysis: Mapping[str, Any], claim: Mapping[str, Any] | None = None) -> list[str]:
  """The report's stability section."""
  if not analysis:
    return []
  tasks = analysis['tasks']
  lines = ['## Training stability', '',
           "Each run's median detrended BCE variance per task (over the logged steps whose window "
           'is full; x1e4), its mean gradient cosine between tasks on the shared encoder, and the '
           'variance ratio to the reference (geometric mean over paired seeds, 95% interval; '
           '> 1: less stable). Mean ± std over seeds (onetrans_jax/stability.py).', '', '```']
  cos_keys = sorted({k for r in analysis['rows'].values() for k in r['signals']
                     if k.startswith('grad_cos/')})
  head = (f"{'variant':<44}" + ''.join(f"{'var ' + t:>18}" for t in tasks)
          + ''.join(f"{'cos ' + k.split('/', 1)[1].replace('__', '-'):>16}" for k in cos_keys)
          + ''.join(f"{'ratio ' + t:>24}" for t in tasks))
  lines.append(head)
  for name, row in analysis['rows'].items():
    sig = row['signals']
    cells = []
    for t in tasks:
      s = sig.get(f'loss_var/{t}')
      cells.append(f"{s['mean'] * 1e4:>10.3f} ±{s['std'] * 1e4:<6.3f}" if s else f"{'—':>18}")
    for k in cos_keys:
      s = sig.get(k)
      cells.append(f"{s['mean']:>+8.3f} ±{s['std']:<6.3f}" if s else f"{'—':>16}")
    for t in tasks:
      c = row['vs_reference'].get(t)
      if c is None:
        cells.append(f"{'—':>24}")
      elif c['ci95'] is None:
        cells.append(f"{c['ratio']:>12.2f}{'':>12}")
      else:
        cells.append(f"{c['ratio']:>8.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
                     .rjust(24))
    lines.append(f'{name[:44]:<44}' + ''.join(cells))
  lines += ['```', '']
  if claim is not None:
    verdict = {True: 'reproduced', False: 'not reproduced', None: 'undecided'}[claim['reproduced']]
    lines += [f"- **{claim['claim']}** (rule: the variance ratio's 95% interval above 1): "
              f"{verdict}. {claim['evidence']}.", '']
  return lines
