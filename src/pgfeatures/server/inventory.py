"""What the service serves and how fresh it is, for ``GET /v1/tables``, ``GET /v1/services`` and the
freshness gauges: ``inventory_async.tables_async`` / ``services_async``, refreshed in the background.

Cost bound. A refresh reads the catalog, ``max(updated_at)`` of every table (an index probe where an
index leads with ``updated_at``, else a scan, each bounded by ``TABLE_TIMEOUT`` seconds) and the
serving rows' state of materialized services, on a connection of its own (never one of the read
pool's: a slow scan must not take a connection from the reads). It runs only when asked for
(``GET /v1/tables``, ``GET /v1/services``, a scrape of ``/metrics``), at most once per
``inventory_interval`` (15 s) and one at a time; a request that finds the inventory older than
that starts a refresh and waits for it at most ``WAIT`` seconds, else it is answered from the last
one. An idle service scans nothing.

Ages. ``max(updated_at)`` is compared with the database server's clock, never this machine's. Between
refreshes the age of a table's newest row is the measured age plus the time since it was measured:
an upper bound (rows written since would make it younger), off by at most the refresh interval
plus one refresh, so a stalled pipeline shows as a steadily growing age. A table whose
``max(updated_at)`` timed out keeps its previous measurement; one that is empty or missing has
no age (the gauge is NaN, or absent when it was never known).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..connections import connect_async, database_error
from ..definitions import Registry
from ..errors import PgFeaturesError
from ..inventory_async import ServiceInfo, TableInfo, services_async, tables_async

log = logging.getLogger("pgfeatures.server")

TABLE_TIMEOUT = 1.0  # seconds for one table's max(updated_at)
WAIT = 1.0  # seconds a request waits for a refresh it started


@dataclass
class Snapshot:
    """The last refresh: tables and services as found, when (monotonic), and what failed."""

    tables: dict[str, TableInfo] = field(default_factory=dict)
    services: dict[str, ServiceInfo] = field(default_factory=dict)
    refreshed_at: float | None = None
    error: str | None = None


class Inventory:
    """The live inventory of one worker's store (see the module docstring)."""

    def __init__(self, store: Any, registry: Registry, interval: float):
        self.store = store
        self.registry = registry
        self.interval = interval
        self.snapshot = Snapshot()
        # table -> (age at measurement, monotonic time of measurement, max(updated_at))
        self._newest: dict[str, tuple[float, float, datetime.datetime]] = {}
        self._known: set[str] = set()  # tables whose age was ever known (their gauge exists)
        self._task: asyncio.Task[None] | None = None
        self._services_of: dict[str, list[str]] = {}
        self.serve(registry)

    def serve(self, registry: Registry) -> None:
        """Report on ``registry`` from now on (a reload): refreshed at the next ask."""
        self.registry = registry
        services_of: dict[str, list[str]] = {}
        for name in registry.services:
            for t, _ in registry.service(name).resolve(registry):
                services_of.setdefault(t.name, []).append(name)
        self._services_of = services_of
        self.snapshot.refreshed_at = None

    def due(self) -> bool:
        at = self.snapshot.refreshed_at
        return at is None or time.monotonic() - at >= self.interval

    def refresh_soon(self) -> asyncio.Task[None] | None:
        """Start a refresh in the background if one is due and none is running; the running one."""
        if self._task is None and self.due():
            self._task = asyncio.ensure_future(self._refresh())
            self._task.add_done_callback(self._done)
        return self._task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled():
            task.exception()  # logged in _refresh

    async def current(self, wait: float = WAIT) -> Snapshot:
        """The inventory, refreshed first if it is due (waiting at most ``wait`` seconds for that)."""
        task = self.refresh_soon()
        if task is not None and wait > 0:
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(task)
            except TimeoutError:
                pass
            except Exception:  # the refresh's failure is in snapshot.error
                pass
        return self.snapshot

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh(self) -> None:
        started = time.monotonic()
        router = self.store.router
        if router is None:  # not open yet (or closed): its DSN may not even be resolved
            self.snapshot = Snapshot(
                self.snapshot.tables,
                self.snapshot.services,
                None,
                "the store is not open yet (the service is warming up)",
            )
            return
        dsn = str(router.order()[0].dsn)
        try:
            conn = await connect_async(
                dsn,
                "pgfeatures-inventory",
                self.store.connect_timeout,
                credentials=self.store.credentials,
                pooler=self.store.pooler,
            )
            try:
                tables = await tables_async(conn, self.registry, timeout=TABLE_TIMEOUT)
                services = await services_async(conn, self.registry) if self.registry.services else []
            finally:
                await conn.close()
        except (PgFeaturesError, psycopg.Error) as exc:
            error = exc if isinstance(exc, PgFeaturesError) else database_error(exc, dsn)
            if self.snapshot.error != str(error):
                log.warning("pgfeatures: cannot refresh the table inventory (tables, freshness): %s", error)
            self.snapshot = Snapshot(self.snapshot.tables, self.snapshot.services, time.monotonic(), str(error))
            return
        for info in tables:
            if info.newest_age is not None and info.newest_updated_at is not None:
                self._newest[info.name] = (info.newest_age, started, info.newest_updated_at)
                self._known.add(info.name)
            elif not info.exists or info.newest_note == "the table is empty":
                self._newest.pop(info.name, None)
            # else: max(updated_at) timed out: the previous measurement still bounds the age
        self.snapshot = Snapshot({t.name: t for t in tables}, {s.name: s for s in services}, time.monotonic(), None)

    # -- what it reports ---------------------------------------------------------------------------

    def newest_age(self, table: str, now: float | None = None) -> float | None:
        """Seconds since the table's newest row (an upper bound, see the module docstring); None: unknown."""
        found = self._newest.get(table)
        if found is None:
            return None
        age, at, _ = found
        return round(age + ((time.monotonic() if now is None else now) - at), 3)

    def newest_updated_at(self, table: str) -> datetime.datetime | None:
        found = self._newest.get(table)
        return None if found is None else found[2]

    def ages(self) -> dict[str, float]:
        """The age gauges' values: every table whose age was ever known (NaN when it is not now)."""
        now = time.monotonic()
        out = {}
        for table in self.registry.tables:
            if table in self._known:
                age = self.newest_age(table, now)
                out[table] = math.nan if age is None else age
        return out

    def tables_document(self) -> dict[str, Any]:
        """``GET /v1/tables``: every table as defined, with what the last refresh found."""
        snap = self.snapshot
        now = time.monotonic()
        tables = []
        for table in self.registry.tables.values():
            info = snap.tables.get(table.name)
            entity = table.entity
            doc: dict[str, Any] = {
                "name": table.name,
                "entity": {
                    "name": entity.name,
                    "key_type": entity.key_type,
                    "key_column": entity.column,
                    **({"hash": entity.hash} if entity.hash else {}),
                },
                "covering_index": table.covering_index,
                "features": [{"name": f.name, "type": f.type.name, "default": f.default} for f in table.features],
                "ttl": table.ttl,
                "exists": None if info is None else info.exists,
                "rows": None if info is None else info.rows,
                "rows_source": None if info is None else info.rows_source,
                "newest_updated_at": self.newest_updated_at(table.name),
                "newest_age": self.newest_age(table.name, now),
                "newest_note": "not measured yet" if info is None else info.newest_note,
                "updated_at_index": None if info is None else info.updated_at_index,
                "services": self._services_of.get(table.name, []),
            }
            tables.append(doc)
        at = snap.refreshed_at
        return {
            "schema": self.registry.schema,
            "tables": tables,
            "inventory": {
                "age": None if at is None else round(now - at, 3),
                "interval": self.interval,
                "error": snap.error,
            },
        }

    def service_state(self, name: str) -> str | None:
        """A materialized service's serving rows as last found: built, stale, missing (None: unknown or not materialized)."""
        info = self.snapshot.services.get(name)
        return None if info is None else info.state
