"""A light tuning budget, chosen on validation: which setting each model family keeps.

A tuning sweep names its rows ``'<family> @ <setting>'`` (e.g. ``'OneTrans_S @ sparse lr 0.02'``)
and sets ``sweep.select = 'valid/<task>/<metric>'``. Every row's score is the validation value its
run kept at its best step (the early-stopping rule's choice, from the run record's
``valid_curve``), never a hold-out number; each family keeps its best-scoring setting. The sweep
writes ``selection.json`` and ``selection.md`` beside its report, and the study that uses the
choices copies them into its config with a pointer to the committed file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from onetrans_jax.errors import ConfigError

SEPARATOR = ' @ '


def split_name(name: str) -> tuple[str, str]:
  """('OneTrans_S', 'sparse lr 0.02') from 'OneTrans_S @ sparse lr 0.02'."""
  if SEPARATOR not in name:
    raise ConfigError(f'tuning row {name!r} is not named "<family>{SEPARATOR}<setting>"')
  family, setting = name.rsplit(SEPARATOR, 1)
  return family, setting


def valid_score(record: Mapping[str, Any], metric: str) -> float:
  """The validation value of ``metric`` ('valid/<task>/<name>') at the record's best step."""
  _, task, name = metric.split('/')
  curve = record.get('valid_curve') or []
  if not curve:
    raise ValueError(f'run record of {record.get("variant")!r} seed {record.get("seed")} has no '
                     'validation curve: it was trained without validation (or before the curve '
                     'was kept); rerun it with data.valid_fraction > 0')
  best = record.get('best_step')
  points = [p for p in curve if p['step'] == best] or curve
  values = [float(p[task][name]) for p in points if task in p and name in p[task]]
  if not values:
    raise ValueError(f'validation curve of {record.get("variant")!r} has no {task}/{name}')
  return values[-1]


def select(records_by_name: Mapping[str, Sequence[Mapping[str, Any]]], metric: str,
           mode: str = 'max') -> dict[str, Any]:
  """Per family: every setting's mean validation score over its seeds, and the chosen setting
  (ties: the first listed, i.e. the default)."""
  if mode not in ('max', 'min'):
    raise ConfigError(f'tuning mode {mode!r}: use max or min')
  families: dict[str, dict[str, float]] = {}
  for name, recs in records_by_name.items():
    family, setting = split_name(name)
    scores = [valid_score(r, metric) for r in recs]
    families.setdefault(family, {})[setting] = sum(scores) / len(scores)
  better = (lambda a, b: a > b) if mode == 'max' else (lambda a, b: a < b)
  out = {'metric': metric, 'mode': mode, 'families': {}}
  for family, scores in families.items():
    chosen = None
    for setting, score in scores.items():
      if not math.isfinite(score):
        continue
      if chosen is None or better(score, scores[chosen]):
        chosen = setting
    out['families'][family] = {'scores': scores, 'chosen': chosen}
  return out


def format_selection(sel: Mapping[str, Any]) -> str:
  """A markdown table: one row per family, one column per setting, the chosen one in bold."""
  settings: list[str] = []
  for fam in sel['families'].values():
    settings += [s for s in fam['scores'] if s not in settings]
  lines = [f'Chosen on {sel["metric"]} ({sel["mode"]}) at each run\'s best step; the hold-out '
           'plays no part.', '',
           '| family | ' + ' | '.join(settings) + ' | chosen |',
           '|---' * (len(settings) + 2) + '|']
  for family, fam in sel['families'].items():
    cells = []
    for s in settings:
      v = fam['scores'].get(s)
      cell = '' if v is None else f'{v:.4f}'
      cells.append(f'**{cell}**' if s == fam['chosen'] else cell)
    lines.append(f'| {family} | ' + ' | '.join(cells) + f' | {fam["chosen"]} |')
  return '\n'.join(lines)


def write_selection(workdir: str, records_by_name: Mapping[str, Sequence[Mapping[str, Any]]],
                    metric: str, mode: str = 'max') -> dict[str, Any]:
  """selection.json and selection.md in ``workdir``; returns the selection."""
  sel = select(records_by_name, metric, mode)
  with open(os.path.join(workdir, 'selection.json'), 'w', encoding='utf-8') as f:
    json.dump(sel, f, indent=1, sort_keys=True)
    f.write('\n')
  with open(os.path.join(workdir, 'selection.md'), 'w', encoding='utf-8') as f:
    f.write('# Tuning selection\n\n' + format_selection(sel) + '\n')
  return sel
