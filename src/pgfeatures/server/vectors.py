"""A feature service's vector over HTTP: as JSON, or as raw little-endian numbers.

JSON: ``{"key", "values": [...], "status": {table: "present" | "missing" | "expired"}}``, the
values in the service's order, its transforms' outputs last (``GET /v1/services/{name}`` publishes it
as ``names``); a missing
value is null; ``real`` values print as the shortest decimal that reads back as the same float32;
a stored non-finite value is the string ``"Infinity"``, ``"-Infinity"`` or ``"NaN"`` (never null).

``application/octet-stream`` (``Accept``): the values as one little-endian array, ``float32`` when
every feature of the vector is ``real``, else ``float64`` (integers and booleans as numbers, 1 and 0;
a ``bigint`` beyond 2^53 is rounded; an event time as epoch seconds), a missing value as NaN. Stored
±Infinity is ±Infinity, and a stored NaN is NaN too (so in this form NaN is NULL or NaN; writes refuse NaN by
default). A batch is its rows concatenated (row-major, ``rows x columns``). After the values comes the **status
trailer**: one byte per row
and table, ``0`` present, ``1`` missing, ``2`` expired, rows in order, tables in the order of the
``X-Pgfeatures-Tables`` header. Headers: ``X-Pgfeatures-Rows``, ``X-Pgfeatures-Columns``,
``X-Pgfeatures-Dtype`` (``float32`` / ``float64``), ``X-Pgfeatures-Tables``. In numpy::

    rows, cols = int(h["x-pgfeatures-rows"]), int(h["x-pgfeatures-columns"])
    dtype = "<f4" if h["x-pgfeatures-dtype"] == "float32" else "<f8"
    values = np.frombuffer(body, dtype, count=rows * cols).reshape(rows, cols)
    status = np.frombuffer(body, np.uint8, offset=values.nbytes).reshape(rows, -1)

The status goes last, not in a header, because a batch's statuses (rows x tables) outgrow what
clients accept in headers (h11, httpx's HTTP/1.1 parser, takes 16 KiB), and because a streamed
batch's headers leave before its rows are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from ..definitions import Registry, nonfinite_json
from ..reader import EXPIRED, MISSING, PRESENT
from ..reader.answer import vector_answer
from ..reader.transforms import ServiceTransforms
from ..reader.vector import ServiceVector, as_numbers, event_time_positions, service_order, value_types
from .encoding import json_real

OCTET_STREAM = "application/octet-stream"
STATUS_CODES = {PRESENT: 0, MISSING: 1, EXPIRED: 2}
_F32 = np.float32


class VectorPlan:
    """How one vector reader's vectors are encoded: the names and types of its columns, the tables
    of its status, the dtype of its raw form."""

    __slots__ = ("names", "types", "tables", "all_real", "reals", "doubles", "dtype", "_np", "_times")

    def __init__(self, reader: Any, registry: Registry, outputs: ServiceTransforms | None = None):
        selection = reader.selection
        service = registry.service(selection.service)
        stored = service_order(reader, service.vector_order(registry))
        kinds = outputs.types if outputs is not None else {}
        self.names = stored + tuple(kinds)  # a transform's outputs come after the stored features
        self.types = tuple(value_types(stored, registry)) + tuple(kinds.values())
        self.tables = selection.tables
        self.all_real = all(t == "real" for t in self.types)
        self.reals = () if self.all_real else tuple(i for i, t in enumerate(self.types) if t == "real")
        self.doubles = tuple(i for i, t in enumerate(self.types) if t == "double precision")
        self.dtype = "float32" if self.all_real else "float64"
        self._np = np.dtype("<f4" if self.all_real else "<f8")
        self._times = event_time_positions(self.names, registry, kinds)  # raw: as epoch seconds

    # -- JSON ----------------------------------------------------------------------------------------

    def rows(self, keys: Sequence[Any], vectors: Sequence[ServiceVector]) -> list[dict[str, Any]]:
        """The JSON objects of these vectors (real values as float32: numpy prints them shortest)."""
        if not vectors:
            return []
        if self.all_real:
            # One conversion for the chunk; each row is a contiguous view, None became NaN (printed null).
            matrix = np.array([v.values for v in vectors], dtype=_F32)
            rows: list[Any] = list(matrix)
            finite = np.isfinite(matrix)
            if not finite.all():  # a missing value (None reads as NaN), or a stored non-finite one: tell them apart
                for i in np.flatnonzero(~finite.all(axis=1)).tolist():
                    values = vectors[i].values
                    where = np.flatnonzero(~finite[i]).tolist()
                    given = itemgetter(*where)(values) if len(where) > 1 else (values[where[0]],)  # picked in C
                    if given.count(None) != len(given):  # a stored non-finite value: the row as a list
                        rows[i] = [None if v is None else json_real(v) for v in values]
            return [vector_answer(k, row, v.status) for k, row, v in zip(keys, rows, vectors)]
        return [vector_answer(k, self._mixed(v.values), v.status) for k, v in zip(keys, vectors)]

    def _mixed(self, values: Sequence[Any]) -> list[Any]:
        out = list(values)
        for i in self.reals:
            v = out[i]
            if v is not None:
                out[i] = json_real(v)
        for i in self.doubles:
            v = out[i]
            if v is not None and v - v:  # inf - inf and NaN - NaN are NaN, which is true
                out[i] = nonfinite_json(v)
        return out

    # -- raw -----------------------------------------------------------------------------------------

    def headers(self, rows: int) -> dict[str, str]:
        return {
            "X-Pgfeatures-Rows": str(rows),
            "X-Pgfeatures-Columns": str(len(self.names)),
            "X-Pgfeatures-Dtype": self.dtype,
            "X-Pgfeatures-Tables": ",".join(self.tables),
        }

    def values(self, vectors: Sequence[ServiceVector]) -> bytes:
        """The rows' values, concatenated, little-endian (None as NaN)."""
        if not vectors:
            return b""
        return np.array([as_numbers(v.values, self._times) for v in vectors], dtype=self._np).tobytes()

    def status(self, vectors: Iterable[ServiceVector]) -> bytes:
        """One byte per row and table (0 present, 1 missing, 2 expired), tables in ``self.tables``' order."""
        codes, tables = STATUS_CODES, self.tables
        return bytes(codes[v.status[t]] for v in vectors for t in tables)


class OctetBatch:
    """A batch of vectors as raw values in pieces, the status trailer last (see the module docstring)."""

    content_type = OCTET_STREAM

    def __init__(self, plan: VectorPlan, rows: int):
        self.plan = plan
        self.headers = plan.headers(rows)
        self._status = bytearray()

    def start(self) -> bytes:
        return b""

    def chunk(self, keys: Sequence[Any], vectors: Sequence[ServiceVector]) -> bytes:
        self._status += self.plan.status(vectors)
        return self.plan.values(vectors)

    def end(self) -> bytes:
        return bytes(self._status)
