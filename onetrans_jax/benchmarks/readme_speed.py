r"""The README's measured speed tables, rendered from benchmark suite JSON files.

  python -m onetrans_jax.benchmarks.readme_speed results/speed/cpu_suite.json --readme=README.md
  python -m onetrans_jax.benchmarks.readme_speed results/speed/*.json --check   # CI: in sync?

Every figure of the README's Speed section between the markers below comes from a committed
suite JSON (``python -m onetrans_jax.benchmarks.suite --json=...``), with the machine, the jax
version and the command that measured it written beside the tables; numbers are never typed in by
hand. A GPU file gets the paper's production MFU beside its OneTrans_L rows (SPEC A.10). An
incomplete file (the suite was stopped) is rendered with what it measured and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from onetrans_jax.reporting import or_dash

BEGIN = '<!-- speed-tables:begin (python -m onetrans_jax.benchmarks.readme_speed; do not edit) -->'
END = '<!-- speed-tables:end -->'
# SPEC A.10: OneTrans_L in production, against DCNv2 + DIN's 13.4%.
PAPER_MFU = {'onetrans_l': 0.308}


def _pct(x: float | None) -> str:
  return or_dash(None if x is None else 100 * x, '.1f') + ('%' if x is not None else '')


def _machine(result: dict[str, Any], path: str) -> list[str]:
  m = result['machine']
  where = (f"{m['cpu_count']} CPU cores ({m.get('cpu_model') or m.get('processor') or '?'})"
           if m['backend'] == 'cpu' else f"{m['device_count']} × {m['device']} ({m['backend']})")
  memory = f", host memory: {m['host_memory']}" if m.get('host_memory') else ''
  lines = [f"Measured on {where}, jax {m['jax']}{memory}, `{path}`:", '', '```bash',
           _command(result['command']), '```', '']
  if not result.get('complete', True):
    lines += ['*Incomplete: the suite stopped after the rows below.*', '']
  return lines


def _command(command: str) -> str:
  """The suite's recorded argv as a runnable module command."""
  parts = command.split()
  if parts and parts[0].endswith(('suite.py', 'suite', 'onetrans')):
    parts = parts[1:]
    if parts and parts[0] == 'benchmark':
      parts = parts[1:]
  return ' '.join(['python -m onetrans_jax.benchmarks.suite', *parts])


def _ceiling(result: dict[str, Any]) -> list[str]:
  ceil = result.get('ceiling') or {}
  if not ceil:
    return []
  parts = [f"{k[7:]} matmul {v / 1e9:.1f} GFLOP/s" for k, v in ceil.items()
           if k.startswith('matmul_')]
  if 'copy_bytes_per_s' in ceil:
    parts.append(f"copy {ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s")
  return ['Ceiling in the same run: ' + ', '.join(parts) + '.', '']


def _times(x: float | None) -> str:
  return or_dash(x, '.2f') + ('×' if x is not None else '')


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A markdown table (and the blank line after it); none without rows."""
  if not rows:
    return []
  return ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head),
          *('| ' + ' | '.join(cells) + ' |' for cells in rows), '']


def _train(result: dict[str, Any]) -> list[str]:
  rows = result.get('train') or []
  gpu = result['machine']['backend'] != 'cpu'
  head = ['shape', 'train step', 'ms', 'examples/s', 'peak GB', 'GFLOP/s', 'MFU',
          'time vs default', 'compile s'] + (['paper MFU'] if gpu else [])
  defaults = {r['shape']: r for r in rows if r['variant'] == 'default'}
  cells = []
  for r in rows:
    rel = r['seconds'] / defaults[r['shape']]['seconds'] if r['shape'] in defaults else None
    name = f"**{r['variant']}**" if r['variant'] == 'default' else r['variant']
    row = [r['shape'], f"{name} (`{r['attention_impl']}`, {r['dtype']})",
           f"{r['seconds'] * 1e3:.1f}", f"{r['examples_per_s']:,.0f}",
           f"{r['peak_bytes'] / 2**30:.2f}", f"{r['flops_per_s'] / 1e9:.1f}", _pct(r['mfu']),
           _times(rel), f"{r['compile_seconds']:.1f}"]
    if gpu:
      row.append(_pct(PAPER_MFU.get(r['shape']) if r['variant'] == 'default' else None))
    cells.append(row)
  return _table(head, cells)


def _attention(result: dict[str, Any]) -> list[str]:
  return _table(
      ['shape', 'attention, layer 0, forward + backward', 'ms', 'GFLOP/s', 'speed vs xla'],
      [[r['shape'], f"{r['implementation']} (B {r['batch']}, L {r['length']}, {r['heads']} "
        f"heads × {r['head_dim']})", f"{r['seconds'] * 1e3:.1f}",
        f"{r['flops_per_s'] / 1e9:.1f}", _times(r.get('speedup_vs_xla'))]
       for r in result.get('attention') or []])


def _savings(result: dict[str, Any]) -> list[str]:
  return _table(
      ['shape', 'optimization (ratio on / off)', 'time', 'memory', 'analytic FLOPs',
       'paper time', 'paper memory', 'paper FLOPs'],
      [[r['shape'], r['optimization'], f"{r['time_ratio']:.3f}", f"{r['memory_ratio']:.3f}",
        f"{r['flops_ratio']:.3f}", f"{r['paper_time_ratio']:.3f}",
        f"{r['paper_memory_ratio']:.3f}", or_dash(r['paper_flops_ratio'], '.3f')]
       for r in result.get('savings') or []])


def _workloads(result: dict[str, Any]) -> list[str]:
  return _table(
      ['study workload', 'requests × candidates', 'step ms', 'GFLOP/s', 'MFU',
       'end-to-end ex/s', 'input alone ex/s', 'input share', 'compile s'],
      [[r['workload'], f"{r['requests']} × {r['candidates']}", f"{r['step_seconds'] * 1e3:.1f}",
        f"{r['flops_per_s'] / 1e9:.1f}", _pct(r['mfu']), f"{r['e2e_examples_per_s']:,.0f}",
        f"{r['data_examples_per_s']:,.0f}", f"{100 * r['input_share']:.1f}%",
        f"{r['compile_seconds']:.1f}"]
       for r in result.get('workloads') or []])


def _dots(result: dict[str, Any]) -> list[str]:
  rows = result.get('dots') or []
  out = _table(
      ['step (its dots alone)', 'dots', 'dot GFLOP / analytic', 'alone ms', 'GFLOP/s',
       'MFU if only dots', 'step ms', 'alone / step'],
      [[r['name'], f"{r['calls']}", f"{r['dot_flops'] / 1e9:.2f} / "
        f"{r['analytic_flops'] / 1e9:.2f}", f"{r['dots_seconds'] * 1e3:.1f}",
        f"{r['dots_flops_per_s'] / 1e9:.1f}", _pct(r['dots_mfu']),
        or_dash(None if r.get('step_seconds') is None else r['step_seconds'] * 1e3, '.1f'),
        _times(r['dots_seconds'] / r['step_seconds'] if r.get('step_seconds') else None)]
       for r in rows])
  if not rows:
    return out
  slowest = []
  for r in rows:
    parts = [f"{k} {v['seconds'] * 1e3:.1f} ms at {v['flops'] / v['seconds'] / 1e9:.0f} GFLOP/s"
             for k, v in list(r['components'].items())[:3] if v['seconds'] > 0]
    slowest.append(f"- {r['name']}: " + '; '.join(parts))
  return out[:-1] + ['', 'Their dots alone, by component (the three slowest):', ''] + slowest + ['']


def render(files: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """The block between the markers: per file its machine, command and tables."""
  lines = [BEGIN, '']
  for path, result in files:
    lines += _machine(result, path)
    lines += _ceiling(result) + _train(result) + _attention(result) + _savings(result)
    lines += _workloads(result) + _dots(result)
    for f in result.get('failed') or []:
      lines.append(f"- failed: {f['shape']} / {f['what']}: {f['error']}")
    if result.get('failed'):
      lines.append('')
  lines.append(END)
  return '\n'.join(lines)


def splice(readme: str, block: str, readme_path: str = 'README.md') -> str:
  """``readme`` with the text between the markers (inclusive) replaced by ``block``."""
  start, end = readme.find(BEGIN), readme.find(END)
  if start < 0 or end < start:
    raise ValueError(f'{readme_path}: no speed-tables markers; put the lines\n{BEGIN}\n{END}\n'
                     'where the measured tables belong')
  return readme[:start] + block + readme[end + len(END):]


def load(paths: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
  out = []
  for path in paths:
    try:
      with open(path, encoding='utf-8') as f:
        result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise SystemExit(f'{path}: not a readable suite JSON ({e}); write one with '
                       'python -m onetrans_jax.benchmarks.suite --json=PATH') from e
    if 'machine' not in result or 'command' not in result:
      raise SystemExit(f'{path}: no "machine" / "command" fields: not a benchmark suite JSON')
    out.append((path, result))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('json', nargs='+', help='suite JSON files, in the order the README shows them')
  p.add_argument('--readme', default='README.md')
  p.add_argument('--check', action='store_true',
                 help='exit 1 when the README differs from what the files render')
  args = p.parse_args(argv)
  block = render(load(args.json))
  with open(args.readme, encoding='utf-8') as f:
    text = f.read()
  try:
    new = splice(text, block, args.readme)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  if args.check:
    if new != text:
      print(f'{args.readme}: the speed tables differ from {", ".join(args.json)}; regenerate '
            f'with python -m onetrans_jax.benchmarks.readme_speed {" ".join(args.json)}',
            file=sys.stderr)
      return 1
    return 0
  if new != text:
    with open(args.readme, 'w', encoding='utf-8') as f:
      f.write(new)
  print(f'{args.readme}: speed tables from {", ".join(args.json)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
