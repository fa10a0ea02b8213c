r"""The training command: parse flags, load the experiment file, train and evaluate.

  python launch.py                          # onetrans_jax/experiments/default.py, ./workdir
  python launch.py --config onetrans_jax/experiments/default.py --workdir /tmp/run1
  python launch.py --config.train.total_steps=600 --config.model.num_layers=2
  onetrans train --config onetrans_s.py:small --workdir runs/s    # installed: the same program

Multi-host (every process runs the same command; see the README's "Sharded and multi-host
training"):

  python launch.py --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0 ...
  srun python launch.py ...          # SLURM, TPU slices: detected, no flags needed

Re-running with the same --workdir resumes from its latest checkpoint. An experiment file with a
``config.sweep`` section (e.g. onetrans_jax/experiments/onetrans_rq2_ablation.py) trains all its
variants and prints one comparison table. A --config that is not a file is looked up among the
built-in experiments by name (``experiment_files.py``).

The flags are defined by ``main``, not at import: config_flags reads the ``--config.*`` overrides
from the command line when the flag is defined, after ``--config`` has been resolved.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from onetrans_jax import experiment_files, host_memory

DEFAULT_CONFIG = os.path.join(experiment_files.BUILTIN_DIR, 'default.py')


def _fail(msg: str, code: int = 2) -> None:
  print(f'error: {msg}', file=sys.stderr, flush=True)
  sys.exit(code)


def _unknown_field(e: Exception) -> None:
  msg = str(e).strip('\'"').replace('\\n', ' ').replace("\\'", "'")
  if "has no attribute 'get_config" in msg:  # the experiment file, not an override
    _fail('the experiment file given by --config defines no get_config(); it must define '
          'get_config(arg=None) returning an ml_collections.ConfigDict (see '
          'onetrans_jax/experiments/default.py)')
  _fail(f'unknown config field in an override: {msg}')


def _syntax_error(e: SyntaxError) -> None:
  _fail(f'{e.filename}, line {e.lineno}: {e.msg} (in the experiment file given by --config)')


def _define_flags(argv: list[str]) -> None:
  """The command's flags, shown by ``--help`` as the program's own (``argv[0]``'s)."""
  try:
    # config_flags reads --config.* overrides from argv already here, so a misspelt field
    # raises at definition time.
    holders = [config_flags.DEFINE_config_file(
        'config', DEFAULT_CONFIG,
        'Experiment file (a Python file with get_config), or the name of a built-in one '
        '(onetrans_s.py:small); any field is overridable as --config.section.field=value.',
        lock_config=True, sys_argv=argv)]
  except (AttributeError, KeyError) as err:
    _unknown_field(err)
  except SyntaxError as err:
    _syntax_error(err)
  holders += [
      flags.DEFINE_string('workdir', 'workdir',
                          'Run directory: checkpoints, metrics.jsonl, tensorboard/, '
                          'final_metrics.json. An existing one is resumed.'),
      flags.DEFINE_enum(
          'distributed', 'auto', ['auto', 'on', 'off'],
          'Multi-process start-up (jax.distributed.initialize): auto = when '
          '--coordinator_address is given or under SLURM / Open MPI / a multi-host TPU slice; '
          'on = always; off = never.'),
      flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0 for jax.distributed (not needed '
          'under SLURM / Open MPI / TPU).'),
      flags.DEFINE_integer('num_processes', None, 'Processes in the job.'),
      flags.DEFINE_integer('process_id', None, "This process's index, 0..num_processes-1.")]
  for holder in holders if __name__ != '__main__' else []:
    # absl's --help lists the flags of the module named by argv[0] (__main__'s already are)
    flags.FLAGS.register_flag_by_module(argv[0], flags.FLAGS[holder.name])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad experiment files and overrides reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}\n(pass --helpfull for the list of flags)')
  except (AttributeError, KeyError) as e:  # unknown --config.x field: ml_collections suggests one
    _unknown_field(e)
  except SyntaxError as e:
    _syntax_error(e)
  except (ValueError, TypeError) as e:
    _fail(f'bad config override: {e}')
  return []


def _run(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; flags take the form --name=value')
  if not flags.FLAGS['verbosity'].present:
    # orbax and grain log every save at INFO; the progress line and tables are printed anyway.
    logging.set_verbosity(logging.WARNING)
  try:
    config = flags.FLAGS.config
    config.seed  # an experiment file that failed to load raises here  # pylint: disable=pointless-statement
  except (IOError, OSError) as e:
    _fail(f'cannot load the experiment given by --config ({flags.FLAGS["config"].serialize()}): '
          f'{e.__cause__ or e}')
  workdir = flags.FLAGS.workdir
  # Imported after the flags are parsed, so that `--help` and flag errors pay for no more than
  # the experiment file (which imports jax and flax through its model family's config.py):
  # not for the training program, orbax, grain and the data loaders. jax's backend starts only
  # below, after the distributed set-up.
  from onetrans_jax import distributed
  try:  # before anything starts a jax backend
    where = distributed.initialize(flags.FLAGS.distributed, flags.FLAGS.coordinator_address,
                                   flags.FLAGS.num_processes, flags.FLAGS.process_id)
  except ValueError as e:
    _fail(str(e))
  if where != 'single process':
    print(f'distributed: {where}', flush=True)
  from onetrans_jax.errors import ConfigError, Interrupted, NonFiniteLossError, WorkdirError
  from onetrans_jax.schema import SchemaError
  from onetrans_jax.sweep import run_sweep
  from onetrans_jax.train import train_and_evaluate
  try:
    if 'sweep' in config:  # an experiment of several variants x seeds, printing one table
      run_sweep(config, workdir)
    else:
      train_and_evaluate(config, workdir)
  except ConfigError as e:
    _fail(f'config: {e}')
  except SchemaError as e:
    _fail(f'data: {e}')
  except WorkdirError as e:
    _fail(f'workdir: {e}')
  except Interrupted as e:  # the conventional 128 + signal number, after a clean save
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except NonFiniteLossError as e:
    _fail(str(e), code=3)


def main(argv: list[str] | None = None) -> None:
  """Runs the command line ``argv`` (program name first; default sys.argv). Once per process."""
  if argv is None:  # this process's own command line: re-run it once with huge pages
    host_memory.enable()
  argv = list(sys.argv if argv is None else argv)
  # What absl's --help and a study report's command read: the command as typed (a built-in's
  # name, not this machine's path to it), which resolves the same way when run again.
  sys.argv = argv
  argv = experiment_files.resolve_argv(argv)
  _define_flags(argv)
  app.run(_run, argv=argv, flags_parser=_parse_flags)


if __name__ == '__main__':
  main()
