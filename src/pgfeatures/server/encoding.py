"""How results become JSON: the answer's shape, ``real`` features printed as float32, batches in pieces.

A result is ``{"key", "features": {table: {feature: value} | null}, "status": {table: "present" |
"missing" | "expired"}, "missing": [tables not present]}`` (built by ``reader/answer.py``, as the CLI's): a
table that is not present maps to null, or to its features' defaults when it has some, so ``status``
says which it is.

``real`` features: the store decodes a ``real`` value into a Python float
holding the exact float32 value, which a JSON encoder prints as the shortest
decimal of that *double* (``0.10999999940395355`` for a stored ``0.11``).
The service answers with the shortest decimal that reads back as the same
float32 (``0.11``): each real value becomes a ``numpy.float32`` scalar, which
orjson (``OPT_SERIALIZE_NUMPY``) prints shortest for float32. The values are
not changed, only how they are printed: parse the JSON number and round it
to float32 and you have the stored value, bit for bit.

Non-finite values: JSON has no number for ±Infinity or NaN (orjson prints
``null``, which would read as NULL under ``present``), so a stored non-finite
``real`` or ``double precision`` value is answered as the string
``"Infinity"``, ``"-Infinity"`` or ``"NaN"`` (``definitions.nonfinite_json``;
the OpenAPI value schema declares them). Writes refuse them by default.

Cost: the values of every all-``real`` table of a request (or of a batch
chunk) go through one ``numpy.fromiter`` and come back as scalars, so the
per-value work stays in C (one ``isfinite`` over the same array finds a
non-finite value); tables that mix ``real`` with other types convert their
real values one by one, and ``double precision`` values are checked one by
one. Measured by ``pgfeatures bench-http`` (docs/http.md): on the order of
10-20 µs per 30-table request.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain
from typing import Any

import numpy as np
import orjson

from ..definitions import nonfinite_json
from ..reader import Features, Selection
from ..reader.answer import answer
from ..reader.transforms import ServiceTransforms

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_UTC_Z  # event times (aware UTC datetimes): RFC 3339, "Z"
_F32 = np.float32


def dumps(payload: Any) -> bytes:
    """JSON of a payload that may hold numpy float32 scalars."""
    return orjson.dumps(payload, option=OPTIONS)


def json_real(value: float) -> Any:
    """A ``real`` value for JSON: its float32 scalar (printed shortest), or the string of a non-finite one."""
    return _F32(value) if value - value == 0 else nonfinite_json(value)


def result(key: Any, features: Features) -> dict[str, Any]:
    """One request's answer (``reader.answer``); ``key`` as the request sent it."""
    return answer(key, features, features.status)


def json_outputs(results: Iterable[Features], outputs: ServiceTransforms) -> None:
    """The transforms' outputs of ``results`` (dict answers) made ready for JSON as stored values are:
    ``real`` ones as float32 scalars (printed shortest), non-finite ones as their strings."""
    floats = [
        (
            t.name,
            [
                (o, outputs.types[f"{t.name}.{o}"] == "real")
                for o in t.outputs
                if outputs.types[f"{t.name}.{o}"] in _FLOATS
            ],
        )
        for t in outputs.transforms
    ]
    floats = [(name, outs) for name, outs in floats if outs]
    if not floats:
        return
    for r in results:
        for name, outs in floats:
            values = r[name]
            if values is None:
                continue
            for o, real in outs:
                v = values[o]
                if v is not None:
                    values[o] = json_real(v) if real else v if v - v == 0 else nonfinite_json(v)


_FLOATS = ("real", "double precision")


class Float32Plan:
    """Which values of a request shape are ``real`` or ``double precision``, and how they become JSON:
    real values as float32 scalars, non-finite ones (either type) as their strings."""

    __slots__ = ("all_real", "mixed", "doubles", "real_lists", "double_lists")

    def __init__(self, selection: Selection):
        self.all_real: list[str] = []  # tables whose every asked feature is real
        self.mixed: list[tuple[str, tuple[str, ...]]] = []  # tables with some: (table, real feature names)
        self.doubles: list[tuple[str, tuple[str, ...]]] = []  # tables with double precision features
        self.real_lists: list[tuple[str, tuple[str, ...]]] = []  # embeddings and list<real>: float32 arrays
        self.double_lists: list[tuple[str, tuple[str, ...]]] = []  # list<double>: checked for non-finite values
        for table, features in selection.items:
            real = tuple(f.name for f in features if f.type.name == "real")
            if real and len(real) == len(features):
                self.all_real.append(table.name)
            elif real:
                self.mixed.append((table.name, real))
            double = tuple(f.name for f in features if f.type.name == "double precision")
            if double:
                self.doubles.append((table.name, double))
            lists = tuple(f.name for f in features if f.type.float32_elements)
            if lists:
                self.real_lists.append((table.name, lists))
            doubles = tuple(
                f.name
                for f in features
                if f.type.kind == "list" and f.type.element is not None and f.type.element.name == "double precision"
            )
            if doubles:
                self.double_lists.append((table.name, doubles))

    @property
    def empty(self) -> bool:
        return not (self.all_real or self.mixed or self.doubles or self.real_lists or self.double_lists)

    def apply(self, results: Sequence[Features]) -> None:
        """Replace, in place, every real value of these results by its numpy.float32 (exact: the
        value already is a float32, widened), and every non-finite real or double by its string."""
        if self.all_real:
            present = [d for r in results for t in self.all_real if (d := r[t]) is not None]
            if present:
                try:
                    array = np.fromiter(chain.from_iterable([d.values() for d in present]), _F32)
                except TypeError:  # a value numpy does not take: convert value by value
                    for d in present:
                        for k, v in d.items():
                            if v is not None:
                                d[k] = json_real(v)
                else:
                    scalars: list[Any] = list(array)
                    finite = np.isfinite(array)
                    if not finite.all():  # NULL (None reads as NaN) or a stored non-finite value: tell them apart
                        ends = list(accumulate(map(len, present)))
                        for i in np.flatnonzero(~finite).tolist():
                            j = bisect_right(ends, i)
                            v = list(present[j].values())[i - (ends[j - 1] if j else 0)]
                            scalars[i] = None if v is None else nonfinite_json(v)
                    # In place, in the order fromiter read them (measured faster than building new dicts).
                    take = iter(scalars).__next__
                    for d in present:
                        for k in d:
                            d[k] = take()
        for r in results:
            for t, names in self.mixed:
                d = r[t]
                if d is not None:
                    for name in names:
                        v = d[name]
                        if v is not None:
                            d[name] = json_real(v)
            for t, names in self.real_lists:  # one float32 array each: printed shortest, in C
                d = r[t]
                if d is not None:
                    for name in names:
                        v = d[name]
                        if v is not None:
                            array = np.asarray(v, dtype=_F32)
                            # Writes refuse non-finite elements, but a value written around pgfeatures may hold
                            # one: as its string, never as the null orjson would print for NaN.
                            d[name] = array if np.isfinite(array).all() else [json_real(x) for x in v]
            for t, names in self.double_lists:
                d = r[t]
                if d is not None:
                    for name in names:
                        v = d[name]
                        if v is not None and not all(x - x == 0 for x in v):  # inf - inf, NaN - NaN: NaN
                            d[name] = [x if x - x == 0 else nonfinite_json(x) for x in v]
            for t, names in self.doubles:
                d = r[t]
                if d is not None:
                    for name in names:
                        v = d[name]
                        if v is not None and v - v:  # inf - inf and NaN - NaN are NaN, which is true
                            d[name] = nonfinite_json(v)


def results(keys: Sequence[Any], features: Iterable[Features]) -> list[dict[str, Any]]:
    """The answers of a chunk of a batch, in order."""
    return [result(k, r) for k, r in zip(keys, features)]


class JSONBatch:
    """A batch answer ``{"results": [...]}`` in pieces: ``start()``, one ``chunk()`` per chunk of
    results (comma-separated across chunks), ``end()``. ``rows(keys, results)`` makes a chunk's
    objects (default: ``results``; vectors: ``VectorPlan.rows``)."""

    content_type = "application/json"

    def __init__(self, rows: Callable[[Sequence[Any], Sequence[Any]], list[Any]] = results):
        self.rows = rows
        self.headers: dict[str, str] = {}
        self._first = True

    def start(self) -> bytes:
        return BATCH_HEAD

    def chunk(self, keys: Sequence[Any], chunk: Sequence[Any]) -> bytes:
        body = dumps(self.rows(keys, chunk))[1:-1]  # drop the chunk's own brackets
        if not body:
            return b""
        if self._first:
            self._first = False
            return body
        return b"," + body

    def end(self) -> bytes:
        return BATCH_TAIL


BATCH_HEAD = b'{"results":['
BATCH_TAIL = b"]}"
