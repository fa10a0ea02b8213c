"""Run records: what a finished (variant, seed) run produced, keyed by what produced it.

A sweep reuses a result only when the run that made it had the very same resolved config and the
very same data: the *fingerprint* is a SHA-256 over both. A record is a small JSON file (metrics,
fingerprint, best step, wall time, machine, the code's git commit) meant to be committed under
``results/<study>/runs/<variant>/seed_<s>.json``, so that a long study can be finished in pieces,
on several machines, and every number in a README table can be traced to the run behind it.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from onetrans_jax.errors import ConfigError

RECORD_VERSION = 1
# Fields that change how a run is logged or scheduled, never what it computes: left out of the
# fingerprint so that, e.g., logging more often does not invalidate a finished result.
NON_RESULT_FIELDS = ('train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
                     'train.plot_curves',
                     'data.num_threads', 'data.worker_count', 'data.validate',
                     'data.cache_mb',   # memory for built requests: the same batches either way
                     # a memory layout of the same computation (equal logits and gradients up
                     # to float summation order, tests/test_request_level.py); each record's
                     # config says which ran; records made before the field existed: token_last
                     'model.ns_layout')
# Fields added after results were committed, at the value that computes what the code computed
# before they existed: left out of the fingerprint at that value, so adding an option does not
# invalidate every earlier record (any other value is part of it as usual).
NEUTRAL_DEFAULTS = {'data.duplicate_rows': 'error', 'data.stats_scale': 'raw',
                    'data.user_id_feature': True, 'data.seq_rating': False,
                    'data.history_fraction': 1.0,
                    'loss.listwise_weight': 0.0, 'optimizer.sparse.weight_decay': 0.0,
                    'optimizer.dense.weight_decay': 0.0}
_SAMPLE_BYTES = 1 << 20   # a data file is identified by its size and its first and last MiB


# The hold-out's scored impressions a run writes (train.py, floors/fit.py); a sweep commits a
# copy beside the run's record as '<record stem>.predictions.npz' (sweep.py).
PREDICTIONS_FILE = 'eval_predictions.npz'

def flat_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """{'model.width': 64, ...}: every leaf of the config (a sweep section is not part of a run)."""
  tree = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  out: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for k in sorted(node):
        walk(node[k], f'{prefix}{k}.')
    else:
      out[prefix[:-1]] = list(node) if isinstance(node, tuple) else node
  walk({k: v for k, v in tree.items() if k != 'sweep'}, '')
  return out


def canonical(value: Any) -> Any:
  """JSON-stable form: tuples as lists (recursively), everything else as JSON sees it."""
  if isinstance(value, (list, tuple)):
    return [canonical(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): canonical(v) for k, v in sorted(value.items())}
  return value


def data_identity(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the data is, beyond its config: for a file dataset every file's name, size and a hash
  of its first and last MiB (cheap on a multi-GB log, and any edit that changes the size or the
  ends of a file changes it); for the synthetic world the config is the whole identity."""
  path = data_cfg.get('path', None)
  if not path:
    return {'kind': 'config-defined'}
  path = os.path.abspath(os.path.expanduser(str(path)))
  files = ([path] if os.path.isfile(path) else
           sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs))
  entries = []
  for f in files:
    size = os.path.getsize(f)
    h = hashlib.sha256()
    with open(f, 'rb') as fh:
      h.update(fh.read(_SAMPLE_BYTES))
      if size > _SAMPLE_BYTES:
        fh.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
        h.update(fh.read(_SAMPLE_BYTES))
    entries.append({'file': os.path.relpath(f, path) if f != path else os.path.basename(f),
                    'bytes': size, 'sha256_ends': h.hexdigest()[:16]})
  return {'kind': 'files', 'files': entries}


def fingerprint(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """(hex digest, the flat config it was computed from): the run's identity, sweep section and
  NON_RESULT_FIELDS left out, data identity in (and, for file data, the path out)."""
  flat = {k: v for k, v in flat_config(config).items() if k not in NON_RESULT_FIELDS}
  identity = data_identity(config.data)
  # A file dataset is identified by its files' content, not by where they sit: the same data
  # read from another directory (another machine's checkout) is the same run.
  keyed = {k: v for k, v in flat.items()
           if not (k == 'data.path' and identity['kind'] == 'files')
           and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}
  payload = {'config': canonical(keyed), 'data': identity}
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest(), flat


def machine() -> dict[str, Any]:
  """Where a run ran: processor, accelerator, device count, jax version (for the report), and
  the CPUs the process could use (a study lane pinned to one core: 1). XLA's CPU thread count
  follows them, and with it the rounding of some reductions: over thousands of steps a run on
  one thread and the same run on two part like two seeds (README, *The reproduction studies*)."""
  import jax  # local: records are read and compared without starting a backend
  devices = jax.devices()
  usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
          'cpu_count': os.cpu_count(), 'cpus_usable': usable, 'backend': jax.default_backend(),
          'device_kind': devices[0].device_kind, 'device_count': len(devices),
          'jax': jax.__version__}


def _code_revision() -> dict[str, Any]:
  """The code this process runs: the git commit of the checkout it was imported from and
  whether ``onetrans_jax/`` differed from it (uncommitted edits), else the installed package's
  version. Read once, when the process starts (``CODE``): a run records the code it started
  with, not a checkout edited while it trained."""
  import importlib.metadata
  import subprocess
  out: dict[str, Any] = {'commit': None, 'dirty': None, 'package': None}
  try:
    out['package'] = importlib.metadata.version('onetrans_jax')
  except importlib.metadata.PackageNotFoundError:
    pass
  pkg = os.path.dirname(os.path.abspath(__file__))
  try:
    git = lambda *a: subprocess.run(('git', '-C', pkg) + a, capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
    git('ls-files', '--error-unmatch', 'records.py')   # this file is tracked there: the
    out['commit'] = git('rev-parse', 'HEAD')             # package's own repository
    out['dirty'] = bool(git('status', '--porcelain', '--untracked-files=no', '--', pkg))
  except (OSError, subprocess.SubprocessError):
    pass   # not a git checkout (an installed package), or no git
  return out


CODE = _code_revision()


def make_record(variant: str, seed: int, fp: str, flat: Mapping[str, Any],
                final: Mapping[str, Any], wall_seconds: float) -> dict[str, Any]:
  """The committed result of one run: ``final`` is train_and_evaluate's report."""
  return {'version': RECORD_VERSION, 'variant': variant, 'seed': seed, 'fingerprint': fp,
          'metrics': final['final'], 'step': final['step'], 'params': final['params'],
          'best_step': final.get('best_step'), 'valid_curve': final.get('valid_curve'),
          'wall_seconds': wall_seconds, 'train_step_seconds': final.get('train_step_seconds'),
          # the stability diagnostics' series (train.py ``_diagnostics_series``), when logged
          **({'diagnostics': final['diagnostics']} if final.get('diagnostics') else {}),
          'machine': machine(), 'code': CODE,
          'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'config': canonical(dict(flat))}


def write_record(path: str, record: Mapping[str, Any]) -> None:
  """Atomic write (a partial file is never left to be read back as a result)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1, sort_keys=True, default=float)
    f.write('\n')
  os.replace(tmp, path)


def read_record(path: str) -> dict[str, Any] | None:
  """The record at ``path``, or None when there is none; a malformed file is an error naming it
  (a committed result must never be silently ignored)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: not a readable run record ({e}); delete or fix it') from None
  for key in ('fingerprint', 'metrics', 'config'):
    if key not in record:
      raise ValueError(f'{path}: run record without {key!r}; delete or fix it')
  return record


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], most: int = 6) -> str:
  """Why two flat configs differ, for the log: 'model.width 64 -> 128, ...'."""
  keys = sorted(set(old) | set(new))
  diffs = [f'{k} {old.get(k, "(absent)")!r} -> {new.get(k, "(absent)")!r}'
           for k in keys if canonical(old.get(k)) != canonical(new.get(k))]
  if not diffs:
    return 'the data changed (same config)'
  more = f' (+{len(diffs) - most} more)' if len(diffs) > most else ''
  return ', '.join(diffs[:most]) + more


def variant_config(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]],
                   seed: int) -> ml_collections.ConfigDict:
  """The resolved config of one (variant, seed) run of a sweep: the sweep section dropped, each
  override applied (a path that names no field is refused), the seed set."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    del cfg['sweep']
    for path, value in overrides:
      node = cfg
      *parents, leaf = path.split('.')
      for p in parents:
        if p not in node:
          raise ConfigError(f'config.sweep.variants: override {path!r} names no config field')
        node = node[p]
      if leaf not in node:
        raise ConfigError(f'config.sweep.variants: override {path!r} names no config field')
      node[leaf] = value
    cfg.seed = seed
  return cfg
