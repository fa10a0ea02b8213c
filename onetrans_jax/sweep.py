"""Sweeps: train several variants of one config on the same data, steps and seeds; print a table.

An experiment file opts in with ``config.sweep``:
  sweep.reference  name of the row the others are compared with (relative %, as the paper prints)
  sweep.variants   tuple of (name, ((dotted.field, value), ...)) overrides, the reference included
  sweep.seeds      training seeds; each variant runs once per seed (mean +- std over seeds)
  sweep.tasks      (task, label) pairs for the table's metric columns, e.g. (('click', 'CTR'), ...)
  sweep.relative   optional, default True: other rows relative % to the reference; False: all
                   absolute (the OneRank paper's layout)
  sweep.metric_labels  optional column names of (auc, uauc), default ('AUC', 'UAUC'); the OneRank
                   paper's GAUC is our UAUC (per-user AUC weighted by impressions)
  sweep.results_dir  optional folder of committed run records (records.py), e.g.
                   'results/onerank_main/runs': a finished run's record is written there and a
                   record whose fingerprint matches is reused instead of training again; the
                   run's hold-out predictions are committed beside it (*.predictions.npz, a few
                   hundred KB) so a one-seed comparison keeps its bootstrap interval
  sweep.bootstrap  optional, default 200: with one seed per variant, resamples of the paired
                   bootstrap over the hold-out's users that gives each AUC difference its interval
                   (study_report.py; 0: none)
  sweep.dry_run    optional, default False: print the plan (reuse / resume / train, why, and an
                   estimate of the time) and stop
  sweep.measure_steps  optional, default 0: > 0 makes the plan *measure* every variant it has
                   runs left of: each one's training step compiled and timed on this machine (the
                   median of that many steps after one), times its step cap, plus a start-up
                   cost; evaluations are left out (a few % of a run). Else a variant is estimated
                   from a finished run's wall time or its analytic FLOPs (estimate_seconds)
  sweep.claims     optional, default (): the papers' claims the report judges, each (text, row,
                   relation, others, keys) with a relation of onetrans_jax/claims.py (below,
                   above, same, at_least, largest_drop), fixed before the study's results
  sweep.stability_check  optional, default (): (row, task) whose report line judges the claim
                   that the row trains the task less stably than the reference (its detrended
                   loss variance ratio above 1; onetrans_jax/stability.py), e.g. OneRank's
                   ('no gradient detachment', 'cart')
  sweep.select     optional, default '': a tuning sweep (rows '<family> @ <setting>'): the
                   validation metric ('valid/<task>/<metric>', maximised) each family's setting is
                   chosen on; writes selection.json / selection.md (onetrans_jax/tuning.py)
  sweep.only       optional, default (): names of the variants to run, the rest left out; such a
                   partial sweep writes its records and no report (a study split over processes
                   or machines, e.g. ``--config.sweep.only='("OneTrans_S",)'``; a final sweep
                   without it reuses every record and writes the report)
  sweep.shard      optional, default '': 'i/n' runs only the (variant, seed) runs at positions
                   i, i + n, i + 2n, ... of the sweep's full list (variants in order, each with
                   its seeds), after ``only``; like ``only``, records and no report. n processes
                   with shards 0/n .. n-1/n split a study between them without overlap, each on
                   its own core (tools/study_queue.sh --lanes): on 2 CPU cores two pinned
                   one-thread processes train about 1.1-1.16x the examples/s of one two-thread
                   process. The split depends only on the list, so a lane resumes its own runs
                   in the next session; the lane whose share costs more finishes the study alone
  sweep.claim      optional, default False: True makes the process one of several that share the
                   study's runs as each comes free, instead of a fixed shard: it walks the whole
                   list (after ``only``; interrupted runs first, then the longest estimates:
                   ``claim_order``), takes a run by its claim lock
                   (``<workdir>/.claims/<variant>/seed_<s>/run.lock``, held while it trains),
                   plans that run again under the claim (another process may have recorded it
                   since this one's plan: it is reused, not trained twice) and skips a run
                   another process holds. Lanes then finish a study together, whatever its runs
                   cost (tools/study_queue.sh --lanes); like ``shard``: records, no report
A variant whose ``model`` is a classical floor (onetrans_jax/floors: item_rate, logistic,
lightgbm) is fitted by ``floors.fit.fit_and_evaluate`` instead of trained, on the same hold-out.
Each run has its own workdir ``<workdir>/<variant>/seed_<s>``. A run is reused only when a record
with its exact fingerprint (the resolved config and the data's identity) exists; a run directory
left by another config is moved aside (``.stale``) and the run redone, and the plan says which
fields changed; an interrupted run with the same config resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from onetrans_jax import accounting, models, records, reporting, scaling, study_report, tuning
from onetrans_jax import claims as claims_lib
from onetrans_jax import workdir as workdir_lib
from onetrans_jax.data import pipeline
from onetrans_jax.errors import ConfigError, NonFiniteLossError, WorkdirError
from onetrans_jax.records import variant_config  # noqa: F401  (the sweep's public name too)

METRICS = ('auc', 'uauc')


def _slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')


@dataclasses.dataclass
class PlannedRun:
  """One (variant, seed) of a sweep and what the sweep will do with it."""
  variant: str
  seed: int
  config: ml_collections.ConfigDict
  fingerprint: str
  flat: dict[str, Any]
  run_dir: str
  action: str                     # 'reuse', 'resume' or 'train'
  reason: str                     # why, for the plan and the log
  record: dict[str, Any] | None   # the matching record when reused
  copy_from: str | None = None    # another study's committed record this run reuses


def _record_paths(sw: ml_collections.ConfigDict, run_dir: str, name: str, seed: int,
                  fp: str) -> list[str]:
  """Where a matching record may be: the run's own directory, then the committed results."""
  paths = [os.path.join(run_dir, 'record.json')]
  if sw.get('results_dir', None):
    paths.append(os.path.join(sw.results_dir, _slug(name), f'seed_{seed}-{fp[:12]}.json'))
  return paths


def predictions_path(sw: ml_collections.ConfigDict, run_dir: str, name: str, seed: int,
                     fp: str) -> str | None:
  """The hold-out predictions of one run (what a one-seed comparison bootstraps over users): the
  run's own file, else the copy committed beside its record (``*.predictions.npz``, so a study
  finished on another machine still gets its intervals), else None."""
  # execute() has set aside a run directory of any other config, so this file is this run's.
  own = os.path.join(run_dir, records.PREDICTIONS_FILE)
  if os.path.exists(own):
    return own
  committed = _committed_predictions(sw, name, seed, fp)
  return committed if committed and os.path.exists(committed) else None


def _committed_predictions(sw: ml_collections.ConfigDict, name: str, seed: int,
                           fp: str) -> str | None:
  if not sw.get('results_dir', None):
    return None
  return os.path.join(sw.results_dir, _slug(name),
                      f'seed_{seed}-{fp[:12]}.predictions.npz')


def _latest_committed(sw: ml_collections.ConfigDict, name: str, seed: int) -> dict | None:
  """The newest committed record of (variant, seed) whatever its fingerprint (to say why it no
  longer matches)."""
  folder = os.path.join(sw.get('results_dir', None) or '', _slug(name))
  if not sw.get('results_dir', None) or not os.path.isdir(folder):
    return None
  found = sorted(f for f in os.listdir(folder) if f.startswith(f'seed_{seed}-') and
                 f.endswith('.json'))
  recs = [records.read_record(os.path.join(folder, f)) for f in found]
  return max(recs, key=lambda r: r.get('finished', ''), default=None)


def _study_record_paths(results_dir: str, name: str) -> list[str]:
  """The committed records named ``name`` (a glob) of every study beside ``results_dir``
  (``results/<study>/runs/<variant>/<name>``), this one's included, sorted."""
  studies = os.path.dirname(os.path.dirname(os.path.normpath(results_dir)))
  return sorted(glob.glob(os.path.join(studies, '*', 'runs', '*', name)))


def _other_study_record(sw: ml_collections.ConfigDict, seed: int, fp: str
                        ) -> tuple[str, dict[str, Any]] | None:
  """A record of this very run (same fingerprint: config and data) committed by another study
  beside this one (``results/<study>/runs/<variant>/``), e.g. OneTrans_S of the RQ2 table reused
  by the RQ1 table on the same world: the run is trained once."""
  if not sw.get('results_dir', None):
    return None
  own = os.path.normpath(sw.results_dir)
  for path in _study_record_paths(sw.results_dir, f'seed_{seed}-{fp[:12]}.json'):
    if os.path.normpath(os.path.dirname(os.path.dirname(path))) == own:
      continue
    rec = records.read_record(path)
    if rec is not None and rec['fingerprint'] == fp:
      return path, rec
  return None


WALL_TIME_FILE = 'wall_time.json'


def _add_wall_time(run_dir: str, seconds: float) -> tuple[float, int]:
  """Adds one invocation's seconds to the run's running total (``run_dir/wall_time.json``) and
  returns (total seconds, invocations): a run resumed across sessions records all of its time, not
  only its last piece's (the estimate of the other seeds scales it). A process killed without
  unwinding (SIGKILL, power loss) loses that invocation's share."""
  path = os.path.join(run_dir, WALL_TIME_FILE)
  total, n = 0.0, 0
  if os.path.exists(path):
    try:
      with open(path, encoding='utf-8') as f:
        saved = json.load(f)
      total, n = float(saved['seconds']), int(saved['invocations'])
    except (OSError, ValueError, KeyError, TypeError):
      reporting.log(f'[sweep] {path} is unreadable: the wall time restarts from this invocation')
  total, n = total + seconds, n + 1
  os.makedirs(run_dir, exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump({'seconds': total, 'invocations': n}, f)
  os.replace(path + '.tmp', path)
  return total, n


def _set_aside(run_dir: str, why: str) -> str:
  """Move a run directory made with another config out of the way (nothing is deleted). A
  directory that a live process is training in (its run.lock held) is left alone: WorkdirError
  (e.g. a second sweep over a workdir whose lanes are still running)."""
  with workdir_lib.WorkdirLock(run_dir, log=reporting.log):  # raises while another run holds it
    pass
  k, target = 0, f'{run_dir}.stale'
  while os.path.exists(target):
    k += 1
    target = f'{run_dir}.stale{k}'
  os.replace(run_dir, target)
  reporting.log(f'[sweep] {run_dir}: {why}; moved to {target}')
  return target


def _same_config(run_dir: str, cfg: ml_collections.ConfigDict) -> bool:
  """Whether ``run_dir`` holds a run of ``cfg`` (train.py saves its config as config.json): the
  same fingerprint, so a run interrupted before a logging-only field was added or changed
  (records.NON_RESULT_FIELDS, NEUTRAL_DEFAULTS) still resumes instead of starting over. True for a
  directory that holds no run yet."""
  saved = os.path.join(run_dir, 'config.json')
  if not os.path.exists(saved):
    return True
  try:
    with open(saved, encoding='utf-8') as f:
      old = ml_collections.ConfigDict(json.load(f))
    return records.fingerprint(old)[0] == records.fingerprint(cfg)[0]
  except (OSError, ValueError, TypeError, KeyError, AttributeError):
    return False   # unreadable: not a run this sweep can resume


def plan_run(config: ml_collections.ConfigDict, workdir: str, name: str,
             overrides: Sequence[tuple[str, Any]], seed: int) -> PlannedRun:
  """Decides reuse / resume / train for one run from its fingerprint (nothing is moved yet)."""
  sw = config.sweep
  cfg = variant_config(config, overrides, seed)
  fp, flat = records.fingerprint(cfg)
  run_dir = os.path.join(workdir, _slug(name), f'seed_{seed}')
  stale = None
  for path in _record_paths(sw, run_dir, name, seed, fp):
    rec = records.read_record(path)
    if rec is not None and rec['fingerprint'] == fp:
      return PlannedRun(name, seed, cfg, fp, flat, run_dir, 'reuse', f'matching record {path}',
                        rec)
    stale = stale or rec
  other = _other_study_record(sw, seed, fp)
  if other is not None:
    path, rec = other
    return PlannedRun(name, seed, cfg, fp, flat, run_dir, 'reuse',
                      f'the same run committed by another study: {path}',
                      dict(rec, variant=name), copy_from=path)
  stale = stale or _latest_committed(sw, name, seed)
  why = '' if stale is None else 'its config changed: ' + records.config_changes(
      stale['config'], records.canonical(flat))
  saved = os.path.join(run_dir, 'config.json')
  if os.path.exists(saved):
    if _same_config(run_dir, cfg):
      return PlannedRun(name, seed, cfg, fp, flat, run_dir, 'resume',
                        f'same config in {run_dir} (resumes from its checkpoint)', None)
    return PlannedRun(name, seed, cfg, fp, flat, run_dir, 'train',
                      why or f'{saved} holds another config', None)
  return PlannedRun(name, seed, cfg, fp, flat, run_dir, 'train', why or 'no earlier run', None)


def execute(run: PlannedRun, sw: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or reuses) one planned run; writes its record beside it and into the committed
  results when ``sweep.results_dir`` is set. Returns the record."""
  from onetrans_jax.train import train_and_evaluate  # local: keeps this module light to import
  if run.action == 'reuse':
    reporting.log(f'[sweep] {run.variant} seed {run.seed}: reused ({run.reason})')
    record = run.record
    if not _same_config(run.run_dir, run.config) and os.path.exists(run.run_dir):
      _set_aside(run.run_dir, 'it holds a run of another config')
  else:
    if run.action == 'train' and os.path.exists(run.run_dir):
      _set_aside(run.run_dir, run.reason)
    reporting.log(f'[sweep] {run.variant} seed {run.seed}: {run.action} in {run.run_dir} '
                  f'({run.reason})')
    t0 = time.time()
    try:
      if models.is_floor(run.config.model):  # a classical floor row: fitted, not trained
        from onetrans_jax.floors.fit import fit_and_evaluate  # local: scikit-learn, LightGBM
        final = fit_and_evaluate(run.config, run.run_dir)
      else:
        final = train_and_evaluate(run.config, run.run_dir)
    finally:   # also when interrupted: the next invocation resumes and adds its own time
      wall, invocations = _add_wall_time(run.run_dir, time.time() - t0)
    record = records.make_record(run.variant, run.seed, run.fingerprint, run.flat, final, wall)
    record['invocations'] = invocations
  for path in _record_paths(sw, run.run_dir, run.variant, run.seed, run.fingerprint):
    if records.read_record(path) is None or path.endswith('record.json'):
      records.write_record(path, record)
  own = os.path.join(run.run_dir, records.PREDICTIONS_FILE)
  if run.copy_from is not None:   # the other study's committed predictions of this run
    own = run.copy_from[:-len('.json')] + '.predictions.npz'
  committed = _committed_predictions(sw, run.variant, run.seed, run.fingerprint)
  if committed and os.path.exists(own) and not os.path.exists(committed):
    shutil.copyfile(own, committed + '.tmp')   # a few hundred KB: commit it beside the record
    os.replace(committed + '.tmp', committed)
  return record


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Plans every (variant, seed) run, prints the plan (and stops there with
  ``sweep.dry_run=True``), runs what is not reusable, then writes the table and the report."""
  sw = config.sweep
  names = [v[0] for v in sw.variants]
  if sw.reference not in names:
    raise ConfigError(f'config.sweep.reference={sw.reference!r} is not one of the variants {names}')
  if not sw.seeds:
    raise ConfigError('config.sweep.seeds is empty')
  only = tuple(sw.get('only', ()) or ())
  unknown = [n for n in only if n not in names]
  if unknown:
    raise ConfigError(f'config.sweep.only names {unknown}, not variants of this sweep; use some of '
                      f'{names}')
  shard = _shard(sw.get('shard', '') or '')
  claim = sw.get('claim', False)
  if not isinstance(claim, bool):
    raise ConfigError(f'config.sweep.claim={claim!r}: use True (share the runs with other '
                      'processes on this workdir) or False')
  if claim and shard is not None:
    raise ConfigError(f'config.sweep.claim=True and config.sweep.shard={sw.shard!r} both split '
                      'the study between processes; use one of them (claim: runs taken as lanes '
                      'come free; shard: a fixed share)')
  claims_lib.validate(tuple(sw.get('claims', ()) or ()), names, [t for t, _ in sw.tasks],
                      sw.reference)
  check = tuple(sw.get('stability_check', ()) or ())
  task_names = [t for t, _ in sw.tasks]
  if check and (len(check) != 2 or check[0] not in names or check[1] not in task_names):
    raise ConfigError(f'config.sweep.stability_check={check!r}: give (row, task), a variant of '
                      f'{names} and a task of {task_names}, or () for none')
  select = sw.get('select', '') or ''
  if select:
    if not re.fullmatch(r'valid/[^/]+/(auc|uauc|logloss)', select):
      raise ConfigError(f'config.sweep.select={select!r}: use valid/<task>/<auc|uauc|logloss>')
    for name in names:
      tuning.split_name(name)
  runs = [(name, overrides, seed) for name, overrides in sw.variants for seed in sw.seeds]
  if shard is not None:
    runs = [r for k, r in enumerate(runs) if k % shard[1] == shard[0]]
  plan = [plan_run(config, workdir, name, overrides, seed)
          for name, overrides, seed in runs if not only or name in only]
  schemas = _Schemas()
  measure = sw.get('measure_steps', 0)
  if isinstance(measure, bool) or not isinstance(measure, int) or measure < 0:
    raise ConfigError(f'config.sweep.measure_steps={measure!r}: give a whole number of steps '
                      '>= 0 (0: estimate from FLOPs; e.g. 5 times five steps of each variant)')
  estimate = estimate_seconds(plan, schemas, sw.get('results_dir', None), measure)
  reporting.log(format_plan(plan, estimate))
  if sw.get('dry_run', False):
    return {'plan': plan, 'estimate_seconds': estimate}
  t0 = time.time()
  by_variant: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
  failed: list[tuple[PlannedRun, Exception]] = []
  overrides_of = dict(sw.variants)
  if claim:
    plan = claim_order(plan, estimate)
    reporting.log(f'[sweep] sweep.claim: these runs are shared with the other processes on '
                  f'{workdir} (the estimate is all of them); each is taken as it comes free, '
                  'interrupted runs first, then the longest')
  executed: list[PlannedRun] = []
  for run in plan:
    try:
      if claim:
        record = execute_claimed(config, workdir, run, overrides_of[run.variant])
        if record is None:
          continue
      else:
        record = execute(run, sw)
      by_variant[run.variant].append(record)
      executed.append(run)
    except (NonFiniteLossError, WorkdirError) as err:
      # One run's own failure (it diverged, or its directory is held by another process) must
      # not cost the runs after it their turn: they train, and the sweep fails at the end.
      reporting.log(f'[sweep] {run.variant} seed {run.seed}: FAILED ({type(err).__name__}: '
                    f'{err}); going on with the other runs')
      failed.append((run, err))
  if failed:
    first = failed[0][1]
    names_failed = ', '.join(f'{r.variant} seed {r.seed}' for r, _ in failed)
    raise type(first)(f'{len(failed)} of {len(plan)} runs failed ({names_failed}), the others '
                      f'finished and wrote their records; the first failure: {first}') from first
  if only or shard is not None or claim:
    what = f' of {list(only)} (sweep.only)' if only else ''
    if shard is not None:
      what += f' of shard {shard[0]}/{shard[1]} (sweep.shard)'
    if claim:
      what += (f' ({len(plan) - len(executed)} of {len(plan)} held by other processes, '
               'sweep.claim)')
    reporting.log(f'[sweep] ran {len(executed)} runs{what}: records written, no report; run the '
                  'sweep without sweep.only, sweep.shard and sweep.claim to write it')
    return {'plan': plan, 'records': by_variant, 'executed': executed,
            'wall_seconds': time.time() - t0}
  results: dict[str, Any] = {}
  for name in names:
    cfg = next(r.config for r in plan if r.variant == name)
    schema = schemas(cfg.data)
    results[name] = {'runs': [r['metrics'] for r in by_variant[name]],
                     'records': by_variant[name],
                     'params': _dense_params(cfg.model, schema, by_variant[name]),
                     'tflops': accounting.batch_tflops(cfg.model, schema),
                     'train_flops_per_example':
                         models.training_flops_per_example(cfg.model, schema)}
  run_dirs = {name: [r.run_dir for r in plan if r.variant == name] for name in names}
  predictions = {name: [predictions_path(sw, r.run_dir, name, r.seed, r.fingerprint)
                        for r in plan if r.variant == name] for name in names}
  comparison = study_report.compare(results, names, sw.reference, [t for t, _ in sw.tasks],
                                    predictions=predictions,
                                    n_boot=int(sw.get('bootstrap', 200)))
  table = format_sweep_table(results, names, sw.reference, tuple(tuple(t) for t in sw.tasks),
                             relative=sw.get('relative', True),
                             metric_labels=tuple(sw.get('metric_labels', ('AUC', 'UAUC'))),
                             comparison=comparison)
  reporting.log(table)
  with open(os.path.join(workdir, 'sweep_table.txt'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  with open(os.path.join(workdir, 'sweep_results.json'), 'w', encoding='utf-8') as f:
    json.dump({k: {kk: vv for kk, vv in v.items() if kk != 'records'}
               for k, v in results.items()}, f, indent=1, default=float)
  wall = time.time() - t0
  summ = study_report.write_report(workdir, config, names, results, comparison, table, run_dirs,
                                   wall)
  reporting.log(f'[sweep] wrote {workdir}/report.md, summary.json and the plots')
  if sw.get('scaling', ()):   # RQ3: the slopes of quality against FLOPs (scaling.py)
    scaling.write(workdir, results, sw)
    reporting.log(f'[sweep] wrote {workdir}/scaling.md, scaling.json and scaling.png')
  if select:
    sel = tuning.write_selection(workdir, {n: results[n]['records'] for n in names}, select,
                                 'min' if select.endswith('logloss') else 'max')
    reporting.log('[sweep] tuning selection (selection.md):\n' + tuning.format_selection(sel))
  if sw.get('results_dir', None):  # the study's committed copy, beside its run records
    study_dir = os.path.dirname(os.path.normpath(sw.results_dir))
    for f in REPORT_FILES:
      if os.path.exists(os.path.join(workdir, f)):
        shutil.copyfile(os.path.join(workdir, f), os.path.join(study_dir, f))
    reporting.log(f'[sweep] copied the report into {study_dir}/ (commit it with runs/)')
  return {'results': results, 'table': table, 'plan': plan, 'wall_seconds': wall,
          'summary': summ}


CLAIMS_DIR = '.claims'


def claim_order(plan: Sequence[PlannedRun], estimate: Mapping[tuple[str, int], float]
                ) -> list[PlannedRun]:
  """The order claiming lanes take runs in: interrupted runs first (their checkpoints live on
  this machine only, and a session on another machine would start them over), then the longest
  estimates, so the lanes' last runs are short ones and they end a study together; ties keep the
  list's order."""
  return sorted(plan, key=lambda r: (r.action != 'resume',
                                     -estimate.get((r.variant, r.seed), 0.0)))


def execute_claimed(config: ml_collections.ConfigDict, workdir: str, planned: PlannedRun,
                    overrides: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
  """``execute`` for a process that shares the study's runs (``sweep.claim``): the run's claim
  lock is taken first, then the run is planned again under it, since another process may have
  finished it (reuse), begun it (resume) or be training it since ``planned`` was made. Returns
  the record, or None for a run another process holds (skipped)."""
  where = f'{planned.variant} seed {planned.seed}'
  claim_dir = os.path.join(workdir, CLAIMS_DIR, _slug(planned.variant), f'seed_{planned.seed}')
  os.makedirs(claim_dir, exist_ok=True)
  lock = workdir_lib.WorkdirLock(claim_dir, log=reporting.log)
  try:
    lock.acquire()
  except WorkdirError:
    reporting.log(f'[sweep] {where}: claimed by another process, skipped (its claim: '
                  f'{os.path.join(claim_dir, workdir_lib.LOCK_FILE)})')
    return None
  try:
    run = plan_run(config, workdir, planned.variant, overrides, planned.seed)
    if run.action != planned.action:
      reporting.log(f'[sweep] {where}: planned to {planned.action}, now {run.action} '
                    f'({run.reason})')
    if run.action != 'reuse' and os.path.isdir(run.run_dir):
      try:   # a process outside the claims (a sweep without sweep.claim) may train in it
        with workdir_lib.WorkdirLock(run.run_dir, log=reporting.log):
          pass
      except WorkdirError:
        reporting.log(f'[sweep] {where}: its run directory {run.run_dir} is in use by another '
                      'process, skipped')
        return None
    return execute(run, config.sweep)
  finally:
    lock.release()


def _shard(value: str) -> tuple[int, int] | None:
  """'i/n' -> (i, n), checked; '' -> None (the whole sweep)."""
  if not value:
    return None
  m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(value))
  if m is None or not 0 <= int(m.group(1)) < int(m.group(2)):
    raise ConfigError(f'config.sweep.shard={value!r}: use "i/n" with 0 <= i < n (e.g. "0/2" and '
                      '"1/2" for two processes), or "" for the whole sweep')
  return int(m.group(1)), int(m.group(2))


REPORT_FILES = ('report.md', 'summary.json', 'sweep_table.txt', 'learning_curves.png',
                'deltas.png', 'selection.json', 'selection.md') + scaling.FILES


def _dense_params(model_cfg: ml_collections.ConfigDict, schema: Any,
                  recs: Sequence[Mapping[str, Any]]) -> float:
  """The table's parameter count: the analytic one; for a floor row the mean over its seeds of
  what the fit produced (LightGBM's leaves are known only after fitting), from its records."""
  fitted = [r['params']['dense'] for r in recs if isinstance(r.get('params'), Mapping)]
  if models.is_floor(model_cfg) and fitted:
    return float(np.mean(fitted))
  return accounting.dense_params(model_cfg, schema)['dense']


# ---------------------------------------------------------------------------------- the plan
class _Schemas:
  """The schema of a data config, each distinct config built once (variants and seeds of a sweep
  share their data; a file dataset is not parsed again for every run)."""

  def __init__(self):
    self._seen: dict[str, Any] = {}

  def __call__(self, data_cfg: ml_collections.ConfigDict) -> Any:
    key = data_cfg.to_json_best_effort(sort_keys=True)
    if key not in self._seen:
      self._seen[key] = pipeline.build_dataset(data_cfg).schema
    return self._seen[key]


def _family(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """What shares an analytic-count bias: the model family and, for baselines, its modules."""
  return tuple(str(model_cfg.get(k, '')) for k in ('name', 'sequence', 'interaction'))


def _rebuilt(template: ml_collections.ConfigDict, flat: Mapping[str, Any]
             ) -> ml_collections.ConfigDict | None:
  """``template`` with the model and data fields of a record's flat config (tuples kept tuples),
  or None when the record names a field the template lacks or a value of another type."""
  cfg = copy.deepcopy(template)
  try:
    with cfg.unlocked():
      for key, value in flat.items():
        if not key.startswith(('model.', 'data.')):
          continue
        node = cfg
        *parents, leaf = key.split('.')
        for part in parents:
          node = node[part]
        if isinstance(node[leaf], tuple) and isinstance(value, list):
          value = tuple(value)
        node[leaf] = value
  except (KeyError, TypeError, AttributeError):
    return None
  return cfg


def estimate_seconds(plan: Sequence[PlannedRun], schemas: _Schemas | None = None,
                     results_dir: str | None = None, measure_steps: int = 0
                     ) -> dict[tuple[str, int], float]:
  """Seconds each run will take at its step cap (an upper bound: early stopping ends most runs
  sooner): 0 for a reuse; scaled from a finished record of the same variant (its measured wall
  time per step: measure one seed first, then plan the rest); else the analytic training FLOPs
  of a step as the model runs it (``models.training_flops_per_request``: a shared request side
  counted once, not per candidate) at the machine's measured matmul rate x ASSUMED_MFU. That
  figure is calibrated (median of measured / analytic seconds per step) by the finished records
  of the same model family in the plan, or, where the plan has none, by those of the same family
  on the same data set that other studies committed beside ``results_dir``
  (``results/<study>/runs/``: RQ1 on ML-1M by RQ3's ML-1M runs). One family's rows still differ
  in how fast their FLOPs run (the calibration is one ratio per family; a family with no record
  anywhere takes the median ratio of the others, plan first); until 2026-12-07 the
  count was the per-impression one, which put the mechanism world's RankMixer + LONGER at 41
  hours a run against about 1 measured. Without any record it adds a fixed
  start-up cost (compile, evaluation). A classical floor row (onetrans_jax/floors) takes
  FLOOR_SECONDS. With ``measure_steps`` > 0 every variant left to train is timed instead, here
  and now (``measured_step_seconds``, once per variant, its seeds sharing it): the records' wall
  times come from other machines, other loads and older code.
  """
  rate: list[float] = []
  timed_steps: dict[str, float] = {}
  schemas = schemas or _Schemas()

  def analytic(cfg: ml_collections.ConfigDict) -> float:
    if not rate:
      rate.append(_matmul_rate())
    schema = schemas(cfg.data)
    per_step = (models.training_flops_per_request(cfg.model, schema, schema.num_candidates) *
                cfg.data.batch_size)
    return per_step / (rate[0] * ASSUMED_MFU)

  measured: dict[str, float] = {}
  finished: dict[tuple[str, ...], list[tuple[PlannedRun, float]]] = {}
  for run in plan:
    rec = run.record
    if rec is None or not rec.get('wall_seconds') or not rec.get('step'):
      continue
    per_step = rec['wall_seconds'] / rec['step']
    if run.variant not in measured and not models.is_floor(run.config.model):
      finished.setdefault(_family(run.config.model), []).append((run, per_step))
    measured.setdefault(run.variant, per_step)
  ratios: dict[Any, float | None] = {}
  committed: dict[str, list[dict[str, Any]]] = {}   # read once, when a family first needs them

  def timed_records() -> list[dict[str, Any]]:
    """Every record committed beside ``results_dir`` (this study's older ones too) with a wall
    time, newest first."""
    if 'all' not in committed:
      paths = _study_record_paths(results_dir, 'seed_*.json') if results_dir else []
      found = [(p, r) for p in paths for r in [records.read_record(p)]
               if r and r.get('wall_seconds') and r.get('step')]
      committed['all'] = [r for _, r in sorted(
          found, key=lambda x: (x[1].get('finished', ''), x[0]), reverse=True)]
    return committed['all']

  def ratio(run: PlannedRun) -> float | None:
    """Measured / analytic seconds per step: the plan's finished runs of the run's family, else
    the family's committed records on the same data (at most SIBLING_RECORDS, newest first);
    None without any. Computed only when
    a run of that family needs an estimate: it builds their data schemas."""
    family = _family(run.config.model)
    if family in finished:
      if family not in ratios:
        ratios[family] = float(np.median([t / analytic(r.config) for r, t in finished[family]]))
      return ratios[family]
    key = (family, run.flat.get('data.name'), run.flat.get('data.path'))
    if key not in ratios:
      ratios[key] = _sibling_ratio(run, timed_records(), analytic)
    if ratios[key] is not None:
      return ratios[key]
    # No record of the family anywhere: the other families' ratios still carry this machine's
    # speed, which a matmul timed beside busy lanes does not (it put a 1-hour mechanism-world
    # RankMixer + StackDIN run at 8 hours on 2026-12-08).
    anyf = ('any',) + key[1:]
    if anyf not in ratios:
      mine = [t / analytic(r.config) for runs in finished.values() for r, t in runs]
      ratios[anyf] = (float(np.median(mine)) if mine else
                      _sibling_ratio(run, timed_records(), analytic, same_family=False))
    return ratios[anyf]

  out = {}
  for run in plan:
    steps = int(run.config.train.total_steps)
    if run.action == 'reuse':
      out[(run.variant, run.seed)] = 0.0
    elif models.is_floor(run.config.model):  # no steps; reading the data dominates
      out[(run.variant, run.seed)] = FLOOR_SECONDS
    elif measure_steps:
      if run.variant not in timed_steps:
        timed_steps[run.variant] = measured_step_seconds(run.config, measure_steps)
        reporting.log(f'[sweep] measured {run.variant}: '
                      f'{timed_steps[run.variant] * 1e3:.1f} ms a step')
      out[(run.variant, run.seed)] = STARTUP_SECONDS + steps * timed_steps[run.variant]
    elif run.variant in measured:
      out[(run.variant, run.seed)] = measured[run.variant] * steps
    elif (r := ratio(run)) is not None:
      out[(run.variant, run.seed)] = steps * analytic(run.config) * r
    else:
      out[(run.variant, run.seed)] = STARTUP_SECONDS + steps * analytic(run.config)
  return out


SIBLING_RECORDS = 6   # other studies' records read to calibrate a family (each builds a schema)


def measured_step_seconds(cfg: ml_collections.ConfigDict, num_steps: int) -> float:
  """Median seconds of ``num_steps`` training steps of ``cfg`` on this machine, after one
  warm-up step: the trainer's own step (benchmarks/steps.py) on its first training batch."""
  from onetrans_jax.benchmarks import steps as bench_steps   # jax programs: only when asked
  step = bench_steps.build_step(cfg)
  return bench_steps.median_time(step.compiled, step.state, step.batch, repeats=num_steps,
                                 feed=lambda out: out[0])


def _sibling_ratio(run: PlannedRun, timed: Sequence[Mapping[str, Any]], analytic: Any,
                   same_family: bool = True) -> float | None:
  """Median measured / analytic seconds per step over the first SIBLING_RECORDS of ``timed``
  (committed records, newest first) of the run's model family (any family with
  ``same_family=False``) on its data set (same ``data.name`` and ``data.path``), each record's
  model and data fields laid over the run's config to count its FLOPs (and to read its
  family); classical floors, which run no steps, are left out."""
  family = _family(run.config.model)
  vals = []
  for rec in timed:
    flat = rec['config']
    if (flat.get('data.name') != run.flat.get('data.name')
        or flat.get('data.path') != run.flat.get('data.path')):
      continue
    cfg = _rebuilt(run.config, flat)
    if cfg is None or models.is_floor(cfg.model) or (same_family and
                                                      _family(cfg.model) != family):
      continue
    vals.append(rec['wall_seconds'] / rec['step'] / analytic(cfg))
    if len(vals) == SIBLING_RECORDS:
      break
  return float(np.median(vals)) if vals else None


# The CPU bench step's measured MFU (README, Speed: 27.8% on a Xeon, 35.9% on an EPYC in
# results/speed/cpu_suite.json), rounded down: the estimate's basis.
ASSUMED_MFU = 0.25
STARTUP_SECONDS = 60.0           # compile + final evaluation of a CPU-sized run (measured ~1 min)
FLOOR_SECONDS = 30.0             # a classical floor row (MovieLens-100K: 3-5 s measured, 2 cores)


def _matmul_rate() -> float:
  """FLOP/s of a 1024^3 float32 matmul on the default device (median of 3)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((1024, 1024), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  times = []
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(f(a))
    times.append(time.perf_counter() - t)
  return 2.0 * 1024 ** 3 / float(np.median(times))


def stop_fraction(plan: Sequence[PlannedRun]) -> tuple[float, int] | None:
  """(median of step / step cap, count) over the plan's finished trained runs, or None.

  The estimate is at the step caps; early stopping ends most runs sooner (MovieLens runs stop
  at about half their cap, the mechanism world's OneTrans rows at it), so the plan also states
  the total it implies if the remaining runs stop as the finished ones did."""
  fractions = [min(1.0, r.record['step'] / int(r.config.train.total_steps)) for r in plan
               if r.record and r.record.get('step') and not models.is_floor(r.config.model)
               and int(r.config.train.total_steps) > 0]
  return (float(np.median(fractions)), len(fractions)) if fractions else None


def format_plan(plan: Sequence[PlannedRun], estimate: Mapping[tuple[str, int], float]) -> str:
  """One line per run: action, estimate, reason; then the total (and what early stopping at
  the finished runs' median fraction of the cap would make of it)."""
  total = sum(estimate.values())
  head = (f'sweep plan: {len(plan)} runs ({sum(r.action == "reuse" for r in plan)} reused, '
          f'{sum(r.action == "resume" for r in plan)} resumed, '
          f'{sum(r.action == "train" for r in plan)} to train); estimated '
          f'{reporting.hms(total)}')
  frac = stop_fraction(plan)
  if frac and total > 0:
    floors = sum(estimate[(r.variant, r.seed)] for r in plan if models.is_floor(r.config.model))
    expected = floors + (total - floors) * frac[0]
    head += (f' at the step caps; {reporting.hms(expected)} if the rest stop where the '
             f'{frac[1]} finished run(s) did (median at {100 * frac[0]:.0f}% of the cap)')
  lines = [head]
  for r in plan:
    lines.append(f'  {r.variant} seed {r.seed}: {r.action:6s} '
                 f'{reporting.hms(estimate[(r.variant, r.seed)]):>9s}  {r.fingerprint[:12]}  '
                 f'{r.reason}')
  return '\n'.join(lines)


def format_sweep_table(results: Mapping[str, Any], names: Sequence[str], reference: str,
                       tasks: Sequence[tuple[str, str]], relative: bool = True,
                       metric_labels: Sequence[str] = ('AUC', 'UAUC'),
                       comparison: Mapping[str, Any] | None = None) -> str:
  """The paper's layout: the reference row absolute, the others relative % to it, +- seed std
  (``relative=False``: every row absolute), and per task the 95% t-interval of the AUC's paired
  difference from the reference over seeds, in % of the reference ('*': excludes 0), read from
  ``comparison`` (study_report.compare's result; computed here when not given)."""
  if comparison is None:
    comparison = study_report.compare(results, names, reference, [t for t, _ in tasks],
                                      metrics=METRICS)
  n_seeds = len(results[reference]['runs'])
  header = ['variant'] + [f'{label} {m}' for _, label in tasks for m in metric_labels]
  header += [f'{label} {metric_labels[0]} 95% CI' for _, label in tasks]
  header += ['params (M)', 'TFLOPs']
  rows = [header]
  for name in names:
    res = results[name]
    row = [name]
    for task, _ in tasks:
      for m in METRICS:
        cell = comparison[name][f'{task}/{m}']
        mean, ref = cell['mean'], comparison[reference][f'{task}/{m}']['mean']
        std = float('nan') if cell['std'] is None else cell['std']
        if name == reference or not relative:
          cell = f'{mean:.5f}'
          if not math.isnan(std):
            cell += f' ±{std:.5f}'
        else:
          cell = f'{100 * (mean - ref) / ref:+.2f}%'
          if not math.isnan(std):
            cell += f' ±{100 * std / ref:.2f}'
        row.append(cell)
    for task, _ in tasks:
      row.append(_ci_cell(comparison[name][f'{task}/auc']))
    tflops = '—' if math.isnan(res['tflops']) else f'{res["tflops"]:.3f}'
    row += [f'{res["params"] / 1e6:.3f}', tflops]
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  seeds = f'{n_seeds} seed' + ('s' if n_seeds != 1 else '')
  layout = (f'{reference} absolute, other rows relative to it' if relative else
            'absolute values')
  ci = ('95% t-interval of the paired difference over seeds' if n_seeds > 1 else
        "95% paired bootstrap over the hold-out's users (one seed: it covers the evaluation "
        "sample, not training noise), — where a run's predictions are missing")
  lines = [f'{layout} (mean ± std over {seeds}; CI: {ci}, * where it excludes 0; TFLOPs: '
           'analytic training FLOPs per batch of 2048, — where the model has no analytic count)']
  for i, r in enumerate(rows):
    lines.append('  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                           for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0:
      lines.append('  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def _ci_cell(cell: Mapping[str, Any]) -> str:
  """'[+0.12, +0.88]%*': the AUC difference's interval in % of the reference (a t-interval over
  seeds, or with one seed the users bootstrap), '—' for the reference row or where none exists."""
  if not cell['ci_method']:
    return '—'
  lo, hi = cell['rel_ci95_pct']
  return f'[{lo:+.2f}, {hi:+.2f}]%' + ('*' if cell['significant'] else '')
