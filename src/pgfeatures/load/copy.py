"""PostgreSQL's binary COPY format, both ways, with numpy: ``encode_copy_rows`` builds the rows a
load streams into ``COPY ... FROM STDIN (FORMAT BINARY)``; ``decode_copy`` parses what
``COPY ... TO STDOUT (FORMAT BINARY)`` sends back (the benchmark's and the tests' read-back).

The format: an 11-byte signature, a 32-bit flags word, a 32-bit header-extension length and that
many bytes; then per row a 16-bit field count and per field a 32-bit length (-1: NULL) and the
value in network byte order; then the 16-bit trailer -1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no header extension
COPY_TRAILER = b"\xff\xff"

Column = tuple[np.ndarray, "np.ndarray | None"]  # (values, NULL mask or None)


class CopyFormatError(ValueError):
    """The bytes are not a binary COPY stream of the expected columns."""


def encode_copy_rows(columns: Sequence[Column]) -> memoryview:
    """Rows in PostgreSQL's binary COPY format (without header/trailer), built with numpy.

    ``columns`` are (values, nulls): fixed-width numpy values (``(n, w)`` uint8 for raw bytes such
    as keys) and a boolean NULL mask or None. Every row is first laid out at full width in one
    structured array (field count, then length + big-endian value per column); NULL fields get
    length -1, and their value bytes are then squeezed out with one boolean mask over the buffer.
    """
    n = len(columns[0][0])
    dtype = _row_dtype([(v.shape[1],) if v.ndim == 2 else v.dtype for v, _ in columns])
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


def _row_dtype(kinds: Sequence[Any]) -> np.dtype:
    """One row at full width: field count, then (length, big-endian value) per column. A kind is a
    numpy dtype (a scalar value) or ``(width,)`` (raw bytes, e.g. a 32-byte key)."""
    fields: list[Any] = [("n", ">i2")]
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
        expected = [dtype.fields[f"v{j}"][0].itemsize for j in range(width)]
        if (rows["n"] == width).all() and all((rows[f"l{j}"] == expected[j]).all() for j in range(width)):
            return [(_native(rows[f"v{j}"]), None) for j in range(width)]
    return _decode_rows(body, kinds, dtype)


def _native(values: np.ndarray) -> np.ndarray:
    if values.ndim == 2:
        return np.ascontiguousarray(values)
    return values.astype(values.dtype.newbyteorder("="))


def _decode_rows(body: memoryview, kinds: Sequence[Any], dtype: np.dtype) -> list[Column]:
    """The general case, row by row: some fields are NULL (length -1, no value bytes)."""
    sizes = [dtype.fields[f"v{j}"][0].itemsize for j in range(len(kinds))]
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
        picked = raw[np.array(starts[j], dtype=np.int64)[:, None] + np.arange(size)] if starts[j] else np.zeros((0, size), np.uint8)
        if isinstance(kind, tuple):
            values = np.zeros((len(mask), size), np.uint8)
            values[~mask] = picked
        else:
            scalar = np.dtype(kind)
            values = np.zeros(len(mask), scalar)
            values[~mask] = np.ascontiguousarray(picked).view(scalar.newbyteorder(">")).ravel()
        out.append((values, mask if mask.any() else None))
    return out
