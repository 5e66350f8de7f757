"""Live updates: upserts and partial updates of entities, planned in pure code (no I/O).

``plan_updates`` turns ``{key: {feature: value}}`` for one table into
statements the sync and async stores run in one round-trip. Each statement
upserts every row that sets the same columns, with the columns as arrays::

    INSERT INTO s.t (hashkey, f1, f2)
    SELECT * FROM unnest($1::bytea[], $2::real[], $3::integer[])
    ON CONFLICT (hashkey) DO UPDATE SET f1 = EXCLUDED.f1, f2 = EXCLUDED.f2, updated_at = EXCLUDED.updated_at

so one statement text serves any number of rows and is prepared once per
(table, columns) on each write connection. Semantics:

- upsert: a new key gets a row (features not given are NULL); an existing
  key gets only the given features changed (partial update);
- ``updated_at`` is set to the statement's time (the column default, which
  ``EXCLUDED`` carries) unless the values include ``updated_at``;
- ``None`` writes NULL;
- a key given twice in one batch: its values are merged in order, later
  values winning;
- values are checked before any I/O (type, integer range, float32 range for
  ``real``, NaN per policy): FeatureValueError names the table, feature, key
  and what is valid.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .definitions import KEY_COLUMN, UPDATED_AT, UPDATED_AT_FEATURE, Feature, FeatureTable, Registry
from .errors import FeatureValueError, UnknownFeatureError
from .reader import parse_key

Values = Mapping[str, Any]
UpdateRows = Mapping[bytes | str, Values] | Iterable[tuple[bytes | str, Values]]

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite real
INT_RANGE = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
NAN_POLICIES = ("reject", "null")


@dataclass(frozen=True)
class Upsert:
    """One compiled upsert: ``statement`` takes a ``bytea[]`` of keys then one array per feature."""

    table: str
    features: tuple[Feature, ...]
    statement: bytes


@functools.lru_cache(maxsize=512)
def compile_upsert(schema: str, table: FeatureTable, names: tuple[str, ...]) -> Upsert:
    """The upsert of ``names`` (features of ``table``, possibly ``updated_at``), in table order."""
    features = tuple(table.select(names))
    cols = [sql.Identifier(KEY_COLUMN), *(sql.Identifier(f.name) for f in features)]
    arrays = [sql.SQL("$1::bytea[]")] + [sql.SQL(f"${i + 2}::{f.type.name}[]") for i, f in enumerate(features)]
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f.name)) for f in features if f.name != UPDATED_AT]
    sets.append(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(UPDATED_AT)))
    query = sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        sql.Identifier(schema, table.name), sql.SQL(", ").join(cols), sql.SQL(", ").join(arrays),
        sql.Identifier(KEY_COLUMN), sql.SQL(", ").join(sets),
    )
    return Upsert(table.name, features, query.as_bytes(None))


def check_value(table: str, feature: Feature, value: Any, nan: str = "reject") -> Any:
    """``value`` as the Python type its column takes; raises FeatureValueError saying what is valid."""
    if value is None:
        if feature.name == UPDATED_AT:
            raise FeatureValueError(f"{table}.{UPDATED_AT}: cannot be NULL (leave it out to stamp the update time)")
        return None
    kind = feature.type.name

    def invalid(why: str) -> FeatureValueError:
        return FeatureValueError(f"{table}.{feature.name} ({kind}): {value!r} {why}")

    if kind == "boolean":
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise invalid("is not a boolean (True, False or None)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid("is not a number")
    if isinstance(value, numbers.Integral):
        number: float | int = int(value)
    else:
        number = float(value)
        if math.isnan(number):
            if nan == "null":
                return None
            raise invalid("is NaN, which this store rejects (nan='null' writes NULL)")
    if kind in ("real", "double precision"):
        number = float(number)
        if kind == "real" and math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise invalid(f"is out of range for real (at most ±{FLOAT32_MAX:.7g})")
        return number
    if isinstance(number, float):
        if not number.is_integer():
            raise invalid("is not an integer")
        number = int(number)
    lo, hi = INT_RANGE[kind]
    if not lo <= number <= hi:
        raise invalid(f"is out of range ({lo}..{hi})")
    return number


def _rows(rows: UpdateRows) -> Iterable[tuple[bytes | str, Values]]:
    return rows.items() if isinstance(rows, Mapping) else rows


def plan_updates(registry: Registry, table: str, rows: UpdateRows, *, nan: str = "reject") -> list[tuple[Upsert, tuple[Any, ...]]]:
    """(compiled upsert, parameters) per set of columns written, in first-seen order.

    Raises UnknownTableError, UnknownFeatureError, KeyFormatError, FeatureValueError before any I/O.
    """
    if nan not in NAN_POLICIES:
        raise FeatureValueError(f"invalid nan={nan!r}; valid: {', '.join(NAN_POLICIES)}")
    ft = registry.table(table)
    writable = {f.name: f for f in (*ft.features, UPDATED_AT_FEATURE)}
    merged: dict[bytes, dict[str, Any]] = {}
    for key, values in _rows(rows):
        parsed = parse_key(key)
        if not isinstance(values, Mapping):
            raise FeatureValueError(f"{table}: values for key {parsed.hex()} must be a mapping of feature to value")
        unknown = [n for n in values if n not in writable]
        if unknown:
            raise UnknownFeatureError(table, unknown, writable)
        try:
            checked = {n: check_value(table, writable[n], v, nan) for n, v in values.items()}
        except FeatureValueError as exc:
            raise FeatureValueError(f"{exc} (key {parsed.hex()})") from None
        merged.setdefault(parsed, {}).update(checked)
    groups: dict[tuple[str, ...], list[tuple[bytes, dict[str, Any]]]] = {}
    order = {name: i for i, name in enumerate(writable)}
    for key, values in merged.items():
        if not values:
            raise FeatureValueError(f"{table}: no values given for key {key.hex()}")
        groups.setdefault(tuple(sorted(values, key=order.__getitem__)), []).append((key, values))
    plans = []
    for names, members in groups.items():
        upsert = compile_upsert(registry.schema, ft, names)
        params = ([k for k, _ in members], *([v[n] for _, v in members] for n in names))
        plans.append((upsert, params))
    return plans
