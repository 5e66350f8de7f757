"""Retention (async source): rows past their table's TTL deleted in small batches (``pgfeatures expire``,
``serve --expire-every``). ``retention.py`` is generated from this file by ``tools/async_to_sync.py``.

A TTL only hides old rows from reads (status ``expired``); they stay stored until expired here.
``expire_async(conn, registry)`` deletes, per table, the rows whose ``updated_at`` is older than the
table's **retention age** by the database server's clock:

- the table's ttl, or the longest ttl of a service that reads it with ``ttl_override = true`` (such a
  service serves rows its tables' ttl would not: they must stay), plus ``grace``;
- ``older_than`` (seconds) replaces it, also for tables without a ttl; a table without a ttl is
  otherwise never touched.

How, so that neither reads nor writers stall:

- ``batch_rows`` rows per statement, each in its own short transaction (``lock_timeout`` 1 s:
  a table held by a load's swap or a DDL is left for the next run, with a note), with ``pause``
  seconds between batches;
- rows a writer holds are skipped, never waited for (``FOR UPDATE SKIP LOCKED``); a row updated
  meanwhile is re-checked on its new version, so a row made fresh is never deleted;
- with an index leading with ``updated_at`` (every table pgfeatures creates has one), the oldest
  rows are found in index order (each batch reads what it deletes); without one, the table is
  walked in ranges of pages (a TID range scan, PostgreSQL 14+), once per run;
- materialized services stay in step: their maintenance triggers clear the deleted keys' slices
  in each batch's transaction;
- a run that deleted at least ``VACUUM_FRACTION`` of a table VACUUMs it (and the serving tables
  that read it), as a load does, so dead rows and unset visibility-map pages do not linger;
- one run per table at a time, across processes (a session advisory lock, tried, never waited for).

``conn``: an autocommit connection. Raises psycopg errors other than a lock timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .connections.concurrency import sleep_async
from .definitions import UPDATED_AT, FeatureTable, Registry
from .materialize.build_async import materialized_layouts

DEFAULT_GRACE = 3600.0  # seconds kept beyond the retention age: a row is expired at read long before it goes
DEFAULT_BATCH_ROWS = 5000
VACUUM_FRACTION = 0.10  # a run that deleted this share of a table VACUUMs it (as a load's many updates do)
LOCK_TIMEOUT_MS = 1000
EXPIRE_LOCK_SPACE = 0x70676678  # advisory lock space of expire ("pgfx"); the key is a hash of schema and table

# exists, the first valid index leading with updated_at, relpages, reltuples. Catalog only: no lock.
CATALOG = """
SELECT c.oid IS NOT NULL,
  (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = c.oid AND a.attname = %s AND i.indisvalid AND i.indpred IS NULL LIMIT 1),
  greatest(pg_relation_size(c.oid) / current_setting('block_size')::int, 0)::int8, c.reltuples::float8
FROM (SELECT to_regclass(%s) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid
"""


@dataclass
class ExpireResult:
    """What one table's expiry did. ``age``: the retention age in seconds (None: the table keeps its
    rows); ``cutoff``: rows with an older ``updated_at`` were deleted; ``note``: why fewer or none."""

    table: str
    age: float | None = None
    cutoff: datetime.datetime | None = None
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    vacuumed: list[str] = field(default_factory=list)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "age": self.age,
            "cutoff": self.cutoff,
            "deleted": self.deleted,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "vacuumed": self.vacuumed,
            "note": self.note,
        }

    def describe(self) -> str:
        if self.age is None:
            return f"{self.table}: {self.note}"
        text = (
            f"{self.table}: {self.deleted:,} row(s) deleted (older than {self.age:g}s) in {self.batches} batch(es), "
            f"{self.seconds:.2f}s"
        )
        if self.vacuumed:
            text += f"; VACUUM {', '.join(self.vacuumed)}"
        return text + (f"; {self.note}" if self.note else "")


def retention_age(registry: Registry, table: FeatureTable, older_than: float | None, grace: float) -> float | None:
    """Seconds after which ``table``'s rows are deleted (None: never): see the module docstring."""
    if older_than is not None:
        return older_than
    if table.ttl is None:
        return None
    longest = max(
        [table.ttl]
        + [
            svc.ttl
            for svc in registry.services.values()
            if svc.ttl_override and svc.ttl is not None and table.name in svc.table_ttls(registry)
        ]
    )
    return longest + grace


def _lock_key(schema: str, table: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{schema}\0{table}".encode()).digest()[:4], "big", signed=True)


def _by_index(ident: sql.Identifier) -> sql.Composed:
    """One batch in ``updated_at`` order: $1 the cutoff, $2 the batch size."""
    col = sql.Identifier(UPDATED_AT)
    return sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} < %s ORDER BY {c} LIMIT %s "
        "FOR UPDATE SKIP LOCKED))"
    ).format(t=ident, c=col)


def _by_pages(ident: sql.Identifier) -> sql.Composed:
    """One batch of a range of pages: $1 the cutoff, $2 and $3 the first and the next page's tid."""
    return sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} < %s AND ctid >= %s::tid "
        "AND ctid < %s::tid FOR UPDATE SKIP LOCKED))"
    ).format(t=ident, c=sql.Identifier(UPDATED_AT))


async def _batch_async(conn: psycopg.AsyncConnection, statement: sql.Composed, params: tuple[Any, ...]) -> int | None:
    """Run one batch in its own transaction; None when the table lock was not had within the timeout."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{LOCK_TIMEOUT_MS}ms"])
            cur = await conn.execute(statement, params)
            return cur.rowcount
    except psycopg.errors.LockNotAvailable:
        return None


async def _expire_table_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    table: FeatureTable,
    age: float,
    batch_rows: int,
    pause: float,
    vacuum: bool,
) -> ExpireResult:
    result = ExpireResult(table.name, age)
    ident = sql.Identifier(registry.schema, table.name)
    row = await (await conn.execute(CATALOG, [UPDATED_AT, ident.as_string(conn)])).fetchone()
    if row is None or not row[0]:
        result.note = f"table {registry.schema}.{table.name} does not exist"
        return result
    _, index, pages, reltuples = row
    cutoff_row = await (await conn.execute("SELECT now() - make_interval(secs => %s)", [age])).fetchone()
    assert cutoff_row is not None
    result.cutoff = cutoff_row[0]
    started = time.perf_counter()
    if index:
        statement = _by_index(ident)
        while True:
            deleted = await _batch_async(conn, statement, (result.cutoff, batch_rows))
            if deleted is None:
                result.note = "a load or DDL held the table longer than 1 s: the rest is left for the next run"
                break
            result.deleted += deleted
            result.batches += 1
            if deleted < batch_rows:
                break
            if pause:
                await sleep_async(pause)
    else:
        statement = _by_pages(ident)
        step = max(1, int(batch_rows * pages / reltuples)) if reltuples > 0 else 16
        result.note = f"no index leads with {UPDATED_AT}: the table was walked page by page"
        for first in range(0, pages, step):
            deleted = await _batch_async(conn, statement, (result.cutoff, f"({first},0)", f"({first + step},0)"))
            if deleted is None:
                result.note = "a load or DDL held the table longer than 1 s: the rest is left for the next run"
                break
            result.deleted += deleted
            result.batches += 1
            if pause and deleted:
                await sleep_async(pause)
    result.seconds = time.perf_counter() - started
    if vacuum and result.deleted and result.deleted >= VACUUM_FRACTION * max(reltuples, 1):
        await _vacuum_async(conn, registry, table, result)
    return result


async def _vacuum_async(
    conn: psycopg.AsyncConnection, registry: Registry, table: FeatureTable, result: ExpireResult
) -> None:
    """VACUUM the table and the serving tables whose rows the deletes rewrote (those that exist)."""
    serving = [
        layout.table_name
        for layout in materialized_layouts(registry)
        if any(t.name == table.name for t in layout.tables)
    ]
    names = [table.name]
    for name in serving:
        found = await (
            await conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [sql.Identifier(registry.schema, name).as_string(conn)]
            )
        ).fetchone()
        if found and found[0]:
            names.append(name)
    await conn.execute(
        sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(sql.Identifier(registry.schema, n) for n in names))
    )
    result.vacuumed = names


async def expire_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    *,
    tables: Iterable[str] | None = None,
    older_than: float | None = None,
    grace: float = DEFAULT_GRACE,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    pause: float = 0.0,
    vacuum: bool = True,
) -> list[ExpireResult]:
    """Delete every table's rows past its retention age (see the module docstring); one result per
    table, in definition order (or the order of ``tables``). Raises UnknownTableError for an unknown
    table, ValueError for a negative age, grace, pause or a batch below 1."""
    if (older_than is not None and older_than < 0) or grace < 0 or pause < 0 or batch_rows < 1:
        raise ValueError("older_than, grace and pause must be >= 0 seconds, batch_rows at least 1")
    out = []
    for table in registry.resolve(tables):
        age = retention_age(registry, table, older_than, grace)
        if age is None:
            out.append(
                ExpireResult(table.name, note="no ttl: its rows are kept (older_than / --older-than expires them)")
            )
            continue
        key = _lock_key(registry.schema, table.name)
        got = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)", [EXPIRE_LOCK_SPACE, key])
        ).fetchone()
        if not (got and got[0]):
            out.append(ExpireResult(table.name, age, note="another expire runs on this table: left to it"))
            continue
        try:
            out.append(await _expire_table_async(conn, registry, table, age, batch_rows, pause, vacuum))
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)", [EXPIRE_LOCK_SPACE, key])
    return out
