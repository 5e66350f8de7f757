"""Live updates: upserts and partial updates of entities, planned in pure code (no I/O).

``plan_updates`` turns ``{key: {feature: value}}`` for one table into
statements the sync and async stores run in one round-trip. Each statement
upserts every row that sets the same columns, with the columns as arrays::

    INSERT INTO s.t AS t (user_id, f1, f2)
    SELECT * FROM unnest($1::int8[], $2::real[], $3::integer[])
    ON CONFLICT (user_id) DO UPDATE SET f1 = EXCLUDED.f1, f2 = EXCLUDED.f2, updated_at = EXCLUDED.updated_at

so one statement text serves any number of rows and is prepared once per
(table, columns) on each write connection. Semantics:

- upsert: a new key gets a row (features not given are NULL); an existing
  key gets only the given features changed (partial update);
- keys are the table's entity keys (checked per entity: 32 bytes / 64 hex,
  bigint, bounded text, uuid, or a natural id hashed with SHA-256);
- ``updated_at`` is set to the transaction's time on the database server
  (the column default ``now()``, which ``EXCLUDED`` carries) unless the values
  include ``updated_at`` (event time: an aware datetime, an ISO 8601 string with
  a zone, or epoch seconds; see definitions/eventtime.py);
- an event time further ahead of the server's clock than ``max_future_skew``
  seconds (default 300) is refused, and with it the whole batch: every
  statement of the batch carries the guard ``$g <= now() + $skew`` (``$g``: the
  batch's newest event time), evaluated on the server's clock, and returns that
  clock, so the store knows whether it was refused and which row caused it
  (``future_error``). A row that far ahead would otherwise block every later
  event-time write of its key (newest wins);
- **newest wins**: values that carry ``updated_at`` (event time) never
  overwrite a stored row whose ``updated_at`` is newer: the statement adds
  ``WHERE t.updated_at <= EXCLUDED.updated_at``, which PostgreSQL evaluates
  on the latest committed row version under the row lock, so concurrent
  writers of the same key end with the newest row whatever order they
  commit in. Such rows are skipped and counted (``UpdateCount.skipped``);
  ``overwrite_newer=True`` writes them anyway;
- ``None`` writes NULL;
- a key given twice in one batch: its values are merged in event-time order
  when every occurrence carries ``updated_at`` (as if the writes were applied
  newest last: the newest value of every column wins), else in the order given,
  later values winning;
- values are checked before any I/O (type, integer range, float32 range for
  ``real``, NaN and ±Infinity per policy: both refused by default):
  FeatureValueError names the table, feature, key and what is valid.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .definitions import (
    DEFAULT_MAX_FUTURE_SKEW,
    FLOAT32_MAX,
    INF_POLICIES,
    INT_RANGE,
    NAN_POLICIES,
    UPDATED_AT,
    UPDATED_AT_FEATURE,
    Feature,
    FeatureTable,
    Registry,
    rfc3339,
)
from .definitions import check_value as _check
from .errors import EventTimeInFutureError, FeatureValueError, UnknownFeatureError

__all__ = [
    "FLOAT32_MAX",
    "INF_POLICIES",
    "INT_RANGE",
    "NAN_POLICIES",
    "Upsert",
    "UpdateCount",
    "check_value",
    "compile_upsert",
    "future_error",
    "key_text",
    "plan_updates",
]

Values = Mapping[str, Any]
UpdateRows = Mapping[Any, Values] | Iterable[tuple[Any, Values]]


class UpdateCount(int):
    """The number of distinct keys written; ``skipped``: keys left as they were because the stored
    row was newer (newest wins), ``keys``: distinct keys given."""

    skipped: int
    keys: int

    def __new__(cls, written: int, skipped: int = 0) -> UpdateCount:
        count = super().__new__(cls, written)
        count.skipped = skipped
        count.keys = written + skipped
        return count

    def __repr__(self) -> str:
        return f"UpdateCount({int(self)}, skipped={self.skipped})"


@dataclass(frozen=True)
class Upsert:
    """One compiled upsert: ``statement`` takes an array of keys then one array per feature;
    ``newest_wins``: it leaves a stored row with a newer ``updated_at`` alone; ``guarded``: it also
    takes the batch's newest event time and the allowed skew, writes nothing when that event time
    is too far ahead of the server's clock, and returns one row ``(rows written, now())`` (else the
    statement returns no rows: its rowcount is the rows written)."""

    table: str
    features: tuple[Feature, ...]
    statement: bytes
    newest_wins: bool = False
    guarded: bool = False  # refuses a batch whose newest event time is too far ahead of the server's clock
    lock_statement: bytes = b""  # locks the stored rows of the keys ($1) in key order (several column sets)


@functools.lru_cache(maxsize=512)
def compile_upsert(
    schema: str, table: FeatureTable, names: tuple[str, ...], newest_wins: bool = False, guarded: bool = False
) -> Upsert:
    """The upsert of ``names`` (features of ``table``, possibly ``updated_at``), in table order."""
    features = tuple(table.select(names))
    key = sql.Identifier(table.key_column)
    cols = [key, *(sql.Identifier(f.name) for f in features)]
    arrays = [sql.SQL(f"$1::{table.entity.cast}[]")] + [
        sql.SQL(f"${i + 2}::{param_type(f)}[]") for i, f in enumerate(features)
    ]
    outputs = [sql.SQL("u.c0")] + [sql.SQL(f"u.c{i + 1}{_column_cast(f)}") for i, f in enumerate(features)]
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f.name)) for f in features if f.name != UPDATED_AT]
    sets.append(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(UPDATED_AT)))
    where = sql.SQL(" WHERE t.{0} <= EXCLUDED.{0}").format(sql.Identifier(UPDATED_AT)) if newest_wins else sql.SQL("")
    n = len(features) + 2
    guard = sql.SQL(f" WHERE ${n}::timestamptz <= now() + ${n + 1}::interval") if guarded else sql.SQL("")
    source = sql.SQL("unnest({})").format(sql.SQL(", ").join(arrays))
    if any(_column_cast(f) for f in features):  # lists and embeddings travel as literals, cast per row
        source = sql.SQL("{} FROM {} AS u({})").format(
            sql.SQL(", ").join(outputs), source, sql.SQL(", ").join(sql.SQL(f"c{i}") for i in range(len(cols)))
        )
    else:
        source = sql.SQL("* FROM {}").format(source)
    query = sql.SQL("INSERT INTO {} AS t ({}) SELECT {}{} ON CONFLICT ({}) DO UPDATE SET {}{}").format(
        sql.Identifier(schema, table.name),
        sql.SQL(", ").join(cols),
        source,
        guard,
        key,
        sql.SQL(", ").join(sets),
        where,
    )
    if guarded:
        query = sql.SQL("WITH w AS ({} RETURNING 1) SELECT count(*), now() FROM w").format(query)
    lock = sql.SQL("SELECT FROM {} WHERE {} = ANY({}) ORDER BY {} FOR NO KEY UPDATE").format(
        sql.Identifier(schema, table.name), key, sql.SQL(f"$1::{table.entity.cast}[]"), key
    )
    return Upsert(table.name, features, query.as_bytes(None), newest_wins, guarded, lock.as_bytes(None))


def param_type(feature: Feature) -> str:
    """The element type of the array a feature's values travel in to an upsert: the column's own type,
    ``text`` for a string (a cast to ``varchar(n)`` would truncate; the column's assignment refuses a
    longer value instead), a list's or an embedding's array literal (``unnest`` would flatten a 2-D array)."""
    kind = feature.type.kind
    return "text" if kind in ("string", "list", "embedding") else feature.type.name


def _column_cast(feature: Feature) -> str:
    """How an upsert turns a travelled value into its column's type (the column's assignment does the rest:
    ``text[]`` into ``varchar(n)[]`` refuses a longer element, ``real[]`` into ``vector(dim)`` checks the dim)."""
    type_ = feature.type
    if type_.kind == "embedding":
        return "::real[]"
    if type_.kind == "list":
        assert type_.element is not None
        return "::text[]" if type_.element.kind == "string" else f"::{type_.element.name}[]"
    return ""


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Sequence[Any] | None) -> str | None:
    """A checked list's PostgreSQL array literal (``{1,2.5}``, ``{"a","b \\"c\\""}``); floats by ``repr``,
    which round-trips exactly."""
    if values is None:
        return None
    return "{" + ",".join(_quoted(v) if isinstance(v, str) else repr(v) for v in values) + "}"


def _encoder(feature: Feature) -> Any:
    return array_literal if feature.type.kind in ("list", "embedding") else None


def check_value(table: str, feature: Feature, value: Any, nan: str = "reject", inf: str = "reject") -> Any:
    """``value`` as the Python type its column takes; raises FeatureValueError saying what is valid."""
    if value is None and feature.name == UPDATED_AT:
        raise FeatureValueError(f"{table}.{UPDATED_AT}: cannot be NULL (leave it out to stamp the update time)")
    return _check(f"{table}.{feature.name}", feature.type, value, nan, inf)


def key_text(key: Any) -> str:
    """A parsed key as a message shows it."""
    return key.hex() if isinstance(key, bytes) else str(key)


def _rows(rows: UpdateRows) -> Iterable[tuple[Any, Values]]:
    return rows.items() if isinstance(rows, Mapping) else rows


def plan_updates(
    registry: Registry,
    table: str,
    rows: UpdateRows,
    *,
    nan: str = "reject",
    inf: str = "reject",
    overwrite_newer: bool = False,
    max_future_skew: float | None = DEFAULT_MAX_FUTURE_SKEW,
) -> list[tuple[Upsert, tuple[Any, ...]]]:
    """(compiled upsert, parameters) per set of columns written, in first-seen order.

    Rows that carry ``updated_at`` get the newest-wins upsert unless ``overwrite_newer``; when some
    do, every statement of the batch is guarded against event times more than ``max_future_skew``
    seconds ahead of the server's clock (None: no bound), see ``future_error``.
    Raises UnknownTableError, UnknownFeatureError, KeyFormatError, FeatureValueError before any I/O.
    """
    if nan not in NAN_POLICIES:
        raise FeatureValueError(f"invalid nan={nan!r}; valid: {', '.join(NAN_POLICIES)}")
    if inf not in INF_POLICIES:
        raise FeatureValueError(f"invalid inf={inf!r}; valid: {', '.join(INF_POLICIES)}")
    skew = check_skew(max_future_skew)
    ft = registry.table(table)
    writable = {f.name: f for f in (*ft.features, UPDATED_AT_FEATURE)}
    given: dict[Any, list[dict[str, Any]]] = {}
    parse = ft.entity.parse
    for key, values in _rows(rows):
        parsed = parse(key)
        if not isinstance(values, Mapping):
            raise FeatureValueError(f"{table}: values for key {key_text(parsed)} must be a mapping of feature to value")
        unknown = [n for n in values if n not in writable]
        if unknown:
            raise UnknownFeatureError(table, unknown, writable)
        try:
            checked = {n: check_value(table, writable[n], v, nan, inf) for n, v in values.items()}
        except FeatureValueError as exc:
            raise FeatureValueError(f"{exc} (key {key_text(parsed)})") from None
        given.setdefault(parsed, []).append(checked)
    merged: dict[Any, dict[str, Any]] = {}
    newest: dt.datetime | None = None
    for key, occurrences in given.items():
        if len(occurrences) > 1 and all(UPDATED_AT in o for o in occurrences):
            occurrences.sort(key=lambda o: o[UPDATED_AT])  # stable: equal event times keep their order
        values = merged[key] = {}
        for o in occurrences:
            values.update(o)
        stamp = values.get(UPDATED_AT)
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
    guarded = newest is not None and skew is not None
    groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = {}
    order = {name: i for i, name in enumerate(writable)}
    for key, values in merged.items():
        if not values:
            raise FeatureValueError(f"{table}: no values given for key {key_text(key)}")
        groups.setdefault(tuple(sorted(values, key=order.__getitem__)), []).append((key, values))
    plans = []
    for names, members in groups.items():
        # In key order, the order a load's merge takes (``ORDER BY`` the key): writers of the same keys
        # lock their rows in the same order, so a batch racing a load waits instead of deadlocking.
        members.sort(key=lambda member: member[0])
        upsert = compile_upsert(registry.schema, ft, names, UPDATED_AT in names and not overwrite_newer, guarded)
        encoders = [_encoder(f) for f in upsert.features]
        params: tuple[Any, ...] = (
            [k for k, _ in members],
            *(
                [v[n] for _, v in members] if enc is None else [enc(v[n]) for _, v in members]
                for n, enc in zip(names, encoders)
            ),
        )
        if guarded:
            params += (newest, skew)
        plans.append((upsert, params))
    return plans


def check_skew(max_future_skew: float | None) -> dt.timedelta | None:
    """``max_future_skew`` seconds as a timedelta (None: no bound); FeatureValueError when negative."""
    if max_future_skew is None:
        return None
    if isinstance(max_future_skew, bool) or not isinstance(max_future_skew, (int, float)) or not max_future_skew >= 0:
        raise FeatureValueError(
            f"max_future_skew must be a number of seconds >= 0 (or None: no bound), got {max_future_skew!r}"
        )
    return dt.timedelta(seconds=max_future_skew)


def future_error(plans: Sequence[tuple[Upsert, tuple[Any, ...]]], now: dt.datetime) -> EventTimeInFutureError | None:
    """The error of a guarded batch the server refused: its newest event time is more than the
    skew ahead of ``now`` (the server's clock, as the guarded statements returned it); None when it
    was written. Names the first row (key and value) that was too far ahead."""
    guarded = [(upsert, params) for upsert, params in plans if upsert.guarded]
    if not guarded:
        return None
    newest, skew = guarded[0][1][-2:]
    limit = now + skew
    if newest <= limit:
        return None
    for upsert, params in guarded:
        names = [f.name for f in upsert.features]
        if UPDATED_AT in names:
            for key, stamp in zip(params[0], params[1 + names.index(UPDATED_AT)]):
                if stamp > limit:
                    ahead = (stamp - now).total_seconds()
                    return EventTimeInFutureError(
                        f"{upsert.table}.{UPDATED_AT}: {rfc3339(stamp)} (key {key_text(key)}) is in the future: "
                        f"{ahead:,.3f}s ahead of the database server's clock ({rfc3339(now)}), more than "
                        f"max_future_skew ({skew.total_seconds():g}s) allows; nothing of the batch was written. An "
                        "epoch number in milliseconds given as seconds, or a writer's clock running ahead? (a row "
                        "that far ahead would block every later event-time write of its key: newest wins)"
                    )
    raise AssertionError("a refused batch has a row past the limit")
