"""The answer to a request, as every front end shows it (pure): built here once for HTTP and the CLI.

One request::

    {"key": <the key as sent>, "features": {table: {feature: value} | null},
     "status": {table: "present" | "missing" | "expired"}, "missing": [tables not present]}

A service's vector: ``{"key", "values": [...], "status"}`` (values in the service's order). A batch is
``{"results": [...]}`` of those, in input order.

Nearest neighbours (``nearest_answer``)::

    {"table", "feature", "metric", "search": "hnsw" | "exact", "ef_search": n | null,
     "neighbours": [{"key", "distance", "features": {feature: value}}, ...]}

with each key as the database holds it, printed as requests write keys: 32-byte keys as 64 hex
characters (for a hashed entity, its SHA-256: the natural id is not stored), UUIDs as text.

How a value is printed is the front end's: JSON has no float32, so a ``real`` value is printed as
the shortest decimal that reads back as the same float32 (``0.11``), and a non-finite one as its
string (``"Infinity"``): the server does it in bulk with numpy (``server/encoding.py``), the CLI,
which the core install runs without numpy, value by value (``shortest_real``). ``Reals`` says which
values those are, computed once per request shape.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..definitions import nonfinite_json
from .decode import PRESENT
from .nearest import Nearest
from .selection import Selection

_FLOAT32 = struct.Struct("<f")


def missing(status: Mapping[str, str]) -> list[str]:
    """The tables of an answer that are not present (missing or expired), in the answer's order."""
    return [t for t, s in status.items() if s != PRESENT]


def answer(key: Any, features: Mapping[str, Any], status: Mapping[str, str]) -> dict[str, Any]:
    """One request's answer; ``key`` as the request sent it."""
    return {"key": key, "features": features, "status": status, "missing": missing(status)}


def vector_answer(key: Any, values: Any, status: Mapping[str, str]) -> dict[str, Any]:
    """One request's service vector; ``key`` as the request sent it."""
    return {"key": key, "values": values, "status": status}


def json_key(key: Any) -> Any:
    """A key read from an entity's column as requests write it: bytes as hex, a UUID as text, else as it is."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key).hex()
    if isinstance(key, uuid.UUID):
        return str(key)
    return key


def nearest_answer(found: Nearest, features: Sequence[Any]) -> dict[str, Any]:
    """A nearest-neighbour answer; ``features``: each neighbour's features as the front end prints them."""
    return {
        "table": found.table,
        "feature": found.feature,
        "metric": found.metric,
        "search": found.search,
        "ef_search": found.ef_search,
        "neighbours": [
            {"key": json_key(n.key), "distance": plain_json(n.distance), "features": f}
            for n, f in zip(found.neighbours, features)
        ],
    }


class Reals:
    """Which values of a request shape are ``real``: per table, and as positions of a vector in ``names``'
    order (a non-finite value of any type prints as its string: ``plain_json``)."""

    __slots__ = ("tables", "positions", "lists")

    def __init__(self, selection: Selection, names: Sequence[str] = (), outputs: Mapping[str, str] | None = None):
        """``outputs``: the type names of a service's transform outputs (``transform.output``), printed alike."""
        self.tables = {t.name: frozenset(f.name for f in fs if f.type.name == "real") for t, fs in selection.items}
        self.lists = {t.name: frozenset(f.name for f in fs if f.type.float32_elements) for t, fs in selection.items}
        kind = {f"{t.name}.{f.name}": f.type.name for t, fs in selection.items for f in fs}
        for name, type_name in (outputs or {}).items():
            kind[name] = type_name
            table, _, output = name.partition(".")
            if type_name == "real":
                self.tables[table] = self.tables.get(table, frozenset()) | {output}
        self.positions = tuple(i for i, n in enumerate(names) if kind.get(n) == "real")

    def features(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``{table: {feature: value} | None}`` with real values shortest and non-finite ones as strings."""
        out: dict[str, Any] = {}
        for table, values in result.items():
            if values is None:
                out[table] = None
                continue
            real = self.tables.get(table, frozenset())
            lists = self.lists.get(table, frozenset())
            out[table] = {
                f: shortest_json(v) if f in real else shortest_list(v) if f in lists else plain_value(v)
                for f, v in values.items()
            }
        return out

    def vector(self, values: Sequence[Any]) -> list[Any]:
        """A vector's values, printed as ``features`` prints them."""
        out = [plain_json(v) for v in values]
        for i in self.positions:
            out[i] = shortest_json(values[i])
        return out


def shortest_real(x: float) -> float:
    """The float with the shortest decimal form that reads back as the same float32 as ``x`` (a
    value read from a ``real`` column): ``0.10999999940395355`` -> ``0.11``. Non-finite values as they are."""
    if not math.isfinite(x):
        return x
    target = _FLOAT32.pack(x)
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        candidate = float(f"{x:.{digits}g}")
        try:
            if _FLOAT32.pack(candidate) == target:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return x


def shortest_list(values: Any) -> Any:
    """A list of ``real`` values (an embedding) for JSON, each printed shortest (a non-finite one, which only a
    write around pgfeatures can store, as its string)."""
    return None if values is None else [shortest_json(v) for v in values]


def plain_value(value: Any) -> Any:
    """A value for JSON (``plain_json``), a list's elements too (a ``list<double>`` written around pgfeatures
    may hold a non-finite one)."""
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return plain_json(value)


def shortest_json(value: Any) -> Any:
    """A ``real`` value for JSON: its shortest float32 form, a non-finite one as its string."""
    return shortest_real(value) if isinstance(value, float) and math.isfinite(value) else plain_json(value)


def plain_json(value: Any) -> Any:
    """A value for JSON: a non-finite float as its string (JSON has no number for it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_json(value)
    return value
