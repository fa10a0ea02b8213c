"""Real interaction logs -> requests in the batch contract (schema.py), for any dataset.

A loader (MovieLens, later Taobao UserBehavior or KuaiRand) only turns its files into an
``EventLog``: one row per event, ids already dense, plus the item and user side tables. Everything
after that is shared and vectorised here:

  * requests: one user's consecutive impressions, a new request after a gap of more than
    ``session_gap`` seconds (or, where the log gives a request key, one user's impressions of
    one key), at most ``num_candidates`` per request (longer sessions are split);
  * behaviour sequences: per request and sequence, the user's last ``max_len`` events *strictly
    before* the request's first impression (never the request's own or later events), located
    with one ``np.searchsorted`` over (user, time) keys, so ``source[i]`` slices them on demand;
  * a chronological split: requests sorted by start time, the last ``eval_fraction`` evaluate.

Memory is O(events + requests x sequences): no sequence is materialised up front.
The module also holds the strict text readers the loaders share, ``read_table`` for small files and
the chunked ``TextStream`` for logs of 100M lines: every malformed file ends in a ``DataFileError``
naming the file, the 1-based line and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from onetrans_jax.data import cache
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import ConfigError
from onetrans_jax.schema import (CategoricalFeature, FeatureSchema, NumericFeature, SequenceFeature,
                                 Task, Vocabulary)

SECONDS_PER_DAY = 86_400
# Names the request builder adds itself; a log's own features must not take them.
RESERVED_FEATURES = ('user_id', 'item_id', 'hour', 'weekday')
RESERVED_VOCABS = ('user', 'item', 'hour', 'weekday')
_INT32 = np.iinfo(np.int32)


class DataFileError(ConfigError):
  """A data file that cannot be read as its format says: names the path, the line and the fix."""


# ================================================================================ text tables
@dataclasses.dataclass
class Table:
  """A delimited text file split into fields; ``lines[k]`` is the 1-based line of ``rows[k]``."""
  path: str
  rows: list[list[str]]
  lines: np.ndarray  # [N] int64
  # The file's last line has no newline: a copy cut short ends like this, so its last row gets
  # extra checks (e.g. movielens._ratings_log: a timestamp missing digits).
  unterminated: bool = False

  def __len__(self) -> int:
    return len(self.rows)

  def error(self, k: int, what: str) -> DataFileError:
    return DataFileError(f'{self.path}, line {int(self.lines[k])}: {what}')

  def column(self, col: int) -> list[str]:
    return [r[col] for r in self.rows]

  def ints(self, col: int, name: str) -> np.ndarray:
    """Column ``col`` as int64; a non-integer names its line. Vectorised unless it fails."""
    values = self.column(col)
    # An int64 has at most 20 characters: a longer field is refused before numpy sizes a string
    # array by it (one 50 MB field would otherwise cost 50 MB per row).
    long = next((k for k, v in enumerate(values) if len(v) > MAX_INT_CHARS), None)
    if long is not None:
      raise self.error(long, f'{name} (field {col + 1}) is {len(values[long]):,} characters '
                             f'long ({values[long][:20]!r}...), not an integer; fix or delete '
                             'this line')
    try:
      return np.asarray(values, dtype=np.str_).astype(np.int64) if values else np.zeros(0, np.int64)
    except (ValueError, OverflowError):
      pass
    out = np.empty(len(values), np.int64)
    for k, v in enumerate(values):  # only on the failure path: find the first bad line
      try:
        out[k] = int(v)
      except ValueError:
        raise self.error(k, f'{name} (field {col + 1}) is {v!r}, not an integer; fix or delete '
                            'this line') from None
      except OverflowError:
        raise self.error(k, f'{name} (field {col + 1}) is {v}, beyond the 64-bit integer range; '
                            'fix or delete this line') from None
    return out


def read_table(path: str, *, sep: str, num_fields: int | None, encoding: str,
               what: str) -> Table:
  """Strictly read a delimited text file: decode, split and count fields on every line.

  ``num_fields=None`` skips the count (the caller checks it, e.g. against another file). Blank
  lines (a trailing newline, the empty last line of ``u.genre``) are skipped; ``\\r\\n`` endings are
  accepted. ``what`` names the file's role and source in the messages (how to fix a missing file).
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataFileError(f'{path}: file not found; {what}') from None
  except OSError as e:
    raise DataFileError(f'{path}: cannot be read ({e.strerror}); {what}') from None
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    col = e.start - (raw.rfind(b'\n', 0, e.start) + 1) + 1
    raise DataFileError(
        f'{path}, line {line}: byte {raw[e.start:e.start + 1]!r} at column {col} is not valid '
        f'{encoding}; this file must be {encoding} as GroupLens ships it: re-download it or '
        f're-encode it (e.g. iconv -t {encoding})') from None
  _check_line_lengths(raw, path)
  rows, lines = [], []
  for n, line in enumerate(text.split('\n'), start=1):
    line = line.rstrip('\r')
    if not line.strip():
      continue
    fields = line.split(sep)
    if num_fields is not None and len(fields) != num_fields:
      raise DataFileError(
          f'{path}, line {n}: {len(fields)} field(s) separated by {sep!r}, expected '
          f'{num_fields}; fix or delete this line (is it the right file, or a different format?)')
    rows.append(fields)
    lines.append(n)
  unterminated = bool(raw) and not raw.rstrip(b'\r').endswith(b'\n') and bool(
      text.rsplit('\n', 1)[-1].strip())
  return Table(path, rows, np.asarray(lines, np.int64), unterminated)


MAX_INT_CHARS = 20                 # '-9223372036854775808'
MAX_LINE_BYTES = 1 << 16           # no line of a supported text format comes near 64 KiB


def _check_line_lengths(raw: bytes, path: str, first_line: int = 1) -> None:
  """Refuse a line longer than MAX_LINE_BYTES, naming it (vectorised over the newlines)."""
  if len(raw) <= MAX_LINE_BYTES:
    return
  ends = np.flatnonzero(np.frombuffer(raw, np.uint8) == 10)
  bounds = np.concatenate([[-1], ends, [len(raw)]])
  lengths = np.diff(bounds) - 1
  k = np.flatnonzero(lengths > MAX_LINE_BYTES)
  if k.size:
    raise DataFileError(f'{path}, line {first_line + int(k[0])}: {int(lengths[k[0]]):,} bytes '
                        f'long, over the {MAX_LINE_BYTES:,}-byte limit of a line; is this the '
                        'right file? fix or delete this line')


# ================================================================================ streamed tables
DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB of text per chunk (~30K Taobao lines): parses as fast as
                               # larger ones (it stays in cache) in a few MB


@dataclasses.dataclass
class Chunk:
  """Consecutive rows of a streamed file: ``chunk[j]`` is column ``j`` of the requested ones.

  ``data`` (the chunk's text, ``\\n`` line ends) is kept only to map a row back to its line when a
  check fails, so a check stays vectorised and its message still names the line.
  """
  path: str
  rows: np.ndarray   # structured: field f'f{j}' per requested column j
  first_line: int    # 1-based line of the chunk's first line
  data: bytes

  def __len__(self) -> int:
    return int(self.rows.shape[0])

  def __getitem__(self, col: int) -> np.ndarray:
    return self.rows[f'f{col}']

  @functools.cached_property
  def lines(self) -> np.ndarray:
    """[N] int64 1-based line of each row (blank lines hold no row)."""
    buf = np.frombuffer(self.data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not self.data.endswith(b'\n'):
      ends = np.append(ends, buf.size)
    starts = np.concatenate([[0], ends[:-1] + 1]) if ends.size else ends
    return self.first_line + np.flatnonzero(ends > starts).astype(np.int64)

  def error(self, k: int, what: str) -> DataFileError:
    return DataFileError(f'{self.path}, line {int(self.lines[k])}: {what}')

  def check(self, bad: np.ndarray, what: Callable[[int], str]) -> None:
    """Raise naming the first row where ``bad`` holds; ``what(k)`` says what is wrong with it."""
    k = np.flatnonzero(bad)
    if k.size:
      raise self.error(int(k[0]), what(int(k[0])))


class TextStream:
  """A large delimited text file read in chunks of whole lines: bounded memory, strict checks.

  Each chunk (about ``chunk_bytes`` of text) is decoded strictly and parsed in C by
  ``np.loadtxt`` into a structured array: the requested columns typed, the others cut to one byte,
  so every line is still checked to have exactly ``num_fields`` fields. Memory is O(chunk), never
  O(file): no list of all lines exists.
  A failure names the file and the 1-based line: a per-line Python pass runs only over the chunk
  that failed. ``header=True`` reads the first line as column names (``columns`` finds them);
  ``quotechar`` allows quoted fields holding the separator (``"12,65"``); ``max_rows`` stops after
  that many rows (blank lines skipped, not counted). Chunks split at line ends, so the encoding
  must spell ``\\n`` as one byte (ASCII, UTF-8, latin-1) and no quoted field may span lines.
  """

  def __init__(self, path: str, *, sep: str = ',', encoding: str = 'utf-8', what: str,
               num_fields: int | None = None, header: bool = False, quotechar: str | None = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_rows: int | None = None):
    if len(sep) != 1:
      raise ValueError(f'TextStream needs a one-character separator, got {sep!r}')
    if chunk_bytes < 1:
      raise ValueError(f'chunk_bytes must be >= 1, got {chunk_bytes}')
    self.path, self.sep, self.encoding, self.what = path, sep, encoding, what
    self.quotechar, self.chunk_bytes, self.max_rows = quotechar, chunk_bytes, max_rows
    self.header: tuple[str, ...] | None = None
    self._offset, self._first_line = 0, 1
    try:
      with open(path, 'rb') as f:
        first = f.readline() if header else b''
    except FileNotFoundError:
      raise DataFileError(f'{path}: file not found; {what}') from None
    except OSError as e:
      raise DataFileError(f'{path}: cannot be read ({e.strerror}); {what}') from None
    if header:
      if not first.strip():
        raise DataFileError(f'{path}, line 1: expected a header line naming the columns, found '
                            f'{"an empty file" if not first else "a blank line"}; {what}')
      text = self._decode(first, 1).lstrip('\ufeff').rstrip('\r\n')
      try:
        self.header = tuple(h.strip() for h in next(csv.reader([text], delimiter=sep,
                                                               quotechar=quotechar or '"')))
      except csv.Error as e:  # e.g. a stray carriage return inside the header
        raise DataFileError(f'{path}, line 1: the header line cannot be read as CSV ({e}); '
                            f'{what}') from None
      self._offset, self._first_line = len(first), 2
      num_fields = len(self.header)
    if num_fields is None:
      raise ValueError('TextStream: give num_fields or header=True')
    self.num_fields = num_fields

  def columns(self, names: Sequence[str]) -> dict[str, int]:
    """Field index of each named column; all missing ones are named in one error."""
    assert self.header is not None, 'columns() needs header=True'
    missing = [n for n in names if n not in self.header]
    if missing:
      raise DataFileError(f'{self.path}, line 1: missing required column(s) {missing}; the '
                          f'header names {list(self.header)}; {self.what}')
    return {n: self.header.index(n) for n in names}

  def _decode(self, data: bytes, first_line: int) -> str:
    try:
      return data.decode(self.encoding)
    except UnicodeDecodeError as e:
      line = first_line + data.count(b'\n', 0, e.start)
      col = e.start - (data.rfind(b'\n', 0, e.start) + 1) + 1
      raise DataFileError(
          f'{self.path}, line {line}: byte {data[e.start:e.start + 1]!r} at column {col} is not '
          f'valid {self.encoding}; this file must be {self.encoding} as its publisher ships it: '
          f're-download it or re-encode it (e.g. iconv -t {self.encoding})') from None

  def chunks(self, columns: Mapping[int, tuple[str, Any]]) -> Iterator[Chunk]:
    """Yield the file's rows chunk by chunk; ``columns``: field index -> (name, numpy dtype).

    Names are for messages (``user id (field 1) is 'x', not an integer``). A string dtype of
    width w rejects values longer than w characters instead of silently truncating them.
    """
    spec = {j: (name, np.dtype(dt)) for j, (name, dt) in columns.items()}
    for j in spec:
      if not 0 <= j < self.num_fields:
        raise ValueError(f'column {j} outside the {self.num_fields} fields of {self.path}')
    widths = {j: dt.itemsize // (4 if dt.kind == 'U' else 1) for j, (_, dt) in spec.items()
              if dt.kind in 'SU'}
    dtype = np.dtype([(f'f{j}', np.dtype(f'{spec[j][1].kind}{widths[j] + 1}') if j in widths
                       else spec[j][1] if j in spec else 'S1') for j in range(self.num_fields)])
    remaining = self.max_rows
    line, rest = self._first_line, b''
    with open(self.path, 'rb') as f:
      f.seek(self._offset)
      while remaining is None or remaining > 0:
        block = f.read(self.chunk_bytes)
        data = rest + block
        if block:
          cut = data.rfind(b'\n') + 1
          if cut == 0:  # a line longer than a chunk: read on until it ends
            if len(data) > MAX_LINE_BYTES:
              _check_line_lengths(data + b'\n', self.path, line)
            rest = data
            continue
          data, rest = data[:cut], data[cut:]
        if not data:
          return
        _check_line_lengths(data, self.path, line)
        if b'\r' in data:
          data = data.replace(b'\r\n', b'\n')  # line numbers unchanged
        if remaining is not None:
          data = _first_rows(data, remaining)
        rows = self._parse(self._decode(data, line), line, spec, dtype)
        chunk = Chunk(self.path, rows, line, data)
        for j, w in widths.items():
          chunk.check(np.strings.str_len(chunk[j]) > w, lambda k, j=j, w=w: (
              f'{spec[j][0]} (field {j + 1}) is longer than {w} characters; is it the right file?'))
        yield chunk
        line += data.count(b'\n')
        if remaining is not None:
          remaining -= len(chunk)
        if not block:
          return

  def _parse(self, text: str, first_line: int, spec: Mapping[int, tuple[str, np.dtype]],
             dtype: np.dtype) -> np.ndarray:
    if not text.strip('\n'):
      return np.zeros(0, dtype)
    try:
      return np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=self.sep, comments=None,
                        quotechar=self.quotechar, ndmin=1)
    except ValueError as e:
      message = str(e)
    # Only the failing chunk: find the first bad line and say what is wrong with it.
    n = first_line
    for n, line in enumerate(text.split('\n'), start=first_line):
      if not line:
        continue
      try:
        fields = (next(csv.reader([line], delimiter=self.sep, quotechar=self.quotechar))
                  if self.quotechar else line.split(self.sep))
      except csv.Error as e:  # a stray carriage return or quote the CSV dialect rejects
        raise DataFileError(f'{self.path}, line {n}: not readable as CSV ({e}); fix or delete '
                            'this line') from None
      if len(fields) != self.num_fields:
        raise DataFileError(
            f'{self.path}, line {n}: {len(fields)} field(s) separated by {self.sep!r}, expected '
            f'{self.num_fields}; fix or delete this line (is it the right file, or a different '
            'format?)')
      for j, (name, dt) in spec.items():
        problem = _field_problem(fields[j], dt)
        if problem:
          raise DataFileError(f'{self.path}, line {n}: {name} (field {j + 1}) is {fields[j]!r}, '
                              f'{problem}; fix or delete this line')
    raise DataFileError(f'{self.path}, lines {first_line}..{n}: cannot be parsed ({message}); '
                        f'{self.what}')


def _field_problem(value: str, dtype: np.dtype) -> str | None:
  """Why ``np.loadtxt`` cannot read ``value`` as ``dtype`` (None: it can)."""
  try:
    if dtype.kind in 'iu':
      if not np.iinfo(dtype).min <= int(value) <= np.iinfo(dtype).max:
        return f'outside the {dtype.name} range'
    elif dtype.kind == 'f':
      float(value)
  except ValueError:
    return 'not an integer' if dtype.kind in 'iu' else 'not a number'
  return None


def _first_rows(data: bytes, n: int) -> bytes:
  """The prefix of ``data`` holding its first ``n`` non-blank lines (all of it if fewer)."""
  if data.count(b'\n') < n:
    return data
  buf = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(buf == 10)
  starts = np.concatenate([[0], ends[:-1] + 1])
  k = int(np.searchsorted(np.cumsum(ends > starts), n))
  return data if k >= ends.size else data[:ends[k] + 1]


# ================================================================================ ids
def dense_ids(raw: np.ndarray, table: Table | None = None, name: str = 'id') -> np.ndarray:
  """Sorted unique raw ids: raw id ``sorted[k]`` becomes dense id ``k + 1``.

  With ``table`` given, a duplicate raw id is an error naming its second line (a profile file
  lists each user / item once).
  """
  raw = np.asarray(raw, np.int64)
  order = np.argsort(raw, kind='stable')
  srt = raw[order]
  dup = np.flatnonzero(srt[1:] == srt[:-1])
  if dup.size and table is not None:
    k = int(order[dup[0] + 1])
    raise table.error(k, f'{name} {int(srt[dup[0]])} is listed twice; each {name} must appear on '
                         'one line only')
  return np.unique(srt)


def lookup_ids(known: np.ndarray, raw: np.ndarray) -> np.ndarray:
  """Dense ids (1..len(known)) of raw ids under ``dense_ids``' mapping; 0 where unknown."""
  raw = np.asarray(raw, np.int64)
  if known.size == 0:
    return np.zeros(raw.shape, np.int32)
  pos = np.minimum(np.searchsorted(known, raw), known.size - 1)
  return np.where(known[pos] == raw, pos + 1, 0).astype(np.int32)


# ================================================================================ the log
@dataclasses.dataclass
class EventLog:
  """One row per event, dense ids (1..n; 0 is padding / unknown), plus side tables by id.

  ``labels`` only matter where ``is_impression``; ``in_sequence[name]`` says which events feed
  behaviour sequence ``name`` (an event may feed several, or none). Side tables are indexed by
  dense id, row 0 the padding row: ``item_cat[f][item]``, ``user_num[f][user]``. ``vocab`` maps a
  categorical feature to its vocabulary name (default: the feature's own name), so features can
  share an id space (three genre slots, one genre table); ``vocab_sizes`` declares sizes that stay
  fixed across subsets of the data (default: the largest id + 1).
  """
  user: np.ndarray                      # [E] int32
  item: np.ndarray                      # [E] int32
  time: np.ndarray                      # [E] int64 seconds
  labels: np.ndarray                    # [E, T] float32, 0/1
  is_impression: np.ndarray             # [E] bool
  in_sequence: dict[str, np.ndarray]    # name -> [E] bool
  tasks: tuple[Task, ...]
  num_users: int
  num_items: int
  item_cat: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [num_items+1] int32
  item_num: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [num_items+1] f32
  user_cat: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [num_users+1] int32
  user_num: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [num_users+1] f32
  vocab: dict[str, str] = dataclasses.field(default_factory=dict)
  vocab_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
  # Per-event categorical features ([E] int32, ids >= 1), e.g. the rating a user gave: they can
  # ride on the sequence events (RequestConfig.seq_event_features), so a history token says what
  # the user did with the item, not only which item it was.
  event_cat: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Optional, for logs whose requests are given rather than cut by time (own_data.py): [E] int64
  # request key of each event; a request is then one user's impressions of one key.
  request: np.ndarray | None = None
  # Optional, for logs whose id vocabularies are not the entities themselves (a min count, hashing,
  # or a vocabulary frozen at training time): [num_users + 1] / [num_items + 1] int32, the id that
  # the 'user' / 'item' embedding reads for each dense user / item (row 0: 0). Default: identity.
  # Sessions, sequences and UAUC keep grouping by the dense ids, so two users sharing the unknown
  # id 0 are still two users.
  user_vocab_id: np.ndarray | None = None
  item_vocab_id: np.ndarray | None = None

  @property
  def num_events(self) -> int:
    return int(self.user.shape[0])

  def vocab_of(self, feature: str) -> str:
    return self.vocab.get(feature, feature)

  def validate(self) -> None:
    """Shapes, dtypes and id ranges; a ValueError names the array. Cheap, vectorised."""
    e = self.num_events
    for name, arr, dtype in (('user', self.user, np.int32), ('item', self.item, np.int32),
                             ('time', self.time, np.int64),
                             ('is_impression', self.is_impression, np.bool_)):
      if arr.shape != (e,) or arr.dtype != dtype:
        raise ValueError(f'EventLog.{name}: expected [{e}] {np.dtype(dtype).name}, got '
                         f'{arr.shape} {arr.dtype}')
    if self.labels.shape != (e, len(self.tasks)) or self.labels.dtype != np.float32:
      raise ValueError(f'EventLog.labels: expected [{e}, {len(self.tasks)}] float32 (one column '
                       f'per task), got {self.labels.shape} {self.labels.dtype}')
    if not np.all((self.labels == 0) | (self.labels == 1)):
      raise ValueError('EventLog.labels must be 0 or 1')
    for name, arr, n in (('user', self.user, self.num_users), ('item', self.item, self.num_items)):
      if e and (arr.min() < 1 or arr.max() > n):
        raise ValueError(f'EventLog.{name} ids must lie in 1..{n}, got [{arr.min()}, {arr.max()}]')
    if e and (self.time.min() < _INT32.min or self.time.max() > _INT32.max):
      raise ValueError('EventLog.time must fit int32 seconds (the batch contract stores int32)')
    if not self.in_sequence:
      raise ValueError('EventLog.in_sequence: declare at least one behaviour sequence')
    for name, arr in self.in_sequence.items():
      if arr.shape != (e,) or arr.dtype != np.bool_:
        raise ValueError(f'EventLog.in_sequence[{name!r}]: expected [{e}] bool, got {arr.shape} '
                         f'{arr.dtype}')
    names = set(RESERVED_FEATURES)
    for table, n, dtype, kind in ((self.item_cat, self.num_items, np.int32, 'item_cat'),
                                  (self.item_num, self.num_items, np.float32, 'item_num'),
                                  (self.user_cat, self.num_users, np.int32, 'user_cat'),
                                  (self.user_num, self.num_users, np.float32, 'user_num')):
      for name, arr in table.items():
        if name in names:
          raise ValueError(f'EventLog.{kind}[{name!r}]: the feature name is reserved or used twice')
        names.add(name)
        if arr.shape != (n + 1,) or arr.dtype != dtype:
          raise ValueError(f'EventLog.{kind}[{name!r}]: expected [{n + 1}] {np.dtype(dtype).name} '
                           f'(row 0 = padding), got {arr.shape} {arr.dtype}')
        if dtype == np.float32 and not np.all(np.isfinite(arr)):
          raise ValueError(f'EventLog.{kind}[{name!r}] holds non-finite values; impute them')
        if dtype == np.int32 and arr.min() < 0:
          raise ValueError(f'EventLog.{kind}[{name!r}] holds negative ids')
    for name, arr in self.event_cat.items():
      if name in names:
        raise ValueError(f'EventLog.event_cat[{name!r}]: the feature name is reserved or used twice')
      names.add(name)
      if arr.shape != (e,) or arr.dtype != np.int32:
        raise ValueError(f'EventLog.event_cat[{name!r}]: expected [{e}] int32 (one id per event), '
                         f'got {arr.shape} {arr.dtype}')
      if e and arr.min() < 1:
        raise ValueError(f'EventLog.event_cat[{name!r}] holds ids < 1 (0 is the padding id)')
    for f in list(self.item_cat) + list(self.user_cat) + list(self.event_cat):
      v = self.vocab_of(f)
      if v in RESERVED_VOCABS:
        raise ValueError(f'EventLog feature {f!r}: vocabulary name {v!r} is reserved')
    if self.request is not None and (self.request.shape != (e,) or self.request.dtype != np.int64):
      raise ValueError(f'EventLog.request: expected [{e}] int64, got {self.request.shape} '
                       f'{self.request.dtype}')
    for name, ids, n in (('user', self.user_vocab_id, self.num_users),
                         ('item', self.item_vocab_id, self.num_items)):
      if ids is None:
        continue
      if ids.shape != (n + 1,) or ids.dtype != np.int32 or ids[0] != 0 or ids.min() < 0:
        raise ValueError(f'EventLog.{name}_vocab_id: expected [{n + 1}] int32 >= 0 with row 0 = 0 '
                         f'(padding), got {ids.shape} {ids.dtype}')
      if ids.max() >= self.vocab_sizes.get(name, n + 1):
        raise ValueError(f'EventLog.{name}_vocab_id holds id {ids.max()}; declare the size of '
                         f'vocabulary {name!r} in vocab_sizes')
    for v, size in self.vocab_sizes.items():
      top = max((int(a.max()) for t in (self.item_cat, self.user_cat, self.event_cat)
                 for f, a in t.items() if self.vocab_of(f) == v and a.size), default=0)
      if top >= size:
        raise ValueError(f'EventLog.vocab_sizes[{v!r}] = {size}, but an id {top} uses it')


STATS_SCALES = ('raw', 'zscore')   # RequestConfig.stats_scale


@dataclasses.dataclass(frozen=True)
class RequestConfig:
  """How a log is cut into requests and split. Loaders fill it from ``config.data``."""
  session_gap: int                  # seconds; a larger gap between impressions starts a request
  num_candidates: int               # C; longer sessions are split into several requests
  max_len: Mapping[str, int]        # per behaviour sequence
  eval_fraction: float              # the latest requests by start time that evaluate
  seq_side_features: tuple[str, ...] = ()  # item_cat features attached to every sequence event
  seq_event_features: tuple[str, ...] = ()  # event_cat features of the event itself, after those
  user_id_feature: bool = True      # the user id as a request feature (vocabulary 'user')
  time_context: bool = True         # hour of day and weekday of the request as features
  utc_offset: int = 0               # seconds added to the UTC request time before taking hour /
                                    # weekday: the log's local time (8 * 3600 = Beijing)
  history_stats: bool = False       # leak-free counters as numeric features (history_statistics)
  stats_prior: float = 10.0         # pseudo-impressions of the smoothed rates (at the global rate)
  stats_scale: str = 'raw'          # 'zscore': each statistic standardised by the training
                                    # range's mean and std (standardise_statistics); 'raw' as is

  def check(self, log: EventLog, prefix: str = 'config.data') -> None:
    """Raise ConfigError naming the ``config.data`` field that cannot work with ``log``."""
    if abs(self.utc_offset) > SECONDS_PER_DAY:
      raise ConfigError(f'the UTC offset must lie within a day, got {self.utc_offset} s')
    if self.session_gap < 0:
      raise ConfigError(f'{prefix}.session_gap must be >= 0 seconds, got {self.session_gap}')
    if self.num_candidates < 1:
      raise ConfigError(f'{prefix}.num_candidates must be >= 1, got {self.num_candidates}')
    if not 0.0 < self.eval_fraction < 1.0:
      raise ConfigError(f'{prefix}.eval_fraction must lie in (0, 1), got {self.eval_fraction}')
    if set(self.max_len) != set(log.in_sequence):
      raise ConfigError(f'sequence lengths given for {sorted(self.max_len)}, but the data has '
                        f'sequences {sorted(log.in_sequence)}')
    for name, n in self.max_len.items():
      if n < 1:
        raise ConfigError(f'the max length of sequence {name!r} must be >= 1, got {n}')
    if self.stats_prior <= 0:
      raise ConfigError(f'{prefix}.stats_prior must be > 0, got {self.stats_prior}')
    if self.stats_scale not in STATS_SCALES:
      raise ConfigError(f'{prefix}.stats_scale={self.stats_scale!r}: use one of {STATS_SCALES}')
    if self.stats_scale != 'raw' and not self.history_stats:
      raise ConfigError(f'{prefix}.stats_scale={self.stats_scale!r} scales the history '
                        f'statistics, but {prefix}.history_stats is False; set it True or leave '
                        "stats_scale='raw'")
    for f in self.seq_side_features:
      if f not in log.item_cat:
        raise ConfigError(f'sequence side feature {f!r} is not an item categorical feature of '
                          f'the data; known: {sorted(log.item_cat)}')
    for f in self.seq_event_features:
      if f not in log.event_cat:
        raise ConfigError(f'sequence event feature {f!r} is not a per-event categorical feature '
                          f'of the data; known: {sorted(log.event_cat) or "none"}')


def event_schema(log: EventLog, cfg: RequestConfig) -> FeatureSchema:
  """The FeatureSchema of the requests ``EventLogSource`` builds, in its column order.

  request/cat: [user_id] + user_cat + [hour, weekday]; request/num: user_num; every sequence:
  item id + ``seq_side_features``; cand/cat: item_id + item_cat; cand/num: item_num.
  """
  sizes: dict[str, int] = {'user': log.num_users + 1, 'item': log.num_items + 1}
  for table in (log.user_cat, log.item_cat, log.event_cat):
    for f, arr in table.items():
      v = log.vocab_of(f)
      sizes[v] = max(sizes.get(v, 2), int(arr.max()) + 1 if arr.size else 2)
  sizes.update(log.vocab_sizes)
  # A per-event feature no sequence carries gets no table (the model would never read it).
  used = {log.vocab_of(f) for f in list(log.user_cat) + list(log.item_cat) +
          list(cfg.seq_event_features)}
  for f in log.event_cat:
    if log.vocab_of(f) not in used:
      sizes.pop(log.vocab_of(f), None)
  if cfg.time_context:
    sizes.update(hour=25, weekday=8)
  req_cat = [CategoricalFeature('user_id', 'user', 'user')] if cfg.user_id_feature else []
  req_cat += [CategoricalFeature(f, log.vocab_of(f), 'user') for f in log.user_cat]
  if cfg.time_context:
    req_cat += [CategoricalFeature('hour', 'hour', 'context'),
                CategoricalFeature('weekday', 'weekday', 'context')]
  side = tuple((f, log.vocab_of(f)) for f in cfg.seq_side_features + cfg.seq_event_features)
  req_num = [NumericFeature(f, 'user') for f in log.user_num]
  cand_num = [NumericFeature(f, 'item') for f in log.item_num]
  if cfg.history_stats:
    req_num += [NumericFeature(f, 'user') for f in stat_names('user', log.tasks)]
    cand_num += [NumericFeature(f, 'item') for f in stat_names('item', log.tasks)]
  return FeatureSchema(
      vocabularies=tuple(Vocabulary(v, max(s, 2)) for v, s in sizes.items()),
      request_categorical=tuple(req_cat),
      request_numeric=tuple(req_num),
      sequences=tuple(SequenceFeature(s, cfg.max_len[s], 'item', side) for s in log.in_sequence),
      candidate_categorical=(CategoricalFeature('item_id', 'item', 'item'),) + tuple(
          CategoricalFeature(f, log.vocab_of(f), 'item') for f in log.item_cat),
      candidate_numeric=tuple(cand_num),
      tasks=tuple(log.tasks),
      num_candidates=cfg.num_candidates,
  )


# ================================================================================ requests
@dataclasses.dataclass
class RequestIndex:
  """Compact arrays locating every request, in chronological order (by first impression time).

  Request ``r``'s impressions are events ``impressions[start[r]:start[r] + size[r]]`` (time
  order); its sequence ``s`` is events ``seq_events[s][seq_begin[s][r]:seq_end[s][r]]``, the
  user's latest ``max_len`` events of ``s`` with time < ``time[r]``, oldest first.
  """
  impressions: np.ndarray             # [I] int64 event index, sorted by (user, time)
  start: np.ndarray                   # [R] int64 offset into ``impressions``
  size: np.ndarray                    # [R] int32 candidates, 1..C
  user: np.ndarray                    # [R] int32
  time: np.ndarray                    # [R] int64 first impression time
  seq_events: dict[str, np.ndarray]   # name -> [E_s] int64 event index, sorted by (user, time)
  seq_begin: dict[str, np.ndarray]    # name -> [R] int64
  seq_end: dict[str, np.ndarray]      # name -> [R] int64

  def __len__(self) -> int:
    return int(self.start.shape[0])


def _user_time_key(user: np.ndarray, time: np.ndarray, t0: int) -> np.ndarray:
  """One int64 that sorts by (user, time): times are int32, so time - t0 < 2**32."""
  return (user.astype(np.int64) << 32) + (time.astype(np.int64) - t0)


def build_requests(log: EventLog, cfg: RequestConfig) -> RequestIndex:
  """Sessionise the impressions and locate each request's sequences; no loop over events."""
  imp = np.flatnonzero(log.is_impression)
  if imp.size == 0:
    raise ConfigError('the data holds no impressions, so there is nothing to rank')
  t_min = int(log.time.min())
  if log.request is None:
    # Stable sort: events with the same (user, time) keep their file order.
    imp = imp[np.argsort(_user_time_key(log.user[imp], log.time[imp], t_min), kind='stable')]
  else:
    # Given requests: one user's impressions of one key, ordered by the key's first impression
    # (keys interleaved in time stay whole), then by time; lexsort is stable.
    key = log.request[imp]
    first = np.full(int(key.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, key, log.time[imp])
    imp = imp[np.lexsort((log.time[imp], key, first[key], log.user[imp]))]
  u, t = log.user[imp], log.time[imp]
  n = imp.size
  new_session = np.ones(n, np.bool_)
  if log.request is None:
    new_session[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > cfg.session_gap)
  else:
    key = log.request[imp]
    new_session[1:] = (u[1:] != u[:-1]) | (key[1:] != key[:-1])
  session_start = np.flatnonzero(new_session)
  pos = np.arange(n) - session_start[np.cumsum(new_session) - 1]  # position within the session
  start = np.flatnonzero(pos % cfg.num_candidates == 0)
  size = np.diff(np.append(start, n)).astype(np.int32)
  # Chronological order of requests; a stable sort keeps ties in (user, time) order.
  order = np.argsort(t[start], kind='stable')
  start, size = start[order].astype(np.int64), size[order]
  req_user, req_time = u[start].astype(np.int32), t[start].astype(np.int64)

  seq_events, seq_begin, seq_end = {}, {}, {}
  for name, member in log.in_sequence.items():
    ev = np.flatnonzero(member)
    key = _user_time_key(log.user[ev], log.time[ev], t_min)
    srt = np.argsort(key, kind='stable')
    ev, key = ev[srt], key[srt]
    # 'left': the first event at (user, time >= request time), so every earlier one is < it.
    end = np.searchsorted(key, _user_time_key(req_user, req_time, t_min), side='left')
    first = np.searchsorted(key, req_user.astype(np.int64) << 32, side='left')
    seq_events[name] = ev.astype(np.int64)
    seq_begin[name] = np.maximum(first, end - cfg.max_len[name]).astype(np.int64)
    seq_end[name] = end.astype(np.int64)
  return RequestIndex(imp.astype(np.int64), start, size, req_user, req_time, seq_events,
                      seq_begin, seq_end)



def stat_names(side: str, tasks: Sequence[Task]) -> list[str]:
  """Feature names of ``history_statistics``: the side's log count, then a rate per task."""
  return [f'{side}_prior_log_count'] + [f'{side}_prior_{t.name}_rate' for t in tasks]


def history_statistics(log: EventLog, index: RequestIndex, prior: float
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Leak-free counters, the features an industrial ranker reads beside its ids: for every
  request its user's, and for every impression its item's, number of impressions strictly before
  the request's time (log1p) and per task their positive rate, smoothed toward the global rate
  before that time with ``prior`` pseudo-impressions. The request's own labels, and every later
  one, never enter: the same information the behaviour sequences carry.

  -> (per request [R, 1 + T], per impression [len(index.impressions), 1 + T]) float32, the
  second aligned with ``index.impressions``. Vectorised: sorted keys and cumulative sums.
  """
  imp = index.impressions
  labels = log.labels[imp].astype(np.float64)                      # [I, T]
  t_min = int(log.time.min())
  # Requests tile ``imp`` in contiguous chunks: in start order, each position's request time.
  order = np.argsort(index.start, kind='stable')
  t_req_imp = np.repeat(index.time[order], index.size[order]).astype(np.int64)

  def counts(keys: np.ndarray, queries: np.ndarray, group_start: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(count, positives [., T]) of the sorted ``keys`` in [group_start, first key >= query)."""
    srt = np.argsort(keys, kind='stable')
    cum = np.concatenate([np.zeros((1, labels.shape[1])), np.cumsum(labels[srt], 0)])
    end = np.searchsorted(keys[srt], queries, side='left')
    first = np.searchsorted(keys[srt], group_start, side='left')
    return (end - first).astype(np.float64), cum[end] - cum[first]

  # Every impression by time, once: the global rate before a time is a prefix of it.
  by_time = np.argsort(log.time[imp], kind='stable')
  times = log.time[imp][by_time]
  cum_time = np.concatenate([np.zeros((1, labels.shape[1])), np.cumsum(labels[by_time], 0)])

  def global_rate(t: np.ndarray) -> np.ndarray:
    n = np.searchsorted(times, t, side='left')
    return (cum_time[n] + 1.0) / (n[:, None] + 2.0)                # Laplace: defined at t_min

  def features(n: np.ndarray, pos: np.ndarray, t: np.ndarray) -> np.ndarray:
    rate = (pos + prior * global_rate(t)) / (n[:, None] + prior)
    return np.concatenate([np.log1p(n)[:, None], rate], 1).astype(np.float32)

  user_key = _user_time_key(log.user[imp], log.time[imp], t_min)
  n_u, pos_u = counts(user_key, _user_time_key(index.user, index.time, t_min),
                      index.user.astype(np.int64) << 32)
  item = log.item[imp]
  item_key = _user_time_key(item, log.time[imp], t_min)
  n_i, pos_i = counts(item_key, _user_time_key(item, t_req_imp, t_min),
                      item.astype(np.int64) << 32)
  return features(n_u, pos_u, index.time), features(n_i, pos_i, t_req_imp)


def standardise_statistics(req: np.ndarray, imp: np.ndarray, index: RequestIndex,
                           num_train: int) -> tuple[np.ndarray, np.ndarray]:
  """z-scores of ``history_statistics``' columns with the mean and std of the first
  ``num_train`` requests (the training range; the hold-out's values play no part) and of their
  impressions.

  Why: the numeric embedding is an affine map per feature (x w + b, w initialised at 0.05), which
  assumes standardised inputs. Raw, a smoothed rate varies by about 0.1-0.15 across users or items
  (MovieLens-100K) against 1.3-1.7 for a log count, so the rate - the item's earlier feedback,
  what ranks one user's candidates - enters the model at a tenth of the scale of everything else.
  """
  size = index.size.astype(np.int64)
  req_of = np.repeat(np.arange(len(size)), size)            # each (request, slot) pair's request
  slot = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
  owner = np.empty(len(index.impressions), np.int64)
  owner[index.start[req_of] + slot] = req_of
  train_imp = imp[owner < num_train]

  def z(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mean, std = ref.mean(0), ref.std(0)
    return ((x - mean) / np.maximum(std, 1e-6)).astype(np.float32)

  return z(req, req[:num_train]), z(imp, train_imp)


def add_pipeline_fields(d: ml_collections.ConfigDict, batch_size: int) -> None:
  """The ``config.data`` fields every real dataset shares (read by pipeline.make_iterator)."""
  d.batch_size = batch_size       # requests per step (x up to C candidates each)
  d.shuffle = True                # [D] shuffle the training range each epoch: requests are
                                  # stored time-sorted, and small logs train for several epochs
  d.validate = True               # check every batch against the schema (ids in range, ...)
  d.num_threads = 2
  d.worker_count = 0              # >0: grain worker processes build batches
  d.cache_mb = cache.DEFAULT_MB   # keep built requests up to this many MB (data/cache.py; 0: off)
  d.history_fraction = 1.0        # < 1: the model reads the latest fraction of every history

def chronological_split(num_requests: int, eval_fraction: float
                        ) -> tuple[tuple[int, int], tuple[int, int]]:
  """(train, eval) index ranges over time-sorted requests: the last fraction evaluates."""
  if num_requests < 2:
    raise ConfigError(f'the data makes {num_requests} request(s); a train / eval split needs at '
                      'least 2')
  n_eval = min(max(int(round(eval_fraction * num_requests)), 1), num_requests - 1)
  cut = num_requests - n_eval
  return (0, cut), (cut, num_requests)


class EventLogSource:
  """grain random-access source: ``source[i]`` builds request ``i`` (chronological order).

  Per request the work is O(C + sum of max_len) gathers from precomputed side tables.
  """

  def __init__(self, log: EventLog, cfg: RequestConfig, index: RequestIndex | None = None):
    log.validate()
    cfg.check(log)
    self.log, self.cfg = log, cfg
    self.index = index if index is not None else build_requests(log, cfg)
    self.schema = event_schema(log, cfg)

    def table(n: int, columns: Sequence[np.ndarray], dtype, ids: np.ndarray | None = None
              ) -> np.ndarray:
      cols = ([] if ids is None else [ids]) + list(columns)
      return (np.stack(cols, -1) if cols else np.zeros((n + 1, 0))).astype(dtype)

    user_ids = np.arange(log.num_users + 1) if log.user_vocab_id is None else log.user_vocab_id
    item_ids = np.arange(log.num_items + 1) if log.item_vocab_id is None else log.item_vocab_id
    # Side tables by dense id, rows in the schema's column order: one gather per request.
    self._user_cat = table(log.num_users, list(log.user_cat.values()), np.int32,
                           user_ids if cfg.user_id_feature else None)
    self._user_num = table(log.num_users, list(log.user_num.values()), np.float32)
    self._item_cat = table(log.num_items, list(log.item_cat.values()), np.int32, item_ids)
    self._item_num = table(log.num_items, list(log.item_num.values()), np.float32)
    self._seq_ids = table(log.num_items, [log.item_cat[f] for f in cfg.seq_side_features],
                          np.int32, item_ids)
    self._seq_event = (np.stack([log.event_cat[f] for f in cfg.seq_event_features], -1)
                       if cfg.seq_event_features else None)   # [E, S_e] int32
    self._labels = log.labels
    self._req_stats = self._imp_stats = None
    if cfg.history_stats:
      self._req_stats, self._imp_stats = history_statistics(log, self.index, cfg.stats_prior)
      if cfg.stats_scale == 'zscore':
        num_train = chronological_split(len(self.index), cfg.eval_fraction)[0][1]
        self._req_stats, self._imp_stats = standardise_statistics(
            self._req_stats, self._imp_stats, self.index, num_train)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, index: int) -> dict[str, Any]:
    i = int(index)
    if not 0 <= i < len(self.index):
      raise IndexError(f'request index {i} outside [0, {len(self.index)})')
    ix, log, c = self.index, self.log, self.cfg.num_candidates
    u, t_req = int(ix.user[i]), int(ix.time[i])
    cat = self._user_cat[u].copy()
    if self.cfg.time_context:
      t_local = t_req + self.cfg.utc_offset
      hour = (t_local // 3600) % 24 + 1
      weekday = (t_local // SECONDS_PER_DAY + 3) % 7 + 1  # 1 = Monday (1970-01-01: a Thursday)
      cat = np.concatenate([cat, np.array([hour, weekday], np.int32)])

    seqs = {}
    for name in log.in_sequence:
      length = self.cfg.max_len[name]
      ev = ix.seq_events[name][ix.seq_begin[name][i]:ix.seq_end[name][i]]
      k = ev.size
      width = self._seq_ids.shape[1]
      ids = np.zeros((length, width + len(self.cfg.seq_event_features)), np.int32)
      time = np.zeros((length,), np.int32)
      mask = np.zeros((length,), np.bool_)
      if k:  # right-aligned: padding on the left, the most recent event last
        ids[length - k:, :width] = self._seq_ids[log.item[ev]]
        if self._seq_event is not None:
          ids[length - k:, width:] = self._seq_event[ev]
        time[length - k:] = log.time[ev]
        mask[length - k:] = True
      seqs[name] = {'ids': ids, 'time': time, 'mask': mask}

    a, n = int(ix.start[i]), int(ix.size[i])
    ev = ix.impressions[a:a + n]
    items = log.item[ev]
    cand_cat = np.zeros((c, self._item_cat.shape[1]), np.int32)
    cand_cat[:n] = self._item_cat[items]
    cand_num = np.zeros((c, self._item_num.shape[1]), np.float32)
    cand_num[:n] = self._item_num[items]
    cand_mask = np.zeros((c,), np.bool_)
    cand_mask[:n] = True
    labels = np.zeros((c, self._labels.shape[1]), np.float32)
    labels[:n] = self._labels[ev]
    num = self._user_num[u].copy()
    if self._req_stats is not None:
      num = np.concatenate([num, self._req_stats[i]])
      cand_num = np.concatenate([cand_num, np.zeros((c, self._imp_stats.shape[1]), np.float32)],
                                1)
      cand_num[:n, cand_num.shape[1] - self._imp_stats.shape[1]:] = self._imp_stats[a:a + n]
    return {
        'request': {'user_id': np.int32(u), 'time': np.int32(t_req), 'cat': cat,
                    'num': num},
        'seq': seqs,
        'cand': {'cat': cand_cat, 'num': cand_num, 'mask': cand_mask},
        'labels': labels,
    }

  def __repr__(self) -> str:
    return (f'EventLogSource({len(self)} requests, {self.log.num_users} users, '
            f'{self.log.num_items} items, {self.log.num_events} events)')


def make_dataset(log: EventLog, cfg: RequestConfig) -> Dataset:
  """The pipeline Dataset of a log: schema, source and the chronological train / eval ranges."""
  source = EventLogSource(log, cfg)
  train, evaluation = chronological_split(len(source), cfg.eval_fraction)
  return Dataset(source.schema, source, train, evaluation, has_true_prob=False)
