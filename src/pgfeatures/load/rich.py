"""Strings, timestamps, lists and embeddings of one batch: checked with Arrow and numpy (every invalid row
found, with its reason), and encoded in the binary form COPY takes for their stage columns.

=============  ==========================================  =====================================
feature        a source column may be                       staged as (binary COPY)
=============  ==========================================  =====================================
string         (large_)string, dictionary-encoded too       ``varchar(n)``: the UTF-8 bytes
timestamp      what ``updated_at`` may be (eventtime.py):   ``timestamptz``: int64 microseconds
               timestamps (zoneless: ``event_time_zone``),  since 2000-01-01 UTC
               ISO 8601 with a zone, epoch numbers
list<...>      (large_/fixed_size_)list of the element's    the column's array type: PostgreSQL's
               kind, or text holding a JSON array (CSV)     binary array (below)
embedding      a list of numbers, fixed-size or not, or     the live column's ``vector(dim)``,
               a JSON array; exactly ``dim`` values         ``halfvec(dim)`` or ``real[]`` (below)
=============  ==========================================  =====================================

The rules are ``definitions.types.check_value``'s, vectorized: a string of at most ``max_length``
characters (code points, not bytes), without NUL; a list of at most ``max_length`` elements, none NULL,
numbers finite and in the element type's range, integers integral; an embedding of exactly ``dim``
finite values, each a ``real`` (and for ``halfvec`` at most ±65504). NaN and ±Infinity are refused in
lists and embeddings whatever ``nan``/``inf`` say (as live updates refuse them).

PostgreSQL's binary array (``array_send``): int32 ndim (1), int32 has-null flag (0), int32 element
OID, then per dimension int32 size and int32 lower bound (1), then each element as int32 length and
its bytes. An empty array is sent with ndim 1 and size 0 (``array_recv`` makes it the empty array).
Elements are big-endian (``integer`` int4, ``bigint`` int8, ``real`` float4, ``double`` float8) or
UTF-8 (``varchar``, OID 1043: the element OID must be the column's element type).

Embeddings stage in the live column's own type, fixed width per row (numpy lays a batch out in one
structured array): pgvector's binary ``vector`` (int16 dim, int16 unused, big-endian float4 values) or
``halfvec`` (the same with float2, rounded to nearest even from the float32 value, as pgvector's cast from
``real[]`` rounds), or a ``real[]``. Staging ``real[]`` and letting pgvector's assignment cast make the
vector on apply was simpler but measured 2.5x slower COPY (array_recv calls float4recv per element) for
128 dimensions (65,536 rows: 1.3-1.4 s against 0.5-0.6 s; bench/load_rich.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import Feature
from ..definitions.types import (
    EMBEDDING,
    FLOAT32_MAX,
    FLOAT32_MIN_NORMAL,
    FLOAT32_SHOWN,
    HALF_MAX,
    INT_RANGE,
    NORM_OVERFLOWS,
    NORM_UNDERFLOWS,
    REAL_UNDERFLOW,
    STRING,
    TIMESTAMP,
    FeatureType,
)
from .copy import binary_array, timestamptz_values
from .eventtime import EventClock, instants
from .keys import Problem, decoded, nulls_of, shown

ELEMENT_OIDS = {"integer": 23, "bigint": 20, "real": 700, "double precision": 701, "string": 1043}
_BIG_ENDIAN = {"integer": ">i4", "bigint": ">i8", "real": ">f4", "double precision": ">f8"}
_NATIVE = {"integer": np.int32, "bigint": np.int64, "real": np.float32, "double precision": np.float64}
_HEADER = np.dtype([("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("size", ">i4"), ("lower", ">i4")])
_EMPTY = pa.scalar(b"", pa.large_binary())
CSV_LISTS = 'write lists and embeddings as JSON arrays in one field, e.g. "[1, 2.5]" or "[""a"", ""b""]" in CSV'


def element_of(type_: FeatureType) -> str:
    """A list's element (``integer``, ``bigint``, ``real``, ``double precision``, ``string``); ``real``
    for an embedding."""
    if type_.kind == EMBEDDING:
        return "real"
    assert type_.element is not None
    return "string" if type_.element.kind == STRING else type_.element.name


def rich_column(
    arr: pa.Array, feature: Feature, clock: EventClock, storage: str = "array"
) -> tuple[Any, np.ndarray | None, list[Problem]]:
    """One rich feature's column of a batch: (values for ``encode_copy_rows``, NULL mask, problems).
    ``storage``: an embedding's live column, ``vector``, ``halfvec`` or ``array`` (``real[]``)."""
    type_, column = feature.type, feature.name
    arr = decoded(arr)
    if type_.kind == TIMESTAMP:
        micros, nulls, found = instants(arr, clock, column)
        return timestamptz_values(micros), nulls, found
    if type_.kind == STRING:
        return _strings(arr, column, type_.max_length or 0)
    problems: list[Problem] = []
    element = element_of(type_)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):  # JSON arrays (CSV)
        arr, problems = json_lists(arr, column, pa.string() if element == "string" else _json_element(element))
    if pa.types.is_null(arr.type):
        n = len(arr)
        nulls = np.ones(n, dtype=bool)
        if type_.kind == EMBEDDING:
            return np.zeros((n, _embedding_dtype(type_.dim or 0, storage).itemsize), np.uint8), nulls, problems
        return pa.nulls(n, pa.large_binary()).fill_null(_EMPTY), nulls, problems
    lists = _Lists(arr)
    if type_.kind == EMBEDDING:
        values, found = _embedding(lists, column, type_, storage)
    else:
        values, found = _list(lists, column, type_, element)
    return values, lists.nulls, problems + found


# -- strings -----------------------------------------------------------------------------------------


def _string_checks(arr: pa.Array, max_length: int) -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """(mask, reason) of the strings of ``arr`` that a ``varchar(max_length)`` refuses."""
    out: list[tuple[np.ndarray, Callable[[int], str]]] = []
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # Arrow strings should be UTF-8; a file's may not be: find which
        raw = arr.cast(pa.large_binary()).to_pylist()
        bad = np.array([v is not None and not _is_utf8(v) for v in raw], dtype=bool)
        out.append((bad, lambda i: f"{shown(raw[i])} is not UTF-8 text"))
        return out
    chars = pc.utf8_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    long = chars > max_length
    if long.any():
        out.append(
            (
                long,
                lambda i: (
                    f"a value of {int(chars[i])} characters is longer than max_length {max_length} (refused, never "
                    f"truncated; raise max_length in the definition): {shown(arr[i].as_py()[:40])}..."
                ),
            )
        )
    nul = pc.match_substring(arr, "\x00").fill_null(False).to_numpy(zero_copy_only=False)
    if nul.any():
        out.append(
            (nul, lambda i: f"{shown(arr[i].as_py())} contains a NUL character, which PostgreSQL text cannot hold")
        )
    return out


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _strings(arr: pa.Array, column: str, max_length: int) -> tuple[Any, np.ndarray | None, list[Problem]]:
    n = len(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(n, pa.large_binary()).fill_null(_EMPTY), np.ones(n, dtype=bool), []
    problems = [Problem(column, mask, why) for mask, why in _string_checks(arr, max_length)]
    return arr.cast(pa.large_binary()), nulls_of(arr), problems


# -- lists and embeddings ------------------------------------------------------------------------------


class _Lists:
    """A batch of lists: NULL rows, each row's length and where its elements start in ``flat`` (NULL rows
    hold no elements), and the row of each element."""

    def __init__(self, arr: pa.Array):
        self.n = len(arr)
        self.nulls = nulls_of(arr)
        self.lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        self.starts = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        self.flat = pc.list_flatten(arr)
        assert len(self.flat) == self.starts[-1]
        self._rows: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.repeat(np.arange(self.n), self.lengths)
        return self._rows

    def problem(self, column: str, elements: np.ndarray, why: Callable[[int], str]) -> Problem:
        """The rows holding an element of ``elements`` (a mask over ``flat``); the reason names the first
        such element of the row (``why(e)``: what is wrong with element ``e`` of ``flat``, after "element j")."""
        mask = np.zeros(self.n, dtype=bool)
        mask[self.rows[elements]] = True
        starts = self.starts

        def reason(i: int) -> str:
            e = int(starts[i] + np.argmax(elements[starts[i] : starts[i + 1]]))
            return f"element {e - int(starts[i])}{why(e)}"

        return Problem(column, mask, reason)


def _numbers(lists: _Lists, column: str, element: str, what: str) -> tuple[np.ndarray, list[Problem]]:
    """The elements of numeric lists as ``element``'s numpy type, and their problems (NULL, not finite,
    out of range, not integral). ``what``: "a list's elements" or "an embedding's values"."""
    flat = lists.flat
    problems: list[Problem] = []
    if flat.null_count:
        problems.append(
            lists.problem(
                column,
                flat.is_null().to_numpy(zero_copy_only=False),
                lambda e: (
                    f" is null; {what} may not be NULL" + ("" if "list" in what else " (they must be finite numbers)")
                ),
            )
        )
    flat = flat.fill_null(0) if flat.null_count else flat
    if pa.types.is_null(flat.type):
        flat = pa.array(np.zeros(len(flat)), pa.float64())
    if element in ("integer", "bigint"):
        lo, hi = INT_RANGE[element]
        if pa.types.is_integer(flat.type):
            if flat.type == pa.uint64():
                big = pc.greater(flat, pa.scalar(2**63 - 1, pa.uint64())).to_numpy(zero_copy_only=False)
                if big.any():
                    shown_big = flat
                    problems.append(
                        lists.problem(
                            column,
                            big,
                            lambda e: f" is {shown_big[e].as_py()}, out of range for {element} ({lo}..{hi})",
                        )
                    )
                flat = pc.if_else(pa.array(big), pa.scalar(0, pa.uint64()), flat)
            ints = pc.cast(flat, pa.int64()).to_numpy(zero_copy_only=False)
            outside = (ints < lo) | (ints > hi)
            if outside.any():
                problems.append(
                    lists.problem(
                        column, outside, lambda e: f" is {int(ints[e])}, out of range for {element} ({lo}..{hi})"
                    )
                )
            return np.where(outside, 0, ints).astype(_NATIVE[element]), problems
        floats = pc.cast(flat, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        finite = np.isfinite(floats)
        fraction = ~finite | (floats != np.trunc(np.where(finite, floats, 0)))
        if fraction.any():
            problems.append(lists.problem(column, fraction, lambda e: f" is {float(floats[e])!r}, not an integer"))
        outside = ~fraction & ((floats < lo) | (floats >= hi + 1.0))
        if outside.any():
            problems.append(
                lists.problem(
                    column, outside, lambda e: f" is {float(floats[e])!r}, out of range for {element} ({lo}..{hi})"
                )
            )
        return np.where(fraction | outside, 0, floats).astype(_NATIVE[element]), problems
    if element == "real" and flat.type == pa.float32():
        values = flat.to_numpy(zero_copy_only=False)
    else:
        values = pc.cast(flat, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        given = values
        problems.append(
            lists.problem(column, nonfinite, lambda e: f" is {float(given[e])!r}; {what} must be finite numbers")
        )
    if element == "real" and values.dtype != np.float32:
        with np.errstate(over="ignore"):
            narrowed = values.astype(np.float32)
        over = np.isinf(narrowed) & ~nonfinite
        if over.any():
            wide = values
            problems.append(
                lists.problem(
                    column, over, lambda e: f" is {float(wide[e])!r}, out of range for real (at most ±{FLOAT32_SHOWN})"
                )
            )
        under = (narrowed == 0) & (values != 0) & ~nonfinite  # as a live update refuses it, and PostgreSQL
        if under.any():
            tiny = values
            problems.append(lists.problem(column, under, lambda e: f" is {float(tiny[e])!r}, {REAL_UNDERFLOW}"))
        values = narrowed
    values = np.where(np.isfinite(values), values, 0).astype(_NATIVE[element], copy=False)
    return values, problems


def _headers(lists: _Lists, oid: int) -> pa.Array:
    """Each row's array header (20 bytes; none for a NULL row) as a ``large_binary`` array."""
    heads = np.zeros(lists.n, _HEADER)
    heads["ndim"], heads["oid"], heads["size"], heads["lower"] = 1, oid, lists.lengths, 1
    raw = heads.view(np.uint8).reshape(lists.n, _HEADER.itemsize)
    widths = np.full(lists.n, _HEADER.itemsize, dtype=np.int64)
    if lists.nulls is not None:
        raw, widths[lists.nulls] = raw[~lists.nulls], 0
    offsets = np.zeros(lists.n + 1, dtype=np.int64)
    np.cumsum(widths, out=offsets[1:])
    return binary_array(offsets, np.ascontiguousarray(raw).reshape(-1))


def _after_colon(why: Callable[[int], str]) -> Callable[[int], str]:
    return lambda e: f": {why(e)}"


def _list(lists: _Lists, column: str, type_: FeatureType, element: str) -> tuple[pa.Array, list[Problem]]:
    problems: list[Problem] = []
    if type_.max_length is not None:
        long = lists.lengths > type_.max_length
        if long.any():
            lengths, limit = lists.lengths, type_.max_length
            problems.append(Problem(column, long, lambda i: f"{int(lengths[i])} elements where max_length is {limit}"))
    if element == "string":
        flat = lists.flat
        if flat.null_count:
            problems.append(
                lists.problem(
                    column,
                    flat.is_null().to_numpy(zero_copy_only=False),
                    lambda e: " is null; a list's elements may not be NULL",
                )
            )
            flat = flat.fill_null("")
        if pa.types.is_null(flat.type):
            flat = pa.array([""] * len(flat), pa.string())
        assert type_.element is not None
        for mask, why in _string_checks(flat, type_.element.max_length or 0):
            problems.append(lists.problem(column, mask, _after_colon(why)))
        data = flat.cast(pa.large_binary())
        offsets = np.frombuffer(data.buffers()[1], np.int64, count=len(data) + 1, offset=data.offset * 8)
        prefixes = np.diff(offsets).astype(">i4").view(np.uint8)
        elements = pc.binary_join_element_wise(
            binary_array(np.arange(len(data) + 1, dtype=np.int64) * 4, prefixes), data, _EMPTY
        )
        joined = np.frombuffer(elements.buffers()[1], np.int64, count=len(elements) + 1, offset=elements.offset * 8)
        body = binary_array(joined[lists.starts], elements.buffers()[2])
    else:
        values, found = _numbers(lists, column, element, "a list's elements")
        problems += found
        items = np.empty(len(values), [("length", ">i4"), ("value", _BIG_ENDIAN[element])])
        items["length"], items["value"] = values.dtype.itemsize, values
        body = binary_array(lists.starts * items.dtype.itemsize, items.view(np.uint8))
    return pc.binary_join_element_wise(_headers(lists, ELEMENT_OIDS[element]), body, _EMPTY), problems


def _embedding_dtype(dim: int, storage: str) -> np.dtype:
    """One embedding in the binary form of its stage column: pgvector's ``vector`` (int16 dim, int16
    unused = 0, ``dim`` big-endian float4) or ``halfvec`` (the same with float2), or a ``real[]`` (the
    array header, then ``dim`` (length 4, float4) pairs)."""
    if storage in ("vector", "halfvec"):
        width = ">f2" if storage == "halfvec" else ">f4"
        return np.dtype([("dim", ">i2"), ("unused", ">i2"), ("values", width, (dim,))])
    return np.dtype([("header", _HEADER), ("items", [("length", ">i4"), ("value", ">f4")], (dim,))])


def _norm_reason(squares: np.ndarray, why: str) -> Callable[[int], str]:
    def reason(i: int) -> str:
        return f"its squared norm {float(squares[i]):.3g} {why}"

    return reason


def _embedding(lists: _Lists, column: str, type_: FeatureType, storage: str) -> tuple[np.ndarray, list[Problem]]:
    dim = type_.dim or 0
    problems: list[Problem] = []
    present = np.ones(lists.n, dtype=bool) if lists.nulls is None else ~lists.nulls
    good = present & (lists.lengths == dim)
    wrong = present & ~good
    if wrong.any():
        lengths = lists.lengths
        problems.append(Problem(column, wrong, lambda i: f"{int(lengths[i])} values where the embedding has dim {dim}"))
    values, found = _numbers(lists, column, "real", "an embedding's values")
    problems += found
    if storage == "halfvec":
        with np.errstate(over="ignore"):
            over = np.isinf(values.astype(np.float16))
        if over.any():
            problems.append(
                lists.problem(
                    column,
                    over,
                    lambda e: f" is {float(values[e])!r}, out of range for halfvec (at most ±{HALF_MAX:g})",
                )
            )
    matrix = np.zeros((lists.n, dim), dtype=np.float32)
    if wrong.any():
        matrix[good] = values[np.repeat(good, lists.lengths)].reshape(-1, dim)
    else:
        matrix[good] = values.reshape(-1, dim)
    # As the live path refuses it (definitions/types.py): a squared norm float32 cannot hold, which
    # pgvector's distances are computed in, leaves a vector no search could rank.
    squares = np.einsum("ij,ij->i", matrix.astype(np.float64), matrix.astype(np.float64))
    for bad, why in (
        (good & (squares >= FLOAT32_MAX), NORM_OVERFLOWS),
        (good & (squares > 0) & (squares < FLOAT32_MIN_NORMAL), NORM_UNDERFLOWS),
    ):
        if bad.any():
            problems.append(Problem(column, bad, _norm_reason(squares, why)))
    rows = np.zeros(lists.n, _embedding_dtype(dim, storage))
    if storage in ("vector", "halfvec"):
        rows["dim"] = dim
        with np.errstate(over="ignore"):  # halfvec: values beyond its range are refused above
            rows["values"] = matrix
    else:
        header = rows["header"]
        header["ndim"], header["oid"], header["size"], header["lower"] = 1, ELEMENT_OIDS["real"], dim, 1
        rows["items"]["length"] = 4
        rows["items"]["value"] = matrix
    return rows.view(np.uint8).reshape(lists.n, rows.dtype.itemsize), problems


# -- JSON arrays in text (CSV) ---------------------------------------------------------------------------


def _json_element(element: str) -> pa.DataType:
    return pa.int64() if element in ("integer", "bigint") else pa.float64()


def json_lists(arr: pa.Array, column: str, element: pa.DataType) -> tuple[pa.Array, list[Problem]]:
    """Text holding JSON arrays (``[1, 2.5]``, ``["a", "b"]``) as a list array of ``element`` (int64,
    float64 or string), and the rows that are not such arrays. A JSON ``null`` is NULL.

    Parsed by Arrow's JSON reader, every field wrapped as one line ``{"v": <field>}``: a field cannot
    reach into another line (fields holding a line break are parsed one by one), and a field that adds
    objects to its line changes the row count, which is checked. When Arrow refuses the batch, the
    fields are parsed one by one with Python's ``json`` to find and explain the bad ones.
    """
    import pyarrow.json as pj

    n = len(arr)
    target = pa.list_(element)
    present = ~arr.is_null().to_numpy(zero_copy_only=False)
    broken = pc.match_substring_regex(arr, "[\r\n]").fill_null(False).to_numpy(zero_copy_only=False)
    fast = present & ~broken
    parsed: pa.Array | None = None
    if fast.any():
        text = arr.filter(pa.array(fast)).cast(pa.large_string())
        lines = pc.binary_join_element_wise(
            pa.scalar('{"v":', pa.large_string()),
            text,
            pa.scalar("}\n", pa.large_string()),
            pa.scalar("", pa.large_string()),
        )
        offsets = np.frombuffer(lines.buffers()[1], np.int64, count=len(lines) + 1, offset=lines.offset * 8)
        data = lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]
        try:
            table = pj.read_json(
                pa.BufferReader(data),
                read_options=pj.ReadOptions(use_threads=False, block_size=min(max(len(data) + 1, 1 << 20), 2**31 - 1)),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema([("v", target)]), unexpected_field_behavior="error"
                ),
            )
            if table.num_rows == len(text):
                parsed = table.column("v").combine_chunks().cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            pass
    slow = present & ~fast if parsed is not None else present
    problems: list[Problem] = []
    parts, positions = [], np.zeros(n, dtype=np.int64)
    if parsed is not None:
        parts.append(parsed)
        positions[fast] = np.arange(int(fast.sum()))
    if slow.any():
        rows = np.flatnonzero(slow)
        values, reasons = [], {}
        for i, field in zip(rows, arr.filter(pa.array(slow)).to_pylist()):
            value, why = _json_list(field, element)
            values.append(value)
            if why is not None:
                reasons[int(i)] = why
        positions[slow] = sum(len(p) for p in parts) + np.arange(len(rows))
        parts.append(pa.array(values, target))
        if reasons:
            bad = np.zeros(n, dtype=bool)
            bad[list(reasons)] = True
            problems.append(Problem(column, bad, lambda i: reasons[i]))
    if not parts:
        return pa.nulls(n, target), problems
    whole = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
    return whole.take(pa.array(positions, mask=~present)), problems


def _json_list(field: str, element: pa.DataType) -> tuple[list[Any] | None, str | None]:
    """One field parsed by Python's ``json``: (the list, None), or (None, why it is refused)."""
    try:
        value = json.loads(field)
    except ValueError as exc:
        where = f" ({exc.msg} at character {exc.pos + 1})" if isinstance(exc, json.JSONDecodeError) else ""
        return None, f"{shown(field)} is not a JSON array{where}; {CSV_LISTS}"
    if value is None:
        return None, None
    if not isinstance(value, list):
        return None, f"{shown(field)} is not a JSON array; {CSV_LISTS}"
    for j, x in enumerate(value):
        if x is None:
            continue  # NULL elements are refused with the others' rules (rich_column)
        if element == pa.string():
            if not isinstance(x, str):
                return None, f"element {j} is {shown(x)}, not a string"
            try:
                x.encode()
            except UnicodeEncodeError:
                return None, f"element {j} is {shown(x)}, not valid Unicode (a lone surrogate)"
        elif isinstance(x, bool) or not isinstance(x, (int, float)):
            return None, f"element {j} is {shown(x)}, not {'an integer' if element == pa.int64() else 'a number'}"
        elif element == pa.int64():
            if isinstance(x, float):
                return None, f"element {j} is {x!r}, not an integer"
            if not -(2**63) <= x < 2**63:
                return None, f"element {j} is {x}, out of range for bigint ({-(2**63)}..{2**63 - 1})"
        elif isinstance(x, int):
            try:
                value[j] = float(x)
            except OverflowError:
                return None, f"element {j} is {x}, out of range for a number"
    return value, None
