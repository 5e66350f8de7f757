"""One batch's values, checked and encoded: Arrow columns to numpy with every invalid row found
(nulls, NaN and ±Infinity per policy, out-of-range and non-integral values, malformed keys; strings,
timestamps, lists and embeddings in rich.py), then the binary COPY rows.
Vectorized throughout; the only per-row Python is SHA-256 of natural ids (keys.py checks the keys) and,
when Arrow's JSON reader refuses a batch of CSV lists, finding which fields are bad (rich.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import UPDATED_AT, Feature
from ..definitions.types import FLOAT32_SHOWN, REAL_UNDERFLOW, SCALAR
from ..errors import LoadInputError
from ..write import INT_RANGE
from .columns import ACCEPTS, Columns, column_problem, kind_of
from .copy import encode_copy_rows, key_values, timestamptz_values
from .eventtime import EventClock, event_times
from .keys import Keys, Problem, decoded, key_column, nulls_of, take
from .options import MAX_EXAMPLES, InfPolicy, LoadOptions, NanPolicy, OnInvalid
from .rich import rich_column

_NP_TYPE = {
    "real": np.float32,
    "double precision": np.float64,
    "smallint": np.int16,
    "integer": np.int32,
    "bigint": np.int64,
    "boolean": np.bool_,
}


def _float_column(
    arr: pa.Array, column: str, type_name: str, nan: NanPolicy, inf: InfPolicy
) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
    nulls = nulls_of(arr)
    if type_name == "real" and arr.type == pa.float32():
        values = arr.to_numpy(zero_copy_only=False)
    else:
        values = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    problems: list[Problem] = []
    isnan = np.isnan(values)
    if nulls is not None:
        isnan &= ~nulls
    if isnan.any():
        if nan is NanPolicy.NULL:
            nulls = isnan if nulls is None else nulls | isnan
        else:
            problems.append(
                Problem(column, isnan, lambda i: "NaN is not allowed (nan='null' / --nan null loads NaN as NULL)")
            )
    if inf is not InfPolicy.KEEP:
        isinf = np.isinf(values)
        if isinf.any():
            given = values
            problems.append(
                Problem(
                    column,
                    isinf,
                    lambda i: (
                        f"{float(given[i])!r} is infinite, which this store refuses "
                        "by default (inf='keep' / --inf keep loads it)"
                    ),
                )
            )
    if type_name == "real" and values.dtype != np.float32:
        with np.errstate(over="ignore"):
            narrowed = values.astype(np.float32)
        over = np.isinf(narrowed) & np.isfinite(values)
        if over.any():
            wide = values
            problems.append(
                Problem(
                    column, over, lambda i: f"{float(wide[i])!r} is out of range for real (at most ±{FLOAT32_SHOWN})"
                )
            )
        under = (narrowed == 0) & (values != 0) & ~np.isnan(values)  # as a live update refuses it, and PostgreSQL
        if under.any():
            tiny = values
            problems.append(Problem(column, under, lambda i: f"{float(tiny[i])!r} is {REAL_UNDERFLOW}"))
        values = narrowed
    return values, nulls, problems


def _int_column(
    arr: pa.Array, column: str, type_name: str, nan: NanPolicy
) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
    lo, hi = INT_RANGE[type_name]
    nulls = nulls_of(arr)
    problems: list[Problem] = []
    if pa.types.is_integer(arr.type) or pa.types.is_null(arr.type):
        values = (arr.fill_null(0) if nulls is not None else arr).to_numpy(zero_copy_only=False)
        if pa.types.is_null(arr.type):
            values = np.zeros(len(arr), dtype=np.int64)
        info = np.iinfo(values.dtype)
        if info.min < lo or info.max > hi:
            bad = values > hi if info.min >= 0 else (values < lo) | (values > hi)
            if bad.any():
                problems.append(
                    Problem(column, bad, lambda i: f"{int(values[i])} is out of range for {type_name} ({lo}..{hi})")
                )
        return values.astype(_NP_TYPE[type_name], copy=False), nulls, problems
    floats = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    isnan = np.isnan(floats)
    if nulls is not None:
        isnan &= ~nulls
    if isnan.any():
        if nan is NanPolicy.NULL:
            nulls = isnan if nulls is None else nulls | isnan
        else:
            problems.append(
                Problem(column, isnan, lambda i: "NaN is not allowed (nan='null' / --nan null loads NaN as NULL)")
            )
    finite = np.isfinite(floats)
    fraction = finite & (floats != np.trunc(np.where(finite, floats, 0)))
    if fraction.any():
        problems.append(
            Problem(column, fraction, lambda i: f"{float(floats[i])!r} is not an integer ({type_name} column)")
        )
    outside = np.isinf(floats) | (finite & ((floats < lo) | (floats >= hi + 1.0)))
    if outside.any():
        problems.append(
            Problem(column, outside, lambda i: f"{float(floats[i])!r} is out of range for {type_name} ({lo}..{hi})")
        )
    ok = finite & ~fraction & ~outside
    return np.where(ok, floats, 0).astype(_NP_TYPE[type_name]), nulls, problems


def _bool_column(arr: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
    nulls = nulls_of(arr)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=np.bool_), nulls, []
    return (arr.fill_null(False) if nulls is not None else arr).to_numpy(zero_copy_only=False), nulls, []


def _feature_column(
    arr: pa.Array,
    feature: Feature,
    nan: NanPolicy,
    inf: InfPolicy = InfPolicy.REJECT,
    clock: EventClock | None = None,
    options: LoadOptions | None = None,
    storage: str = "array",
) -> tuple[Any, np.ndarray | None, list[Problem]]:
    arr = decoded(arr)
    if feature.type.kind != SCALAR:  # strings, timestamps, lists, embeddings: rich.py
        problem = column_problem("", feature.name, arr.type, feature.type, options or LoadOptions())
        if problem is not None:  # CSV and iterables are typed only now
            raise LoadInputError(problem.removeprefix(": "), column=feature.name)
        assert clock is not None
        return rich_column(arr, feature, clock, storage)
    kind = kind_of(arr.type)
    if kind not in ACCEPTS[feature.type.name]:  # CSV and iterables are typed only now
        raise LoadInputError(
            f"column {feature.name!r} is {arr.type}, which cannot load into {feature.type.name}", column=feature.name
        )
    if feature.type.name in ("real", "double precision"):
        return _float_column(arr, feature.name, feature.type.name, nan, inf)
    if feature.type.name == "boolean":
        return _bool_column(arr, feature.name)
    return _int_column(arr, feature.name, feature.type.name, nan)


def _kept(values: Any, keep: np.ndarray) -> Any:
    """The rows ``keep`` of a column's values (a numpy array, or an Arrow array of value bytes)."""
    return values.filter(pa.array(keep)) if isinstance(values, pa.Array) else values[keep]


# -- one batch: validate, encode ------------------------------------------------------------------


@dataclass
class Staged:
    payload: memoryview
    keys: Keys  # of the rows staged (keys.py: per key type)
    seqs: np.ndarray  # their ordinals across the whole load
    rejected: int
    examples: list[str]
    stamps: np.ndarray | None = None  # their event times (epoch microseconds), when the source has updated_at


def stage_batch(
    batch: pa.RecordBatch,
    columns: Columns,
    options: LoadOptions,
    clock: EventClock,
    source: str,
    first_row: int,
    seq0: int,
) -> Staged:
    """Validate and encode one batch. ``first_row`` is the 1-based row number of its first row in ``source``;
    ``clock`` fills and checks event times (eventtime.py).

    Raises LoadInputError for the first invalid row (on_invalid="abort"); with "skip", invalid
    rows are left out and counted.
    """
    n = batch.num_rows
    try:
        keys, problems = key_column(batch.column(columns.key), columns.key, columns.entity, bool(options.hash_keys))
        encoded: list[tuple[Any, np.ndarray | None]] = []
        for feature in columns.features:
            values, nulls, found = _feature_column(
                batch.column(feature.name),
                feature,
                options.nan,  # type: ignore[arg-type]
                options.inf,  # type: ignore[arg-type]
                clock,
                options,
                columns.storage_of(feature.name),
            )
            encoded.append((values, nulls))
            problems += found
        stamps = None
        if columns.updated_at:
            stamps, found = event_times(batch.column(UPDATED_AT), clock)
            encoded.append((timestamptz_values(stamps), None))
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
            raise LoadInputError(
                f"{source}: row {first_row + i}, column {first.column!r}: {first.reason(i)}",
                source=source,
                column=first.column,
                row=first_row + i,
            )
        for i in np.flatnonzero(bad)[:MAX_EXAMPLES]:
            p = next(p for p in problems if p.mask[i])
            examples.append(f"{source}: row {first_row + int(i)}, column {p.column!r}: {p.reason(int(i))}")
        keep = ~bad
        rejected = int(bad.sum())
        keys, seqs = take(keys, keep), seqs[keep]
        encoded = [(_kept(v, keep), None if m is None else m[keep]) for v, m in encoded]
        stamps = None if stamps is None else stamps[keep]
    payload = (
        encode_copy_rows([(key_values(columns.entity.key_type, keys), None), *encoded, (seqs, None)])
        if len(seqs)
        else memoryview(b"")
    )
    return Staged(payload, keys, seqs, rejected, examples, stamps)
