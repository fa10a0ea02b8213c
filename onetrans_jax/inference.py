"""What a trained workdir is for: ``onetrans eval``, ``onetrans predict`` and ``onetrans export``.

  onetrans eval --workdir runs/s --split holdout      # the table train prints; eval_holdout.json
  onetrans predict --workdir runs/s --output scores.parquet [--split holdout | --data new.csv]
  onetrans export --workdir runs/s --output runs/s/export [--platforms cpu,cuda]

Each reads the run back (``saved_run.py``: its config.json, data and the weights of its best step,
else its latest) and scores with the trainer's own eval step, so ``eval`` on the hold-out
reproduces the run's final table. Splits are the dataset's chronological index ranges: ``train``,
``valid`` (when the run has a validation split) and ``holdout``. ``predict --data FILE`` scores
every request of a new event log in the run's own-data format (``own_data.build_for_file``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from onetrans_jax import metrics as metrics_lib
from onetrans_jax import reporting, saved_run, serving, sharding, train
from onetrans_jax import workdir as workdir_lib
from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError, WorkdirError
from onetrans_jax.schema import SchemaError

SPLITS = ('train', 'valid', 'holdout')
OUTPUT_FORMATS = {'.csv': 'csv', '.parquet': 'parquet', '.pq': 'parquet'}


def split_range(dataset: Dataset, split: str, config: Any) -> tuple[int, int]:
  """The request index range of ``split``; a ConfigError when the run has no such split."""
  if split not in SPLITS:
    raise ConfigError(f'unknown split {split!r}; choose one of {list(SPLITS)}')
  r = {'train': dataset.train_range, 'valid': dataset.valid_range,
       'holdout': dataset.eval_range}[split]
  if r is None:
    raise ConfigError(f'this run has no validation split (config.data.valid_fraction='
                      f'{config.data.get("valid_fraction", 0.0)}); choose train or holdout')
  return r


def _eval_step(run: saved_run.SavedRun) -> Any:
  """The trainer's eval step, jitted with the run's shardings (outputs replicated)."""
  step = jax.jit(train.make_eval_step(run.model),
                 in_shardings=(run.params_sharding, sharding.batch_sharding(run.mesh)),
                 out_shardings=sharding.replicated(run.mesh))
  return sharding.under_mesh(step, run.mesh, run.rules)


def _batches(run: saved_run.SavedRun, dataset: Dataset, index_range: tuple[int, int]
             ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
  """(host batch, device outputs) over ``index_range`` in order; the last batch padded."""
  c = run.config
  size = int(c.data.batch_size)
  step = _eval_step(run)
  for host in pipeline.make_iterator(dataset, index_range, global_batch_size=size, shuffle=False,
                                     seed=0, repeat=False, validate=c.data.get('validate', True),
                                     num_threads=int(c.data.get('num_threads', 2))):
    batch = sharding.put_batch(pipeline.pad_requests(host, size), run.mesh)
    yield host, jax.device_get(step(run.params, batch))


def evaluate(run: saved_run.SavedRun, split: str, num_batches: int | None = None
             ) -> dict[str, Any]:
  """The split's per-task metrics (train's table) -> {'metrics', 'table', 'requests', ...};
  ``num_batches`` (default config.eval.num_batches, as train scored; -1: all)."""
  index_range = split_range(run.dataset, split, run.config)
  if num_batches is None:
    num_batches = int(run.config.eval.get('num_batches', -1))
  parents, chain = train.metric_parents(run.config, run.dataset.schema)
  acc = metrics_lib.TaskMetricsAccumulator(run.dataset.schema.task_names)
  for i, (_, out) in enumerate(_batches(run, run.dataset, index_range)):
    if 0 <= num_batches <= i:
      break
    acc.add(**train._host_eval_arrays(out, parents, chain))  # pylint: disable=protected-access
  metrics = acc.compute()
  a, b = index_range
  which = 'the best-validating' if run.chosen == 'best' else 'the latest'
  title = f'{split} evaluation of step {run.step}, {which} checkpoint (requests {a}..{b - 1})'
  table = reporting.format_table(metrics, run.dataset.schema.task_names, title)
  return {'split': split, 'step': run.step, 'checkpoint': run.chosen, 'requests': [a, b],
          'num_batches': num_batches, 'metrics': metrics, 'table': table}


# ---------------------------------------------------------------------------------- predictions
def _ids(dataset: Dataset, first: int, host: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(user id [R], item id [R, C]) of a batch of requests first..: the raw ids of the files when
  the source keeps them (own_data), else the dataset's own ids."""
  src = dataset.source
  users = np.asarray(host['request']['user_id'])
  mask = np.asarray(host['cand']['mask'])
  r, c = mask.shape
  index, log = getattr(src, 'index', None), getattr(src, 'log', None)
  if index is not None and log is not None:  # an event log: the impressions' own (dense) items
    items = np.zeros((r, c), np.int64)
    for k in range(r):
      a, n = int(index.start[first + k]), int(index.size[first + k])
      items[k, :n] = log.item[index.impressions[a:a + n]]
  else:
    names = [f.name for f in dataset.schema.candidate_categorical]
    items = np.asarray(host['cand']['cat'])[..., names.index('item_id') if 'item_id' in names
                                            else 0].astype(np.int64)
  raw = getattr(src, 'raw_ids', None)
  if raw is not None:
    return raw['user'][users], raw['item'][items]
  return users.astype(np.int64), items


def predictions(run: saved_run.SavedRun, dataset: Dataset, index_range: tuple[int, int],
                labels: bool) -> Iterator[pa.Table]:
  """One table per batch: a row per real (request, candidate) with request (the request's index
  in the dataset), user_id, item_id, time, p_<task> per task (and label_<task> when ``labels``).
  A conditional task's probability is P(task | parent) under loss.mode 'conditional' / 'esmm'."""
  tasks = dataset.schema.task_names
  first = index_range[0]
  for host, out in _batches(run, dataset, index_range):
    mask = np.asarray(host['cand']['mask'])
    r = mask.shape[0]
    users, items = _ids(dataset, first, host)
    req, slot = np.nonzero(mask)
    cols = {'request': pa.array(first + req, pa.int64()),
            'user_id': pa.array(users[req]), 'item_id': pa.array(items[req, slot]),
            'time': pa.array(np.asarray(host['request']['time'])[req], pa.int64())}
    probs = np.asarray(out['probs'])[:r]
    for j, t in enumerate(tasks):
      cols[f'p_{t}'] = pa.array(probs[req, slot, j], pa.float32())
    if labels:
      lab = np.asarray(host['labels'])
      for j, t in enumerate(tasks):
        cols[f'label_{t}'] = pa.array(lab[req, slot, j].astype(np.int8))
    first += r
    yield pa.table(cols)


def write_table(path: str, tables: Iterator[pa.Table]) -> int:
  """Streams ``tables`` to ``path`` (CSV or Parquet by its ending), atomically; -> rows written."""
  kind = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())
  if kind is None:
    raise ConfigError(f'--output {path}: end the file name in {", ".join(OUTPUT_FORMATS)} (the '
                      'ending chooses CSV or Parquet)')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  writer, rows = None, 0
  try:
    for t in tables:
      if writer is None:
        writer = (pq.ParquetWriter(tmp, t.schema) if kind == 'parquet'
                  else pa_csv.CSVWriter(tmp, t.schema))
      writer.write_table(t)
      rows += t.num_rows
    if writer is None:
      raise ConfigError('nothing to write: the data holds no requests')
    writer.close()
    writer = None
    os.replace(tmp, path)
  finally:
    if writer is not None:
      writer.close()
    if os.path.exists(tmp):
      os.remove(tmp)
  return rows


# ---------------------------------------------------------------------------------- commands
def _parser(prog: str, description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=description)
  p.add_argument('--workdir', required=True, help='the directory a training run wrote')
  return p


def _run_command(body) -> None:
  """Runs ``body()``, reporting the package's errors as one line (exit code 2), like train."""
  try:
    body()
  except WorkdirError as e:
    _fail(f'workdir: {e}')
  except (ConfigError, SchemaError) as e:
    _fail(str(e))


def _fail(msg: str) -> None:
  print(f'error: {msg}', file=sys.stderr, flush=True)
  sys.exit(2)


def cli_eval(argv: Sequence[str]) -> None:
  """``onetrans eval``: a split's metrics table, and <workdir>/eval_<split>.json."""
  p = _parser(argv[0], 'Score a trained run on a split: its best checkpoint (the latest when '
              'validation chose none), the table train prints, and <workdir>/eval_<split>.json.')
  p.add_argument('--split', default='holdout', choices=SPLITS)
  p.add_argument('--num_batches', type=int, default=None,
                 help='batches to score (default: config.eval.num_batches, as train; -1: all)')
  args = p.parse_args(argv[1:])

  def body() -> None:
    run = saved_run.load(args.workdir, log=reporting.log)
    result = evaluate(run, args.split, args.num_batches)
    print(result.pop('table'), flush=True)
    path = os.path.join(args.workdir, f'eval_{args.split}.json')
    workdir_lib.write_json(path, result)
    print(f'metrics: {path}', flush=True)
  _run_command(body)


def cli_predict(argv: Sequence[str]) -> None:
  """``onetrans predict``: a score per (request, candidate), CSV or Parquet."""
  p = _parser(argv[0], 'Write the probability of every task for every (request, candidate) of a '
              "split of the run's data, or of a new file in its own-data format.")
  p.add_argument('--output', required=True, help='a .csv, .parquet or .pq file to write')
  p.add_argument('--split', default='holdout', choices=SPLITS)
  p.add_argument('--data', default=None,
                 help="an event log in the run's own-data format (config.data.name='own_data'): "
                      'every request in it is scored, its sequences built from its own rows')
  args = p.parse_args(argv[1:])

  def body() -> None:
    if args.data is None:
      run = saved_run.load(args.workdir, log=reporting.log)
      dataset, labels = run.dataset, True
      index_range = split_range(dataset, args.split, run.config)
    else:
      config = saved_run.load_config(args.workdir)
      from onetrans_jax.data import own_data
      if config.data.get('name') != own_data.NAME:
        raise ConfigError(f'--data needs a run trained on config.data.name={own_data.NAME!r} (it '
                          f'reads the file with that spec); this run used '
                          f'{config.data.get("name")!r}: use --split instead')
      dataset, labels = own_data.build_for_file(config.data, args.data)
      run = saved_run.load(args.workdir, dataset=dataset, log=reporting.log)
      index_range = dataset.eval_range
    rows = write_table(args.output, predictions(run, dataset, index_range, labels))
    print(f'wrote {rows:,} rows ({index_range[1] - index_range[0]:,} requests) to {args.output}',
          flush=True)
  _run_command(body)


def cli_export(argv: Sequence[str]) -> None:
  """``onetrans export``: the run's model as jax.export functions + parameters."""
  p = _parser(argv[0], 'Export the run\'s model for serving (onetrans_jax/serving_runtime.py '
              'loads it with jax and numpy alone): OneTrans as its two cached stages, any other '
              'model (OneRank, the baselines) as one forward pass.')
  p.add_argument('--output', required=True, help='the export directory to write')
  p.add_argument('--platforms', default='cpu',
                 help='comma-separated platforms to lower for: cpu, cuda, tpu')
  args = p.parse_args(argv[1:])

  def body() -> None:
    run = saved_run.load(args.workdir, log=reporting.log)
    platforms = tuple(x.strip() for x in args.platforms.split(',') if x.strip())
    manifest = serving.export_model(run.model, run.params, run.dataset.schema, args.output,
                                    platforms, name=str(run.config.model.name))
    print(f'exported {manifest["model"]} ({manifest["stages"]}) of step {run.step} to '
          f'{args.output}', flush=True)
  _run_command(body)
