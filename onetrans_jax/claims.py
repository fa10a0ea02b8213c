"""The papers' claims a study tests, each judged by a rule fixed in its experiment file.

An experiment file lists them in ``sweep.claims``, each ``(text, row, relation, others, keys)``:
``row`` is compared with every row of ``others`` on every ``keys`` entry ('<task>/<metric>', e.g.
'click/auc', 'like/uauc'), seed by seed over the seeds both ran (a 95% t-interval on the mean
paired difference, stats.paired_difference). Relations:

  below        every difference row - other has its interval below 0
  above        every difference has its interval above 0
  same         every interval contains 0 (no difference the seeds can detect)
  at_least     every mean difference is >= 0 ("at least as good"; the intervals are shown)
  largest_drop against the study's reference, row's mean difference is the lowest of row's and
               every other's, on every key (the point estimates; the intervals are shown)

A relation that needs an interval with fewer than 2 paired seeds, or a row a study lacks, is
undecided (None), never reproduced by default. The report lists every claim with its verdict and
the differences it rests on (study_report.py); summary.json keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onetrans_jax import stats
from onetrans_jax.errors import ConfigError

RELATIONS = ('below', 'above', 'same', 'at_least', 'largest_drop')
RULES = {
    'below': 'every paired difference has its 95% interval below 0',
    'above': 'every paired difference has its 95% interval above 0',
    'same': "every paired difference's 95% interval contains 0",
    'at_least': 'every mean paired difference is >= 0',
    'largest_drop': "its mean difference from the reference is the lowest of the rows', on "
                    'every key',
}


def validate(claims: Sequence[Any], names: Sequence[str], tasks: Sequence[str],
             reference: str) -> list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]]:
  """``sweep.claims`` checked against the study's rows and tasks (ConfigError naming the entry)."""
  out = []
  for i, claim in enumerate(claims):
    where = f'config.sweep.claims[{i}]'
    if not isinstance(claim, (tuple, list)) or len(claim) != 5:
      raise ConfigError(f'{where}={claim!r}: give (text, row, relation, others, keys)')
    text, row, relation, others, keys = claim
    others, keys = tuple(others), tuple(keys)
    if relation not in RELATIONS:
      raise ConfigError(f'{where}: relation {relation!r} is not one of {RELATIONS}')
    unknown = [r for r in (row, *others) if r not in names]
    if unknown or not others:
      raise ConfigError(f'{where}: rows {unknown or "(no others)"} are not variants of this '
                        f'sweep ({list(names)})')
    if relation == 'largest_drop' and reference in (row, *others):
      raise ConfigError(f'{where}: largest_drop compares rows with the reference '
                        f'{reference!r}; leave it out of row and others')
    for key in keys:
      task, _, metric = key.partition('/')
      if task not in tasks or metric not in ('auc', 'uauc', 'logloss'):
        raise ConfigError(f'{where}: key {key!r} is not <task>/<auc|uauc|logloss> of the tasks '
                          f'{list(tasks)}')
    if not keys:
      raise ConfigError(f'{where}: give at least one key, e.g. "{tasks[0]}/auc"')
    out.append((str(text), row, relation, others, keys))
  return out


def _by_seed(records: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
  task, _, metric = key.partition('/')
  out = {}
  for r in records:
    value = ((r.get('metrics') or {}).get(task) or {}).get(metric)
    if value is not None and np.isfinite(value):
      out[int(r['seed'])] = float(value)
  return out


def _difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any] | None:
  """Mean paired difference a - b over the seeds both have, with its 95% t-interval (None with
  fewer than 2 seeds); None without any shared seed."""
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  diffs = [a[s] - b[s] for s in seeds]
  cell: dict[str, Any] = {'mean': float(np.mean(diffs)), 'n': len(seeds), 'ci95': None}
  if len(seeds) > 1:
    pr = stats.paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
    cell['ci95'] = [pr.ci_low, pr.ci_high]
  return cell


def _fmt(cell: Mapping[str, Any]) -> str:
  ci = cell['ci95']
  return f"{cell['mean']:+.4f}" + ('' if ci is None else f' [{ci[0]:+.4f}, {ci[1]:+.4f}]')


def judge(claims: Sequence[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]],
          run_records: Mapping[str, Sequence[Mapping[str, Any]]], reference: str
          ) -> list[dict[str, Any]]:
  """Each claim's verdict (True / False / None: undecided) with the differences it rests on."""
  out = []
  for text, row, relation, others, keys in claims:
    cells, verdicts, lines = [], [], []
    for key in keys:
      mine = _by_seed(run_records.get(row, ()), key)
      if relation == 'largest_drop':
        ref = _by_seed(run_records.get(reference, ()), key)
        drops = {name: _difference(_by_seed(run_records.get(name, ()), key), ref)
                 for name in (row, *others)}
        if any(d is None for d in drops.values()):
          verdicts.append(None)
          lines.append(f'{key}: some rows lack runs on the reference\'s seeds')
          continue
        other = min((n for n in drops if n != row), key=lambda n: drops[n]['mean'])
        verdicts.append(drops[row]['mean'] < drops[other]['mean'])
        lines.append(f'{key}: {row} {_fmt(drops[row])} against the reference; the lowest '
                     f'other row, {other}, {_fmt(drops[other])}')
        cells.append({'key': key, 'drops': drops})
        continue
      for other in others:
        cell = _difference(mine, _by_seed(run_records.get(other, ()), key))
        cells.append({'key': key, 'other': other, 'difference': cell})
        if cell is None:
          verdicts.append(None)
          lines.append(f'{key} vs {other}: no shared seed')
          continue
        ci = cell['ci95']
        if relation == 'at_least':
          verdicts.append(cell['mean'] >= 0.0)
        elif ci is None:
          verdicts.append(None)
        elif relation == 'below':
          verdicts.append(ci[1] < 0.0)
        elif relation == 'above':
          verdicts.append(ci[0] > 0.0)
        else:   # same
          verdicts.append(ci[0] <= 0.0 <= ci[1])
        lines.append(f'{key} vs {other}: {_fmt(cell)} over {cell["n"]} seeds')
    if any(v is False for v in verdicts):
      verdict = False
    elif verdicts and all(v is True for v in verdicts):
      verdict = True
    else:
      verdict = None
    out.append({'claim': text, 'row': row, 'relation': relation, 'others': list(others),
                'keys': list(keys), 'rule': RULES[relation], 'reproduced': verdict,
                'evidence': lines, 'cells': cells})
  return out


def markdown(judged: Sequence[Mapping[str, Any]]) -> list[str]:
  """The report's claims section: each claim, its rule, its verdict and the differences."""
  if not judged:
    return []
  lines = ["## The paper's claims", '',
           'Each judged by the rule its experiment file fixes (onetrans_jax/claims.py): paired '
           'differences row minus other over the seeds both ran, 95% t-interval.', '']
  for c in judged:
    verdict = {True: 'reproduced', False: 'not reproduced', None: 'undecided'}[c['reproduced']]
    lines.append(f"- **{c['claim']}** (rule: {c['rule']}): {verdict}.")
    lines += [f'  - {e}' for e in c['evidence']]
  lines.append('')
  return lines
