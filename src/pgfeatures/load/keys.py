"""Entity keys of one batch, checked per key type with numpy and pyarrow compute (no per-row Python
except SHA-256 of natural ids), and the invalid rows found with a reason for each.

=========  ===========================================================  ===================
key type   a source key may be                                          staged as
=========  ===========================================================  ===================
bytea32    32-byte binary, 64 hex characters (natural ids with           (n, 32) uint8
           ``hash_keys``)
hashed     a natural id: string (UTF-8), integer (decimal text), binary  (n, 32) uint8 SHA-256
bigint     an integer column, or decimal text (CSV; PostgreSQL's form:   int64
           ASCII digits, a sign, spaces/tabs/newlines around)
text       a string (or an integer: its decimal text) of 1 to            string array
           ``max_length`` characters, no NUL
uuid       text as PostgreSQL reads it (32 hex digits, a hyphen after    (n, 16) uint8
           any four, braces around) or with ``urn:uuid:``; 16 bytes
=========  ===========================================================  ===================

The rules are ``Entity.parse``'s (definitions/entities.py), vectorized; ``hash_key`` is the hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import KEY_LENGTH, Entity
from ..definitions.entities import BIGINT_TEXT, INT8_RANGE, UUID_TEXT, bigint_text_value
from ..errors import LoadInputError
from .columns import kind_of

UUID_LENGTH = 16
_C_SPACE = " \t\n\r\v\f"  # isspace() in the C locale: what PostgreSQL's integer input skips


@dataclass
class Problem:
    """Rows of one batch (``mask``) with one kind of invalid value; ``reason(i)`` explains row i."""

    column: str
    mask: np.ndarray
    reason: Callable[[int], str]


HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    HEX[_c] = 10 + _i


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _cut(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def nulls_of(arr: pa.Array) -> np.ndarray | None:
    return arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None


def decoded(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n + 1) and data bytes of a (large_)binary/(large_)string array, without copying."""
    wide = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
    dtype = np.dtype(np.int64 if wide else np.int32)
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=dtype, count=len(arr) + 1, offset=arr.offset * dtype.itemsize)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def fixed_rows(offsets: np.ndarray, data: np.ndarray, width: int, ok: np.ndarray) -> np.ndarray:
    """(n, width) bytes of each value: one slice when every value is ``width`` long, else a gather
    (rows not ``ok`` get zeros; they are invalid anyway)."""
    n = len(offsets) - 1
    start = int(offsets[0]) if n else 0
    if ok.all() and (n == 0 or int(offsets[-1]) - start == n * width):
        return data[start : start + n * width].reshape(n, width)
    padded = np.concatenate([data, np.zeros(width, np.uint8)])
    starts = np.where(ok, offsets[:-1], len(data))
    return padded[starts[:, None] + np.arange(width)]


def _fixed_binary(arr: pa.Array, width: int) -> np.ndarray:
    data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    return data[arr.offset * width : (arr.offset + len(arr)) * width].reshape(len(arr), width)


def _from_hex(rows: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2w) hex characters -> (n, w) bytes, and the rows (among ``ok``) with non-hex characters."""
    nibbles = HEX[rows]
    not_hex = ok & (nibbles == 255).any(axis=1)
    return (nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 0x0F), not_hex


Keys = Any  # np.ndarray ((n, 32) or (n, 16) uint8, or int64) or a pyarrow string array (text)


def key_column(arr: pa.Array, column: str, entity: Entity, hash_keys: bool) -> tuple[Keys, list[Problem]]:
    """The keys of one batch as the stage takes them (see the module table), and their invalid rows."""
    arr = decoded(arr)
    problems: list[Problem] = []
    valid = ~nulls_of(arr) if arr.null_count else np.ones(len(arr), dtype=bool)  # type: ignore[operator]
    if arr.null_count:
        problems.append(Problem(column, ~valid, lambda i: "key is null"))
    if entity.hash or hash_keys:
        return _hashed(arr, column, entity, valid, problems), problems
    parse = {"bytea32": _bytea32, "bigint": _bigint, "text": _text, "uuid": _uuid}[entity.key_type]
    return parse(arr, column, entity, valid, problems), problems


def _hashed(arr: pa.Array, column: str, entity: Entity, valid: np.ndarray, problems: list[Problem]) -> np.ndarray:
    kind = kind_of(arr.type)
    if kind not in ("string", "binary", "fixed binary", "integer"):
        raise LoadInputError(
            f"key column {column!r} is {arr.type}; natural ids to hash are strings, integers or binary", column=column
        )
    items = arr.to_pylist()
    if kind == "string":
        raw = [b"" if v is None else v.encode() for v in items]
    elif kind == "integer":
        raw = [b"" if v is None else str(v).encode() for v in items]
    else:
        raw = [b"" if v is None else v for v in items]
    if entity.hash and kind == "string":  # Entity.parse: a hashed entity's natural id is never empty
        empty = valid & (pc.utf8_length(arr).fill_null(1).to_numpy(zero_copy_only=False) == 0)
        if empty.any():
            problems.append(Problem(column, empty, lambda i: f"{entity.name} key: a natural id must not be empty"))
    digests = b"".join([hashlib.sha256(v).digest() for v in raw])
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(arr), KEY_LENGTH)


def _bytea32(arr: pa.Array, column: str, entity: Entity, valid: np.ndarray, problems: list[Problem]) -> np.ndarray:
    kind = kind_of(arr.type)
    if kind == "fixed binary":
        if arr.type.byte_width != KEY_LENGTH:
            raise LoadInputError(
                f"key column {column!r} holds {arr.type.byte_width}-byte values; keys must be {KEY_LENGTH} "
                "bytes (or use hash_keys=True / --hash-keys)",
                column=column,
            )
        return _fixed_binary(arr, KEY_LENGTH)
    if kind not in ("binary", "string"):
        raise LoadInputError(
            f"key column {column!r} is {arr.type}; keys must be {KEY_LENGTH}-byte binary or "
            f"{2 * KEY_LENGTH} hex characters (or natural ids with hash_keys=True / --hash-keys)",
            column=column,
        )
    offsets, data = binary_parts(arr)
    lengths = np.diff(offsets)
    width = KEY_LENGTH if kind == "binary" else 2 * KEY_LENGTH
    bad_length = valid & (lengths != width)
    if bad_length.any():
        if kind == "binary":
            problems.append(
                Problem(
                    column,
                    bad_length,
                    lambda i: (
                        f"key is {lengths[i]} bytes; keys must be {KEY_LENGTH} "
                        "bytes (or natural ids with hash_keys=True / --hash-keys)"
                    ),
                )
            )
        else:
            problems.append(
                Problem(
                    column,
                    bad_length,
                    lambda i: (
                        f"key {shown(arr[i].as_py())} is {len(arr[i].as_py())} "
                        f"characters; hex keys are {2 * KEY_LENGTH} (natural ids need hash_keys=True / --hash-keys)"
                    ),
                )
            )
    ok = valid & ~bad_length
    rows = fixed_rows(offsets, data, width, ok)
    if kind == "binary":
        return rows
    keys, not_hex = _from_hex(rows, ok)
    if not_hex.any():
        problems.append(Problem(column, not_hex, lambda i: f"key {shown(arr[i].as_py())} is not hexadecimal"))
    return keys


def _bigint(arr: pa.Array, column: str, entity: Entity, valid: np.ndarray, problems: list[Problem]) -> np.ndarray:
    lo, hi = INT8_RANGE
    kind = kind_of(arr.type)
    expected = f"{entity.name} keys are {entity.accepts}"
    if kind == "integer":
        values = arr.fill_null(0).to_numpy(zero_copy_only=False)
        if values.dtype == np.uint64:
            given = values
            over = valid & (given > hi)
            if over.any():
                problems.append(
                    Problem(column, over, lambda i: f"key {int(given[i])} is out of range for bigint ({lo}..{hi})")
                )
            values = np.where(over, 0, given)
        return values.astype(np.int64)
    if kind != "string":
        raise LoadInputError(f"key column {column!r} is {arr.type}; {expected}", column=column)
    text = pc.utf8_trim(arr, _C_SPACE)  # PostgreSQL's whitespace only (utf8_trim_whitespace takes Unicode's)
    form = pc.match_substring_regex(arr, f"^{BIGINT_TEXT.pattern}$").fill_null(False).to_numpy(zero_copy_only=False)
    bad_form = valid & ~form
    if bad_form.any():
        problems.append(
            Problem(column, bad_form, lambda i: f"key {shown(arr[i].as_py())} is not an integer; {expected}")
        )
    ok = valid & form
    digits = pc.utf8_length(pc.utf8_ltrim(text, "+-0")).fill_null(0).to_numpy(zero_copy_only=False)
    long = ok & (digits >= 19)  # may not fit in 64 bits: checked one by one (rare)
    over = np.zeros(len(arr), dtype=bool)
    for i in np.flatnonzero(long):
        over[i] = bigint_text_value(text[i].as_py()) is None
    if over.any():
        problems.append(
            Problem(column, over, lambda i: f"key {_cut(text[i].as_py())} is out of range for bigint ({lo}..{hi})")
        )
    fine = ok & ~over
    unsigned = pc.replace_substring_regex(text, r"^\+", "")  # "+5": pyarrow's cast takes no plus sign
    return pc.cast(pc.if_else(pa.array(fine), unsigned, "0"), pa.int64()).to_numpy(zero_copy_only=False)


def _text(arr: pa.Array, column: str, entity: Entity, valid: np.ndarray, problems: list[Problem]) -> pa.Array:
    kind = kind_of(arr.type)
    if kind == "integer":
        arr = pc.cast(arr, pa.string())
    elif kind != "string":
        raise LoadInputError(
            f"key column {column!r} is {arr.type}; {entity.name} keys are {entity.accepts}", column=column
        )
    lengths = pc.utf8_length(arr).fill_null(1).to_numpy(zero_copy_only=False)
    bad = valid & ((lengths < 1) | (lengths > entity.max_length))
    if bad.any():
        problems.append(
            Problem(
                column,
                bad,
                lambda i: (
                    f"key {shown(arr[i].as_py())} is {lengths[i]} characters; "
                    f"{entity.name} keys are 1 to {entity.max_length} characters (the entity's max_length)"
                ),
            )
        )
    nul = valid & pc.match_substring(arr, "\x00").fill_null(False).to_numpy(zero_copy_only=False)
    if nul.any():
        problems.append(Problem(column, nul, lambda i: f"{entity.name} key must not contain NUL characters"))
    return arr.fill_null("") if arr.null_count else arr


def _uuid(arr: pa.Array, column: str, entity: Entity, valid: np.ndarray, problems: list[Problem]) -> np.ndarray:
    kind = kind_of(arr.type)
    what = f"{entity.name} keys are {entity.accepts}"
    if kind == "fixed binary":
        if arr.type.byte_width != UUID_LENGTH:
            raise LoadInputError(
                f"key column {column!r} holds {arr.type.byte_width}-byte values; {what}", column=column
            )
        return _fixed_binary(arr, UUID_LENGTH)
    if kind == "binary":
        offsets, data = binary_parts(arr)
        lengths = np.diff(offsets)
        bad = valid & (lengths != UUID_LENGTH)
        if bad.any():
            problems.append(Problem(column, bad, lambda i: f"key is {lengths[i]} bytes; {what}"))
        return fixed_rows(offsets, data, UUID_LENGTH, valid & ~bad)
    if kind != "string":
        raise LoadInputError(f"key column {column!r} is {arr.type}; {what}", column=column)
    # Entity.parse's rule (PostgreSQL's uuid text, or with urn:uuid:): check the form, then keep the hex digits.
    form = pc.match_substring_regex(arr, f"^{UUID_TEXT.pattern}$").fill_null(False).to_numpy(zero_copy_only=False)
    text = pc.replace_substring_regex(
        pc.replace_substring_regex(arr, "^[uU][rR][nN]:[uU][uU][iI][dD]:", ""), "[{}-]", ""
    )
    offsets, data = binary_parts(text.fill_null("") if text.null_count else text)
    ok = valid & form
    keys, _ = _from_hex(fixed_rows(offsets, data, 2 * UUID_LENGTH, ok), ok)
    bad = valid & ~form
    if bad.any():
        problems.append(Problem(column, bad, lambda i: f"key {shown(arr[i].as_py())} is not a UUID; {what}"))
    return keys


def take(keys: Keys, keep: np.ndarray) -> Keys:
    """The keys of the rows kept."""
    return keys.filter(pa.array(keep)) if isinstance(keys, pa.Array) else keys[keep]


def comparable(key_type: str, batches: Sequence[Keys]) -> np.ndarray:
    """Every staged key of a load as (n, w) bytes, w a multiple of 8, equal exactly when the keys are
    (for the duplicate check): raw bytes, an int64's bytes, or a text key's code in one dictionary."""
    if key_type == "text":
        codes = pa.chunked_array(batches, pa.string()).combine_chunks().dictionary_encode().indices
        return codes.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint8).reshape(-1, 8)
    if key_type == "bigint":
        return np.concatenate(batches).astype(np.int64).view(np.uint8).reshape(-1, 8)
    return np.concatenate(batches)
