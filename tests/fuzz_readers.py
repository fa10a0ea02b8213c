r"""Fuzzing the data readers: generated corruptions of MovieLens (100K, 1M), Taobao and KuaiRand
files, each of which must either load or raise the data error that names the file.

  python -m tests.fuzz_readers --cases 1000      # prints the tally; exit 1 on any failure

Hypothesis draws 1-3 byte-, line- or field-level mutations of one file of a small valid dataset
(the test fixtures): flipped, inserted and deleted bytes, a cut-short file, an empty file, CRLF
ends, a BOM, duplicated, dropped and swapped lines, a 100 KB line, and fields replaced by empty,
negative, huge, non-numeric, 5,000-character or non-ASCII values. Each case runs the reader with
a 20 s alarm (a hang fails it); as a script, the address space is capped at 4 GiB, so an
unbounded allocation fails too. Any exception other than a ``DataFileError`` /
``ConfigError`` whose message names a file of the dataset is a failure.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from onetrans_jax.data import kuairand, movielens, taobao  # noqa: E402
from onetrans_jax.errors import ConfigError  # noqa: E402

TIMEOUT_S = 20
TOKENS = (b'', b'-1', b'0', b'99999999999999999999999', b'nan', b'1e309', b'x' * 5000,
          '\u00e9\u6f22'.encode(), b'\x00', b' 5 ', b'3.5', b'"', b'::', b'|', b',', b'\t')


# ------------------------------------------------------------------------------ the datasets
def _write_datasets(base: str) -> dict[str, tuple[str, Callable[[str], object]]]:
  """A small valid copy of each dataset under ``base``: name -> (directory, loader)."""
  from tests import kuairand_files, movielens_files, taobao_files
  out = {
      'ml-100k': (movielens_files.write_100k(os.path.join(base, 'ml-100k')), movielens.load_100k),
      'ml-1m': (movielens_files.write_1m(os.path.join(base, 'ml-1m')), movielens.load_1m),
      'taobao': (taobao_files.write_csv(os.path.join(base, 'taobao'),
                                        taobao_files.random_rows(0, users=10, n=300)),
                 lambda d: taobao.load(os.path.join(d, taobao.FILE), time_range=None)),
      'kuairand': (kuairand_files.write_world(os.path.join(base, 'kuairand')),
                   lambda d: kuairand.load(d, 'pure')),
  }
  for name, (d, load) in out.items():
    load(d)  # every clean dataset loads: a failure below is the corruption's
  return out


# ----------------------------------------------------------------------------- the mutations
_OP = st.one_of(
    st.tuples(st.just('flip'), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just('insert'), st.floats(0, 1),
              st.sampled_from(TOKENS + (b'\n', b'\r', b'\xff'))),
    st.tuples(st.just('delete'), st.floats(0, 1), st.integers(1, 20)),
    st.tuples(st.just('truncate'), st.floats(0, 1), st.none()),
    st.tuples(st.just('empty'), st.none(), st.none()),
    st.tuples(st.just('crlf'), st.none(), st.none()),
    st.tuples(st.just('bom'), st.none(), st.none()),
    st.tuples(st.just('dup_line'), st.floats(0, 1), st.none()),
    st.tuples(st.just('drop_line'), st.floats(0, 1), st.none()),
    st.tuples(st.just('swap_lines'), st.floats(0, 1), st.floats(0, 1)),
    st.tuples(st.just('long_line'), st.floats(0, 1), st.none()),
    st.tuples(st.just('field'), st.floats(0, 1), st.tuples(st.floats(0, 1),
                                                            st.sampled_from(TOKENS))),
)


def mutate(data: bytes, ops) -> bytes:
  """Apply the drawn operations in order (positions are fractions of the current length)."""
  for kind, a, b in ops:
    at = int(a * len(data)) if isinstance(a, float) else 0
    lines = data.split(b'\n')
    li = min(int(a * len(lines)), len(lines) - 1) if isinstance(a, float) else 0
    if kind == 'flip' and data:
      at = min(at, len(data) - 1)
      data = data[:at] + bytes([b]) + data[at + 1:]
    elif kind == 'insert':
      data = data[:at] + b + data[at:]
    elif kind == 'delete':
      data = data[:at] + data[at + b:]
    elif kind == 'truncate':
      data = data[:at]
    elif kind == 'empty':
      data = b''
    elif kind == 'crlf':
      data = data.replace(b'\n', b'\r\n')
    elif kind == 'bom':
      data = b'\xef\xbb\xbf' + data
    elif kind == 'dup_line':
      data = b'\n'.join(lines[:li + 1] + [lines[li]] + lines[li + 1:])
    elif kind == 'drop_line':
      data = b'\n'.join(lines[:li] + lines[li + 1:])
    elif kind == 'swap_lines':
      lj = min(int(b * len(lines)), len(lines) - 1)
      lines[li], lines[lj] = lines[lj], lines[li]
      data = b'\n'.join(lines)
    elif kind == 'long_line':
      data = b'\n'.join(lines[:li] + [b'7' * 100_000] + lines[li:])
    elif kind == 'field':
      frac, token = b
      line = lines[li]
      sep = next((s for s in (b'::', b'\t', b'|', b',') if s in line), b',')
      fields = line.split(sep)
      fields[min(int(frac * len(fields)), len(fields) - 1)] = token
      lines[li] = sep.join(fields)
      data = b'\n'.join(lines)
  return data


# ---------------------------------------------------------------------------------- one case
class _Timeout(Exception):
  pass


def _alarm(signum, frame):
  raise _Timeout()


def run_case(datasets, name: str, file_frac: float, ops, tally: collections.Counter,
             failures: list[str]) -> None:
  """Corrupt one file of dataset ``name``, load it, classify the outcome; restore the file."""
  directory, load = datasets[name]
  files = sorted(os.listdir(directory))
  target = os.path.join(directory, files[min(int(file_frac * len(files)), len(files) - 1)])
  with open(target, 'rb') as f:
    clean = f.read()
  with open(target, 'wb') as f:
    f.write(mutate(clean, ops))
  old = signal.signal(signal.SIGALRM, _alarm)
  signal.alarm(TIMEOUT_S)
  try:
    load(directory)
    tally[f'{name}: loaded'] += 1
  except _Timeout:
    failures.append(f'{name} {os.path.basename(target)} {ops!r}: no result in {TIMEOUT_S} s')
  except ConfigError as e:  # DataFileError and DataConfigError are ConfigErrors
    if directory in str(e):
      tally[f'{name}: named error'] += 1
    else:
      failures.append(f'{name} {os.path.basename(target)} {ops!r}: error naming no file: {e}')
  except BaseException as e:  # pylint: disable=broad-except
    failures.append(f'{name} {os.path.basename(target)} {ops!r}: {type(e).__name__}: '
                    f'{traceback.format_exc(limit=3)[-800:]}')
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
    with open(target, 'wb') as f:
      f.write(clean)


def fuzz(cases: int, base: str | None = None, seed: int = 0) -> tuple[collections.Counter, list]:
  """``cases`` corruptions spread over the datasets; -> (tally, failures)."""
  own = base is None
  base = base or tempfile.mkdtemp(prefix='fuzz_readers_')
  datasets = _write_datasets(base)
  tally: collections.Counter = collections.Counter()
  failures: list[str] = []

  @settings(max_examples=cases, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(HealthCheck))
  @given(name=st.sampled_from(sorted(datasets)), file_frac=st.floats(0, 1),
         ops=st.lists(_OP, min_size=1, max_size=3))
  def one(name, file_frac, ops):
    run_case(datasets, name, file_frac, ops, tally, failures)

  del seed  # derandomized: the same cases every run (Hypothesis' own generation order)
  one()
  if own:
    shutil.rmtree(base, ignore_errors=True)
  return tally, failures


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--cases', type=int, default=1000)
  p.add_argument('--max_memory_gib', type=float, default=4.0)
  a = p.parse_args()
  import resource
  limit = int(a.max_memory_gib * (1 << 30))
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  tally, failures = fuzz(a.cases)
  total = sum(tally.values()) + len(failures)
  print(f'{total} corruptions: ' + ', '.join(f'{k} {v}' for k, v in sorted(tally.items())) +
        f'; failures {len(failures)}')
  for f in failures[:20]:
    print('FAILURE:', f)
  sys.exit(1 if failures else 0)


if __name__ == '__main__':
  main()
