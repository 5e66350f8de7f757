"""The doctor's facts: the SQL that gathers what the checks judge, and nothing that judges.

``gather`` reads, on one autocommit connection: the probe first (``pgfeatures.warmup.measure``:
the store's statements at random places, then under EXPLAIN with sequential and bitmap scans
disabled, so plans show what a lookup does once the table is big), then the server settings, the
catalog and statistics of every feature table, and, for tables whose statistics counters claim
many dead rows, a fresh count (``pgstattuple_approx``, creating the extension where allowed):
those counters are updated lazily and can be stale. ``prepared_facts`` asks a serving connection
of a FeatureStore what it has prepared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from ..connections.rows import one_row
from ..definitions import FeatureTable, Registry
from ..materialize.sql import FULL_PASSES
from ..reader import BatchReader, Reader
from ..schema import drift, qualified
from ..store import FeatureStore
from ..warmup import Probe, measure, run
from .materialized import ServiceFacts


@dataclass(frozen=True)
class DeadRows:
    """Row versions of a table counted now by ``pgstattuple_approx`` (exact on the pages it reads:
    every page not marked all-visible; all-visible pages hold no dead rows)."""

    live: int
    dead: int


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): "real", "jsonb", "numeric(10,2)", ...
    varlena: bool  # variable length (attlen = -1)
    avg_width: int | None  # pg_stats
    fits_integer: bool | None  # bigint columns: every value ANALYZE sampled fits in integer


@dataclass(frozen=True)
class Index:
    name: str
    bytes: int
    statio: Mapping[str, Any]  # pg_statio_user_indexes row


@dataclass(frozen=True)
class TableFacts:
    table: FeatureTable
    subject: str  # schema.table, for people
    ident: str  # the quoted SQL name, for statements
    exists: bool
    drift: tuple[str, ...] = ()
    heap_bytes: int = 0
    toast_bytes: int = 0
    total_bytes: int = 0
    reltuples: float = -1  # pg_class estimate, -1 before the first VACUUM or ANALYZE
    relallvisible: int = 0
    all_visible: int | None = None  # exact, from pg_visibility when installed
    reloptions: Mapping[str, str] = field(default_factory=dict)
    stat: Mapping[str, Any] = field(default_factory=dict)  # pg_stat_user_tables row
    statio: Mapping[str, Any] = field(default_factory=dict)  # pg_statio_user_tables row
    columns: tuple[Column, ...] = ()
    indexes: tuple[Index, ...] = ()
    block_size: int = 8192
    vacuumed_ago: float | None = None  # seconds since the last VACUUM (manual or auto); None: never
    exact: DeadRows | None = None  # a fresh count, when the counters were doubted and pgstattuple could be used
    # pgfeatures' own last full pass over the table (a materialize build): (when, what), and whether the
    # table's last sequential scan was no later than it (so that scan was pgfeatures' own)
    full_pass: tuple[Any, str] | None = None
    last_scan_was_ours: bool = False

    @property
    def pages(self) -> int:
        return self.heap_bytes // self.block_size

    @property
    def vm_coverage(self) -> float:
        """Share of heap pages marked all-visible (1.0 for an empty table)."""
        if self.pages == 0:
            return 1.0
        visible = self.all_visible if self.all_visible is not None else self.relallvisible
        return min(1.0, visible / self.pages)

    @property
    def rows(self) -> int:
        """Row count for sizes: the catalog estimate (kept across statistics resets), else the live count."""
        return int(self.reltuples) if self.reltuples > 0 else self.live_rows

    @property
    def analyzed(self) -> bool:
        return any(c.avg_width is not None for c in self.columns)

    @property
    def live_rows(self) -> int:
        return int(self.stat.get("n_live_tup") or 0)

    @property
    def dead_rows(self) -> int:
        return int(self.stat.get("n_dead_tup") or 0)

    @property
    def counted_dead_ratio(self) -> float:
        """Dead rows / all rows by the statistics counters (possibly stale)."""
        live, dead = self.live_rows, self.dead_rows
        return dead / (live + dead) if live + dead else 0.0


@dataclass(frozen=True)
class ServerFacts:
    shared_buffers: int
    effective_cache_size: int
    block_size: int
    autovacuum: bool
    track_counts: bool
    vacuum_scale_factor: float
    extensions: frozenset[str]  # installed in this database
    oldest_xact: tuple[str, float] | None = None  # (who, seconds): the oldest transaction VACUUM must respect
    pgstattuple: str | None = None  # why dead rows could not be counted afresh (None: they could, or were not doubted)
    vacuum_threshold: int = 50  # autovacuum_vacuum_threshold: dead rows autovacuum leaves alone in any table


@dataclass(frozen=True)
class PreparedFacts:
    """What one serving connection of a FeatureStore had prepared after its warm-up."""

    expected: tuple[str, ...]
    prepared: frozenset[str] = frozenset()
    application_name: str = ""
    pid: int | None = None
    plans: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # statement -> (generic, custom)
    served: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # pg_stat_statements, when installed
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    registry: Registry
    server: ServerFacts
    tables: Mapping[str, TableFacts]
    probe: Probe
    prepared: PreparedFacts | None
    materialized: Mapping[str, ServiceFacts] = field(default_factory=dict)  # per materialized service

    @property
    def existing(self) -> list[TableFacts]:
        return [t for t in self.tables.values() if t.exists]


# Transactions of this database that hold back the horizon VACUUM works below.
_OLDEST_XACT = """
SELECT 'backend ' || pid || coalesce(' (' || nullif(application_name, '') || ')', ''),
       extract(epoch FROM now() - xact_start)::float8
FROM pg_stat_activity
WHERE datname = current_database() AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
UNION ALL
SELECT 'prepared transaction ' || gid, extract(epoch FROM now() - prepared)::float8
FROM pg_prepared_xacts WHERE database = current_database()
ORDER BY 2 DESC LIMIT 1
"""

_SERVER = """
SELECT pg_size_bytes(current_setting('shared_buffers')),
       pg_size_bytes(current_setting('effective_cache_size')),
       current_setting('block_size')::int,
       current_setting('autovacuum')::bool,
       current_setting('track_counts')::bool,
       current_setting('autovacuum_vacuum_scale_factor')::float8,
       ARRAY(SELECT extname::text FROM pg_extension),
       current_setting('autovacuum_vacuum_threshold')::int
"""

# Whole statistics rows as JSON, so columns added in later versions (last_seq_scan, ...) are
# used when present and nothing breaks when absent.
_TABLES = """
SELECT c.relname::text, pg_relation_size(c.oid), coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0),
       pg_total_relation_size(c.oid), c.reltuples::float8, c.relallvisible, coalesce(c.reloptions, '{}'),
       to_jsonb(s), to_jsonb(io), extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN pg_statio_user_tables io ON io.relid = c.oid
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind = 'r'
"""

_INDEXES = """
SELECT t.relname::text, i.relname::text, pg_relation_size(i.oid), to_jsonb(io)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_statio_user_indexes io ON io.indexrelid = i.oid
WHERE n.nspname = %s AND t.relname = ANY(%s)
ORDER BY 1, 2
"""

_COLUMNS = """
SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attlen = -1, st.avg_width,
       CASE WHEN a.atttypid = 'int8'::regtype THEN
         (SELECT min(v) >= -2147483648 AND max(v) <= 2147483647
          FROM unnest(coalesce(st.histogram_bounds::text::int8[], '{}') || coalesce(st.most_common_vals::text::int8[], '{}')) v)
       END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = c.relname AND st.attname = a.attname AND NOT st.inherited
WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, a.attnum
"""

_ALL_VISIBLE = """
SELECT c.relname::text, (pg_visibility_map_summary(c.oid)).all_visible
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind = 'r'
"""

_PREPARED = """
SELECT statement, generic_plans, custom_plans, pg_backend_pid(), current_setting('application_name')
FROM pg_prepared_statements
"""

_SERVED = """
SELECT query, calls, mean_exec_time, shared_blks_hit, shared_blks_read
FROM pg_stat_statements
WHERE query = ANY(%s) AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _options(reloptions: Sequence[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in reloptions if "=" in o)


def _server_facts(conn: psycopg.Connection) -> ServerFacts:
    shared_buffers, cache, block_size, autovacuum, track_counts, scale_factor, extensions, threshold = one_row(
        conn.execute(_SERVER)
    )
    oldest = conn.execute(_OLDEST_XACT).fetchone()  # None: no transaction holds VACUUM back
    return ServerFacts(
        shared_buffers,
        cache,
        block_size,
        autovacuum,
        track_counts,
        scale_factor,
        frozenset(extensions),
        oldest,
        vacuum_threshold=threshold,
    )


def _table_facts(
    conn: psycopg.Connection, registry: Registry, block_size: int, extensions: frozenset[str]
) -> dict[str, TableFacts]:
    args = (registry.schema, list(registry.tables))
    columns: dict[str, list[Column]] = {}
    for table, *values in conn.execute(_COLUMNS, args):
        columns.setdefault(table, []).append(Column(*values))
    indexes: dict[str, list[Index]] = {}
    for table, name, size, statio in conn.execute(_INDEXES, args):
        indexes.setdefault(table, []).append(Index(name, size, statio or {}))
    all_visible: dict[str, int] = (
        dict(conn.execute(_ALL_VISIBLE, args).fetchall()) if "pg_visibility" in extensions else {}
    )
    found = {row[0]: row[1:] for row in conn.execute(_TABLES, args)}
    passes = _full_passes(conn, registry)
    facts = {}
    for name, table in registry.tables.items():
        subject, ident = f"{registry.schema}.{name}", qualified(registry, table).as_string(conn)
        if name not in found:
            facts[name] = TableFacts(table, subject, ident, exists=False)
            continue
        heap, toast, total, reltuples, allvis, reloptions, stat, statio, vacuumed_ago = found[name]
        facts[name] = TableFacts(
            table,
            subject,
            ident,
            True,
            tuple(drift(conn, registry.schema, table)),
            heap,
            toast,
            total,
            reltuples,
            allvis,
            all_visible.get(name),
            _options(reloptions),
            stat or {},
            statio or {},
            tuple(columns.get(name, ())),
            tuple(indexes.get(name, ())),
            block_size,
            vacuumed_ago,
            full_pass=(passes[name][0], passes[name][1]) if name in passes else None,
            last_scan_was_ours=name in passes and passes[name][2],
        )
    return facts


_FULL_PASSES = """
SELECT p.table_name, p.at, p.what, s.last_seq_scan IS NOT NULL AND s.last_seq_scan <= p.at
FROM {} p LEFT JOIN pg_stat_user_tables s ON s.schemaname = %s AND s.relname = p.table_name
"""


def _full_passes(conn: psycopg.Connection, registry: Registry) -> dict[str, tuple[Any, str, bool]]:
    """pgfeatures' own full passes over the registry's tables (``materialize/sql.py`` FULL_PASSES): {table:
    (when, what, whether the table's last sequential scan was no later)}; empty before the first build."""
    name = qualified(registry.schema, FULL_PASSES).as_string(conn)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    if not exists or not exists[0]:
        return {}
    query = sql.SQL(_FULL_PASSES).format(qualified(registry.schema, FULL_PASSES))
    try:
        rows = conn.execute(query, [registry.schema]).fetchall()
    except psycopg.errors.UndefinedColumn:  # PostgreSQL before 16 has no last_seq_scan
        return {}
    return {table: (at, what, bool(ours)) for table, at, what, ours in rows}


def _statements(readers: Iterable[Reader | BatchReader]) -> tuple[str, ...]:
    out: list[str] = []
    for r in readers:
        out.extend(s.decode() for s in (r.statements if isinstance(r, Reader) else (r.statement,)))
    return tuple(dict.fromkeys(out))


def prepared_facts(store: FeatureStore) -> PreparedFacts:
    """Ask one read-pool connection of an open FeatureStore what it has prepared.

    pg_prepared_statements is per session, so it must be asked from inside a
    serving connection, after the store's warm-up ran on it.
    """
    expected = _statements(store.warm_readers)
    with store.connection() as conn:
        rows = conn.execute(_PREPARED, prepare=False).fetchall()
        served: dict[str, dict[str, Any]] = {}
        if _has_extension(conn, "pg_stat_statements"):
            try:
                for query, calls, mean_ms, hit, read in conn.execute(_SERVED, (list(expected),), prepare=False):
                    served[query] = {
                        "calls": calls,
                        "mean_exec_ms": mean_ms,
                        "shared_blks_hit": hit,
                        "shared_blks_read": read,
                    }
            except psycopg.Error:
                pass  # installed but not preloaded, or not readable by this user: the check does not need it
    plans = {r[0]: (r[1], r[2]) for r in rows}
    pid, app = (rows[0][3], rows[0][4]) if rows else (None, "")
    return PreparedFacts(expected, frozenset(plans), app, pid, plans, served)


def _has_extension(conn: psycopg.Connection, name: str) -> bool:
    query = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = %s)"
    return bool(one_row(conn.execute(query, (name,), prepare=False))[0])


def serving_registry(registry: Registry, tables: Mapping[str, TableFacts]) -> Registry | None:
    """The tables a store can prepare statements for: present and without drift."""
    usable = [t.table for t in tables.values() if t.exists and not t.drift]
    return Registry.of(usable, registry.schema) if usable else None


def open_store_facts(registry: Registry | None, dsn: str) -> PreparedFacts:
    if registry is None:
        return PreparedFacts((), error="no feature table is usable (see the schema check): nothing to prepare")
    try:
        with FeatureStore(
            registry, dsn, pool_size=1, write_pool_size=1, read_application_name="pgfeatures-doctor"
        ) as store:
            return prepared_facts(store)
    except Exception as exc:  # reported as a finding: the doctor must finish its other checks
        return PreparedFacts((), error=f"{type(exc).__name__}: {exc}")


_APPROX = "SELECT approx_tuple_count::int8, dead_tuple_count::int8 FROM pgstattuple_approx(%s::regclass)"


def _pgstattuple(conn: psycopg.Connection, extensions: frozenset[str]) -> str | None:
    """Make pgstattuple usable in this database; returns why it is not (None: it is)."""
    if "pgstattuple" in extensions:
        return None
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    except psycopg.errors.UniqueViolation:
        return None  # created by a concurrent doctor between the check and the CREATE
    except psycopg.Error as exc:
        return f"pgstattuple is not installed and cannot be created here ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def count_dead_rows(
    conn: psycopg.Connection, tables: Mapping[str, TableFacts], extensions: frozenset[str], above: float
) -> tuple[dict[str, TableFacts], str | None]:
    """Recount live and dead rows with ``pgstattuple_approx`` for the tables whose statistics
    counters claim more than ``above`` of their rows dead (only those: the count reads every page
    not marked all-visible). Returns the tables with ``exact`` set where counted, and why the
    counters had to be trusted where they could not be recounted (None: no doubt left)."""
    doubted = [t for t in tables.values() if t.exists and t.counted_dead_ratio > above]
    if not doubted:
        return dict(tables), None
    reason = _pgstattuple(conn, extensions)
    out = dict(tables)
    for t in doubted if reason is None else ():
        try:
            live, dead = one_row(conn.execute(_APPROX, (t.ident,)))
        except psycopg.Error as exc:  # typically a missing privilege: pg_stat_scan_tables
            reason = f"pgstattuple_approx cannot read {t.subject} ({_first_line(exc)})"
            break
        out[t.table.name] = replace(t, exact=DeadRows(int(live), int(dead)))
    return out, reason


def gather(
    conn: psycopg.Connection,
    registry: Registry,
    hot_keys: Sequence[bytes] = (),
    *,
    recount_dead_above: float | None = 0.05,
) -> Facts:
    """Read every fact the checks need but the serving connection's (``prepared`` is None), on an
    autocommit connection. The probe runs first, before anything else here touches the tables' pages.
    ``recount_dead_above``: recount dead rows where the counters claim more than this share
    (None: never recount)."""
    found = run(conn, measure(registry, hot_keys))
    server = _server_facts(conn)
    tables = _table_facts(conn, registry, server.block_size, server.extensions)
    if recount_dead_above is not None:
        tables, reason = count_dead_rows(conn, tables, server.extensions, recount_dead_above)
        server = replace(server, pgstattuple=reason)
    return Facts(registry, server, tables, found, None)
