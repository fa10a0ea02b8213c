"""The installable package: the `onetrans` command, built-in experiments by name, the wheel.

Training through `onetrans train` and old `--config experiments/...` spellings is tested in
test_launch.py (test_good_run_prints_table_and_resumes), `onetrans benchmark` in
test_benchmark_suite.py, `onetrans eval / predict / export` in test_inference.py: each beside the
program it runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from onetrans_jax import cli, experiment_files
from tests.helpers import ROOT

BUILTIN = experiment_files.BUILTIN_DIR


def _cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'onetrans_jax.cli', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('spec', ['experiments/onetrans_s.py', 'onetrans_s.py',
                                  'onetrans_jax/experiments/onetrans_s.py'])
def test_a_builtin_experiment_is_found_by_name(tmp_path, monkeypatch, spec):
  monkeypatch.chdir(tmp_path)  # an installed user's directory: none of these paths exists here
  path = os.path.join(BUILTIN, 'onetrans_s.py')
  assert experiment_files.resolve(spec) == (path, path)
  assert experiment_files.resolve(spec + ':small') == (path + ':small', path)


def test_an_existing_file_loads_as_given_and_an_unknown_name_is_one_line(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'experiments').mkdir()
  (tmp_path / 'experiments' / 'onetrans_s.py').write_text('def get_config(arg=None): ...\n')
  assert experiment_files.resolve('experiments/onetrans_s.py:small') == (
      'experiments/onetrans_s.py:small', None)  # the user's own file shadows the built-in
  names = experiment_files.builtin_names()
  assert {'default.py', 'onetrans_s.py', 'movielens_study.py'} <= set(names)
  assert 'common.py' not in names and '__init__.py' not in names  # no get_config: not runnable
  # A missing file is a built-in only where spelt as one: a mistyped directory is an error.
  for spec in ['experiments/onetrans_z.py:small', 'my_runs/onetrans_s.py']:
    with pytest.raises(experiment_files.UnknownExperiment) as e:
      experiment_files.resolve(spec)
    assert str(e.value).startswith(f'--config {spec}: no such file, and not a built-in')
    assert 'default.py, ' in str(e.value) and '\n' not in str(e.value)


def test_the_command_line_is_rewritten_in_both_flag_forms(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  path = os.path.join(BUILTIN, 'movielens_study.py')
  argv = ['prog', '--config', 'experiments/movielens_study.py:100k', '--config.seed=1',
          '--workdir=w']
  assert experiment_files.resolve_argv(argv) == [
      'prog', '--config', path + ':100k', '--config.seed=1', '--workdir=w']
  assert experiment_files.resolve_argv(['prog', '--config=movielens_study.py:1m']) == [
      'prog', f'--config={path}:1m']
  assert capsys.readouterr().err.splitlines() == [
      f'--config experiments/movielens_study.py:100k: using the built-in experiment {path}',
      f'--config movielens_study.py:1m: using the built-in experiment {path}']
  with pytest.raises(SystemExit) as e:
    experiment_files.resolve_argv(['prog', '--config=nope.py'])
  assert e.value.code == 2
  assert re.fullmatch(r'error: --config nope.py: no such file, .*\n', capsys.readouterr().err)


def test_help_lists_the_subcommands_and_an_unknown_one_is_one_line(tmp_path):
  proc = _cli('--help', cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  for name in cli.COMMANDS:
    assert re.search(rf'^  {name} +\S', proc.stdout, re.M), proc.stdout
  proc = _cli('trian', '--config=onetrans_s.py', cwd=str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr == ("error: unknown subcommand 'trian'; use one of train, accounting, "
                         'benchmark, eval, predict, export (onetrans --help)\n')


@pytest.mark.parametrize('command', ['eval', 'predict', 'export'])
def test_the_workdir_commands_say_a_missing_workdir_in_one_line(tmp_path, command):
  """Wired to onetrans_jax/inference.py (its tests: tests/test_inference.py)."""
  extra = [] if command == 'eval' else ['--output', str(tmp_path / 'out.csv')]
  proc = _cli(command, '--workdir', 'nope', *extra, cwd=str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr.endswith('error: workdir: --workdir nope does not exist; give the directory '
                              'a training run wrote (onetrans train --workdir ...)\n'), proc.stderr


def test_accounting_takes_a_builtin_by_name(tmp_path):
  proc = _cli('accounting', '--config', 'pooled_mlp.py', cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'model pooled_mlp: dense params' in proc.stdout
  assert 'using the built-in experiment' in proc.stderr


def test_pyproject_and_requirements_agree():
  """pyproject.toml's lower bounds are requirements.txt's pins (the tested versions)."""
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  pins = dict(re.findall(r'^([\w.-]+)==(\S+)', open(os.path.join(ROOT, 'requirements.txt')).read(),
                         re.M))
  bounds = dict(d.split('>=') for d in project['dependencies'])
  for extra in project['optional-dependencies'].values():
    bounds.update(d.split('>=') for d in extra)
  assert bounds == pins
  assert project['scripts'] == {'onetrans': 'onetrans_jax.cli:main'}


def test_the_wheel_holds_the_package_its_experiments_and_the_command(tmp_path):
  """Builds the wheel as `pip install .` does (an isolated build: pip fetches setuptools), from a
  copy of the tree so that no build/ directory is left in the checkout."""
  src = tmp_path / 'src'
  shutil.copytree(os.path.join(ROOT, 'onetrans_jax'), src / 'onetrans_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src / name)
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w',
                         str(tmp_path / 'dist'), str(src)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (wheel,) = (tmp_path / 'dist').iterdir()
  names = zipfile.ZipFile(wheel).namelist()
  for path in ('onetrans_jax/experiments/default.py', 'onetrans_jax/experiments/common.py',
               'onetrans_jax/benchmarks/suite.py', 'onetrans_jax/cli.py',
               'onetrans_jax/models/onetrans/model.py'):
    assert path in names, path
  assert {n.split('/')[0] for n in names} == {'onetrans_jax', 'onetrans_jax-0.1.0.dist-info'}
  entry_points = zipfile.ZipFile(wheel).read('onetrans_jax-0.1.0.dist-info/entry_points.txt')
  assert 'onetrans = onetrans_jax.cli:main' in entry_points.decode()
