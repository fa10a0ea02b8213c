"""Finding the experiment file that ``--config`` names: a path, or a built-in experiment by name.

The experiment files ship inside the package (``onetrans_jax/experiments/``), so an installed user
has them without a checkout, and commands recorded before they moved there (``--config
experiments/movielens_study.py:100k`` in the committed study reports) must keep working. A
``--config`` path that is not a file is therefore looked up among the built-in experiments by file
name, when it is spelt as one: a bare name (``onetrans_s.py``) or a path in a directory called
``experiments`` (``experiments/onetrans_s.py``, ``onetrans_jax/experiments/onetrans_s.py``). Any
other missing path is an error, so a mistyped directory never silently runs a built-in.

Light on purpose (no jax): the command line resolves ``--config`` before anything else loads.
"""

from __future__ import annotations

import os
import sys

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'experiments')


class UnknownExperiment(ValueError):
  """A ``--config`` path that is neither a file nor the name of a built-in experiment."""


def builtin_names() -> list[str]:
  """The built-in experiment files (those defining ``get_config``), by file name."""
  names = []
  for name in sorted(os.listdir(BUILTIN_DIR)):
    if name.endswith('.py') and not name.startswith('_'):
      with open(os.path.join(BUILTIN_DIR, name), encoding='utf-8') as f:
        if 'def get_config(' in f.read():
          names.append(name)
  return names


def resolve(spec: str) -> tuple[str, str | None]:
  """``path[:arg]`` -> (the spec to load, the built-in file used or None when ``path`` is a file).

  Raises UnknownExperiment naming the path and the built-in experiments.
  """
  path, sep, arg = spec.partition(':')
  if not path or os.path.exists(path):
    return spec, None  # an existing file (or directory: config_flags reports it) loads as given
  folder, name = os.path.split(os.path.normpath(path))
  if folder in ('', 'experiments') or os.path.basename(folder) == 'experiments':
    builtin = os.path.join(BUILTIN_DIR, name)
    if name in builtin_names():
      return builtin + sep + arg, builtin
  raise UnknownExperiment(
      f'--config {spec}: no such file, and not a built-in experiment; give the path of an '
      f'experiment file or one of the built-in ones: {", ".join(builtin_names())}')


def resolve_argv(argv: list[str], flag: str = 'config') -> list[str]:
  """``argv`` with its ``--config X`` / ``--config=X`` value resolved by ``resolve``.

  Runs before absl parses the flags (config_flags reads sys.argv when the flag is defined). Says
  on stderr which built-in file a name stands for; an unknown name ends the program with one line
  (exit code 2), like every other bad command line.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == '--':
      break
    name, eq, value = arg.lstrip('-').partition('=')
    if not arg.startswith('-') or name != flag or (not eq and i + 1 >= len(out)):
      continue
    at = i if eq else i + 1
    try:
      spec, builtin = resolve(value if eq else out[at])
    except UnknownExperiment as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(2)
    if builtin:
      print(f'--{flag} {value if eq else out[at]}: using the built-in experiment {builtin}',
            file=sys.stderr, flush=True)
      out[at] = f'{arg.split("=", 1)[0]}={spec}' if eq else spec
  return out
