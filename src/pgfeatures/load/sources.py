"""Where a load's rows come from: Parquet, CSV and Arrow IPC files, pyarrow objects, pandas and
polars frames, iterables of RecordBatches. Each source knows its columns (and their types, when
the format says so upfront), its row count when known, whether it can be read again from the
start (``rereadable``), and streams record batches; unreadable and damaged files raise
LoadInputError (CorruptFileError for damage) naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorruptFileError, LoadInputError
from .integrity import ParquetIntegrity


def _arrow_error(name: str, exc: BaseException, what: str) -> LoadInputError:
    return LoadInputError(f"{name}: {what}: {str(exc).strip() or type(exc).__name__}", source=name)


class Source:
    """One input: its column names, row count if known upfront, and a batch stream."""

    name: str
    names: list[str]
    types: dict[str, pa.DataType] | None  # None when types are chosen at read time (CSV)
    rows: int | None
    rereadable: bool = True  # False for one-shot streams: a second load would not see the same rows

    def batches(
        self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def integrity(self, columns: Sequence[str]) -> ParquetIntegrity | None:
        """What the file's rows are verified against (Parquet); None for formats without such information."""
        return None

    def suspect(self, columns: Sequence[str]) -> LoadInputError | None:
        """After an invalid value in the batch just read: the damage to the file that explains it, if any."""
        return None

    def unverifiable(self, columns: Sequence[str]) -> str | None:
        """Why damage to this file that still decodes could go undetected (what ``require_checksums``
        refuses), or None: checksummed throughout, or not a file (in-memory data)."""
        return None


class ParquetSource(Source):
    """A Parquet file, read row group by row group so every batch can be checked against its
    row group's column statistics (see integrity.py); page checksums are verified by pyarrow."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.name, self.path = str(path), path
        try:
            self.file = pq.ParquetFile(path, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(
                f"{self.name}: not a readable Parquet file (truncated, corrupt, or not Parquet): "
                f"{str(exc).strip() or type(exc).__name__}",
                source=self.name,
            ) from None
        schema = self.file.schema_arrow
        self.names, self.types, self.rows = (
            schema.names,
            dict(zip(schema.names, schema.types)),
            self.file.metadata.num_rows,
        )
        self.group: int | None = None  # the row group being read
        self._integrity: ParquetIntegrity | None = None

    def integrity(self, columns: Sequence[str]) -> ParquetIntegrity:
        if self._integrity is None:
            self._integrity = ParquetIntegrity(
                self.name, self.path, self.file.metadata, self.file.schema_arrow, columns
            )
        return self._integrity

    def batches(
        self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        check = self.integrity(columns)
        done = 0
        for group in range(self.file.num_row_groups):
            self.group = group
            check.reset(group)
            stream = self.file.iter_batches(
                batch_size=batch_rows, row_groups=[group], columns=list(columns), use_threads=True
            )
            while True:
                try:
                    batch = next(stream)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise self._unreadable(group, columns, exc, done) from None
                check.check_batch(group, batch)  # before the values are validated: damage is called damage
                done += batch.num_rows
                yield batch
            check.finish_group(group)
        self.group = None

    def _unreadable(self, group: int, columns: Sequence[str], exc: BaseException, done: int) -> CorruptFileError:
        """A row group pyarrow cannot decode (bad checksum, garbled page, truncated data): find the column."""
        column, reason = None, str(exc).strip() or type(exc).__name__
        for name in columns:
            try:
                self.file.read_row_group(group, columns=[name], use_threads=False)
            except (pa.ArrowException, OSError) as one:
                column, reason = name, str(one).strip() or type(one).__name__
                break
        assert self._integrity is not None
        error = self._integrity.corrupt(group, column, reason, prefix=f"cannot read the rows after row {done:,}: ")
        error.row = done + 1
        return error

    def unverifiable(self, columns: Sequence[str]) -> str | None:
        bare = self.integrity(columns).unchecksummed()
        if not bare:
            return None
        return (
            f"column(s) {', '.join(bare)} have no page checksums (the writer left them out: pyarrow's default; "
            "pyarrow.parquet.write_table(..., write_page_checksum=True) writes them)"
        )

    def suspect(self, columns: Sequence[str]) -> LoadInputError | None:
        group, check = self.group, self._integrity
        if group is None or check is None or not check.needs_values(group):
            return None
        try:  # the whole row group, against its statistics: is the invalid value garbage?
            table = self.file.read_row_group(group, columns=list(columns))
        except (pa.ArrowException, OSError) as exc:
            return self._unreadable(group, columns, exc, check.starts[group])
        check.reset(group)
        try:
            for batch in table.to_batches():
                check.check_batch(group, batch)
            check.finish_group(group)
        except CorruptFileError as exc:
            return exc
        return None


class IpcSource(Source):
    def __init__(self, path: Path):
        self.name = str(path)
        try:  # memory-mapped: counting the rows upfront reads only batch headers
            self.reader: Any = pa.ipc.open_file(pa.memory_map(str(path)))
            self.rows = sum(self.reader.get_batch(i).num_rows for i in range(self.reader.num_record_batches))
        except (pa.ArrowException, OSError):
            try:  # the streaming IPC format has no footer
                self.reader, self.rows = pa.ipc.open_stream(pa.memory_map(str(path))), None
            except (pa.ArrowException, OSError) as exc:
                raise CorruptFileError(
                    f"{self.name}: not a readable Arrow IPC file (truncated, corrupt, or not Arrow "
                    f"IPC): {str(exc).strip() or type(exc).__name__}",
                    source=self.name,
                ) from None
        schema = self.reader.schema
        self.names, self.types = schema.names, dict(zip(schema.names, schema.types))

    def unverifiable(self, columns: Sequence[str]) -> str | None:
        return "Arrow IPC files carry no checksums"

    def batches(
        self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        if isinstance(self.reader, pa.ipc.RecordBatchFileReader):
            stream: Iterable[pa.RecordBatch] = (self.reader.get_batch(i) for i in range(self.reader.num_record_batches))
        else:
            stream = self.reader
        batches, done = iter(stream), 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:  # a damaged message or body (IPC carries no checksums)
                raise CorruptFileError(
                    f"{self.name}: cannot read the rows after row {done:,}: the file is corrupt: "
                    f"{str(exc).strip() or type(exc).__name__}",
                    source=self.name,
                    row=done + 1,
                ) from None
            done += batch.num_rows
            yield from pa.Table.from_batches([batch.select(list(columns))]).to_batches(max_chunksize=batch_rows)


class CsvSource(Source):
    """CSV with a header row. Columns are parsed straight to the types the table needs; only
    empty fields, NULL, null and \\N are nulls (so "NaN" stays a NaN for the NaN policy)."""

    NULLS = ["", "NULL", "null", "\\N"]

    def __init__(self, path: Path):
        import pyarrow.csv as pcsv

        self.name, self.path, self.types, self.rows = str(path), path, None, None
        try:
            reader = pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(null_values=self.NULLS))
            self.names = reader.schema.names
            reader.close()
        except UnicodeDecodeError as exc:  # the column names are decoded as UTF-8
            raise LoadInputError(
                f"{self.name}: the header row is not UTF-8 text (column name {exc.object!r}: "
                f"{_undecodable(exc)}); {_UTF8_ONLY}",
                source=self.name,
            ) from None
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(self.name, exc, "not a readable CSV file (a header row is required)") from None

    def batches(
        self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(
            column_types=dict(types),
            include_columns=list(columns),
            null_values=self.NULLS,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        reader = pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=8 << 20), convert_options=convert)
        for batch in reader:
            yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=batch_rows)

    def unverifiable(self, columns: Sequence[str]) -> str | None:
        return "CSV files carry no checksums"

    def diagnose(self, columns: Sequence[str], types: Mapping[str, pa.DataType]) -> LoadInputError | None:
        """After a CSV conversion error (which pyarrow reports without a row): find the first bad value,
        text that is not UTF-8 included."""
        import pyarrow.csv as pcsv

        as_bytes = {c: pa.binary() for c in columns}  # read as bytes: text that is not UTF-8 is found here too
        convert = pcsv.ConvertOptions(
            column_types=as_bytes, include_columns=list(columns), null_values=self.NULLS, strings_can_be_null=True
        )
        start = 0
        for batch in pcsv.open_csv(self.path, convert_options=convert):
            for name in columns:
                raw = batch.column(name)
                lo = _first_failing(raw, pa.string())
                if lo is not None:
                    return self._not_utf8(start + lo + 1, name, raw[lo].as_py())
                target = types[name]
                if target == pa.string():
                    continue
                col = pc.cast(raw, pa.string())
                lo = _first_failing(col, target)
                if lo is None:
                    continue
                row = start + lo + 1
                return LoadInputError(
                    f"{self.name}: row {row}, column {name!r}: {col[lo].as_py()!r} is not a valid "
                    f"{_CSV_KIND[str(target)]}",
                    source=self.name,
                    column=name,
                    row=row,
                )
            start += batch.num_rows
        return None

    def _not_utf8(self, row: int, column: str, raw: bytes) -> LoadInputError:
        try:
            raw.decode()
            why = "not UTF-8"
        except UnicodeDecodeError as exc:
            why = _undecodable(exc)
        return LoadInputError(
            f"{self.name}: row {row}, column {column!r}: {raw!r} is not UTF-8 text ({why}); {_UTF8_ONLY}",
            source=self.name,
            column=column,
            row=row,
        )


_UTF8_ONLY = (
    "pgfeatures reads CSV files as UTF-8: convert the file first, e.g. iconv -f latin1 -t utf-8 IN > OUT "
    "(or write it as Parquet)"
)


def _undecodable(exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start : exc.end]
    return f"byte{'s' if len(bad) > 1 else ''} 0x{bad.hex()} at byte {exc.start + 1}"


def _first_failing(col: pa.Array, target: pa.DataType) -> int | None:
    """The index of the first value of ``col`` that does not cast to ``target``; None when all do."""
    try:
        pc.cast(col, target)
        return None
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
    return lo


_CSV_KIND = {"double": "number", "int64": "integer", "bool": "boolean (true/false/1/0)"}


class ArrowSource(Source):
    """An in-memory table, record batch, batch reader or iterable of batches."""

    def __init__(
        self, name: str, schema: pa.Schema, stream: Iterable[pa.RecordBatch], rows: int | None, rereadable: bool
    ):
        self.name, self.names, self.types, self.rows = name, schema.names, dict(zip(schema.names, schema.types)), rows
        self.stream, self.rereadable = stream, rereadable

    def batches(
        self, columns: Sequence[str], types: Mapping[str, pa.DataType], batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        for batch in self.stream:
            yield from pa.Table.from_batches([batch.select(list(columns))]).to_batches(max_chunksize=batch_rows)


READERS: dict[str, Callable[[Path], Source]] = {"parquet": ParquetSource, "csv": CsvSource, "arrow": IpcSource}
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow",
}


def _file_source(path: Path, fmt: str | None) -> Source:
    name = str(path)
    if fmt is None:
        suffixes = [s.lower() for s in path.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".lz4") and len(suffixes) > 1:
            suffixes.pop()  # data.csv.gz: pyarrow decompresses CSV by extension
        fmt = _EXTENSIONS.get(suffixes[-1] if suffixes else "")
        if fmt is None:
            raise LoadInputError(
                f"{name}: cannot tell the format from the extension; "
                f"use one of {', '.join(sorted(_EXTENSIONS))} or pass format= (--format)",
                source=name,
            )
    if not path.is_file():
        raise LoadInputError(f"{name}: no such file", source=name)
    if path.stat().st_size == 0:
        raise LoadInputError(f"{name}: empty file (0 bytes)", source=name)
    return READERS[fmt](path)


def _frame_source(data: Any, name: str) -> Source | None:
    """pyarrow objects, pandas and polars frames, or anything with the Arrow C stream interface
    (a stream: read once, so not ``rereadable``)."""
    if isinstance(data, pa.Table):
        return ArrowSource(name, data.schema, data.to_batches(), data.num_rows, True)
    if isinstance(data, pa.RecordBatch):
        return ArrowSource(name, data.schema, [data], data.num_rows, True)
    if isinstance(data, pa.RecordBatchReader):  # one pass only
        return ArrowSource(name, data.schema, data, None, False)
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and type(data).__name__ == "DataFrame":
        return _frame_source(pa.Table.from_pandas(data, preserve_index=False), name)
    if module == "polars" and type(data).__name__ == "DataFrame":
        return _frame_source(data.to_arrow(), name)
    if hasattr(data, "__arrow_c_stream__"):
        return _frame_source(pa.RecordBatchReader.from_stream(data), name)
    return None


def _batch_iterable_source(data: Iterable[Any], name: str) -> Source:
    it = iter(data)
    rereadable = it is not data  # a list or another container iterates afresh; an iterator or generator does not
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
                raise LoadInputError(
                    f"{name}: every item must be a RecordBatch with the first one's schema", source=name
                )
            yield batch

    return ArrowSource(name, first.schema, stream(), None, rereadable)


def open_sources(data: Any, fmt: str | None = None) -> list[Source]:
    """Sources for ``data``: a path, a list of paths or frames, a pyarrow Table/RecordBatch/RecordBatchReader,
    a pandas or polars DataFrame, or an iterable of RecordBatches. Raises LoadInputError for what it cannot read."""
    if isinstance(data, (list, tuple)):  # several sources, unless it is a list of record batches
        if not data:
            raise LoadInputError("nothing to load: the list of sources is empty")
        if not all(isinstance(d, pa.RecordBatch) for d in data):
            return [_open_one(d, fmt, f"data[{i}]") for i, d in enumerate(data)]
    return [_open_one(data, fmt, f"<{type(data).__name__}>")]


def _open_one(data: Any, fmt: str | None, name: str) -> Source:
    if isinstance(data, (str, os.PathLike)):
        return _file_source(Path(data), fmt)
    source = _frame_source(data, name)
    if source is not None:
        return source
    if isinstance(data, Iterable) and not isinstance(data, (bytes, str, Mapping)):
        return _batch_iterable_source(data, name)
    raise LoadInputError(
        f"cannot load a {type(data).__name__}: give file paths (Parquet, CSV, Arrow), a pyarrow "
        "Table/RecordBatch/RecordBatchReader, a pandas or polars DataFrame, or an iterable of RecordBatches"
    )
