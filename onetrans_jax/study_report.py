"""What a finished sweep leaves for a reader: paired statistics, ``summary.json``, ``report.md``
and plots (learning curves, relative differences with their confidence intervals).

Every variant is compared with the reference row *paired by seed*: seed s of the variant against
seed s of the reference (same data order, same initial randomness where the parameters agree), a
t-interval over the seeds' differences (stats.paired_difference). A difference whose 95% interval
excludes 0 is marked significant. With one seed there is no interval over seeds: the cells say so
(``ci95`` null) rather than print a number that means nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onetrans_jax import claims, records, reporting, stability, stats

METRICS = ('auc', 'uauc', 'logloss')


def _predictions(path: str | None) -> dict[str, np.ndarray] | None:
  """The hold-out impressions a run scored (a train.PREDICTIONS_FILE or its committed copy,
  sweep.predictions_path), or None."""
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _bootstrap_auc(a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray] | None,
                   task: str, n_boot: int, level: float) -> stats.BootstrapResult | None:
  """Paired bootstrap over users of one task's AUC difference between two runs' predictions
  (``_predictions``) on the same hold-out impressions (None when either run kept none or they
  scored different impressions)."""
  if a is None or b is None or f'{task}.labels' not in a or f'{task}.labels' not in b:
    return None
  if (a[f'{task}.labels'].shape != b[f'{task}.labels'].shape or
      not np.array_equal(a[f'{task}.labels'], b[f'{task}.labels']) or
      not np.array_equal(a[f'{task}.user_ids'], b[f'{task}.user_ids'])):
    return None
  return stats.paired_bootstrap(b[f'{task}.labels'], a[f'{task}.probs'], b[f'{task}.probs'],
                                b[f'{task}.user_ids'], n_boot=n_boot, seed=0, level=level)


def compare(results: Mapping[str, Any], names: Sequence[str], reference: str,
            tasks: Sequence[str], level: float = 0.95,
            predictions: Mapping[str, Sequence[str | None]] | None = None,
            n_boot: int = 200, metrics: Sequence[str] = METRICS
            ) -> dict[str, dict[str, dict[str, Any]]]:
  """{variant: {'<task>/<metric>': {mean, std, n, delta_vs_ref, ci95, rel_pct, rel_ci95_pct,
  significant, ci_method}}}: per-seed values paired with the reference's by seed order (a
  t-interval over seeds); with one seed each, the AUC's interval comes from a paired bootstrap
  over the hold-out's users (``n_boot`` resamples; 0: none) where both runs' ``predictions``
  files (one path per seed, None where a run kept none) exist."""
  out: dict[str, dict[str, dict[str, Any]]] = {}
  loaded: dict[str, Any] = {}   # variant -> its predictions, each file read once

  def scored(name: str) -> dict[str, np.ndarray] | None:
    if name not in loaded:
      loaded[name] = _predictions(predictions[name][0])
    return loaded[name]

  for name in names:
    row = {}
    for task in tasks:
      for metric in metrics:
        vals = np.asarray([r[task][metric] for r in results[name]['runs']], np.float64)
        ref = np.asarray([r[task][metric] for r in results[reference]['runs']], np.float64)
        # A metric can be NaN (a task without both classes in a tiny hold-out): its cell says so
        # and gets no interval, rather than stopping the report of a finished study.
        finite = bool(np.isfinite(vals).all() and np.isfinite(ref).all())
        n = len(vals)
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if n > 1 else float('nan')
        cell = {'mean': mean, 'std': None if math.isnan(std) else std, 'n': n,
                'delta_vs_ref': 0.0, 'ci95': [0.0, 0.0], 'rel_pct': 0.0,
                'rel_ci95_pct': [0.0, 0.0], 'significant': False, 'ci_method': None}
        if name != reference:
          cell['delta_vs_ref'] = mean - float(np.mean(ref))
          cell['rel_pct'] = 100.0 * cell['delta_vs_ref'] / float(np.mean(ref))
          cell['ci95'] = cell['rel_ci95_pct'] = None
          if finite and len(vals) == len(ref) >= 2:
            p = stats.paired_difference(vals, ref, level)
            cell.update(delta_vs_ref=p.mean_diff, ci95=[p.ci_low, p.ci_high],
                        rel_pct=p.rel_diff_pct,
                        rel_ci95_pct=[p.rel_ci_low_pct, p.rel_ci_high_pct],
                        significant=bool(p.significant), ci_method='t over seeds')
          elif (finite and len(vals) == len(ref) == 1 and metric == 'auc' and predictions and
                n_boot and predictions.get(name) and predictions.get(reference)):
            bs = _bootstrap_auc(scored(name), scored(reference), task, n_boot, level)
            if bs is not None:
              ref_mean = abs(float(np.mean(ref)))
              cell.update(ci95=[bs.ci_low, bs.ci_high],
                          rel_ci95_pct=[100 * bs.ci_low / ref_mean, 100 * bs.ci_high / ref_mean],
                          significant=bool(bs.significant),
                          ci_method=f'bootstrap over {bs.n_groups} users, {bs.n_boot} resamples')
        row[f'{task}/{metric}'] = cell
    out[name] = row
  return out


def summary(study: str, dataset: str, reference: str, seeds: Sequence[int],
            tasks: Sequence[str], names: Sequence[str], results: Mapping[str, Any],
            comparison: Mapping[str, Any]) -> dict[str, Any]:
  """The study's machine-readable result (the schema README tables are generated from)."""
  keep = ('mean', 'std', 'n', 'delta_vs_ref', 'ci95', 'ci_method')
  return {'study': study, 'dataset': dataset, 'reference': reference, 'seeds': list(seeds),
          'tasks': list(tasks),
          'rows': [{'variant': name, 'params': float(results[name]['params']),
                    'train_flops_per_example': float(results[name]['train_flops_per_example']),
                    'metrics': {k: {f: v[f] for f in keep} for k, v in comparison[name].items()}}
                   for name in names]}


# ---------------------------------------------------------------------------------- plots
def _curve_records(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
  """A run record's validation curve in metrics.jsonl's form ('valid' records with 'task/metric'
  keys): what a reused, committed run contributes to the learning curves (no train loss)."""
  curve = (record or {}).get('valid_curve') or []
  return [{'split': 'valid', 'step': p['step'],
           **{f'{t}/{k}': v for t, m in p.items() if t != 'step' for k, v in m.items()}}
          for p in curve]


def _curves(recs: Sequence[Mapping[str, Any]], split: str, key: str
            ) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``key`` in one run's ``split`` records; the hold-out's periodic 'eval'
  curve ends with its 'final' evaluation."""
  splits = (split, 'final') if split == 'eval' else (split,)
  picked = [(r['step'], r[key]) for r in recs if r.get('split') in splits and key in r]
  return (np.asarray([s for s, _ in picked]),
          np.asarray([v for _, v in picked], np.float64))


def plot_learning_curves(path: str, run_dirs: Mapping[str, Sequence[str]],
                         tasks: Sequence[str],
                         run_records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
                         ) -> bool:
  """Train loss and the validation AUC of each task against step (the hold-out's periodic
  evaluation where no validation split was kept): one line per variant, the mean over seeds,
  with a band from the lowest to the highest seed. A run without a local log (reused from a
  committed record) contributes its record's validation curve. False when nothing was logged."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  logs = {}
  for name, dirs in run_dirs.items():
    recs = list((run_records or {}).get(name, ())) + [None] * len(dirs)
    for d, rec in zip(dirs, recs):
      logs[d] = reporting.read_metrics(d) or _curve_records(rec)   # a reused run: no log
  panels = [('train', 'loss', 'train loss')]
  split = 'valid' if any(_curves(recs, 'valid', f'{tasks[0]}/auc')[0].size
                         for recs in logs.values()) else 'eval'
  panels += [(split, f'{t}/auc', f'{split} {t} AUC') for t in tasks]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  drew = False
  for ax, (sp, key, title) in zip(axes[0], panels):
    for name, dirs in run_dirs.items():
      curves = [_curves(logs[d], sp, key) for d in dirs]
      curves = [c for c in curves if c[0].size]
      if not curves:
        continue
      n = min(c[0].size for c in curves)
      steps = curves[0][0][:n]
      vals = np.stack([c[1][:n] for c in curves])
      line, = ax.plot(steps, vals.mean(0), label=name, lw=1.4, marker='o', ms=3)
      if len(curves) > 1:
        ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.2)
      drew = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  if drew:  # the legend on the first panel with lines (committed records have no train loss)
    next(ax for ax in axes[0] if ax.get_legend_handles_labels()[0]).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
  plt.close(fig)
  return drew


def plot_deltas(path: str, comparison: Mapping[str, Any], names: Sequence[str], reference: str,
                tasks: Sequence[str], metric: str = 'auc') -> bool:
  """Each variant's relative difference from the reference (%), one panel per task, with its
  95% interval over seeds as an error bar (none with one seed). False with no other variant."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  others = [n for n in names if n != reference]
  if not others:
    return False
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 0.5 * len(others) + 1.6),
                           squeeze=False)
  for ax, task in zip(axes[0], tasks):
    cells = [comparison[n][f'{task}/{metric}'] for n in others]
    rel = np.array([c['rel_pct'] for c in cells])
    lo = np.array([c['rel_pct'] - c['rel_ci95_pct'][0] if c['rel_ci95_pct'] else 0.0
                   for c in cells])
    hi = np.array([c['rel_ci95_pct'][1] - c['rel_pct'] if c['rel_ci95_pct'] else 0.0
                   for c in cells])
    colors = ['tab:green' if c['significant'] and r > 0 else 'tab:red' if c['significant']
              else 'tab:gray' for c, r in zip(cells, rel)]
    y = np.arange(len(others))
    ax.barh(y, rel, xerr=[lo, hi], color=colors, capsize=3)
    ax.axvline(0, color='black', lw=0.8)
    ax.set_yticks(y, others, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(f'{task} {metric.upper()} vs {reference} (%)', fontsize=10)
    ax.grid(axis='x', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------- convergence
def _curve_value(curve: Sequence[Mapping[str, Any]], step: int, task: str, metric: str
                 ) -> float | None:
  """The validation ``task``/``metric`` at the latest evaluation at or before ``step``."""
  picked = [p for p in curve if p['step'] <= step and task in p and metric in p[task]]
  return float(picked[-1][task][metric]) if picked else None


def convergence(run_records: Mapping[str, Sequence[Mapping[str, Any]]]
                ) -> dict[str, dict[str, Any]]:
  """Per variant, whether its runs converged under the study's early stopping: steps trained,
  the best step, how many stopped early and how many reached the step cap; for a run at the cap,
  its early-stopping metric's gain over the patience window before the end (patience x
  eval_every steps), the amount by which it was still improving when the cap cut it off. Read
  from the run records (their config and validation curve), so reused runs count too."""
  out: dict[str, dict[str, Any]] = {}
  for name, recs in run_records.items():
    rows = []
    for r in recs:
      cfg = r.get('config') or {}
      cap = cfg.get('train.total_steps')
      key = str(cfg.get('train.early_stopping.metric') or '')
      parts = key.split('/')
      if cap is None or len(parts) != 3 or not r.get('step'):
        continue
      window = int(cfg.get('train.early_stopping.patience') or 0) * int(
          cfg.get('train.eval_every') or 0)
      at_cap = int(r['step']) >= int(cap)
      gain = None
      curve = r.get('valid_curve') or []
      if at_cap and window and curve:
        before = _curve_value(curve, int(r['step']) - window, parts[1], parts[2])
        values = [float(p[parts[1]][parts[2]]) for p in curve
                  if parts[1] in p and parts[2] in p[parts[1]]]
        if before is not None:   # then ``values`` holds at least that point
          gain = max(values) - before
      rows.append({'cap': int(cap), 'step': int(r['step']), 'best_step': r.get('best_step'),
                   'at_cap': at_cap, 'gain': gain, 'window': window, 'metric': key})
    if not rows:
      continue
    capped = [x for x in rows if x['at_cap']]
    gains = [x['gain'] for x in capped if x['gain'] is not None]
    out[name] = {
        'runs': len(rows), 'cap': max(x['cap'] for x in rows), 'metric': rows[0]['metric'],
        'mean_step': float(np.mean([x['step'] for x in rows])),
        'mean_best_step': (float(np.mean(best)) if (best := [
            x['best_step'] for x in rows if x['best_step'] is not None]) else None),
        'stopped_early': len(rows) - len(capped), 'at_cap': len(capped),
        'at_cap_best_last': sum(1 for x in capped if x['best_step'] == x['step']),
        'window': rows[0]['window'],
        'at_cap_gain_mean': float(np.mean(gains)) if gains else None,
        'at_cap_gain_max': float(np.max(gains)) if gains else None,
    }
  return out


def convergence_markdown(conv: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """The report's convergence section: one line per variant and a count of runs at the cap."""
  if not conv:
    return []
  total = sum(c['runs'] for c in conv.values())
  capped = sum(c['at_cap'] for c in conv.values())
  lines = ['## Convergence', '',
           f'{total - capped} of {total} runs stopped early (no better validation '
           f'{next(iter(conv.values()))["metric"]} for the patience window); {capped} reached '
           'the step cap. For those, "gain" is the best validation value minus the value one '
           'patience window before the end: how much the run was still improving when the cap '
           'stopped it (near 0: it had plateaued).', '',
           '```',
           f"{'variant':<40} {'runs':>4} {'cap':>6} {'mean step':>9} {'best step':>9} "
           f"{'early':>5} {'at cap':>6} {'best last':>9} {'gain mean':>9} {'gain max':>9}"]
  for name, c in conv.items():
    lines.append(
        f"{name[:40]:<40} {c['runs']:>4} {c['cap']:>6} {c['mean_step']:>9.0f} "
        f"{reporting.or_dash(c['mean_best_step'], '9.0f'):>9} {c['stopped_early']:>5} "
        f"{c['at_cap']:>6} "
        f"{c['at_cap_best_last']:>9} "
        + ' '.join('—'.rjust(9) if v is None else f'{v:>+9.4f}'
                   for v in (c['at_cap_gain_mean'], c['at_cap_gain_max'])))
  lines += ['```', '']
  return lines


# ---------------------------------------------------------------------------------- report
def code_line(recs: Sequence[Mapping[str, Any]]) -> str:
  """Which code the runs ran: each git commit (12 digits) with its run count, '+edits' where
  onetrans_jax/ had uncommitted changes, and the runs whose records predate the field."""
  counts: dict[str, int] = {}
  for r in recs:
    code = r.get('code') or {}
    key = ('runs recorded before records named their code' if not code else
           (code.get('commit') or '')[:12] + (' +edits' if code.get('dirty') else '')
           if code.get('commit') else f"package {code.get('package')}")
    counts[key] = counts.get(key, 0) + 1
  if not counts:
    return 'no run records'
  return '; '.join(f'{k} ({v} run{"s" if v != 1 else ""})' for k, v in counts.items())


def write_report(workdir: str, config: Any, names: Sequence[str], results: Mapping[str, Any],
                 comparison: Mapping[str, Any], table: str,
                 run_dirs: Mapping[str, Sequence[str]], wall_seconds: float) -> dict[str, Any]:
  """summary.json, report.md and the plots in ``workdir`` (``comparison``: ``compare``'s
  result); returns the summary."""
  sw = config.sweep
  tasks = [t for t, _ in sw.tasks]
  study = sw.get('study', None) or os.path.basename(os.path.abspath(workdir))
  summ = summary(study, str(config.data.get('name', '?')), sw.reference, sw.seeds, tasks, names,
                 results, comparison)
  curves = plot_learning_curves(os.path.join(workdir, 'learning_curves.png'), run_dirs, tasks,
                                {n: results[n].get('records', ()) for n in names})
  deltas = plot_deltas(os.path.join(workdir, 'deltas.png'), comparison, names, sw.reference,
                       tasks)
  fp, _ = records.fingerprint(config)
  mach = records.machine()
  lines = [f'# {study}', '',
           '```', 'python launch.py ' + ' '.join(sys.argv[1:]), '```', '',
           f'- config fingerprint (sweep base, data included): `{fp[:16]}`',
           f'- machine: {mach["processor"]}, {mach["device_count"]} x {mach["device_kind"]} '
           f'({mach["backend"]}), jax {mach["jax"]}, {mach["cpu_count"]} CPUs',
           f'- seeds: {list(sw.seeds)}; wall time of this invocation: {wall_seconds:.0f} s '
           '(reused runs cost nothing)',
           '- code: ' + code_line([r for n in names for r in results[n].get('records', ())]),
           '',
           '## Table', '', '```', table, '```', '',
           'Paired differences: variant minus reference, seed by seed; the interval is a 95% '
           't-interval over seeds (with one seed: a paired bootstrap over the hold-out\'s users), '
           '`*` where it excludes 0.', '']
  for name in names:
    if name == sw.reference:
      continue
    cells = []
    for t in tasks:
      c = comparison[name][f'{t}/auc']
      ci = ('n/a (one seed, no predictions to bootstrap)' if c['ci95'] is None else
            f'[{c["rel_ci95_pct"][0]:+.2f}%, {c["rel_ci95_pct"][1]:+.2f}%]'
            + (' *' if c['significant'] else '') + f' ({c["ci_method"]})')
      cells.append(f'{t} AUC {c["rel_pct"]:+.2f}% {ci}')
    lines.append(f'- {name}: ' + '; '.join(cells))
  lines.append('')
  run_records = {n: results[n].get('records', ()) for n in names}
  judged = claims.judge(claims.validate(tuple(sw.get('claims', ()) or ()), names, tasks,
                                        sw.reference), run_records, sw.reference)
  if judged:
    summ['claims'] = judged
    lines += claims.markdown(judged)
  conv = convergence({n: results[n].get('records', ()) for n in names})
  summ['convergence'] = conv
  lines += convergence_markdown(conv)
  stab = stability.analyse({n: results[n].get('records', ()) for n in names}, names,
                           sw.reference, tasks)
  if stab:
    check = tuple(sw.get('stability_check', ()) or ())
    claim = stability.check(stab, *check) if check else None
    summ['stability'] = dict(stab, **({'claim': claim} if claim else {}))
    lines += stability.markdown(stab, claim)
  if curves:
    lines += ['## Learning curves', '', '![learning curves](learning_curves.png)', '']
  if deltas:
    lines += ['## Differences from the reference', '', '![differences](deltas.png)', '']
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summ, f, indent=1, default=float)
    f.write('\n')
  with open(os.path.join(workdir, 'report.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  return summ
