"""One batch's values, checked and encoded: Arrow columns to numpy with every invalid row found
(nulls, NaN, out-of-range and non-integral values, malformed keys), then the binary COPY rows.
Vectorized throughout; the only per-row Python is SHA-256 of natural ids (``hash_keys``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import KEY_LENGTH, UPDATED_AT, UPDATED_AT_FEATURE, Feature
from ..errors import LoadInputError
from ..write import FLOAT32_MAX, INT_RANGE
from .columns import ACCEPTS, Columns, kind_of
from .copy import encode_copy_rows
from .options import MAX_EXAMPLES, LoadOptions, NanPolicy, OnInvalid


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
    kind = kind_of(arr.type)
    if kind not in ACCEPTS[feature.type.name]:  # CSV and iterables are typed only now
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
    n, kind = len(arr), kind_of(arr.type)
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


# -- one batch: validate, encode ------------------------------------------------------------------


@dataclass
class Staged:
    payload: memoryview
    keys: np.ndarray  # (m, 32) uint8 of the rows staged
    seqs: np.ndarray  # their ordinals across the whole load
    rejected: int
    examples: list[str]


def stage_batch(batch: pa.RecordBatch, columns: Columns, options: LoadOptions, updated_at: int,
                 source: str, first_row: int, seq0: int) -> Staged:
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
    return Staged(payload, keys, seqs, rejected, examples)
