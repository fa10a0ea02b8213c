"""A user's CSV or Parquet files, streamed with pyarrow: record batches, never the whole file.

``DataFile`` opens one file as its spec section says (format, delimiter, header, encoding) and
yields the requested columns batch by batch; ``Batch`` turns a column into what the dataset
builder keeps (numbers, unix seconds, codes into a growing dictionary of values, conditions).
A value that cannot be used ends in one ``DataFileError`` naming the file, the 1-based data row
(the header not counted; blank lines skipped), the column and the fix: the checks are vectorised,
and a per-value Python pass runs only over the batch that failed, to find the row.

CSV columns are read as text and converted here, not by pyarrow's type inference, which guesses a
type from the first block and then fails far away from the bad row without naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from onetrans_jax.data.event_log import DataFileError
from onetrans_jax.errors import ConfigError

FORMATS = ('auto', 'csv', 'parquet')
PARQUET_SUFFIXES = ('.parquet', '.pq')
TIME_FORMATS = ('unix', 'unix_ms', 'iso')  # or any strptime format, e.g. '%Y-%m-%d %H:%M:%S'
BATCH_ROWS = 65_536                         # Parquet rows per batch
CSV_BLOCK_BYTES = 1 << 22                   # CSV bytes per batch (4 MiB)
_INT = re.compile(r'[+-]?\d+\Z')


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """How to read one file; ``field`` is the spec section naming it (``config.data.events``), so
  that a message can say which setting to change."""
  path: str
  field: str
  format: str = 'auto'
  delimiter: str = ','
  header: bool = True
  column_names: tuple[str, ...] = ()   # the columns of a file without a header line
  encoding: str = 'utf-8'
  quote_char: str | None = '"'        # None: quotes are ordinary characters

  @property
  def kind(self) -> str:
    if self.format not in FORMATS:
      raise ConfigError(f'{self.field}.format={self.format!r}: choose one of {list(FORMATS)}')
    if self.format != 'auto':
      return self.format
    return 'parquet' if self.path.lower().endswith(PARQUET_SUFFIXES) else 'csv'


class DataFile:
  """One CSV or Parquet file: its column names, and its columns streamed in batches."""

  def __init__(self, spec: FileSpec):
    self.spec, self.path = spec, spec.path
    if not os.path.isfile(spec.path):
      raise DataFileError(f'{spec.path}: file not found; set {spec.field}.file (relative to '
                          'config.data.path) to an existing CSV or Parquet file')
    self.kind = spec.kind
    if self.kind == 'parquet':
      try:
        self._parquet = pq.ParquetFile(spec.path)
      except (pa.ArrowException, OSError) as e:
        raise DataFileError(f'{spec.path}: not a readable Parquet file ({_first_line(e)}); '
                            f'rewrite it, or set {spec.field}.format=\'csv\' if it is text'
                            ) from None
      self.columns = tuple(self._parquet.schema_arrow.names)
      if self._parquet.metadata.num_rows == 0:
        raise self.empty()
    else:
      if spec.header == bool(spec.column_names):
        raise ConfigError(f'{spec.field}: give column_names exactly when header=False (a file '
                          'without a header line needs them; one with a header names its columns)')
      self.columns = tuple(spec.column_names) or self._header()

  def empty(self) -> DataFileError:
    return DataFileError(f'{self.path}, row 1: the file holds no data rows; fill it, or point '
                         f'{self.spec.field}.file at the right file')

  def _csv_options(self, columns: Sequence[str] = ()) -> dict[str, Any]:
    s = self.spec
    return dict(
        read_options=pa_csv.ReadOptions(
            encoding=s.encoding, block_size=CSV_BLOCK_BYTES,
            column_names=list(s.column_names) or None),
        parse_options=pa_csv.ParseOptions(delimiter=s.delimiter,
                                          quote_char=s.quote_char or False),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, include_columns=list(columns),
            strings_can_be_null=False, quoted_strings_can_be_null=False))

  def _header(self) -> tuple[str, ...]:
    with open(self.path, 'rb') as f:
      first = f.readline()
    if not first.strip():
      raise DataFileError(f'{self.path}, line 1: expected a header line naming the columns, '
                          f'found {"an empty file" if not first else "a blank line"}; write the '
                          f'header, or set {self.spec.field}.header=False and column_names')
    try:
      text = first.decode(self.spec.encoding).lstrip('\ufeff').rstrip('\r\n')
    except UnicodeDecodeError:
      raise DataFileError(f'{self.path}, line 1: the header is not {self.spec.encoding}; set '
                          f'{self.spec.field}.encoding') from None
    return tuple(h.strip() for h in next(csv.reader(
        [text], delimiter=self.spec.delimiter, quotechar=self.spec.quote_char or '\0')))

  def require(self, names: Mapping[str, str]) -> None:
    """Every column the spec names exists; ``names``: column -> the spec field naming it."""
    for col, field in names.items():
      if col not in self.columns:
        raise DataFileError(
            f'{self.path}, row 1 (the header), column {col!r}: no such column (named by {field}); '
            f'the file has columns {list(self.columns)}; rename the column in the file or set '
            f'{field} to one of them')

  def batches(self, columns: Sequence[str]) -> Iterator['Batch']:
    """The rows of ``columns`` (each a column of the file), batch by batch, in file order."""
    columns = list(dict.fromkeys(columns))
    self.require({c: f'{self.spec.field}' for c in columns})
    row = 1
    for arrays in (self._parquet_batches(columns) if self.kind == 'parquet'
                   else self._csv_batches(columns)):
      n = len(arrays[columns[0]]) if columns else 0
      if n:
        yield Batch(self, row, arrays)
      row += n
    if row == 1:
      raise self.empty()

  def _parquet_batches(self, columns: list[str]) -> Iterator[dict[str, pa.Array]]:
    for b in self._parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
      yield {c: b.column(c) for c in columns}

  def _csv_batches(self, columns: list[str]) -> Iterator[dict[str, pa.Array]]:
    try:
      reader = pa_csv.open_csv(self.path, **self._csv_options(columns))
      for b in reader:
        yield {c: b.column(c) for c in columns}
    except pa.ArrowInvalid as e:
      raise self._csv_error(e) from None

  def _csv_error(self, e: Exception) -> DataFileError:
    """pyarrow's parse errors carry no line number: find the first line that fails, in Python
    (only after a failure)."""
    msg = _first_line(e)
    if 'Empty CSV file' in msg:
      return self.empty()
    if 'decode' in msg.lower() or 'utf' in msg.lower():
      return DataFileError(f'{self.path}: not valid {self.spec.encoding} ({msg}); set '
                           f'{self.spec.field}.encoding to the file\'s encoding, or re-encode it')
    expected = len(self.columns)
    with open(self.path, encoding=self.spec.encoding, errors='replace', newline='') as f:
      lines = csv.reader(f, delimiter=self.spec.delimiter,
                         quotechar=self.spec.quote_char or '\0',
                         quoting=csv.QUOTE_MINIMAL if self.spec.quote_char else csv.QUOTE_NONE)
      for fields in lines:
        if fields and len(fields) != expected:
          return DataFileError(
              f'{self.path}, line {lines.line_num}: {len(fields)} field(s) separated by '
              f'{self.spec.delimiter!r}, expected {expected} (the columns {list(self.columns)}); '
              f'fix or delete this line, or set {self.spec.field}.delimiter')
    return DataFileError(f'{self.path}: cannot be read as CSV ({msg}); check '
                         f'{self.spec.field}.delimiter, quote_char and encoding')


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@dataclasses.dataclass
class Batch:
  """Consecutive rows of one file: ``first_row`` is the 1-based data row of its row 0."""
  file: DataFile
  first_row: int
  arrays: dict[str, pa.Array]

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  @property
  def rows(self) -> np.ndarray:
    """[n] int64: each row's 1-based data row in the file."""
    return self.first_row + np.arange(len(self), dtype=np.int64)

  def error(self, k: int, column: str, what: str) -> DataFileError:
    return DataFileError(f'{self.file.path}, row {self.first_row + k}, column {column!r}: {what}')

  def check(self, bad: np.ndarray, column: str, what) -> None:
    """Raise naming the first row where ``bad`` holds; ``what(k)`` says what is wrong with it."""
    k = np.flatnonzero(bad)
    if k.size:
      raise self.error(int(k[0]), column, what(int(k[0])))

  def _text(self, column: str) -> pa.Array:
    """The column as stripped text, '' (and a Parquet null) as null."""
    a = self.arrays[column]
    if pa.types.is_dictionary(a.type):
      a = a.cast(a.type.value_type)
    if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
      return pc.cast(a, pa.string())
    a = pc.utf8_trim_whitespace(a)
    return pc.if_else(pc.equal(a, ''), pa.scalar(None, a.type), a)

  def present(self, column: str) -> np.ndarray:
    """[n] bool: the value is not missing (an empty CSV field or a Parquet null)."""
    return ~np.asarray(pc.is_null(self._text(column)).to_numpy(zero_copy_only=False))

  def numbers(self, column: str, field: str, problem=None) -> np.ndarray:
    """[n] float64, NaN where missing; a value that is not a number names its row (``problem(v)``:
    what to say about it, by default that ``field`` reads a number)."""
    a = self.arrays[column]
    if pa.types.is_boolean(a.type):
      a = pc.cast(a, pa.int8())
    if pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
      return pc.cast(a, pa.float64()).to_numpy(zero_copy_only=False)
    text = self._text(column)
    try:
      return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
      pass
    for k, v in enumerate(text.to_pylist()):  # only on the failure path: find the row
      try:
        float(v if v is not None else 'nan')
      except ValueError:
        raise self.error(k, column, problem(v) if problem else (
            f'{v!r} is not a number ({field} reads it as one); fix the value or delete the row')
        ) from None
    raise self.error(0, column, 'cannot be read as numbers')

  def seconds(self, column: str, time_format: str, field: str) -> np.ndarray:
    """[n] int64 unix seconds (floor), -1 where missing. ``time_format``: 'unix', 'unix_ms',
    'iso' (ISO 8601, naive = UTC) or a strptime format; native Parquet times need none."""
    a = self.arrays[column]
    missing = ~self.present(column)
    if pa.types.is_timestamp(a.type) or pa.types.is_date(a.type):
      if pa.types.is_date(a.type):
        a = pc.cast(a, pa.timestamp('s'))
      # Sub-second precision is floored to the second (the batch contract's int32 seconds).
      out = pc.cast(a.cast(pa.timestamp('s', tz=a.type.tz), safe=False), pa.int64()).to_numpy(
          zero_copy_only=False)
      return np.where(missing, -1, np.nan_to_num(out, nan=-1)).astype(np.int64)
    if time_format in ('unix', 'unix_ms'):
      unit = 'milliseconds' if time_format == 'unix_ms' else 'seconds'
      x = self.numbers(column, field, lambda v: (
          f'{v!r} is not a number of unix {unit} ({field}={time_format!r}); fix the value, or set '
          f'{field} to its format (a strptime format, or one of {TIME_FORMATS})'))
      x = x / 1000.0 if time_format == 'unix_ms' else x
      return np.where(missing, -1, np.floor(np.nan_to_num(x, nan=-1))).astype(np.int64)
    text = self._text(column)
    if time_format == 'iso':
      parsed = None
      for tz in (None, 'UTC'):  # naive first (UTC), then with a zone offset
        try:
          parsed = pc.cast(text, pa.timestamp('ns', tz=tz)).cast(pa.timestamp('s', tz=tz),
                                                                 safe=False)
          break
        except pa.ArrowInvalid:
          continue
      if parsed is None:
        self._bad_time(text, column, field, lambda v: datetime.datetime.fromisoformat(v),
                       'an ISO 8601 time (2024-05-01T12:30:00)')
    else:
      parsed = pc.strptime(text, format=time_format, unit='s', error_is_null=True)
      bad = np.asarray(pc.is_null(parsed).to_numpy(zero_copy_only=False)) & ~missing
      self.check(bad, column, lambda k: (
          f'{text[k].as_py()!r} is not a time in the format {time_format!r} ({field}); fix the '
          f'value, or set {field} to its format (a strptime format, or one of {TIME_FORMATS})'))
    out = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
    return np.where(missing, -1, np.nan_to_num(out, nan=-1)).astype(np.int64)

  def _bad_time(self, text: pa.Array, column: str, field: str, parse, what: str) -> None:
    for k, v in enumerate(text.to_pylist()):
      if v is None:
        continue
      try:
        parse(v)
      except ValueError:
        raise self.error(k, column, f'{v!r} is not {what} ({field}); fix the value, or set {field} '
                                    f'to its format (a strptime format, or one of '
                                    f'{TIME_FORMATS})') from None
    raise self.error(0, column, f'cannot be read as {what} ({field}); set {field} to a strptime '
                                'format')

  def strings(self, column: str) -> tuple[np.ndarray, list[str]]:
    """-> (codes [n] int32 into the batch's distinct values, -1 where missing; those values)."""
    enc = pc.dictionary_encode(self._text(column))
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, [str(v) for v in enc.dictionary.to_pylist()]


class Values:
  """The distinct text values of one column across every batch and file: ``add`` maps a batch's
  values to stable codes 0..n-1 (-1: missing), so the column is kept as int32 codes."""

  def __init__(self):
    self.values: list[str] = []
    self._index: dict[str, int] = {}

  def __len__(self) -> int:
    return len(self.values)

  def add(self, codes: np.ndarray, values: Sequence[str]) -> np.ndarray:
    remap = np.empty(len(values) + 1, np.int32)
    remap[-1] = -1  # code -1 (missing) indexes the last slot
    for j, v in enumerate(values):
      code = self._index.get(v)
      if code is None:
        code = self._index[v] = len(self.values)
        self.values.append(v)
      remap[j] = code
    return remap[codes]

  def sorted_order(self) -> np.ndarray:
    """Codes in value order: numeric when every value is an integer (so ids follow 1 < 2 < 10),
    text order otherwise. Deterministic whatever order the files list the values in."""
    v = self.values
    key = (lambda j: int(v[j])) if v and all(_INT.match(x) for x in v) else v.__getitem__
    return np.asarray(sorted(range(len(v)), key=key), np.int64)


# ================================================================================ conditions
_OPS = ('==', '!=', '>=', '<=', '>', '<', ' in ')
_COND = re.compile(r'\s*([A-Za-z_][\w.\- ]*?)\s*(==|!=|>=|<=|>|<|\sin\s)\s*(.+?)\s*\Z')


@dataclasses.dataclass(frozen=True)
class Condition:
  """``column op value`` clauses joined by ``and``: ``rating >= 4``, ``type in (click, buy)``,
  ``action == 'pv' and dwell > 3``. A number compares numerically, anything else as text."""
  text: str
  field: str
  clauses: tuple[tuple[str, str, tuple[Any, ...]], ...]

  @classmethod
  def parse(cls, text: str, field: str) -> 'Condition':
    clauses = []
    for part in re.split(r'\s+and\s+', str(text).strip()):
      m = _COND.match(part)
      if not m:
        raise ConfigError(
            f'{field}={text!r}: cannot read {part!r}; write column op value (op one of '
            f"{', '.join(o.strip() for o in _OPS)}), clauses joined by 'and', e.g. 'rating >= 4' "
            "or 'event in (click, buy)'")
      col, op, value = m.group(1), m.group(2).strip(), m.group(3)
      if op == 'in':
        if not re.fullmatch(r'[(\[].*[)\]]', value):
          raise ConfigError(f'{field}={text!r}: "in" takes a list in parentheses, e.g. '
                            f'{col} in (a, b)')
        items = tuple(_literal(v) for v in value[1:-1].split(',') if v.strip())
      else:
        items = (_literal(value),)
      clauses.append((col, op, items))
    return cls(str(text), field, tuple(clauses))

  @property
  def columns(self) -> list[str]:
    return [c for c, _, _ in self.clauses]

  def evaluate(self, batch: Batch) -> np.ndarray:
    """[n] bool; a missing value satisfies no clause."""
    out = np.ones(len(batch), np.bool_)
    for col, op, items in self.clauses:
      if all(isinstance(v, float) for v in items):
        x = batch.numbers(col, f'{self.field}={self.text!r}')
        ok = ~np.isnan(x)
      else:
        codes, values = batch.strings(col)
        x = np.asarray(values + [''], dtype=object)[codes]
        ok = codes >= 0
        items = tuple(_text(v) for v in items)
      if op == 'in':
        hit = np.isin(x, np.asarray(items, dtype=x.dtype))
      else:
        hit = {'==': np.equal, '!=': np.not_equal, '>=': np.greater_equal, '<=': np.less_equal,
               '>': np.greater, '<': np.less}[op](x, items[0])
      out &= ok & np.asarray(hit, np.bool_)
    return out


def _literal(text: str) -> Any:
  text = text.strip()
  if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
    return text[1:-1]
  try:
    return float(text)
  except ValueError:
    return text


def _text(v: Any) -> str:
  return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
