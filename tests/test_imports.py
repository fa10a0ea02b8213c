"""The import graph: no cycles in the package, no test module importing another.

Walks the source with ``ast`` (nothing is imported), so a cycle is caught even where a local
(function-level) import would hide it at run time. An edge goes from a module to each module an
import statement names: ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``.
"""

from __future__ import annotations

import ast
import os

from tests.helpers import ROOT

PACKAGE = 'onetrans_jax'


def _modules(root: str, package: str) -> dict[str, str]:
  """Dotted module name -> file, for every .py file under ``root/package``."""
  out = {}
  for dirpath, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
        if rel[-1] == '__init__':
          rel = rel[:-1]
        out['.'.join(rel)] = os.path.join(dirpath, f)
  return out


def _imports(path: str, known: set[str]) -> set[str]:
  """The known modules that the file at ``path`` imports, anywhere in it."""
  names = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        names.add(sub if sub in known else node.module)
  return names & known


def import_graph(root: str = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
  mods = _modules(root, package)
  return {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (iterative depth-first search, three colours)."""
  state: dict[str, int] = {}
  for start in sorted(graph):
    if state.get(start):
      continue
    stack, path = [(start, iter(sorted(graph[start])))], [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif not state.get(child):
        state[child] = 1
        stack.append((child, iter(sorted(graph[child]))))
        path.append(child)
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert 'onetrans_jax.models.onetrans.config' in graph   # the walk sees the packages
  assert 'onetrans_jax.models.fields' in graph['onetrans_jax.models.onetrans.config']
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_cycles():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None
  assert find_cycle({'a': {'a'}}) == ['a', 'a']


def test_the_old_cycles_would_be_caught(tmp_path):
  """A local import closing a loop (as accounting <-> train once did) is an edge too."""
  pkg = tmp_path / 'pkg'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg import b\n')
  (pkg / 'b.py').write_text('def f():\n  from pkg.a import x\n  return x\n')
  assert find_cycle(import_graph(str(tmp_path), 'pkg')) == ['pkg.a', 'pkg.b', 'pkg.a']


def test_no_test_module_imports_another():
  """Tests share helpers through tests/helpers.py and fixtures through conftest.py."""
  tests_dir = os.path.join(ROOT, 'tests')
  offenders = []
  for f in sorted(os.listdir(tests_dir)):
    if not f.endswith('.py'):
      continue
    tree = ast.parse(open(os.path.join(tests_dir, f), encoding='utf-8').read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      names += ([f'{node.module}.{a.name}' for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module == 'tests' else [])
      for name in names:
        last = name.split('.')[-1]
        if name.startswith('tests.') and (last.startswith('test_') or last == 'conftest'):
          offenders.append(f'tests/{f}: {name}')
  assert not offenders, offenders
