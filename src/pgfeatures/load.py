"""Bulk loads: Parquet, CSV, Arrow IPC files and Arrow/pandas/polars frames into one feature table.

This module owns the whole bulk write path: reading sources with pyarrow,
entity-key handling, validation, the binary COPY payload, the load plan and
its sync/async drivers, post-load maintenance and the summary.

A load is one transaction; the live table changes only at COMMIT, so any
failure (bad input, a lost connection, a lock timeout) leaves it exactly as
it was:

1. Every source is opened and its columns checked against the table
   definition before the database is touched.
2. Rows stream, batch by batch, through validation and a vectorized (numpy)
   encoder into an UNLOGGED staging table by ``COPY ... (FORMAT BINARY)``.
   Nothing per row runs in Python on the fast path.
3. Keys that appear more than once in the load are found with numpy; the
   earlier rows are dropped (``on_duplicate="last"``) or the load fails
   (``"reject"``).
4. The staged rows are applied:

   ``upsert``
       ``INSERT ... SELECT ... ORDER BY hashkey ON CONFLICT (hashkey) DO UPDATE``
       into the live table. Cheapest when the load is small next to the table.
   ``rebuild`` (merge mode)
       A new table is filled with the staged rows plus the live rows the
       load does not touch, its primary key (and covering index) built in
       bulk, then swapped in. Index builds in bulk are several times faster
       than a million single-row index inserts, so large loads take this
       path. Live writers wait (SHARE ROW EXCLUSIVE lock) from the start of
       the rebuild to COMMIT; readers never wait except for the swap itself.
   ``replace`` (``mode="replace"``)
       The same swap, with only the loaded rows.

   ``strategy="auto"`` (default) rebuilds when the load has at least
   ``REBUILD_FRACTION`` of the table's rows and the table can be swapped
   (no triggers, views, foreign keys, publications, policies or indexes
   other than its own).
5. After COMMIT: ANALYZE, and VACUUM where it pays (see ``maintenance``).

Keys come as 32 raw bytes, 64 hex characters, or natural ids hashed with
SHA-256 (``hash_keys=True``; strings as UTF-8, integers as their decimal
text, binary as is). ``updated_at`` is the load's start time (epoch
seconds) unless the source has an ``updated_at`` column (nulls in it also
take the load time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.pq import TransactionStatus

from .definitions import KEY_COLUMN, KEY_LENGTH, UPDATED_AT, UPDATED_AT_FEATURE, Feature, FeatureTable, Registry
from .errors import LoadError, LoadInputError, LoadInterruptedError, SchemaDriftError
from .schema import covering_index_name, covering_index_sql, create_table_sql, qualified
from .write import FLOAT32_MAX, INT_RANGE

REBUILD_FRACTION = 0.25  # auto strategy: rebuild when loaded rows >= this fraction of the table...
REBUILD_MIN_ROWS = 50_000  # ...and at least this many: a swap is not worth its brief exclusive lock for less
VACUUM_FRACTION = 0.10  # auto vacuum: after an upsert that updated >= this fraction of the table
BATCH_ROWS = 65_536
MAX_EXAMPLES = 5  # rejected-row reasons kept in the summary
# Per-transaction settings: the rebuild's anti-join hashes the staged keys, index builds sort them.
TRANSACTION_SETTINGS = {"work_mem": "256MB", "maintenance_work_mem": "512MB", "max_parallel_maintenance_workers": "0"}


# -- options --------------------------------------------------------------------------------------


class _Choice(str, enum.Enum):
    @classmethod
    def parse(cls, value: Any, option: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise LoadInputError(f"invalid {option}={value!r}; valid: {', '.join(c.value for c in cls)}") from None


class Mode(_Choice):
    MERGE = "merge"  # upsert the loaded rows; other rows stay
    REPLACE = "replace"  # the table becomes exactly the loaded rows


class ApplyStrategy(_Choice):
    AUTO = "auto"
    UPSERT = "upsert"
    REBUILD = "rebuild"


class OnDuplicate(_Choice):
    LAST = "last"  # a key seen twice: the later row wins
    REJECT = "reject"  # a key seen twice fails the load


class NanPolicy(_Choice):
    REJECT = "reject"
    NULL = "null"  # NaN is loaded as NULL


class OnInvalid(_Choice):
    ABORT = "abort"  # the first invalid value fails the load
    SKIP = "skip"  # rows with invalid values are left out and counted as rejected


class VacuumPolicy(_Choice):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class LoadOptions:
    """How to read, validate and apply a load. Invalid values raise LoadInputError naming the valid ones."""

    mode: Mode | str = Mode.MERGE
    key_column: str = KEY_COLUMN  # the source column holding the entity key
    hash_keys: bool = False  # key column holds natural ids: hash them with SHA-256
    on_duplicate: OnDuplicate | str = OnDuplicate.LAST
    nan: NanPolicy | str = NanPolicy.REJECT
    on_invalid: OnInvalid | str = OnInvalid.ABORT
    partial: bool = False  # merge only the feature columns present (others keep their values)
    ignore_extra: bool = False  # skip source columns the table does not have
    strategy: ApplyStrategy | str = ApplyStrategy.AUTO
    vacuum: VacuumPolicy | str = VacuumPolicy.AUTO
    updated_at: int | None = None  # epoch seconds for rows without one; default: the load's start time
    format: str | None = None  # parquet, csv or arrow; default: from the file extension
    batch_rows: int = BATCH_ROWS
    lock_timeout: float = 10.0  # seconds to wait for the table lock (rebuild and swap)

    def __post_init__(self) -> None:
        for name, cls in (("mode", Mode), ("on_duplicate", OnDuplicate), ("nan", NanPolicy), ("on_invalid", OnInvalid),
                          ("strategy", ApplyStrategy), ("vacuum", VacuumPolicy)):
            object.__setattr__(self, name, cls.parse(getattr(self, name), name))
        if self.format is not None and self.format not in _READERS:
            raise LoadInputError(f"invalid format={self.format!r}; valid: {', '.join(_READERS)}")
        if self.partial and (self.mode is Mode.REPLACE or self.strategy is ApplyStrategy.REBUILD):
            raise LoadInputError("partial=True merges some columns into existing rows: it needs mode='merge' "
                                 "and strategy 'auto' or 'upsert'")
        if self.batch_rows < 1 or self.lock_timeout <= 0:
            raise LoadInputError("batch_rows and lock_timeout must be positive")


def load_options(options: LoadOptions | None = None, **changes: Any) -> LoadOptions:
    """``options`` with ``changes`` applied; unknown option names raise LoadInputError naming the valid ones."""
    valid = [f.name for f in dataclasses.fields(LoadOptions)]
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise LoadInputError(f"unknown load option(s): {', '.join(unknown)}; valid: {', '.join(valid)}")
    return dataclasses.replace(options or LoadOptions(), **changes)


# -- progress and summary -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadProgress:
    """Reported after every batch and at every phase change."""

    phase: str  # reading, deduplicating, merging, copying untouched rows, indexing, analyzing, swapping, ...
    rows: int  # rows read so far (all sources)
    total: int | None  # rows in all sources, when the formats say so upfront (Parquet, Arrow)
    source: str | None = None


ProgressCallback = Callable[[LoadProgress], None]


@dataclass
class LoadSummary:
    table: str
    mode: str
    strategy: str = ""  # upsert, rebuild or replace
    sources: list[str] = field(default_factory=list)
    rows_read: int = 0
    rejected: int = 0  # rows left out for invalid values (on_invalid="skip")
    superseded: int = 0  # rows dropped because a later row had the same key (on_duplicate="last")
    inserted: int = 0
    updated: int = 0
    rows_before: int | None = None  # exact for rebuild and replace
    rows_after: int | None = None
    seconds: float = 0.0  # from opening the sources to COMMIT
    maintenance: str = ""
    maintenance_seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # why rows were rejected (first few)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"{self.mode} into {self.table} ({self.strategy}) from {len(self.sources)} source(s) in {self.seconds:.2f}s: "
            f"{self.rows_per_second:,.0f} rows/s",
            f"rows read {self.rows_read:,} | inserted {self.inserted:,} | updated {self.updated:,} | "
            f"rejected {self.rejected:,} | duplicates superseded {self.superseded:,}",
        ]
        if self.rows_before is not None and self.rows_after is not None:
            lines.append(f"table rows {self.rows_before:,} -> {self.rows_after:,}")
        lines += [f"rejected: {e}" for e in self.examples]
        lines += [f"note: {n}" for n in self.notes]
        if self.maintenance:
            lines.append(f"after the load: {self.maintenance} ({self.maintenance_seconds:.2f}s)")
        return "\n".join(lines)


# -- sources --------------------------------------------------------------------------------------


def _arrow_error(name: str, exc: BaseException, what: str) -> LoadInputError:
    return LoadInputError(f"{name}: {what}: {str(exc).strip() or type(exc).__name__}", source=name)


class _Source:
    """One input: its column names, row count if known upfront, and a batch stream."""

    name: str
    names: list[str]
    types: dict[str, pa.DataType] | None  # None when types are chosen at read time (CSV)
    rows: int | None

    def batches(self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError


class _ParquetSource(_Source):
    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.name = str(path)
        try:
            # Pages written with CRCs are verified: a corrupt page fails the load instead of loading garbage.
            self.file = pq.ParquetFile(path, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(self.name, exc, "not a readable Parquet file") from None
        schema = self.file.schema_arrow
        self.names, self.types, self.rows = schema.names, dict(zip(schema.names, schema.types)), self.file.metadata.num_rows

    def batches(self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pa.RecordBatch]:
        return self.file.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=True)


class _IpcSource(_Source):
    def __init__(self, path: Path):
        self.name = str(path)
        try:  # memory-mapped: counting the rows upfront reads only batch headers
            self.reader: Any = pa.ipc.open_file(pa.memory_map(str(path)))
            self.rows = sum(self.reader.get_batch(i).num_rows for i in range(self.reader.num_record_batches))
        except (pa.ArrowException, OSError):
            try:  # the streaming IPC format has no footer
                self.reader, self.rows = pa.ipc.open_stream(pa.memory_map(str(path))), None
            except (pa.ArrowException, OSError) as exc:
                raise _arrow_error(self.name, exc, "not a readable Arrow IPC file") from None
        schema = self.reader.schema
        self.names, self.types = schema.names, dict(zip(schema.names, schema.types))

    def batches(self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pa.RecordBatch]:
        if isinstance(self.reader, pa.ipc.RecordBatchFileReader):
            stream: Iterable[pa.RecordBatch] = (self.reader.get_batch(i) for i in range(self.reader.num_record_batches))
        else:
            stream = self.reader
        for batch in stream:
            yield from pa.Table.from_batches([batch.select(list(columns))]).to_batches(max_chunksize=batch_rows)


class _CsvSource(_Source):
    """CSV with a header row. Columns are parsed straight to the types the table needs; only
    empty fields, NULL, null and \\N are nulls (so "NaN" stays a NaN for the NaN policy)."""

    NULLS = ["", "NULL", "null", "\\N"]

    def __init__(self, path: Path):
        import pyarrow.csv as pcsv

        self.name, self.path, self.types, self.rows = str(path), path, None, None
        try:
            reader = pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(null_values=self.NULLS))
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(self.name, exc, "not a readable CSV file (a header row is required)") from None
        self.names = reader.schema.names
        reader.close()

    def batches(self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(column_types=dict(types), include_columns=list(columns), null_values=self.NULLS,
                                      strings_can_be_null=True, quoted_strings_can_be_null=False)
        reader = pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=8 << 20), convert_options=convert)
        for batch in reader:
            yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=batch_rows)

    def diagnose(self, columns: Sequence[str], types: Mapping[str, pa.DataType]) -> LoadInputError | None:
        """After a CSV conversion error (which pyarrow reports without a row): find the first bad value."""
        import pyarrow.csv as pcsv

        as_text = {c: pa.string() for c in columns}
        convert = pcsv.ConvertOptions(column_types=as_text, include_columns=list(columns), null_values=self.NULLS,
                                      strings_can_be_null=True)
        start = 0
        for batch in pcsv.open_csv(self.path, convert_options=convert):
            for name in columns:
                target = types[name]
                if target == pa.string():
                    continue
                col = batch.column(name)
                try:
                    pc.cast(col, target)
                    continue
                except pa.ArrowInvalid:
                    pass
                lo, hi = 0, len(col)  # the first failing row: the shortest failing prefix
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    try:
                        pc.cast(col.slice(lo, mid - lo), target)
                        lo = mid
                    except pa.ArrowInvalid:
                        hi = mid
                row = start + lo + 1
                return LoadInputError(f"{self.name}: row {row}, column {name!r}: {col[lo].as_py()!r} is not a valid "
                                      f"{_CSV_KIND[str(target)]}", source=self.name, column=name, row=row)
            start += batch.num_rows
        return None


_CSV_KIND = {"double": "number", "int64": "integer", "bool": "boolean (true/false/1/0)"}


class _ArrowSource(_Source):
    """An in-memory table, record batch, batch reader or iterable of batches."""

    def __init__(self, name: str, schema: pa.Schema, stream: Iterable[pa.RecordBatch], rows: int | None):
        self.name, self.names, self.types, self.rows = name, schema.names, dict(zip(schema.names, schema.types)), rows
        self.stream = stream

    def batches(self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int) -> Iterator[pa.RecordBatch]:
        for batch in self.stream:
            yield from pa.Table.from_batches([batch.select(list(columns))]).to_batches(max_chunksize=batch_rows)


_READERS: dict[str, Callable[[Path], _Source]] = {"parquet": _ParquetSource, "csv": _CsvSource, "arrow": _IpcSource}
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv", ".arrow": "arrow",
               ".feather": "arrow", ".ipc": "arrow", ".arrows": "arrow"}


def _file_source(path: Path, fmt: str | None) -> _Source:
    name = str(path)
    if fmt is None:
        suffixes = [s.lower() for s in path.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".lz4") and len(suffixes) > 1:
            suffixes.pop()  # data.csv.gz: pyarrow decompresses CSV by extension
        fmt = _EXTENSIONS.get(suffixes[-1] if suffixes else "")
        if fmt is None:
            raise LoadInputError(f"{name}: cannot tell the format from the extension; "
                                 f"use one of {', '.join(sorted(_EXTENSIONS))} or pass format= (--format)", source=name)
    if not path.is_file():
        raise LoadInputError(f"{name}: no such file", source=name)
    if path.stat().st_size == 0:
        raise LoadInputError(f"{name}: empty file (0 bytes)", source=name)
    return _READERS[fmt](path)


def _frame_source(data: Any, name: str) -> _Source | None:
    """pyarrow objects, pandas and polars frames, or anything with the Arrow C stream interface."""
    if isinstance(data, pa.Table):
        return _ArrowSource(name, data.schema, data.to_batches(), data.num_rows)
    if isinstance(data, pa.RecordBatch):
        return _ArrowSource(name, data.schema, [data], data.num_rows)
    if isinstance(data, pa.RecordBatchReader):
        return _ArrowSource(name, data.schema, data, None)
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and type(data).__name__ == "DataFrame":
        return _frame_source(pa.Table.from_pandas(data, preserve_index=False), name)
    if module == "polars" and type(data).__name__ == "DataFrame":
        return _frame_source(data.to_arrow(), name)
    if hasattr(data, "__arrow_c_stream__"):
        return _frame_source(pa.RecordBatchReader.from_stream(data), name)
    return None


def _batch_iterable_source(data: Iterable[Any], name: str) -> _Source:
    it = iter(data)
    try:
        first = next(it)
    except StopIteration:
        raise LoadInputError(f"{name}: no record batches", source=name) from None
    if not isinstance(first, pa.RecordBatch):
        raise LoadInputError(f"{name}: expected pyarrow RecordBatches, got {type(first).__name__}", source=name)

    def stream() -> Iterator[pa.RecordBatch]:
        yield first
        for batch in it:
            if not isinstance(batch, pa.RecordBatch) or not batch.schema.equals(first.schema):
                raise LoadInputError(f"{name}: every item must be a RecordBatch with the first one's schema", source=name)
            yield batch

    return _ArrowSource(name, first.schema, stream(), None)


def open_sources(data: Any, fmt: str | None = None) -> list[_Source]:
    """Sources for ``data``: a path, a list of paths or frames, a pyarrow Table/RecordBatch/RecordBatchReader,
    a pandas or polars DataFrame, or an iterable of RecordBatches. Raises LoadInputError for what it cannot read."""
    if isinstance(data, (list, tuple)):  # several sources, unless it is a list of record batches
        if not data:
            raise LoadInputError("nothing to load: the list of sources is empty")
        if not all(isinstance(d, pa.RecordBatch) for d in data):
            return [_open_one(d, fmt, f"data[{i}]") for i, d in enumerate(data)]
    return [_open_one(data, fmt, f"<{type(data).__name__}>")]


def _open_one(data: Any, fmt: str | None, name: str) -> _Source:
    if isinstance(data, (str, os.PathLike)):
        return _file_source(Path(data), fmt)
    source = _frame_source(data, name)
    if source is not None:
        return source
    if isinstance(data, Iterable) and not isinstance(data, (bytes, str, Mapping)):
        return _batch_iterable_source(data, name)
    raise LoadInputError(f"cannot load a {type(data).__name__}: give file paths (Parquet, CSV, Arrow), a pyarrow "
                         "Table/RecordBatch/RecordBatchReader, a pandas or polars DataFrame, or an iterable of RecordBatches")


# -- columns --------------------------------------------------------------------------------------


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    for kind, test in (("null", pa.types.is_null), ("boolean", pa.types.is_boolean), ("integer", pa.types.is_integer),
                       ("floating", pa.types.is_floating), ("decimal", pa.types.is_decimal),
                       ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
                       ("fixed binary", pa.types.is_fixed_size_binary),
                       ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x))):
        if test(t):
            return kind
    return "other"


_NUMERIC = {"null", "integer", "floating", "decimal"}
_ACCEPTS = {"real": _NUMERIC, "double precision": _NUMERIC, "smallint": _NUMERIC, "integer": _NUMERIC,
            "bigint": _NUMERIC, "boolean": {"null", "boolean"}}
_CSV_TYPES = {"real": pa.float64(), "double precision": pa.float64(), "smallint": pa.int64(), "integer": pa.int64(),
              "bigint": pa.int64(), "boolean": pa.bool_()}


@dataclass(frozen=True)
class _Columns:
    """Which source columns feed which table columns. Staging order: hashkey, features, [updated_at], seq."""

    key: str
    features: tuple[Feature, ...]
    updated_at: bool

    @property
    def source_columns(self) -> list[str]:
        return [self.key, *(f.name for f in self.features), *([UPDATED_AT] if self.updated_at else [])]

    @property
    def csv_types(self) -> dict[str, pa.DataType]:
        types = {self.key: pa.string(), **{f.name: _CSV_TYPES[f.type.name] for f in self.features}}
        return {**types, UPDATED_AT: pa.int64()} if self.updated_at else types


def _plan_columns(source: _Source, table: FeatureTable, options: LoadOptions) -> _Columns:
    """Match a source's columns to the table. Raises LoadInputError for missing, extra, duplicate or mistyped columns."""
    name, names = source.name, source.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LoadInputError(f"{name}: duplicate column name(s) {', '.join(dupes)}", source=name)
    valid = [options.key_column, *table.feature_names, UPDATED_AT]
    if options.key_column not in names:
        raise LoadInputError(f"{name}: no key column {options.key_column!r} (columns: {', '.join(names) or 'none'}); "
                             "name the key column with key_column= (--key-column)", source=name, column=options.key_column)
    features = tuple(f for f in table.features if f.name in names)
    missing = [f.name for f in table.features if f.name not in names]
    if missing and not options.partial:
        raise LoadInputError(f"{name}: missing column(s) {', '.join(missing)}; table {table.name} has "
                             f"{', '.join(table.feature_names)} (partial=True / --partial merges only the columns present)",
                             source=name, column=missing[0])
    if not features and UPDATED_AT not in names:
        raise LoadInputError(f"{name}: no feature column of table {table.name} ({', '.join(table.feature_names)})", source=name)
    extra = [n for n in names if n not in valid]
    if extra and not options.ignore_extra:
        raise LoadInputError(f"{name}: unexpected column(s) {', '.join(extra)}; valid: {', '.join(valid)} "
                             "(ignore_extra=True / --ignore-extra skips them)", source=name, column=extra[0])
    if source.types is not None:
        _check_key_type(source, options)
        for f in features:
            kind = _kind(source.types[f.name])
            if kind not in _ACCEPTS[f.type.name]:
                raise LoadInputError(f"{name}: column {f.name!r} is {source.types[f.name]}, which cannot load into "
                                     f"{f.type.name} (accepted: {', '.join(sorted(_ACCEPTS[f.type.name]))})",
                                     source=name, column=f.name)
        if UPDATED_AT in names and _kind(source.types[UPDATED_AT]) not in _NUMERIC:
            raise LoadInputError(f"{name}: column {UPDATED_AT!r} is {source.types[UPDATED_AT]}; it must hold integer "
                                 "epoch seconds", source=name, column=UPDATED_AT)
    return _Columns(options.key_column, features, UPDATED_AT in names)


def _check_key_type(source: _Source, options: LoadOptions) -> None:
    assert source.types is not None
    t = source.types[options.key_column]
    kind = _kind(t)
    ok = kind in ("string", "binary", "fixed binary") or (options.hash_keys and kind == "integer")
    if kind == "fixed binary" and not options.hash_keys and t.byte_width != KEY_LENGTH:
        ok = False
    if not ok:
        raise LoadInputError(
            f"{source.name}: key column {options.key_column!r} is {t}; keys must be {KEY_LENGTH}-byte binary, "
            f"{2 * KEY_LENGTH} hex characters, or natural ids (string, integer, binary) with hash_keys=True (--hash-keys)",
            source=source.name, column=options.key_column)


# -- values: arrow columns to numpy, with every invalid row found ---------------------------------


@dataclass
class _Problem:
    """Rows of one batch (``mask``) with one kind of invalid value; ``reason(i)`` explains row i."""

    column: str
    mask: np.ndarray
    reason: Callable[[int], str]


_NP_TYPE = {"real": np.float32, "double precision": np.float64, "smallint": np.int16, "integer": np.int32,
            "bigint": np.int64, "boolean": np.bool_}
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _nulls(arr: pa.Array) -> np.ndarray | None:
    return arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None


def _decoded(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _float_column(arr: pa.Array, column: str, type_name: str, nan: NanPolicy) -> tuple[np.ndarray, np.ndarray | None, list[_Problem]]:
    nulls = _nulls(arr)
    if type_name == "real" and arr.type == pa.float32():
        values = arr.to_numpy(zero_copy_only=False)
    else:
        values = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    problems: list[_Problem] = []
    isnan = np.isnan(values)
    if nulls is not None:
        isnan &= ~nulls
    if isnan.any():
        if nan is NanPolicy.NULL:
            nulls = isnan if nulls is None else nulls | isnan
        else:
            problems.append(_Problem(column, isnan, lambda i: "NaN is not allowed (nan='null' / --nan null loads NaN as NULL)"))
    if type_name == "real" and values.dtype != np.float32:
        with np.errstate(over="ignore"):
            narrowed = values.astype(np.float32)
        over = np.isinf(narrowed) & np.isfinite(values)
        if over.any():
            wide = values
            problems.append(_Problem(column, over, lambda i: f"{float(wide[i])!r} is out of range for real (at most ±{FLOAT32_MAX:.7g})"))
        values = narrowed
    return values, nulls, problems


def _int_column(arr: pa.Array, column: str, type_name: str, nan: NanPolicy) -> tuple[np.ndarray, np.ndarray | None, list[_Problem]]:
    lo, hi = INT_RANGE[type_name]
    nulls = _nulls(arr)
    problems: list[_Problem] = []
    if pa.types.is_integer(arr.type) or pa.types.is_null(arr.type):
        values = (arr.fill_null(0) if nulls is not None else arr).to_numpy(zero_copy_only=False)
        if pa.types.is_null(arr.type):
            values = np.zeros(len(arr), dtype=np.int64)
        info = np.iinfo(values.dtype)
        if info.min < lo or info.max > hi:
            bad = values > hi if info.min >= 0 else (values < lo) | (values > hi)
            if bad.any():
                problems.append(_Problem(column, bad, lambda i: f"{int(values[i])} is out of range for {type_name} ({lo}..{hi})"))
        return values.astype(_NP_TYPE[type_name], copy=False), nulls, problems
    floats = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    isnan = np.isnan(floats)
    if nulls is not None:
        isnan &= ~nulls
    if isnan.any():
        if nan is NanPolicy.NULL:
            nulls = isnan if nulls is None else nulls | isnan
        else:
            problems.append(_Problem(column, isnan, lambda i: "NaN is not allowed (nan='null' / --nan null loads NaN as NULL)"))
    finite = np.isfinite(floats)
    fraction = finite & (floats != np.trunc(np.where(finite, floats, 0)))
    if fraction.any():
        problems.append(_Problem(column, fraction, lambda i: f"{float(floats[i])!r} is not an integer ({type_name} column)"))
    outside = np.isinf(floats) | (finite & ((floats < lo) | (floats >= hi + 1.0)))
    if outside.any():
        problems.append(_Problem(column, outside, lambda i: f"{float(floats[i])!r} is out of range for {type_name} ({lo}..{hi})"))
    ok = finite & ~fraction & ~outside
    return np.where(ok, floats, 0).astype(_NP_TYPE[type_name]), nulls, problems


def _bool_column(arr: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray | None, list[_Problem]]:
    nulls = _nulls(arr)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=np.bool_), nulls, []
    return (arr.fill_null(False) if nulls is not None else arr).to_numpy(zero_copy_only=False), nulls, []


def _feature_column(arr: pa.Array, feature: Feature, nan: NanPolicy) -> tuple[np.ndarray, np.ndarray | None, list[_Problem]]:
    arr = _decoded(arr)
    kind = _kind(arr.type)
    if kind not in _ACCEPTS[feature.type.name]:  # CSV and iterables are typed only now
        raise LoadInputError(f"column {feature.name!r} is {arr.type}, which cannot load into {feature.type.name}",
                             column=feature.name)
    if feature.type.name in ("real", "double precision"):
        return _float_column(arr, feature.name, feature.type.name, nan)
    if feature.type.name == "boolean":
        return _bool_column(arr, feature.name)
    return _int_column(arr, feature.name, feature.type.name, nan)


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n + 1) and data bytes of a (large_)binary/(large_)string array, without copying."""
    wide = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
    dtype = np.dtype(np.int64 if wide else np.int32)
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=dtype, count=len(arr) + 1, offset=arr.offset * dtype.itemsize)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _fixed_rows(offsets: np.ndarray, data: np.ndarray, width: int, ok: np.ndarray) -> np.ndarray:
    """(n, width) bytes of each value: one slice when every value is ``width`` long, else a gather
    (rows not ``ok`` get zeros; they are invalid anyway)."""
    n = len(offsets) - 1
    start = int(offsets[0]) if n else 0
    if ok.all() and (n == 0 or int(offsets[-1]) - start == n * width):
        return data[start : start + n * width].reshape(n, width)
    padded = np.concatenate([data, np.zeros(width, np.uint8)])
    starts = np.where(ok, offsets[:-1], len(data))
    return padded[starts[:, None] + np.arange(width)]


def _key_column(arr: pa.Array, column: str, hash_keys: bool) -> tuple[np.ndarray, list[_Problem]]:
    """Keys as an (n, 32) uint8 array, and the rows whose keys are invalid."""
    arr = _decoded(arr)
    n, kind = len(arr), _kind(arr.type)
    problems: list[_Problem] = []
    valid = ~_nulls(arr) if arr.null_count else np.ones(n, dtype=bool)
    if arr.null_count:
        problems.append(_Problem(column, ~valid, lambda i: "key is null"))
    if hash_keys:
        if kind not in ("string", "binary", "fixed binary", "integer"):
            raise LoadInputError(f"key column {column!r} is {arr.type}; hash_keys hashes strings, integers or binary",
                                 column=column)
        items = arr.to_pylist()
        if kind == "string":
            raw = [b"" if v is None else v.encode() for v in items]
        elif kind == "integer":
            raw = [b"" if v is None else str(v).encode() for v in items]
        else:
            raw = [b"" if v is None else v for v in items]
        digests = b"".join([hashlib.sha256(v).digest() for v in raw])
        return np.frombuffer(digests, dtype=np.uint8).reshape(n, KEY_LENGTH), problems
    if kind == "fixed binary":
        if arr.type.byte_width != KEY_LENGTH:
            raise LoadInputError(f"key column {column!r} holds {arr.type.byte_width}-byte values; keys must be {KEY_LENGTH} "
                                 "bytes (or use hash_keys=True / --hash-keys)", column=column)
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        return data[arr.offset * KEY_LENGTH : (arr.offset + n) * KEY_LENGTH].reshape(n, KEY_LENGTH), problems
    if kind not in ("binary", "string"):
        raise LoadInputError(f"key column {column!r} is {arr.type}; keys must be {KEY_LENGTH}-byte binary or "
                             f"{2 * KEY_LENGTH} hex characters (or natural ids with hash_keys=True / --hash-keys)", column=column)
    offsets, data = _binary_parts(arr)
    lengths = np.diff(offsets)
    width = KEY_LENGTH if kind == "binary" else 2 * KEY_LENGTH
    bad_length = valid & (lengths != width)
    if bad_length.any():
        if kind == "binary":
            problems.append(_Problem(column, bad_length, lambda i: f"key is {lengths[i]} bytes; keys must be {KEY_LENGTH} "
                                     "bytes (or natural ids with hash_keys=True / --hash-keys)"))
        else:
            problems.append(_Problem(column, bad_length, lambda i: f"key {_shown(arr[i].as_py())} is {len(arr[i].as_py())} "
                                     f"characters; hex keys are {2 * KEY_LENGTH} (natural ids need hash_keys=True / --hash-keys)"))
    ok = valid & ~bad_length
    rows = _fixed_rows(offsets, data, width, ok)
    if kind == "binary":
        return rows, problems
    nibbles = _HEX[rows]
    not_hex = ok & (nibbles == 255).any(axis=1)
    if not_hex.any():
        problems.append(_Problem(column, not_hex, lambda i: f"key {_shown(arr[i].as_py())} is not hexadecimal"))
    return (nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 0x0F), problems


# -- binary COPY ----------------------------------------------------------------------------------

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"


def encode_copy_rows(columns: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> memoryview:
    """Rows in PostgreSQL's binary COPY format (without header/trailer), built with numpy.

    ``columns`` are (values, nulls): fixed-width numpy values (``(n, w)`` uint8 for raw bytes such
    as keys) and a boolean NULL mask or None. Every row is first laid out at full width in one
    structured array (field count, then length + big-endian value per column); NULL fields get
    length -1, and their value bytes are then squeezed out with one boolean mask over the buffer.
    """
    n = len(columns[0][0])
    fields: list[Any] = [("n", ">i2")]
    for j, (values, _) in enumerate(columns):
        value = (np.uint8, (values.shape[1],)) if values.ndim == 2 else (values.dtype.newbyteorder(">"),)
        fields += [(f"l{j}", ">i4"), (f"v{j}", *value)]
    dtype = np.dtype(fields)
    template = np.zeros((), dtype)  # the field count and the lengths are the same in every row
    template["n"] = len(columns)
    for j in range(len(columns)):
        template[f"l{j}"] = dtype.fields[f"v{j}"][0].itemsize
    rows = np.empty(n, dtype)
    rows[...] = template
    for j, (values, nulls) in enumerate(columns):
        # Byte-swapping into a contiguous array first is faster than a converting strided copy.
        rows[f"v{j}"] = values if values.ndim == 2 else values.astype(dtype.fields[f"v{j}"][0])
        if nulls is not None:
            rows[f"l{j}"][nulls] = -1
    raw = rows.view(np.uint8)
    if all(nulls is None for _, nulls in columns):
        return memoryview(raw)
    keep = np.ones((n, dtype.itemsize), dtype=bool)
    for j, (_, nulls) in enumerate(columns):
        if nulls is not None:
            field, start = dtype.fields[f"v{j}"][:2]
            keep[nulls, start : start + field.itemsize] = False
    return memoryview(raw.reshape(n, dtype.itemsize)[keep])


# -- one batch: validate, encode ------------------------------------------------------------------


@dataclass
class _Staged:
    payload: memoryview
    keys: np.ndarray  # (m, 32) uint8 of the rows staged
    seqs: np.ndarray  # their ordinals across the whole load
    rejected: int
    examples: list[str]


def _stage_batch(batch: pa.RecordBatch, columns: _Columns, options: LoadOptions, updated_at: int,
                 source: str, first_row: int, seq0: int) -> _Staged:
    """Validate and encode one batch. ``first_row`` is the 1-based row number of its first row in ``source``.

    Raises LoadInputError for the first invalid row (on_invalid="abort"); with "skip", invalid
    rows are left out and counted.
    """
    n = batch.num_rows
    try:
        keys, problems = _key_column(batch.column(columns.key), columns.key, bool(options.hash_keys))
        encoded: list[tuple[np.ndarray, np.ndarray | None]] = []
        for feature in columns.features:
            values, nulls, found = _feature_column(batch.column(feature.name), feature, options.nan)  # type: ignore[arg-type]
            encoded.append((values, nulls))
            problems += found
        if columns.updated_at:
            stamps, nulls, found = _feature_column(batch.column(UPDATED_AT), UPDATED_AT_FEATURE, NanPolicy.REJECT)
            if nulls is not None:
                stamps = np.where(nulls, updated_at, stamps)
            encoded.append((stamps, None))
            problems += found
    except LoadInputError as exc:
        raise LoadInputError(f"{source}: {exc.args[0]}", source=source, column=exc.column) from None
    seqs = np.arange(seq0, seq0 + n, dtype=np.int64)
    rejected, examples = 0, []
    if problems:
        bad = np.zeros(n, dtype=bool)
        for p in problems:
            bad |= p.mask
        if options.on_invalid is OnInvalid.ABORT:
            first = min(problems, key=lambda p: int(np.argmax(p.mask)))
            i = int(np.argmax(first.mask))
            raise LoadInputError(f"{source}: row {first_row + i}, column {first.column!r}: {first.reason(i)}",
                                 source=source, column=first.column, row=first_row + i)
        for i in np.flatnonzero(bad)[:MAX_EXAMPLES]:
            p = next(p for p in problems if p.mask[i])
            examples.append(f"{source}: row {first_row + int(i)}, column {p.column!r}: {p.reason(int(i))}")
        keep = ~bad
        rejected = int(bad.sum())
        keys, seqs = keys[keep], seqs[keep]
        encoded = [(v[keep], None if m is None else m[keep]) for v, m in encoded]
    payload = encode_copy_rows([(keys, None), *encoded, (seqs, None)]) if len(seqs) else memoryview(b"")
    return _Staged(payload, keys, seqs, rejected, examples)


# -- duplicates -----------------------------------------------------------------------------------

# Odd 64-bit multipliers mixing a key's four words into one hash; equal hashes are then compared in full.
_MIX = np.array([1, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


@dataclass(frozen=True)
class _Duplicates:
    superseded: np.ndarray  # ordinals (seq) of rows that a later row with the same key replaces
    keys: int  # distinct keys seen more than once
    first: np.ndarray  # ordinals of every occurrence of the first duplicated key


def find_duplicates(keys: np.ndarray, seqs: np.ndarray) -> _Duplicates | None:
    """Keys (``(n, 32)`` uint8) seen more than once, in O(n log n) over 64-bit hashes; None if all are unique."""
    if len(keys) < 2:
        return None
    words = np.ascontiguousarray(keys).view(np.uint64)
    hashes = np.bitwise_xor.reduce(words * _MIX, axis=1)
    ordered = np.sort(hashes)
    if not (ordered[1:] == ordered[:-1]).any():  # the common case, at half the cost of an argsort
        return None
    order = np.argsort(hashes, kind="stable")
    same = hashes[order][1:] == hashes[order][:-1]
    if not same.any():
        return None
    candidates = order[np.flatnonzero(np.r_[same, False] | np.r_[False, same])]
    groups, inverse, counts = np.unique(words[candidates], axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    repeated = counts[inverse] > 1
    if not repeated.any():
        return None  # hash collisions only
    rows, group = candidates[repeated], inverse[repeated]
    by_group = np.lexsort((seqs[rows], group))  # each key's rows in load order; the last one wins
    rows, group = rows[by_group], group[by_group]
    superseded = seqs[rows][:-1][group[1:] == group[:-1]]
    first_group = group[np.argmin(seqs[rows])]
    return _Duplicates(superseded, int((counts > 1).sum()), np.sort(seqs[rows[group == first_group]]))


# -- catalog and SQL ------------------------------------------------------------------------------

_CATALOG = sql.SQL("""
SELECT c.reltuples::float8, c.relpersistence::text, pg_get_userbyid(c.relowner)::text, current_user::text,
  c.reloptions::text[],
  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT conname::text FROM pg_constraint WHERE conrelid = c.oid AND contype = 'p'),
  (SELECT array_agg(ic.relname::text) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND NOT i.indisprimary),
  (SELECT array_agg(g.grantee || ',' || g.privilege_type || ',' || g.is_grantable::text)
    FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END AS grantee,
                 a.privilege_type, a.is_grantable
          FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) g),
  ARRAY(
    SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal
    UNION SELECT 'view ' || r.ev_class::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = c.oid AND r.ev_class <> c.oid
    UNION SELECT 'foreign key ' || conname || ' of ' || conrelid::regclass::text FROM pg_constraint
      WHERE confrelid = c.oid AND contype = 'f'
    UNION SELECT 'publication ' || p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
      WHERE pr.prrelid = c.oid
    UNION SELECT 'row-level security policy ' || polname FROM pg_policy WHERE polrelid = c.oid
    UNION SELECT 'inheritance' FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid)
FROM pg_class c WHERE c.oid = to_regclass(%s)
""")

_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})


@dataclass(frozen=True)
class _Catalog:
    """What a load needs to know about the live table, read in one query."""

    reltuples: float  # -1: never analyzed
    persistence: str
    owner: str
    current_user: str
    reloptions: tuple[str, ...]
    columns: dict[str, str]
    primary_key: str | None
    indexes: tuple[str, ...]  # besides the primary key
    grants: tuple[tuple[str, str, bool], ...]
    dependents: tuple[str, ...]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "_Catalog":
        grants = tuple((g, p, s == "true") for g, p, s in (item.rsplit(",", 2) for item in row[9] or ()))
        return cls(row[0], row[1], row[2], row[3], tuple(row[4] or ()), dict(zip(row[5] or (), row[6] or ())),
                   row[7], tuple(row[8] or ()), grants, tuple(row[10] or ()))

    def drift(self, table: FeatureTable) -> list[str]:
        """How the live table differs from the definition, in what a load relies on."""
        expected = {KEY_COLUMN: "bytea", **{f.name: f.type.name for f in table.features}, UPDATED_AT: "integer"}
        problems = [f"column {c} is {self.columns.get(c, 'missing')}, definition says {t}"
                    for c, t in expected.items() if self.columns.get(c) != t]
        problems += [f"column {c} is not in the definition" for c in self.columns.keys() - expected.keys()]
        if self.primary_key is None:
            problems.append(f"no primary key (definition: {KEY_COLUMN})")
        if table.covering_index and covering_index_name(table) not in self.indexes:
            problems.append(f"covering index {covering_index_name(table)} is missing")
        return problems

    def swap_blockers(self, table: FeatureTable) -> list[str]:
        """What a swap would lose or break: the new table only gets what schema.py creates, grants and owner."""
        own = {covering_index_name(table)} if table.covering_index else set()
        return [*self.dependents, *(f"index {i}" for i in self.indexes if i not in own)]


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _setting(name: str, value: str) -> tuple[sql.Composable, tuple[Any, ...]]:
    return sql.SQL("SELECT set_config(%s, %s, true)"), (name, value)


def _stage_ddl(stage: sql.Identifier, columns: _Columns) -> sql.Composed:
    cols = [sql.SQL("{} bytea").format(_ident(KEY_COLUMN))]
    cols += [sql.SQL("{} {}").format(_ident(f.name), sql.SQL(f.type.name)) for f in columns.features]
    if columns.updated_at:
        cols.append(sql.SQL("{} integer").format(_ident(UPDATED_AT)))
    cols.append(sql.SQL("seq bigint"))
    # UNLOGGED: no WAL for rows that live only for this transaction. Created inside the load's
    # transaction, it vanishes with a rollback or a dead connection.
    return sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(stage, sql.SQL(", ").join(cols))


def _table_columns(columns: _Columns) -> list[sql.Identifier]:
    return [_ident(KEY_COLUMN), *(_ident(f.name) for f in columns.features), _ident(UPDATED_AT)]


def _staged_values(columns: _Columns) -> sql.Composed:
    """The stage's columns in table order; updated_at is the load time (``%s``) unless the source has it."""
    cols: list[sql.Composable] = [_ident(KEY_COLUMN), *(_ident(f.name) for f in columns.features)]
    cols.append(_ident(UPDATED_AT) if columns.updated_at else sql.SQL("%s::integer"))
    return sql.SQL(", ").join(cols)


def upsert_sql(live: sql.Identifier, stage: sql.Identifier, columns: _Columns) -> sql.Composed:
    """Merge the stage into the live table; returns one row: (inserted, updated)."""
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in _table_columns(columns)[1:]]
    return sql.SQL(
        "WITH merged AS (INSERT INTO {live} AS t ({cols}) SELECT {values} FROM {stage} ORDER BY {key} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} RETURNING (t.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"
    ).format(live=live, cols=sql.SQL(", ").join(_table_columns(columns)), values=_staged_values(columns), stage=stage,
             key=_ident(KEY_COLUMN), sets=sql.SQL(", ").join(sets))


def _swap_sql(schema: str, table: FeatureTable, new_name: str, catalog: _Catalog, lock_timeout: float) -> list[tuple[sql.Composable, tuple[Any, ...]]]:
    """Give the new table the live one's owner and grants, then drop the live table and rename the new one
    (and its primary key and covering index) into place."""
    new = _ident(schema, new_name)
    ops: list[tuple[sql.Composable, tuple[Any, ...]]] = []
    if catalog.owner != catalog.current_user:
        ops.append((sql.SQL("ALTER TABLE {} OWNER TO {}").format(new, _ident(catalog.owner)), ()))
    for grantee, privilege, grantable in catalog.grants:
        if privilege in _PRIVILEGES:
            to = sql.SQL("PUBLIC") if grantee == "PUBLIC" else _ident(grantee)
            ops.append((sql.SQL("GRANT {} ON {} TO {}{}").format(sql.SQL(privilege), new, to,
                                                                  sql.SQL(" WITH GRANT OPTION" if grantable else "")), ()))
    ops.append(_setting("lock_timeout", f"{int(lock_timeout * 1000)}ms"))
    ops.append((sql.SQL("DROP TABLE {}").format(qualified(schema, table)), ()))
    ops.append((sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, _ident(table.name)), ()))
    ops.append((sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
        qualified(schema, table), _ident(f"{new_name}_pkey"), _ident(catalog.primary_key or f"{table.name}_pkey")), ()))
    if table.covering_index:
        ops.append((sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            _ident(schema, covering_index_name(dataclasses.replace(table, name=new_name))),
            _ident(covering_index_name(table))), ()))
    return ops


def _new_table_sql(schema: str, table: FeatureTable, new_name: str, catalog: _Catalog) -> list[sql.Composable]:
    """The new table, shaped like the live one: columns, defaults, NOT NULL and CHECK constraints,
    storage, persistence and storage parameters. Its primary key is added after the rows are in."""
    unlogged = sql.SQL("UNLOGGED ") if catalog.persistence == "u" else sql.SQL("")
    stmts: list[sql.Composable] = [sql.SQL(
        "CREATE {}TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS)"
    ).format(unlogged, _ident(schema, new_name), qualified(schema, table))]
    if catalog.reloptions:
        opts = [sql.SQL("{} = {}").format(_ident(*k.split(".")), sql.Literal(v))  # e.g. toast.autovacuum_enabled
                for k, v in (o.split("=", 1) for o in catalog.reloptions)]
        stmts.append(sql.SQL("ALTER TABLE {} SET ({})").format(_ident(schema, new_name), sql.SQL(", ").join(opts)))
    return stmts


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One statement for a driver to run; ``fetch``: send back the rows, else the rowcount."""

    query: sql.Composable
    params: tuple[Any, ...] = ()
    fetch: bool = False


@dataclass(frozen=True)
class _Copy:
    """A COPY FROM STDIN fed by ``chunks`` (CPU work: drivers may run ``next()`` off the event loop)."""

    query: sql.Composable
    chunks: Iterator[bytes | memoryview]


Plan = Generator["_Op | _Copy", Any, LoadSummary]


class _Job:
    """One load: its sources, options and running state. ``plan()`` does no database I/O: it yields
    statements and COPY streams for a driver (sync or async) to run, and returns the summary."""

    def __init__(self, registry: Registry, table: str, data: Any, options: LoadOptions, progress: ProgressCallback | None):
        self.registry, self.table, self.options, self.progress = registry, registry.table(table), options, progress
        self.started = time.perf_counter()
        self.updated_at = options.updated_at if options.updated_at is not None else int(time.time())
        self.summary = LoadSummary(qualified(registry, self.table).as_string(None), options.mode.value)  # type: ignore[union-attr]
        self.phase, self.source, self.row = "opening", None, 0
        self.keys: list[np.ndarray] = []
        self.seqs: list[np.ndarray] = []
        self.starts: list[tuple[int, str]] = []  # (first ordinal, source name)
        self.token = secrets.token_hex(4)
        self.maintenance_started: float | None = None
        self.table_rows = 0.0  # rows in the live table before the load (estimate)
        try:
            self.sources = open_sources(data, options.format)
            self.columns = self._check_sources()
        except LoadError as exc:
            exc.unchanged_table = self.summary.table
            raise
        self.summary.sources = [s.name for s in self.sources]
        self.total = None if any(s.rows is None for s in self.sources) else sum(s.rows or 0 for s in self.sources)

    def _check_sources(self) -> list[_Columns]:
        """Every source's columns, before any database work. All sources must feed the same columns."""
        columns = [_plan_columns(s, self.table, self.options) for s in self.sources]
        first = columns[0]
        for source, cols in zip(self.sources[1:], columns[1:]):
            if (cols.features, cols.updated_at) != (first.features, first.updated_at):
                raise LoadInputError(f"{source.name} has columns {', '.join(cols.source_columns[1:])} but "
                                     f"{self.sources[0].name} has {', '.join(first.source_columns[1:])}: one load takes "
                                     "one set of columns", source=source.name)
        for source in self.sources:
            if source.rows == 0:
                raise LoadInputError(self._no_rows(source.name), source=source.name)
        return columns

    def _no_rows(self, name: str) -> str:
        return f"{name}: no rows; refusing to load an empty source" + (
            " (mode='replace' would empty the table)" if self.options.mode is Mode.REPLACE else "")

    def _report(self, phase: str) -> None:
        self.phase = phase
        if self.progress:
            self.progress(LoadProgress(phase, self.summary.rows_read, self.total, self.source))

    def _where(self, seq: int) -> str:
        starts = [s for s, _ in self.starts]
        i = int(np.searchsorted(starts, seq, side="right")) - 1
        return f"{self.starts[i][1]} row {seq - self.starts[i][0] + 1}"

    # -- reading

    def _batches(self, source: _Source, columns: _Columns) -> Iterator[pa.RecordBatch]:
        stream = source.batches(columns.source_columns, columns.csv_types, self.options.batch_rows)
        while True:
            try:
                batch = next(stream)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                if isinstance(source, _CsvSource) and "conversion error" in str(exc):
                    located = source.diagnose(columns.source_columns, columns.csv_types)
                    if located is not None:
                        raise located from None
                raise LoadInputError(f"{source.name}: cannot read the rows after row {self.row:,}: {exc}",
                                     source=source.name, row=self.row + 1) from None
            yield batch

    def _chunks(self) -> Iterator[bytes | memoryview]:
        """The COPY payload, batch by batch; collects the staged keys for the duplicate check."""
        yield COPY_HEADER
        seq = 0
        summary = self.summary
        for source, columns in zip(self.sources, self.columns):
            self.source, self.row = source.name, 0
            self.starts.append((seq, source.name))
            for batch in self._batches(source, columns):
                staged = _stage_batch(batch, columns, self.options, self.updated_at, source.name, self.row + 1, seq)
                self.row += batch.num_rows
                seq += batch.num_rows
                summary.rows_read += batch.num_rows
                summary.rejected += staged.rejected
                summary.examples += staged.examples[: MAX_EXAMPLES - len(summary.examples)]
                if len(staged.seqs):
                    self.keys.append(staged.keys)
                    self.seqs.append(staged.seqs)
                    yield staged.payload
                self._report("reading")
            if self.row == 0:
                raise LoadInputError(self._no_rows(source.name), source=source.name)
        yield COPY_TRAILER

    # -- applying

    def plan(self) -> Plan:
        schema, table, options, summary = self.registry.schema, self.table, self.options, self.summary
        live = qualified(schema, table)
        for name, value in TRANSACTION_SETTINGS.items():
            yield _Op(*_setting(name, value))
        rows = yield _Op(_CATALOG, (live.as_string(None),), fetch=True)
        if not rows:  # the first load creates the table, in the same transaction
            yield _Op(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(schema)))
            yield _Op(create_table_sql(schema, table))
            if table.covering_index:
                yield _Op(covering_index_sql(schema, table))
            rows = yield _Op(_CATALOG, (live.as_string(None),), fetch=True)
        catalog = _Catalog.from_row(rows[0])
        self.table_rows = max(catalog.reltuples, 0.0)  # estimate; counted below when never analyzed
        drift = catalog.drift(table)
        if drift:
            raise SchemaDriftError(f"table {summary.table} differs from its definition: {'; '.join(drift)} "
                                   "(see `pgfeatures init`); nothing was loaded")
        columns = self.columns[0]
        stage = _ident(schema, f"_pgf_stage_{self.token}")
        yield _Op(_stage_ddl(stage, columns))
        self._report("reading")
        yield _Copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(stage), self._chunks())
        self.source = None
        unique = summary.rows_read - summary.rejected
        if unique == 0:
            raise LoadInputError(f"every row was rejected ({summary.rejected:,}); first: {summary.examples[0]}")
        self._report("deduplicating")
        duplicates = find_duplicates(np.concatenate(self.keys), np.concatenate(self.seqs))
        self.keys, self.seqs = [], []
        if duplicates is not None:
            if options.on_duplicate is OnDuplicate.REJECT:
                where = ", ".join(self._where(int(s)) for s in duplicates.first[:3])
                raise LoadInputError(f"duplicate keys: {duplicates.keys:,} key(s) appear more than once, the first at {where} "
                                     "(on_duplicate='last' / --on-duplicate last keeps the last row)",
                                     source=self.starts[0][1] if len(self.starts) == 1 else None, column=columns.key)
            yield _Op(sql.SQL("DELETE FROM {} WHERE seq = ANY(%s)").format(stage), (duplicates.superseded.tolist(),))
            summary.superseded = len(duplicates.superseded)
            unique -= summary.superseded
        summary.strategy = yield from self._choose(catalog, unique)
        if summary.strategy == "upsert":
            self._report("merging")
            params = () if columns.updated_at else (self.updated_at,)
            rows = yield _Op(upsert_sql(live, stage, columns), params, fetch=True)
            summary.inserted, summary.updated = rows[0]
        else:
            yield from self._swap(catalog, stage, unique)
        yield _Op(sql.SQL("DROP TABLE {}").format(stage))
        self._report("committing")
        return summary

    def _choose(self, catalog: _Catalog, unique: int) -> Generator[_Op, Any, str]:
        options, table = self.options, self.table
        blockers = catalog.swap_blockers(table)
        if options.mode is Mode.REPLACE or options.strategy is ApplyStrategy.REBUILD:
            if blockers:
                raise LoadError(f"cannot swap in a new {self.summary.table}: it has {', '.join(blockers)}, which a new "
                                "table would not carry over; use mode='merge' with strategy='upsert'")
            return "replace" if options.mode is Mode.REPLACE else "rebuild"
        if options.strategy is ApplyStrategy.UPSERT or options.partial:
            return "upsert"
        rows = catalog.reltuples
        if rows < 0:  # never analyzed: count
            rows = (yield _Op(sql.SQL("SELECT count(*) FROM {}").format(qualified(self.registry, table)), fetch=True))[0][0]
            self.table_rows = rows
        if unique < max(REBUILD_MIN_ROWS, REBUILD_FRACTION * rows):
            return "upsert"
        if blockers:
            self.summary.notes.append(f"upsert instead of rebuild: the table has {', '.join(blockers)}")
            return "upsert"
        return "rebuild"

    def _swap(self, catalog: _Catalog, stage: sql.Identifier, unique: int) -> Generator[_Op, Any, None]:
        schema, table, summary, options = self.registry.schema, self.table, self.summary, self.options
        live = qualified(schema, table)
        new_name = f"_pgf_new_{self.token}"
        new = _ident(schema, new_name)
        columns = self.columns[0]
        if summary.strategy == "rebuild":
            # Live writers wait from here to COMMIT: their changes would not reach the new table.
            # SHARE ROW EXCLUSIVE lets readers in but conflicts with itself, so two rebuilds of one
            # table queue up instead of deadlocking at the swap.
            yield _Op(*_setting("lock_timeout", f"{int(options.lock_timeout * 1000)}ms"))
            yield _Op(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live))
        summary.rows_before = (yield _Op(sql.SQL("SELECT count(*) FROM {}").format(live), fetch=True))[0][0]
        for stmt in _new_table_sql(schema, table, new_name, catalog):
            yield _Op(stmt)
        self._report("filling the new table")
        params = () if columns.updated_at else (self.updated_at,)
        yield _Op(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
            new, sql.SQL(", ").join(_table_columns(columns)), _staged_values(columns), stage), params)
        kept = 0
        if summary.strategy == "rebuild":
            self._report("copying untouched rows")
            all_columns = sql.SQL(", ").join([_ident(KEY_COLUMN), *(_ident(f.name) for f in table.features), _ident(UPDATED_AT)])
            kept = yield _Op(sql.SQL(
                "INSERT INTO {new} ({cols}) SELECT {cols} FROM {live} l WHERE NOT EXISTS "
                "(SELECT FROM {stage} s WHERE s.{key} = l.{key})"
            ).format(new=new, cols=all_columns, live=live, stage=stage, key=_ident(KEY_COLUMN)))
            summary.updated = summary.rows_before - kept
        summary.inserted = unique - summary.updated
        summary.rows_after = unique + kept
        self._report("indexing")
        yield _Op(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            new, _ident(f"{new_name}_pkey"), _ident(KEY_COLUMN)))
        if table.covering_index:
            yield _Op(covering_index_sql(schema, dataclasses.replace(table, name=new_name)))
        self._report("analyzing")
        yield _Op(sql.SQL("ANALYZE {}").format(new))  # statistics exist from the moment of the swap
        self._report("swapping")
        for stmt, params in _swap_sql(schema, table, new_name, catalog, options.lock_timeout):
            yield _Op(stmt, params)

    # -- after COMMIT

    def finish(self) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        self.phase = "committed"

    def maintenance(self) -> sql.Composable | None:
        """The statement to run after COMMIT (None: nothing pays); its effect goes into the summary.

        VACUUM pays when the table has a covering index (only VACUUM sets the visibility map that
        index-only scans need) or after an upsert that updated many rows (dead row versions).
        A rebuilt or replaced table was analyzed before the swap and has no dead rows.
        """
        summary, options, table = self.summary, self.options, self.table
        live = qualified(self.registry, table)
        if options.vacuum is VacuumPolicy.NEVER:
            summary.maintenance = "none (vacuum='never'); autovacuum will get to the table"
            return None
        many_updates = summary.strategy == "upsert" and summary.updated >= VACUUM_FRACTION * max(self.table_rows, 1)
        self.maintenance_started = time.perf_counter()
        if options.vacuum is VacuumPolicy.ALWAYS or table.covering_index or many_updates:
            why = ["visibility map set, so the covering index serves index-only scans"] if table.covering_index else []
            why += ["dead row versions of the updated rows reclaimed"] if many_updates else []
            summary.maintenance = "VACUUM (ANALYZE)" + (f": {'; '.join(why)}" if why else "")
            self._report("vacuuming")
            return sql.SQL("VACUUM (ANALYZE) {}").format(live)
        if summary.strategy != "upsert":
            summary.maintenance = "ANALYZE before the swap: a fresh table has no dead rows to vacuum"
            return None
        summary.maintenance = "ANALYZE: planner statistics refreshed"
        self._report("analyzing")
        return sql.SQL("ANALYZE {}").format(live)

    def maintenance_failed(self, exc: BaseException) -> None:
        self.summary.maintenance = f"{self.summary.maintenance.split(':')[0]} failed ({exc}); the load itself is committed"

    def finish_maintenance(self) -> LoadSummary:
        if self.maintenance_started is not None:
            self.summary.maintenance_seconds = time.perf_counter() - self.maintenance_started
        self._report("done")
        return self.summary

    def failure(self, exc: BaseException) -> BaseException:
        """The error to raise for ``exc`` (raised inside the load's transaction, so rolled back)."""
        where = self.phase + (f" {self.source} near row {self.row:,}" if self.source else "")
        if isinstance(exc, LoadError):
            error = exc
        elif isinstance(exc, psycopg.errors.LockNotAvailable):
            error = LoadError(f"could not lock {self.summary.table} within {self.options.lock_timeout:g}s ({where}): a "
                              "long transaction holds it (see pg_stat_activity)")
        elif isinstance(exc, psycopg.errors.QueryCanceled):
            error = LoadInterruptedError(f"load cancelled ({where}): {exc}")
        elif isinstance(exc, psycopg.OperationalError) and (exc.sqlstate or "08").startswith(("08", "57P")):
            # No SQLSTATE (the socket died), connection exceptions, or the server shutting the session down.
            if self.phase == "commit":
                error = LoadInterruptedError(f"connection lost during COMMIT of the load into {self.summary.table}: it may "
                                             f"or may not have been applied; check the table ({exc})")
                error.committed = None
                return error
            error = LoadInterruptedError(f"database connection lost ({where}): {exc}")
        elif isinstance(exc, psycopg.Error):
            error = LoadError(f"database error ({where}): {exc}")
        else:
            return exc
        error.unchanged_table = self.summary.table
        return error



# -- drivers --------------------------------------------------------------------------------------


def _check_idle(status: TransactionStatus) -> None:
    if status != TransactionStatus.IDLE:
        raise LoadError("a load runs in its own transaction: pass a connection that is not inside one")


def _step(plan: Plan, result: Any) -> _Op | _Copy | None:
    """The plan's next operation, None when it is done. (StopIteration must not cross a thread boundary:
    asyncio cannot carry it through a Future.)"""
    try:
        return plan.send(result)
    except StopIteration:
        return None


def _run(conn: psycopg.Connection, plan: Plan) -> None:
    cur = conn.cursor()
    result: Any = None
    while (op := _step(plan, result)) is not None:
        if isinstance(op, _Copy):
            # The queued writer sends on a thread: encoding the next batch overlaps sending this one.
            with cur.copy(op.query, writer=QueuedLibpqWriter(cur)) as copy:
                for chunk in op.chunks:
                    copy.write(chunk)
            result = cur.rowcount
        else:
            cur.execute(op.query, op.params or None, prepare=False)
            result = cur.fetchall() if op.fetch else cur.rowcount


def load(conn: psycopg.Connection, registry: Registry, table: str, data: Any, options: LoadOptions | None = None,
         *, progress: ProgressCallback | None = None, **changes: Any) -> LoadSummary:
    """Load ``data`` into ``table`` in one transaction, then ANALYZE/VACUUM; returns the summary.

    ``data``: file path(s) (Parquet, CSV, Arrow IPC), pyarrow Table/RecordBatch/RecordBatchReader,
    pandas/polars DataFrame, or an iterable of RecordBatches. ``changes`` are LoadOptions fields.
    Raises LoadInputError (bad input), LoadInterruptedError (connection lost or cancelled),
    LoadError (lock timeout, database error), SchemaDriftError; in every case the table is unchanged.
    """
    _check_idle(conn.info.transaction_status)
    job = _Job(registry, table, data, load_options(options, **changes), progress)
    try:
        with conn.transaction():
            _run(conn, job.plan())
            job.phase = "commit"
    except BaseException as exc:
        error = job.failure(exc)
        if error is exc:
            raise
        raise error from exc
    job.finish()
    statement = job.maintenance()
    if statement is not None:
        autocommit = conn.autocommit
        try:
            conn.autocommit = True  # VACUUM cannot run in a transaction block
            conn.execute(statement, prepare=False)
        except psycopg.Error as exc:
            job.maintenance_failed(exc)
        finally:
            conn.autocommit = autocommit
    return job.finish_maintenance()


async def _run_async(conn: psycopg.AsyncConnection, plan: Plan) -> None:
    """The async twin of ``_run``. Plan steps and COPY chunks are CPU work (reading files, numpy):
    they run on a worker thread so the event loop keeps serving while a load runs."""
    cur = conn.cursor()
    result: Any = None
    while (op := await asyncio.to_thread(_step, plan, result)) is not None:
        if isinstance(op, _Copy):
            async with cur.copy(op.query) as copy:
                async for chunk in _prefetched(op.chunks):
                    await copy.write(chunk)
            result = cur.rowcount
        else:
            await cur.execute(op.query, op.params or None, prepare=False)
            result = await cur.fetchall() if op.fetch else cur.rowcount


async def _prefetched(chunks: Iterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    """Chunks produced on a worker thread, the next one while the current one is being sent."""
    done = object()
    pending = asyncio.ensure_future(asyncio.to_thread(next, chunks, done))
    try:
        while (chunk := await pending) is not done:
            pending = asyncio.ensure_future(asyncio.to_thread(next, chunks, done))
            yield chunk  # type: ignore[misc]
    finally:
        if not pending.done():
            await asyncio.wait([pending])


async def load_async(conn: psycopg.AsyncConnection, registry: Registry, table: str, data: Any,
                     options: LoadOptions | None = None, *, progress: ProgressCallback | None = None,
                     **changes: Any) -> LoadSummary:
    """``load`` for an async connection: same plan, same guarantees."""
    _check_idle(conn.info.transaction_status)
    job = await asyncio.to_thread(_Job, registry, table, data, load_options(options, **changes), progress)
    try:
        async with conn.transaction():
            await _run_async(conn, job.plan())
            job.phase = "commit"
    except BaseException as exc:
        error = job.failure(exc)
        if error is exc:
            raise
        raise error from exc
    job.finish()
    statement = job.maintenance()
    if statement is not None:
        autocommit = conn.autocommit
        try:
            await conn.set_autocommit(True)
            await conn.execute(statement, prepare=False)
        except psycopg.Error as exc:
            job.maintenance_failed(exc)
        finally:
            await conn.set_autocommit(autocommit)
    return job.finish_maintenance()


# -- progress bar ---------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_bar(console: Any = None, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A rich progress bar (phase, rows, rows/s, elapsed) as a ``progress`` callback; None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("opening", total=None, rate="")

        def report(p: LoadProgress) -> None:
            rate = p.rows / max(time.perf_counter() - started, 1e-9)
            bar.update(task, description=p.phase, completed=p.rows, total=p.total, rate=f"{rate:,.0f} rows/s")

        yield report
