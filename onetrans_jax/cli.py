"""The ``onetrans`` command of the installed package: one entry point, a subcommand per program.

  onetrans train --config onetrans_s.py:small --workdir runs/s  # = python launch.py ...
  onetrans accounting --config onetrans_s.py     # = python -m onetrans_jax.accounting ...
  onetrans benchmark --shapes=cpu                # = python -m onetrans_jax.benchmarks.suite ...
  onetrans eval --workdir runs/s --split holdout  # a trained run's table again (inference.py)
  onetrans predict --workdir runs/s --output scores.parquet
  onetrans export --workdir runs/s --output runs/s/export

Each subcommand keeps its program's own absl flags and errors (``onetrans <subcommand> --help``);
``--config`` takes a path or the name of a built-in experiment (``experiment_files.py``). Adding
a subcommand is one function taking the command line (its name first) and one ``COMMANDS``
entry. The functions import their program only when run, so ``onetrans --help`` and a mistyped
subcommand cost no jax import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from onetrans_jax import host_memory


def _train(argv: list[str]) -> None:
  from onetrans_jax import launch
  launch.main(argv)


def _accounting(argv: list[str]) -> None:
  from onetrans_jax import accounting
  accounting.cli(argv)


def _benchmark(argv: list[str]) -> None:
  from onetrans_jax.benchmarks import suite
  suite.cli(argv)


def _eval(argv: list[str]) -> None:
  from onetrans_jax import inference
  inference.cli_eval(argv)


def _predict(argv: list[str]) -> None:
  from onetrans_jax import inference
  inference.cli_predict(argv)


def _export(argv: list[str]) -> None:
  from onetrans_jax import inference
  inference.cli_export(argv)


# name -> (the function running it, the one line `onetrans --help` shows).
COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    'train': (_train, 'train and evaluate an experiment, or run its sweep (= python launch.py)'),
    'accounting': (_accounting, "an experiment's dense parameters and FLOPs, as the paper counts"),
    'benchmark': (_benchmark, "training speed against the machine's ceiling: a table and a JSON "
                              'record'),
    'eval': (_eval, "score a trained workdir's best checkpoint on a split: the table, a JSON"),
    'predict': (_predict, 'a score per (request, candidate) of a split or a new file: CSV or '
                          'Parquet'),
    'export': (_export, "a trained workdir's model for serving (jax.export): OneTrans, OneRank, "
                        '...'),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ['usage: onetrans <subcommand> [flags]   (onetrans <subcommand> --help for its flags)',
           '', 'subcommands:']
  lines += [f'  {name:<{width}}  {text}' for name, (_, text) in COMMANDS.items()]
  lines += ['', '--config takes an experiment file, or a built-in one by name: onetrans_s.py:small']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  """Runs ``onetrans <subcommand> [flags]``; ``argv`` excludes the program name (default
  sys.argv[1:])."""
  if argv is None:  # this process's own command line: re-run it once with huge pages
    host_memory.enable()
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] in (['-h'], ['--help'], ['help']):
    print(usage())
    return
  if not argv or argv[0] not in COMMANDS:
    got = f'unknown subcommand {argv[0]!r}' if argv else 'no subcommand'
    print(f'error: {got}; use one of {", ".join(COMMANDS)} (onetrans --help)', file=sys.stderr)
    sys.exit(2)
  run, _ = COMMANDS[argv[0]]
  run([f'onetrans {argv[0]}', *argv[1:]])


if __name__ == '__main__':
  main()
