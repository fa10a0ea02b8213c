"""RQ3: quality against training FLOPs along length, depth and width (SPEC A.10 "Scaling").

The paper's three claims, tested on a sweep of ``experiments/onetrans_rq3_scaling.py``:
1. gains are roughly log-linear in training FLOPs;
2. sequence length gives the largest gain, then depth, then width;
3. OneTrans has a steeper slope than RankMixer + Transformer.

Each sweep row is one point (model, history fraction, depth, width); ``config.sweep.scaling``
lists them. An axis of a model is its points whose other two coordinates are the base's. Per
(model, axis, task) a least-squares line of the hold-out AUC (every seed an observation) against
log10(analytic training FLOPs per example) gives the slope, AUC per decade of FLOPs, with its 95%
t-interval; two models' slopes on one axis differ by a Welch interval. ``write`` adds
``scaling.json``, ``scaling.md`` and ``scaling.png`` (one panel per axis) to the study's report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onetrans_jax import stats
from onetrans_jax.reporting import or_dash as _fmt

AXES = ('length', 'depth', 'width')
FILES = ('scaling.json', 'scaling.md', 'scaling.png')


def points(results: Mapping[str, Any], rows: Sequence[Sequence[Any]], tasks: Sequence[str]
           ) -> list[dict[str, Any]]:
  """One entry per sweep row: its coordinates, analytic training FLOPs per example, two
  measured times per step (medians over its records: one seed that shared the machine with
  another job does not move it): the training step's own
  (``train_step_seconds``: the trainer's median over log intervals, evaluations and saves left
  out; None for records written before the trainer kept it) and the whole run's (wall seconds
  over steps: compile, evaluations and saves included), and per task the hold-out AUC / UAUC of
  every seed."""
  out = []
  for name, model, length, depth, width in rows:
    res = results[name]
    recs = res.get('records', ())
    per_step = [r['wall_seconds'] / r['step'] for r in recs
                if r.get('wall_seconds') and r.get('step')]
    train_step = [r['train_step_seconds'] for r in recs if r.get('train_step_seconds')]
    entry = {'variant': name, 'model': model, 'length': float(length), 'depth': int(depth),
             'width': int(width), 'flops_per_example': float(res['train_flops_per_example']),
             'train_step_seconds': float(np.median(train_step)) if train_step else None,
             'train_step_runs': len(train_step),
             'train_step_range': [float(min(train_step)), float(max(train_step))]
                                 if train_step else None,
             'seconds_per_step': float(np.median(per_step)) if per_step else None}
    for t in tasks:
      for metric in ('auc', 'uauc'):
        entry[f'{t}/{metric}'] = [float(run[t][metric]) for run in res['runs']]
    out.append(entry)
  return out


def axis_points(pts: Sequence[Mapping[str, Any]], model: str, axis: str,
                base: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  """The points of ``model`` along ``axis``: the other two coordinates at the base's, sorted."""
  others = [a for a in AXES if a != axis]
  sel = [p for p in pts if p['model'] == model and all(p[a] == base[a] for a in others)]
  return sorted(sel, key=lambda p: p[axis])


def fit(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
  """Least-squares line y = a + b x with the slope's 95% t-interval (n - 2 degrees of freedom;
  None below 3 observations or without spread in x) and R^2."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  n = int(x.size)
  out: dict[str, Any] = {'n': n, 'slope': None, 'intercept': None, 'se': None, 'ci95': None,
                         'r2': None}
  sxx = float(((x - x.mean()) ** 2).sum()) if n else 0.0
  if n < 2 or sxx <= 0:
    return out
  b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
  a = float(y.mean() - b * x.mean())
  resid = y - (a + b * x)
  syy = float(((y - y.mean()) ** 2).sum())
  out.update(slope=b, intercept=a, r2=1.0 - float((resid ** 2).sum()) / syy if syy > 0 else None)
  if n >= 3:
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    half = stats.t_quantile(0.975, n - 2) * se
    out.update(se=se, ci95=[b - half, b + half])
  return out


def slope_difference(f1: Mapping[str, Any], f2: Mapping[str, Any]) -> dict[str, Any]:
  """f1's slope minus f2's with a Welch 95% interval (independent fits); None without SEs."""
  if f1.get('slope') is None or f2.get('slope') is None:
    return {'difference': None, 'ci95': None}
  d = f1['slope'] - f2['slope']
  if f1.get('se') is None or f2.get('se') is None:
    return {'difference': d, 'ci95': None}
  v1, v2 = f1['se'] ** 2, f2['se'] ** 2
  dof = (v1 + v2) ** 2 / (v1 ** 2 / (f1['n'] - 2) + v2 ** 2 / (f2['n'] - 2)) if v1 + v2 > 0 else 1
  half = stats.t_quantile(0.975, max(1, int(dof))) * math.sqrt(v1 + v2)
  return {'difference': d, 'ci95': [d - half, d + half]}


def analyse(pts: Sequence[Mapping[str, Any]], base: Mapping[str, Any], models: Sequence[str],
            tasks: Sequence[str]) -> dict[str, Any]:
  """Fits per (model, axis, task) on AUC, the models' slope differences per axis, and the
  verdict on each of the paper's three claims (read on the first task, CTR)."""
  fits: dict[str, Any] = {m: {a: {} for a in AXES} for m in models}
  for m in models:
    for a in AXES:
      sel = axis_points(pts, m, a, base)
      for t in tasks:
        xs = [math.log10(p['flops_per_example']) for p in sel for _ in p[f'{t}/auc']]
        ys = [v for p in sel for v in p[f'{t}/auc']]
        fits[m][a][t] = dict(fit(xs, ys), points=len(sel))
  diffs = {}
  if len(models) >= 2:
    diffs = {a: {t: slope_difference(fits[models[0]][a][t], fits[models[1]][a][t])
                 for t in tasks} for a in AXES}
  return {'base': dict(base), 'models': list(models), 'tasks': list(tasks), 'fits': fits,
          'slope_differences': diffs,
          'claims': claims(fits, diffs, models, tasks[0])}


def _excludes_zero(ci: Sequence[float] | None, sign: int) -> bool:
  return ci is not None and (ci[0] > 0 if sign > 0 else ci[1] < 0)


def claims(fits: Mapping[str, Any], diffs: Mapping[str, Any], models: Sequence[str],
           task: str) -> list[dict[str, Any]]:
  """The paper's three scaling claims, each with the evidence that decides it on ``task``."""
  ref = models[0]
  slopes = {a: fits[ref][a][task] for a in AXES}
  positive = [a for a in AXES if _excludes_zero(slopes[a]['ci95'], +1)]
  r2 = {a: slopes[a]['r2'] for a in AXES}
  out = [{
      'claim': f'{ref}: gains are roughly log-linear in training FLOPs',
      'rule': 'a slope whose 95% CI lies above 0 on every axis',
      'reproduced': len(positive) == len(AXES),
      'evidence': (f'slopes whose 95% CI lies above 0: {positive or "none"} of {list(AXES)}; '
                   'R^2 of the lines: ' + ', '.join(
                       f'{a} {"—" if r2[a] is None else f"{r2[a]:.2f}"}' for a in AXES)),
  }]
  known = [a for a in AXES if slopes[a]['slope'] is not None]
  order = sorted(known, key=lambda a: -slopes[a]['slope'])
  separated = all(
      _excludes_zero(slope_difference(slopes[hi], slopes[lo])['ci95'], +1)
      for hi, lo in zip(order, order[1:]))
  out.append({
      'claim': f'{ref}: length gives the largest gain, then depth, then width',
      'rule': 'the slopes in the order length > depth > width (point estimates)',
      'reproduced': order == list(AXES),
      'evidence': ('slope order ' + ' > '.join(
          f'{a} ({slopes[a]["slope"]:+.4f})' for a in order) +
          ('; each step of the order separated by a 95% CI' if separated and len(order) > 1
           else '; not every step of the order is separated by a 95% CI')),
  })
  if len(models) >= 2:
    steeper = [a for a in AXES if _excludes_zero(diffs[a][task]['ci95'], +1)]
    ahead = [a for a in AXES if diffs[a][task]['difference'] is not None
             and diffs[a][task]['difference'] > 0]
    out.append({
        'claim': f'{models[0]} has a steeper slope than {models[1]}',
        'rule': 'a slope difference whose 95% CI lies above 0 on every axis',
        'reproduced': len(steeper) == len(AXES),
        'evidence': (f'steeper in the point estimate on {ahead or "no axis"}; with a 95% CI '
                     f'above 0 on {steeper or "no axis"}'),
    })
  return out


def _range(r: Sequence[float] | None) -> str:
  return '—' if r is None else f'{r[0]:.3f}-{r[1]:.3f}'


def _ci(ci: Sequence[float] | None) -> str:
  return '—' if ci is None else f'[{ci[0]:+.4f}, {ci[1]:+.4f}]'


def markdown(pts: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any]) -> str:
  """The points table, the fits and the claims."""
  tasks, models = analysis['tasks'], analysis['models']
  lines = ['## Scaling (RQ3)', '',
           'Every point: hold-out AUC mean ± std over seeds, analytic training FLOPs per example '
           '(each family\'s own count, onetrans_jax/models/<family>/config.py) and two measured '
           'times per step, medians over its runs: `step s`, the training step\'s own (the '
           'trainer\'s median over its log intervals, input included, evaluations and saves '
           'left out; `—` where the runs predate it; `range`: its lowest and highest run) and '
           '`run s/step`, the whole run\'s wall time over its steps (compile and evaluations '
           'included). The times were measured inside the study\'s own runs, under whatever '
           'else the machine ran (two study lanes share 2 cores; the runs span sessions and '
           'machines), so they are a record, not a benchmark: a point\'s range shows how far '
           'its seeds\' conditions differed, and the FLOPs are what the fits use.', '', '```']
  head = (f"{'model':<26} {'length':>6} {'depth':>5} {'width':>5} {'MFLOPs/ex':>10} "
          f"{'step s':>7} {'range':>11} {'run s/step':>10} " +
          ' '.join(f'{t + " AUC":>17}' for t in tasks))
  lines += [head, '-' * len(head)]
  for p in sorted(pts, key=lambda p: (p['model'], p['flops_per_example'])):
    cells = []
    for t in tasks:
      v = p[f'{t}/auc']
      cells.append('—' if not v else f'{np.mean(v):.4f}' + (
          f' ±{np.std(v, ddof=1):.4f}' if len(v) > 1 else ''))
    lines.append(f"{p['model']:<26} {p['length']:>6.3g} {p['depth']:>5} {p['width']:>5} "
                 f"{p['flops_per_example'] / 1e6:>10.3f} "
                 f"{_fmt(p.get('train_step_seconds'), '7.3f'):>7} "
                 f"{_range(p.get('train_step_range')):>11} "
                 f"{_fmt(p['seconds_per_step'], '10.3f')} "
                 + ' '.join(f'{c:>17}' for c in cells))
  lines += ['```', '', 'Slopes: AUC per decade of training FLOPs (least squares over every seed '
            'of the axis\'s points), 95% t-interval, R^2:', '', '```']
  for m in models:
    for a in AXES:
      for t in tasks:
        f = analysis['fits'][m][a][t]
        lines.append(f"{m:<26} {a:<7} {t:<6} slope {_fmt(f['slope'], '+.4f'):>8} "
                     f"{_ci(f['ci95']):>22}  R^2 {_fmt(f['r2'], '.2f'):>5}  "
                     f"({f['points']} points, {f['n']} runs)")
  lines.append('```')
  if analysis['slope_differences']:
    lines += ['', f'{models[0]} minus {models[1]} (Welch 95% interval):', '', '```']
    for a in AXES:
      for t in tasks:
        d = analysis['slope_differences'][a][t]
        lines.append(f"{a:<7} {t:<6} {_fmt(d['difference'], '+.4f'):>8} {_ci(d['ci95'])}")
    lines.append('```')
  lines += ['', f'The paper\'s claims (read on {tasks[0]} AUC):', '']
  for c in analysis['claims']:
    lines.append(f"- **{c['claim']}** (rule: {c['rule']}): "
                 f"{'reproduced' if c['reproduced'] else 'not reproduced'}. {c['evidence']}.")
  lines += ['', '![scaling](scaling.png)', '']
  return '\n'.join(lines)


def plot(path: str, pts: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any],
         task: str) -> bool:
  """Three panels (length, depth, width): x = training FLOPs per example (log), y = AUC with
  ± std over seeds, each model's points and fitted line."""
  import matplotlib  # local: the report is the only user
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
  for ax, axis in zip(axes, AXES):
    for k, m in enumerate(analysis['models']):
      sel = axis_points(pts, m, axis, analysis['base'])
      if not sel:
        continue
      x = np.array([p['flops_per_example'] for p in sel])
      y = np.array([np.mean(p[f'{task}/auc']) for p in sel])
      err = np.array([np.std(p[f'{task}/auc'], ddof=1) if len(p[f'{task}/auc']) > 1 else 0.0
                      for p in sel])
      color = f'C{k}'
      ax.errorbar(x, y, yerr=err, fmt='o', color=color, capsize=3, label=m)
      for p, xi, yi in zip(sel, x, y):
        ax.annotate(f'{p[axis]:g}', (xi, yi), textcoords='offset points', xytext=(4, 4),
                    fontsize=7, color=color)
      f = analysis['fits'][m][axis][task]
      if f['slope'] is not None:
        xs = np.logspace(np.log10(x.min()), np.log10(x.max()), 20)
        ax.plot(xs, f['intercept'] + f['slope'] * np.log10(xs), '-', color=color, alpha=0.6)
    ax.set_xscale('log')
    # Short labels ('20M') at 1, 2, 3 and 5 x 10^k only: scientific minor-tick labels
    # ('3x10^7') ran into each other.
    short = ticker.FuncFormatter(
        lambda v, _: f'{v / 1e6:g}M' if v > 0 and round(v / 10 ** np.floor(np.log10(v)), 6)
        in (1, 2, 3, 5) else '')
    ax.xaxis.set_major_formatter(short)
    ax.xaxis.set_minor_formatter(short)
    ax.set_title(axis)
    ax.set_xlabel('training FLOPs per example')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f'hold-out {task} AUC')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write(workdir: str, results: Mapping[str, Any], sweep: Any) -> dict[str, Any]:
  """scaling.json / .md / .png in ``workdir`` and the scaling section appended to report.md."""
  tasks = [t for t, _ in sweep.tasks]
  rows = [tuple(r) for r in sweep.scaling]
  pts = points(results, rows, tasks)
  base = dict(zip(AXES, sweep.scaling_base))
  models = list(dict.fromkeys(r[1] for r in rows))
  analysis = analyse(pts, base, models, tasks)
  with open(os.path.join(workdir, 'scaling.json'), 'w', encoding='utf-8') as f:
    json.dump({'points': pts, **analysis}, f, indent=1)
    f.write('\n')
  text = markdown(pts, analysis)
  with open(os.path.join(workdir, 'scaling.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  plot(os.path.join(workdir, 'scaling.png'), pts, analysis, tasks[0])
  report = os.path.join(workdir, 'report.md')
  if os.path.exists(report):
    with open(report, 'a', encoding='utf-8') as f:
      f.write('\n' + text)
  return analysis
