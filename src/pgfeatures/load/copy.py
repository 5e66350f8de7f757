"""PostgreSQL's binary COPY format, both ways, with numpy: ``encode_copy_rows`` builds the rows a
load streams into ``COPY ... FROM STDIN (FORMAT BINARY)``; ``decode_copy`` parses what
``COPY ... TO STDOUT (FORMAT BINARY)`` sends back (the benchmark's and the tests' read-back).

The format: an 11-byte signature, a 32-bit flags word, a 32-bit header-extension length and that
many bytes; then per row a 16-bit field count and per field a 32-bit length (-1: NULL) and the
value in network byte order; then the 16-bit trailer -1.

Event time (``timestamptz``) is an int64 of microseconds since 2000-01-01 UTC (``timestamptz_values``).

Entity keys per key type (``key_values``): ``bytea32`` as 32 raw bytes, ``uuid`` as its 16 bytes
(the binary form of uuid), ``bigint`` as a big-endian int64, ``text`` as its UTF-8 bytes (variable
width: ``VarBytes``; binary COPY sends text in the server encoding, which a load checks is UTF8).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no header extension
COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class VarBytes:
    """Variable-width values (text keys): ``offsets`` (n + 1, int64) into ``data`` (uint8)."""

    offsets: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_arrow(cls, arr: pa.Array) -> VarBytes:
        """The bytes of a (large_)string or (large_)binary array without NULLs (no copy)."""
        wide = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
        dtype = np.dtype(np.int64 if wide else np.int32)
        buffers = arr.buffers()
        offsets = np.frombuffer(buffers[1], dtype=dtype, count=len(arr) + 1, offset=arr.offset * dtype.itemsize)
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        return cls(offsets.astype(np.int64), data)

    def padded(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, width) bytes, each value zero-padded, and the (n, width) mask of its real bytes."""
        n = len(self)
        real = np.arange(width) < self.lengths[:, None]
        source = np.concatenate([self.data, np.zeros(max(width, 1), np.uint8)])
        index = np.where(real, self.offsets[:-1, None] + np.arange(width), len(source) - 1)
        return (source[index] if n else np.zeros((0, width), np.uint8)), real


Column = tuple[Any, "np.ndarray | None"]  # (values: ndarray or VarBytes, NULL mask or None)

KEY_WIDTHS = {"bytea32": 32, "uuid": 16}  # fixed-width raw bytes; bigint is int64, text VarBytes


def key_values(key_type: str, keys: Any) -> Any:
    """A batch of validated keys as encoder values: (n, 32) or (n, 16) uint8 for bytea32 and uuid,
    int64 for bigint, ``VarBytes`` for text (from a string array)."""
    if key_type == "text":
        return keys if isinstance(keys, VarBytes) else VarBytes.from_arrow(keys)
    if key_type == "bigint":
        return np.asarray(keys, dtype=np.int64)
    if keys.ndim != 2 or keys.shape[1] != KEY_WIDTHS[key_type]:
        raise ValueError(f"{key_type} keys must be (n, {KEY_WIDTHS[key_type]}) bytes, got {keys.shape}")
    return keys


PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp origin, in Unix microseconds


def timestamptz_values(micros: np.ndarray) -> np.ndarray:
    """Epoch microseconds as binary COPY's ``timestamptz`` values (microseconds since 2000-01-01 UTC)."""
    return micros - PG_EPOCH_MICROS


class CopyFormatError(ValueError):
    """The bytes are not a binary COPY stream of the expected columns."""


def encode_copy_rows(columns: Sequence[Column]) -> memoryview:
    """Rows in PostgreSQL's binary COPY format (without header/trailer), built with numpy and Arrow.

    ``columns`` are (values, nulls): fixed-width numpy values (``(n, w)`` uint8 for raw bytes such
    as keys or an embedding's array), ``VarBytes`` (short text: keys), or a ``large_binary`` Arrow
    array of variable-width value bytes (strings, lists: ``rich.py``; empty at NULL rows), and a
    boolean NULL mask or None.

    Without Arrow columns every row is first laid out at full width in one structured array (field
    count, then length + big-endian value per column; ``VarBytes`` padded to the batch's longest);
    NULL fields get length -1, and their value bytes (and the padding) are then squeezed out with one
    boolean mask over the buffer. Arrow columns are never padded (a list may be megabytes): the runs
    of other columns between them are laid out as above, each Arrow column gets its 4-byte lengths,
    and Arrow's ``binary_join_element_wise`` concatenates the pieces row by row.
    """
    variable = [j for j, (v, _) in enumerate(columns) if isinstance(v, pa.Array)]
    if not variable:
        return _layout(columns, len(columns))[0]
    n = len(columns[0][0])
    pieces: list[pa.Array] = []
    start = 0
    for j in [*variable, len(columns)]:
        if j > start or start == 0:  # the first run carries the field count, even when empty
            raw, lengths = _layout(columns[start:j], len(columns) if start == 0 else None, n)
            pieces.append(_binary(raw, lengths, n))
        if j < len(columns):
            values, nulls = columns[j]
            pieces += _variable_field(values, nulls)
        start = j + 1
    joined = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))
    offsets = np.frombuffer(joined.buffers()[1], np.int64, count=n + 1, offset=joined.offset * 8)
    return memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _layout(columns: Sequence[Column], count: int | None, n: int | None = None) -> tuple[memoryview, Any]:
    """Fixed-width and ``VarBytes`` columns laid out row by row (with the field ``count`` first, when
    given): the bytes, and each row's length (None: every row is the dtype's full width)."""
    n = len(columns[0][0]) if columns else n
    assert n is not None
    padded = {
        j: v.padded(max(int(v.lengths.max()) if len(v) else 0, 1))
        for j, (v, _) in enumerate(columns)
        if isinstance(v, VarBytes)
    }
    kinds = [
        (padded[j][0].shape[1],) if j in padded else (v.shape[1],) if v.ndim == 2 else v.dtype
        for j, (v, _) in enumerate(columns)
    ]
    dtype = _row_dtype(kinds, count is not None)
    template = np.zeros((), dtype)  # the field count and the lengths are the same in every row
    if count is not None:
        template["n"] = count
    for j in range(len(columns)):
        template[f"l{j}"] = _field(dtype, j)[0].itemsize
    rows = np.empty(n, dtype)
    rows[...] = template
    for j, (values, nulls) in enumerate(columns):
        if j in padded:
            rows[f"v{j}"] = padded[j][0]
            rows[f"l{j}"] = values.lengths
        else:  # byte-swapping into a contiguous array first is faster than a converting strided copy
            rows[f"v{j}"] = values if values.ndim == 2 else values.astype(_field(dtype, j)[0])
        if nulls is not None:
            rows[f"l{j}"][nulls] = -1
    raw = rows.view(np.uint8)
    if all(nulls is None for _, nulls in columns) and not padded:
        return raw.data, None
    keep = np.ones((n, dtype.itemsize), dtype=bool)
    for j, (_, nulls) in enumerate(columns):
        field, start = _field(dtype, j)
        if j in padded:
            keep[:, start : start + field.itemsize] = padded[j][1]
        if nulls is not None:
            keep[nulls, start : start + field.itemsize] = False
    return raw.reshape(n, dtype.itemsize)[keep].data, keep.sum(axis=1)


def _binary(raw: Any, lengths: np.ndarray | None, n: int) -> pa.Array:
    """``raw`` bytes cut into ``n`` rows (of ``lengths``, or all equal) as a ``large_binary`` array (no copy)."""
    if lengths is None:
        offsets = np.arange(n + 1, dtype=np.int64) * (len(raw) // n if n else 0)
    else:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw)])


def binary_array(offsets: np.ndarray, data: Any) -> pa.Array:
    """A ``large_binary`` array of the bytes ``data[offsets[i]:offsets[i + 1]]`` (no copy)."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _variable_field(values: pa.Array, nulls: np.ndarray | None) -> list[pa.Array]:
    """An Arrow column's fields: its 4-byte big-endian lengths (-1: NULL), then its value bytes."""
    if values.type != pa.large_binary():
        values = values.cast(pa.large_binary())
    if values.null_count:
        values = values.fill_null(pa.scalar(b"", pa.large_binary()))
    offsets = np.frombuffer(values.buffers()[1], np.int64, count=len(values) + 1, offset=values.offset * 8)
    lengths = np.diff(offsets).astype(">i4")
    if nulls is not None:
        if lengths[nulls].any():
            values = pc.if_else(pa.array(nulls), pa.scalar(b"", pa.large_binary()), values)
        lengths[nulls] = -1
    return [_binary(lengths.view(np.uint8).data, None, len(lengths)), values]


def _field(dtype: np.dtype, j: int) -> tuple[np.dtype, int]:
    """(dtype, byte offset) of column ``j``'s value in a row dtype of ``_row_dtype``."""
    assert dtype.fields is not None
    value, offset = dtype.fields[f"v{j}"][:2]
    return value, offset


def _row_dtype(kinds: Sequence[Any], count: bool = True) -> np.dtype:
    """One row at full width: field count (``count``), then (length, big-endian value) per column. A
    kind is a numpy dtype (a scalar value) or ``(width,)`` (raw bytes, e.g. a 32-byte key)."""
    fields: list[Any] = [("n", ">i2")] if count else []
    for j, kind in enumerate(kinds):
        value = (np.uint8, kind) if isinstance(kind, tuple) else (np.dtype(kind).newbyteorder(">"),)
        fields += [(f"l{j}", ">i4"), (f"v{j}", *value)]
    return np.dtype(fields)


def copy_body(data: bytes | bytearray | memoryview) -> memoryview:
    """The rows of a complete binary COPY stream: the header (with any extension) and the trailer
    checked and cut off. Raises CopyFormatError for anything else."""
    view = memoryview(data).cast("B")
    if len(view) < len(SIGNATURE) + 10 or bytes(view[: len(SIGNATURE)]) != SIGNATURE:
        raise CopyFormatError("not a binary COPY stream (no PGCOPY signature)")
    flags, extension = struct.unpack_from(">iI", view, len(SIGNATURE))
    if flags & 0x00010000:
        raise CopyFormatError("binary COPY with OIDs is not supported")
    start = len(SIGNATURE) + 8 + extension
    if len(view) < start + 2 or bytes(view[-2:]) != COPY_TRAILER:
        raise CopyFormatError("binary COPY stream is truncated (no trailer)")
    return view[start:-2]


def decode_copy(data: bytes | bytearray | memoryview, kinds: Sequence[Any]) -> list[Column]:
    """Parse a complete binary COPY stream of fixed-width columns into (values, nulls) per column.

    ``kinds`` as for the encoder: a numpy dtype per scalar column (``np.float32`` for real,
    ``np.int16`` smallint, ``np.int32`` integer, ``np.int64`` bigint, ``np.float64`` double,
    ``np.bool_`` boolean) or ``(width,)`` for raw bytes (bytea of that length). Values come back
    native-endian; ``nulls`` is None for a column without NULLs. A stream without NULLs is parsed
    with one structured view; NULLs (variable row widths) take a per-row walk. Raises
    CopyFormatError when a row does not match ``kinds``.
    """
    body = copy_body(data)
    dtype = _row_dtype(kinds)
    width = len(kinds)
    if len(body) % dtype.itemsize == 0:
        rows = np.frombuffer(body, dtype=dtype)
        expected = [_field(dtype, j)[0].itemsize for j in range(width)]
        if (rows["n"] == width).all() and all((rows[f"l{j}"] == expected[j]).all() for j in range(width)):
            return [(_native(rows[f"v{j}"]), None) for j in range(width)]
    return _decode_rows(body, kinds, dtype)


def _native(values: np.ndarray) -> np.ndarray:
    if values.ndim == 2:
        return np.ascontiguousarray(values)
    return values.astype(values.dtype.newbyteorder("="))


def _decode_rows(body: memoryview, kinds: Sequence[Any], dtype: np.dtype) -> list[Column]:
    """The general case, row by row: some fields are NULL (length -1, no value bytes)."""
    sizes = [_field(dtype, j)[0].itemsize for j in range(len(kinds))]
    starts: list[list[int]] = [[] for _ in kinds]  # value offsets of each column's non-NULL fields
    nulls: list[list[bool]] = [[] for _ in kinds]
    pos, end = 0, len(body)
    while pos < end:
        (count,) = struct.unpack_from(">h", body, pos)
        if count != len(kinds):
            raise CopyFormatError(f"row at byte {pos} has {count} fields, expected {len(kinds)}")
        pos += 2
        for j, size in enumerate(sizes):
            (length,) = struct.unpack_from(">i", body, pos)
            pos += 4
            if length == -1:
                nulls[j].append(True)
                continue
            if length != size:
                raise CopyFormatError(f"field {j} at byte {pos - 4} is {length} bytes, expected {size}")
            nulls[j].append(False)
            starts[j].append(pos)
            pos += size
    raw = np.frombuffer(body, dtype=np.uint8)
    out: list[Column] = []
    for j, (kind, size) in enumerate(zip(kinds, sizes)):
        mask = np.array(nulls[j], dtype=bool)
        picked = (
            raw[np.array(starts[j], dtype=np.int64)[:, None] + np.arange(size)]
            if starts[j]
            else np.zeros((0, size), np.uint8)
        )
        if isinstance(kind, tuple):
            values = np.zeros((len(mask), size), np.uint8)
            values[~mask] = picked
        else:
            scalar = np.dtype(kind)
            values = np.zeros(len(mask), scalar)
            values[~mask] = np.ascontiguousarray(picked).view(scalar.newbyteorder(">")).ravel()
        out.append((values, mask if mask.any() else None))
    return out
