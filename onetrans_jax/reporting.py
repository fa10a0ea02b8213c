"""What a run shows: the progress line, metrics.jsonl, TensorBoard events and the final table.

Only process 0 writes files. Every record in ``metrics.jsonl`` is one JSON object with ``step``,
``split`` ('train', 'eval', 'next_batch', 'final') and flat scalar fields, e.g. ``click/auc``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import logging


def flatten(metrics: Mapping[str, Any], prefix: str = '') -> dict[str, float]:
  out: dict[str, float] = {}
  for k, v in metrics.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(flatten(v, key + '/'))
    else:
      out[key] = float(v)
  return out


class MetricWriter:
  """JSONL + TensorBoard (tensorboardX) under the workdir, continued across resumes.

  ``start_step``: the step the run (re)starts from. Records a killed run wrote past it are redone
  by the resumed run, so they are dropped (metrics.jsonl rewritten atomically; TensorBoard told to
  purge them), as is an earlier 'final' record: every step appears once.
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      path = os.path.join(workdir, 'metrics.jsonl')
      _truncate_after(path, start_step)
      self._jsonl = open(path, 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # local: only process 0 pays the import
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                               purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    flat = flatten(scalars)
    record = {'step': int(step), 'split': split}
    record.update({k: (None if math.isnan(v) else v) for k, v in flat.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for k, v in flat.items():
      if not math.isnan(v):
        self._tb.add_scalar(f'{split}/{k}', v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Every record of the run's metrics.jsonl, in order (none when the run left no log)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _truncate_after(path: str, step: int) -> None:
  """Keep the records of ``path`` up to ``step`` (no 'final' one), dropping a torn last line."""
  if not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:   # a line cut short by a kill
        dropped += 1
        continue
      if rec.get('step', 0) <= step and rec.get('split') != 'final':
        kept.append(line if line.endswith('\n') else line + '\n')
      else:
        dropped += 1
  if dropped:
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.writelines(kept)
    os.replace(tmp, path)


def or_dash(x: Any, spec: str) -> str:
  """``format(x, spec)``, or '—' for a value that does not exist (None) in a printed table."""
  return '—' if x is None else format(x, spec)


def hms(seconds: float) -> str:
  seconds = max(0, int(seconds))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class Progress:
  """Throughput and ETA measured from this process's (re)start, so the ETA survives a resume.

  Time spent outside training (validation, evaluation, diagnostics, checkpoint saves) is
  ``pause``d out of the throughput, so ex/s and ``step_seconds`` are the training step's own
  rate (with its input pipeline); the ETA keeps it, since a run pays for it too."""

  def __init__(self, total_steps: int, start_step: int):
    self.total_steps = total_steps
    self.start_step = start_step
    self.t0 = time.perf_counter()
    self.last_t, self.last_step, self.examples = self.t0, start_step, 0.0
    self.paused = 0.0                  # non-training seconds since the last update
    self.intervals: list[float] = []   # training seconds per step of each interval

  def pause(self, seconds: float) -> None:
    """Take ``seconds`` of non-training work out of the current interval's throughput."""
    self.paused += max(0.0, seconds)

  def update(self, step: int, examples: float) -> dict[str, float]:
    """Call at a log step with the real impressions seen since the last call (the steps' work
    is finished: the caller fetched their outputs)."""
    now = time.perf_counter()
    self.examples += examples
    busy = max(now - self.last_t - self.paused, 1e-9)
    rate = examples / busy
    if step > self.last_step:
      self.intervals.append(busy / (step - self.last_step))
    steps_per_s = (step - self.start_step) / max(now - self.t0, 1e-9)
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    self.last_t, self.last_step, self.paused = now, step, 0.0
    return {'examples_per_s': rate, 'elapsed_s': now - self.t0, 'eta_s': eta}

  def step_seconds(self) -> float | None:
    """Median training seconds per step over this process's log intervals, the first one left
    out when there are others (it holds the compile); None before the first interval."""
    kept = self.intervals[1:] if len(self.intervals) > 1 else self.intervals
    return float(statistics.median(kept)) if kept else None

  def line(self, step: int, loss: float, stats: Mapping[str, float]) -> str:
    return (f'step {step}/{self.total_steps} | loss {loss:.4f} | '
            f'{stats["examples_per_s"]:,.0f} ex/s | elapsed {hms(stats["elapsed_s"])} | '
            f'ETA {hms(stats["eta_s"])}')


COLUMNS = (('auc', 'AUC'), ('uauc', 'UAUC'), ('logloss', 'logloss'),
           ('const_logloss', 'const logloss'), ('oracle_auc', 'oracle AUC'),
           ('oracle_uauc', 'oracle UAUC'), ('count', 'impressions'),
           ('positive_rate', 'pos rate'))


def format_table(metrics: Mapping[str, Mapping[str, float]], task_names: Sequence[str],
                 title: str) -> str:
  """Plain-text table, one row a task; columns absent from every task are left out."""
  cols = [(k, h) for k, h in COLUMNS if any(k in metrics.get(t, {}) for t in task_names)]
  rows = [['task'] + [h for _, h in cols]]
  for t in task_names:
    row = [t]
    for k, _ in cols:
      v = metrics.get(t, {}).get(k, float('nan'))
      row.append(f'{int(v):,}' if k == 'count' and not math.isnan(v) else f'{v:.4f}')
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [title]
  for i, r in enumerate(rows):
    lines.append('  '.join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in
                           enumerate(zip(r, widths))))
    if i == 0:
      lines.append('  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def log(msg: str) -> None:
  """Progress and tables go to stdout (what a user watches) and to the absl log."""
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)
