r"""Study rows trained with their requests rebuilt on every read against kept in memory.

  taskset -c 0 python -m onetrans_jax.benchmarks.input_cache          # one study lane's core
  python -m onetrans_jax.benchmarks.input_cache --rows=rq3_onetrans --steps=200

Each row is a study's own resolved config (seed 0) on a world cut to ``--requests`` training
requests, so that an epoch is short and the later epochs, which a study run spends most of its
steps in, are reached in a few minutes. It trains ``--steps`` steps twice through the trainer
(``train_and_evaluate``): ``data.cache_mb=0`` (every request built on every read) and the default
(``data/cache.py``: built once). The rate is the trainer's own examples/s over its last logging
interval (past the first epoch and the compile); the two runs train on the same batches.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import tempfile
from collections.abc import Sequence

from absl import app, flags, logging

from onetrans_jax import records
from onetrans_jax.data import cache, pipeline

# key -> (experiment module, variant argument, sweep row)
ROWS = {
    'rq3_onetrans': ('onetrans_rq3_scaling', None, 'OneTrans | base'),
    'rq3_rankmixer_transformer': ('onetrans_rq3_scaling', None, 'RankMixer + Transformer | base'),
    'rq2_onetrans_s': ('onetrans_rq2_ablation', 'mechanisms', 'OneTrans_S'),
    'rq1_dcnv2_din': ('rq1_baselines', 'mechanisms', 'DCNv2 + DIN'),
}
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a program only: importing the module (the tests import it beside the
  suite, whose --requests means another thing) defines no flag."""
  flags.DEFINE_list('rows', ['rq3_onetrans', 'rq1_dcnv2_din'], f'Of {", ".join(ROWS)}.')
  flags.DEFINE_integer('requests', 6400, 'Training requests (an epoch).')
  flags.DEFINE_integer('steps', 400, 'Steps per run (the rate is read at the last log).')


def row_config(key: str, requests: int, num_steps: int, cache_mb: float):
  """One study row's config on a world of ``requests`` training requests."""
  module, arg, name = ROWS[key]
  c = importlib.import_module(f'onetrans_jax.experiments.{module}').get_config(arg)
  c = records.variant_config(c, dict(c.sweep.variants)[name], seed=0)
  valid = 512
  c.data.num_train_requests = requests + valid
  c.data.valid_fraction = valid / (requests + valid)
  c.data.num_eval_requests = 256
  c.data.cache_mb = cache_mb
  c.train.total_steps = num_steps
  c.train.log_every = max(1, num_steps // 4)
  c.train.checkpoint_every = 0
  return c


def examples_per_second(config) -> float:
  """The trainer's examples/s over its last logging interval."""
  from onetrans_jax.train import train_and_evaluate
  pipeline._WORLD[0] = None   # each run builds (and, cached, fills) its own world
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    train_and_evaluate(config, tempfile.mkdtemp())
  rates = re.findall(r'step \d+/\d+ \| loss [\d.]+ \| ([\d,]+) ex/s', out.getvalue())
  if not rates:
    raise RuntimeError('the trainer logged no rate; raise --steps')
  return float(rates[-1].replace(',', ''))


def main(argv: Sequence[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)   # the trainer's progress is read from stdout, not shown
  unknown = [r for r in FLAGS.rows if r not in ROWS]
  if unknown:
    raise app.UsageError(f'--rows: unknown {unknown}; choose from {", ".join(ROWS)}')
  batch = row_config(FLAGS.rows[0], FLAGS.requests, FLAGS.steps, 0).data.batch_size
  print(f'{FLAGS.steps} steps on {FLAGS.requests:,} training requests (about '
        f'{FLAGS.steps * batch / FLAGS.requests:.1f} epochs at {batch} requests a step); '
        'examples/s of the last logging interval', flush=True)
  print(f"{'row':<28} {'built every read':>16} {'kept':>8} {'ratio':>6}", flush=True)
  for key in FLAGS.rows:
    off = examples_per_second(row_config(key, FLAGS.requests, FLAGS.steps, 0))
    on = examples_per_second(row_config(key, FLAGS.requests, FLAGS.steps, cache.DEFAULT_MB))
    print(f'{key:<28} {off:>16,.0f} {on:>8,.0f} {on / off:>5.2f}x', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
