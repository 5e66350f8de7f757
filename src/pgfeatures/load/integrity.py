"""Is a Parquet file what its writer wrote? Page checksums where the file has them, column
statistics where it does not.

A damaged Parquet file often still decodes: Snappy and PLAIN pages carry no redundancy, so 4 KB
overwritten inside a page of floats decodes into 1,024 wrong floats. pyarrow writes no page
checksums by default, so the loader checks, per row group and column chunk:

- **page checksums** (CRC-32 of every page, written with pyarrow's ``write_page_checksum=True``
  and other writers' equivalents): verified by pyarrow while decoding
  (``page_checksum_verification=True``); any damaged byte of such a page fails the read;
- otherwise **column statistics**, which writers store by default: the decoded values of every
  batch must lie within the chunk's recorded [min, max] and the chunk's decoded null count must
  equal the recorded one. Vectorized (``pyarrow.compute.min_max`` per batch and column: about
  0.15 ms per 65,536 floats). Garbage that stays inside the range (random keys among random
  keys, say) is not detectable this way; only checksums catch that.

A file whose columns carry neither is loaded with a note in the summary. Failures raise
``CorruptFileError`` (a ``LoadInputError``) naming the file, the row group and the column.
``describe()`` says precisely what was verified (page checksums; or column statistics *only*, which
a value changed inside the recorded range passes), and ``unchecksummed()`` names the columns
``require_checksums`` refuses a file for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorruptFileError

_PAGE_HEADER_BYTES = 64  # a PageHeader's first four fields fit in far fewer
PAGE_CHECKSUMS = "page checksums (every data page's bytes)"
STATISTICS_ONLY = (
    "column statistics only (decoded values within the recorded min/max, null counts as recorded: "
    "a value changed inside that range loads undetected)"
)


def has_page_checksum(header: bytes) -> bool:
    """Whether a serialized Parquet ``PageHeader`` (Thrift compact protocol) sets its ``crc``.

    The first fields are 1: type, 2: uncompressed_page_size, 3: compressed_page_size (i32 each),
    then 4: crc (optional i32). Writers emit fields in id order; anything unexpected means no.
    """
    pos, field_id = 0, 0
    try:
        while pos < len(header):
            byte = header[pos]
            pos += 1
            if byte == 0:  # STOP: the struct ended without a crc
                return False
            delta, kind = byte >> 4, byte & 0x0F
            if delta:
                field_id += delta
            else:
                raw, pos = _varint(header, pos)
                field_id = (raw >> 1) ^ -(raw & 1)
            if kind != 5 or field_id > 4:  # not an i32, or past the crc
                return False
            if field_id == 4:
                return True
            _, pos = _varint(header, pos)
    except IndexError:
        pass
    return False


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return f"0x{value[:12].hex()}{'...' if len(value) > 12 else ''}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _comparable(t: pa.DataType) -> bool:
    """Types whose decoded min/max compare with the statistics' Python values as the writer ordered them."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or t in (pa.float32(), pa.float64())
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    )


@dataclass
class _Chunk:
    """What one column chunk (one column of one row group) can be checked against."""

    column: str
    checksummed: bool
    bounds: tuple[Any, Any] | None  # recorded (min, max), when usable
    nulls: int | None  # recorded null count
    nulls_seen: int = 0
    nested: bool = False  # a list column: bounds of its elements

    @property
    def checked(self) -> bool:
        return self.checksummed or self.bounds is not None or self.nulls is not None


class ParquetIntegrity:
    """The checks for one file and the columns a load reads from it."""

    def __init__(self, name: str, path: Any, metadata: Any, schema: pa.Schema, columns: Sequence[str]):
        self.name = name
        self.metadata = metadata
        leaf = (
            {metadata.row_group(0).column(i).path_in_schema: i for i in range(metadata.num_columns)}
            if metadata.num_row_groups
            else {}
        )
        self.starts = [0]
        for g in range(metadata.num_row_groups):
            self.starts.append(self.starts[-1] + metadata.row_group(g).num_rows)
        self.groups: list[list[_Chunk]] = []
        with open(path, "rb") as fh:
            for g in range(metadata.num_row_groups):
                group = metadata.row_group(g)
                chunks = []
                for column in columns:
                    arrow_type = schema.field(column).type
                    element = f"{column}.list.element"  # a list's one leaf, as Arrow writes lists
                    if column not in leaf and element in leaf and _is_list(arrow_type):
                        # A list: its pages' checksums, and its elements within the leaf's bounds (the
                        # leaf's null count counts NULL lists and elements alike: not compared).
                        chunk = self._chunk(fh, column, group.column(leaf[element]), arrow_type.value_type)
                        chunks.append(_Chunk(column, chunk.checksummed, chunk.bounds, None, nested=True))
                        continue
                    if column not in leaf:  # nested otherwise, or renamed: nothing to compare with
                        chunks.append(_Chunk(column, False, None, None))
                        continue
                    meta = group.column(leaf[column])
                    chunks.append(self._chunk(fh, column, meta, arrow_type))
                self.groups.append(chunks)

    @staticmethod
    def _chunk(fh: Any, column: str, meta: Any, arrow_type: pa.DataType) -> _Chunk:
        offset = (
            meta.dictionary_page_offset
            if meta.has_dictionary_page and meta.dictionary_page_offset
            else meta.data_page_offset
        )
        checksummed = False
        if offset is not None and offset >= 0:
            fh.seek(offset)
            checksummed = has_page_checksum(fh.read(_PAGE_HEADER_BYTES))
        stats = meta.statistics if meta.is_stats_set else None
        bounds = nulls = None
        if stats is not None:
            if stats.has_null_count:
                nulls = stats.null_count
            if stats.has_min_max and _comparable(arrow_type):
                lo, hi = stats.min, stats.max
                floats = isinstance(lo, float) or isinstance(hi, float)
                if not (floats and (math.isnan(lo) or math.isnan(hi))):  # a writer that counted NaN: no bound
                    bounds = (lo, hi)
        return _Chunk(column, checksummed, bounds, nulls)

    # -- what the file carries

    def describe(self) -> str:
        """One line for the summary: what this file's rows are verified against, and what that misses."""
        columns = [c.column for c in self.groups[0]] if self.groups else []
        unchecked = self.unchecked()
        bare = set(self.unchecksummed())
        crc = [c for c in columns if c not in bare]
        stats = [c for c in columns if c in bare and c not in unchecked]
        if columns and not bare:
            return PAGE_CHECKSUMS
        parts = []
        if crc:
            parts.append(f"{PAGE_CHECKSUMS} for {', '.join(crc)}")
        if stats:
            parts.append(STATISTICS_ONLY + (f" for {', '.join(stats)}" if crc or unchecked else ""))
        if not parts:
            return "nothing: the file has no page checksums and no column statistics"
        return "; ".join(parts) + (f"; unchecked: {', '.join(unchecked)}" if unchecked else "")

    def unchecksummed(self) -> list[str]:
        """Columns with a chunk whose pages carry no checksum (what ``require_checksums`` refuses)."""
        seen = {c.column for group in self.groups for c in group if not c.checksummed}
        return [c for c in (ch.column for ch in self.groups[0]) if c in seen] if self.groups else []

    def unchecked(self) -> list[str]:
        """Columns with a chunk that carries neither checksums nor statistics."""
        seen = {c.column for group in self.groups for c in group if not c.checked}
        return [c for c in (ch.column for ch in self.groups[0]) if c in seen] if self.groups else []

    def note(self) -> str | None:
        """The summary's warning when some or all of the rows could not be verified."""
        unchecked = self.unchecked()
        if not unchecked:
            return None
        if len(unchecked) == len(self.groups[0]):
            return (
                f"{self.name} carries no integrity information (no page checksums, no column statistics): "
                "damage that still decodes cannot be detected; write it with page checksums "
                "(pyarrow: write_page_checksum=True)"
            )
        return (
            f"{self.name}: column(s) {', '.join(unchecked)} carry neither page checksums nor statistics: "
            "damage in them that still decodes cannot be detected"
        )

    def needs_values(self, group: int) -> bool:
        """Whether row group ``group`` has chunks verified by statistics (so decoded values matter)."""
        return any(not c.checksummed and (c.bounds is not None or c.nulls is not None) for c in self.groups[group])

    # -- checks

    def check_batch(self, group: int, batch: pa.RecordBatch) -> None:
        """Decoded values of one batch of row group ``group`` within the recorded bounds."""
        for chunk in self.groups[group]:
            if chunk.checksummed:
                continue
            arr = batch.column(chunk.column)
            chunk.nulls_seen += arr.null_count
            if chunk.bounds is None or arr.null_count == len(arr):
                continue
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if chunk.nested:
                arr = pc.list_flatten(arr)
                if len(arr) == arr.null_count:
                    continue
            found = pc.min_max(arr)
            lo, hi = found["min"].as_py(), found["max"].as_py()
            if lo is None:  # only NaN: min/max skip NaN, as the statistics do
                continue
            if lo < chunk.bounds[0] or hi > chunk.bounds[1]:
                raise self.corrupt(
                    group,
                    chunk.column,
                    f"decoded values span {_shown(lo)}..{_shown(hi)}, outside the range "
                    f"the writer recorded ({_shown(chunk.bounds[0])}..{_shown(chunk.bounds[1])})",
                )

    def finish_group(self, group: int) -> None:
        """After the last batch of ``group``: the decoded null counts equal the recorded ones."""
        for chunk in self.groups[group]:
            if not chunk.checksummed and chunk.nulls is not None and chunk.nulls_seen != chunk.nulls:
                raise self.corrupt(
                    group, chunk.column, f"{chunk.nulls_seen:,} nulls decoded, the writer recorded {chunk.nulls:,}"
                )

    def reset(self, group: int) -> None:
        for chunk in self.groups[group]:
            chunk.nulls_seen = 0

    def corrupt(self, group: int, column: str | None, reason: str, prefix: str = "") -> CorruptFileError:
        rows = f"rows {self.starts[group] + 1:,}..{self.starts[group + 1]:,}"
        where = f"row group {group} ({rows})" + (f", column {column!r}" if column else "")
        error = CorruptFileError(
            f"{self.name}: {prefix}the file is corrupt: {where}: {reason}",
            source=self.name,
            column=column,
            row=self.starts[group] + 1,
        )
        error.row_group = group
        return error
