"""``pgfeatures doctor``: check, against the live database, what fast reads depend on.

Each check returns findings (one per feature table, or one for the server)
with a status (pass / warn / fail), the measured value, advice, and the SQL
that fixes it when a statement is safe to run as-is (VACUUM, ANALYZE,
pg_prewarm, resetting a disabled autovacuum): ``Report.fixes``. Changes that
need a decision (a column type, a server setting) are advice only.

The work is split in two: ``gather`` reads the facts (catalog, statistics, a
probe of the real statements) and ``diagnose`` adds what a serving connection
has prepared; the checks are pure functions of those facts, so every verdict can be tested
and explained from data. The checks, in order:

``schema``      the live table matches its definition (drift fails every other check's premise)
``prepared``    a serving connection of a FeatureStore has its statements prepared after warm-up
``cache``       lookups at random places hit shared_buffers for every table and index (target > 99 %)
``scans``       no sequential scan read rows of a feature table (pg_stat_user_tables)
``index_only``  covered lookups are index-only for real: EXPLAIN heap fetches, visibility-map coverage
``row_width``   bytes per row, and column types that widen rows, with the narrower type to use
``working_set`` what lookups read (tables, indexes) against shared_buffers and effective_cache_size
``vacuum``      dead rows, autovacuum switched on (server and table), statistics present

The cache and index-only verdicts come from a probe (see ``warmup``): the
store's batch statement at random places of every table (or the hot keys),
counted with the transaction's own block counters, then under EXPLAIN
(ANALYZE, BUFFERS) for real keys from the table's statistics. The cumulative
``pg_statio_*`` ratio is reported next to it but does not decide: it survives
restarts and is dominated by history, so it says little about whether the
cache is warm now.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from .connections import resolve_dsn
from .definitions import KEY_COLUMN, WIDE_TYPES, FeatureTable, Registry
from .reader import BatchReader, Reader
from .schema import create_table_sql, covering_index_sql, drift, qualified
from .store import FeatureStore
from .warmup import Blocks, Probe, connect, measure, run

# Thresholds. Each is explained in docs/doctor.md.
HIT_PASS, HIT_WARN = 0.99, 0.90  # probe hit ratio per relation
HIT_MIN_BLOCKS = 10  # a relation the probe read fewer blocks of (an empty index's metapage) is not judged
HEAP_FETCH_WARN, HEAP_FETCH_FAIL = 0.01, 0.10  # heap fetches per row returned by an index-only scan
VM_WARN = 0.90  # all-visible pages / pages, for tables read index-only
DEAD_WARN, DEAD_FAIL = 0.05, 0.20  # dead rows / (live + dead)
WORKING_SET_SHARE = 0.75  # of shared_buffers the feature tables may fill and still "fit"
SMALL_TABLE_PAGES = 8  # below this, a sequential scan is the planner's right choice
LONG_XACT_SECONDS = 300  # an open transaction older than this holds VACUUM back for too long

SERVER = "server"


class Status(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return ("pass", "warn", "fail").index(self.value)


@dataclass(frozen=True)
class Finding:
    """One check's verdict on one subject (``schema.table`` or ``server``)."""

    check: str
    subject: str
    status: Status
    value: str  # what was measured, for people
    advice: str = ""
    fix: tuple[str, ...] = ()  # SQL safe to run as-is
    measured: Mapping[str, Any] = field(default_factory=dict)  # the numbers, for --json

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check, "subject": self.subject, "status": self.status.value, "value": self.value,
            "advice": self.advice, "fix": list(self.fix), "measured": dict(self.measured),
        }


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]

    @property
    def status(self) -> Status:
        return max((f.status for f in self.findings), key=lambda s: s.rank, default=Status.PASS)

    @property
    def ok(self) -> bool:
        """Every check passes."""
        return self.status is Status.PASS

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fix statements of every finding that is not a pass, in check order, without repeats."""
        return tuple(dict.fromkeys(s for f in self.findings if f.status is not Status.PASS for s in f.fix))

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def get(self, check: str, subject: str) -> Finding:
        """The finding of ``check`` on ``subject`` (a table name, qualified or not, or ``server``)."""
        for f in self.findings:
            if f.check == check and (f.subject == subject or f.subject.endswith("." + subject)):
                return f
        raise KeyError(f"no {check!r} finding for {subject!r}")

    def as_dict(self) -> dict[str, Any]:
        counts = {s.value: sum(f.status is s for f in self.findings) for s in Status}
        return {"status": self.status.value, "counts": counts, "fixes": list(self.fixes),
                "findings": [f.as_dict() for f in self.findings]}


# -- facts ----------------------------------------------------------------------------------------


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
       ARRAY(SELECT extname::text FROM pg_extension)
"""

# Whole statistics rows as JSON, so columns added in later versions (last_seq_scan, ...) are
# used when present and nothing breaks when absent.
_TABLES = """
SELECT c.relname::text, pg_relation_size(c.oid), coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0),
       pg_total_relation_size(c.oid), c.reltuples::float8, c.relallvisible, coalesce(c.reloptions, '{}'),
       to_jsonb(s), to_jsonb(io)
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
    row = conn.execute(_SERVER).fetchone()
    oldest = conn.execute(_OLDEST_XACT).fetchone()
    return ServerFacts(*row[:6], frozenset(row[6]), oldest)


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
    all_visible = dict(conn.execute(_ALL_VISIBLE, args).fetchall()) if "pg_visibility" in extensions else {}
    found = {row[0]: row[1:] for row in conn.execute(_TABLES, args)}
    facts = {}
    for name, table in registry.tables.items():
        subject, ident = f"{registry.schema}.{name}", qualified(registry, table).as_string(conn)
        if name not in found:
            facts[name] = TableFacts(table, subject, ident, exists=False)
            continue
        heap, toast, total, reltuples, allvis, reloptions, stat, statio = found[name]
        facts[name] = TableFacts(
            table, subject, ident, True, tuple(drift(conn, registry.schema, table)), heap, toast, total, reltuples, allvis,
            all_visible.get(name), _options(reloptions), stat or {}, statio or {},
            tuple(columns.get(name, ())), tuple(indexes.get(name, ())), block_size,
        )
    return facts


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
                    served[query] = {"calls": calls, "mean_exec_ms": mean_ms, "shared_blks_hit": hit, "shared_blks_read": read}
            except psycopg.Error:
                pass  # installed but not preloaded, or not readable by this user: the check does not need it
    plans = {r[0]: (r[1], r[2]) for r in rows}
    pid, app = (rows[0][3], rows[0][4]) if rows else (None, "")
    return PreparedFacts(expected, frozenset(plans), app, pid, plans, served)


def _has_extension(conn: psycopg.Connection, name: str) -> bool:
    query = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = %s)"
    return bool(conn.execute(query, (name,), prepare=False).fetchone()[0])


def _serving_registry(registry: Registry, tables: Mapping[str, TableFacts]) -> Registry | None:
    """The tables a store can prepare statements for: present and without drift."""
    usable = [t.table for t in tables.values() if t.exists and not t.drift]
    return Registry.of(usable, registry.schema) if usable else None


def _open_store_facts(registry: Registry | None, dsn: str) -> PreparedFacts:
    if registry is None:
        return PreparedFacts((), error="no feature table is usable (see the schema check): nothing to prepare")
    try:
        with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1, read_application_name="pgfeatures-doctor") as store:
            return prepared_facts(store)
    except Exception as exc:  # reported as a finding: the doctor must finish its other checks
        return PreparedFacts((), error=f"{type(exc).__name__}: {exc}")


def gather(conn: psycopg.Connection, registry: Registry, hot_keys: Sequence[bytes] = ()) -> Facts:
    """Read every fact the checks need but the serving connection's (``prepared`` is None), on an
    autocommit connection. The probe runs first, before anything else here touches the tables' pages."""
    found = run(conn, measure(registry, hot_keys))
    server = _server_facts(conn)
    return Facts(registry, server, _table_facts(conn, registry, server.block_size, server.extensions), found, None)


def diagnose(
    registry: Registry,
    dsn: str | None = None,
    *,
    hot_keys: Sequence[bytes] = (),
    store: FeatureStore | None = None,
) -> Report:
    """Run every check. ``store``: an open FeatureStore whose serving connections to inspect
    (default: a one-connection store opened on the usable tables). Raises
    DatabaseUnavailableError when the database cannot be reached."""
    dsn = (store.dsn or "") if store is not None else resolve_dsn(dsn)
    with connect(dsn, "pgfeatures-doctor") as conn:
        facts = gather(conn, registry, hot_keys)
    if store is not None:
        prepared = prepared_facts(store)
    else:
        prepared = _open_store_facts(_serving_registry(registry, facts.tables), dsn)
    return evaluate(replace(facts, prepared=prepared))


# -- checks (pure) --------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _vacuum(t: TableFacts) -> str:
    return f"VACUUM (ANALYZE) {t.ident}"


def _regclass(schema: str, name: str) -> str:
    """A relation name as a quoted SQL literal, for functions that take a regclass."""
    return sql.Literal(sql.Identifier(schema, name).as_string(None)).as_string(None)


def check_schema(f: Facts) -> list[Finding]:
    out = []
    for t in f.tables.values():
        if not t.exists:
            ddl = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(f.registry.schema)).as_string(None),
                   create_table_sql(f.registry.schema, t.table).as_string(None)]
            if t.table.covering_index:
                ddl.append(covering_index_sql(f.registry.schema, t.table).as_string(None))
            out.append(Finding("schema", t.subject, Status.FAIL, "table is missing",
                               "create it: pgfeatures init (with the same --definitions)", tuple(ddl)))
        elif t.drift:
            out.append(Finding("schema", t.subject, Status.FAIL, "; ".join(t.drift),
                               "the live table differs from its definition; pgfeatures never alters a table: "
                               "migrate the table or correct the definition", measured={"drift": list(t.drift)}))
        else:
            out.append(Finding("schema", t.subject, Status.PASS, "matches its definition"))
    return out


def check_prepared(f: Facts) -> list[Finding]:
    p = f.prepared
    advice = ("serving connections must be made with prepare_threshold=0 (pgfeatures pools are) and reach "
              "PostgreSQL directly or through a pooler that keeps prepared statements (session pooling, "
              "or PgBouncer >= 1.21 with max_prepared_statements > 0); without them every request is planned again")
    if p is None or p.error:
        reason = p.error if p else "not checked"
        return [Finding("prepared", SERVER, Status.FAIL, f"could not inspect a serving connection: {reason}", advice)]
    missing = [s for s in p.expected if s not in p.prepared]
    n, k = len(p.expected), len(p.expected) - len(missing)
    measured = {
        "expected": n, "prepared": k, "pid": p.pid, "application_name": p.application_name,
        "statements": [
            {"statement": s, "prepared": s in p.prepared, "generic_plans": p.plans.get(s, (None, None))[0],
             "custom_plans": p.plans.get(s, (None, None))[1], "pg_stat_statements": p.served.get(s)}
            for s in p.expected
        ],
    }
    value = f"{k}/{n} serving statements prepared on connection {p.application_name!r} (pid {p.pid})"
    if p.served:
        calls = sum(v["calls"] for v in p.served.values())
        value += f"; pg_stat_statements: {calls:,} calls of them"
    if not missing:
        return [Finding("prepared", SERVER, Status.PASS, value, measured=measured)]
    status = Status.FAIL if k == 0 else Status.WARN
    return [Finding("prepared", SERVER, status, value, advice, measured=measured)]


def _read_by_lookups(f: Facts, t: TableFacts) -> set[str]:
    """The relations lookups of ``t`` read: the indexes their plans use (else those the probe read
    enough of to tell), and the heap unless lookups are index-only without heap fetches."""
    tp = f.probe.tables.get(t.table.name)
    scans = tp.scans if tp else ()
    indexes = {s.index for s in scans if s.index} or {
        i.name for i in t.indexes if f.probe.blocks.get(i.name, Blocks(0, 0)).fetched >= HIT_MIN_BLOCKS
    }
    reads_heap = not scans or any(s.node != "Index Only Scan" or (s.heap_fetches or 0) > 0 for s in scans)
    return indexes | ({t.table.name} if reads_heap else set())


def _blocks_ratio(row: Mapping[str, Any], prefix: str) -> float | None:
    hit, read = int(row.get(f"{prefix}_blks_hit") or 0), int(row.get(f"{prefix}_blks_read") or 0)
    return hit / (hit + read) if hit + read else None


def _cumulative(t: TableFacts) -> dict[str, float | None]:
    """pg_statio hit ratios since the last statistics reset: the heap, then each index."""
    return {t.table.name: _blocks_ratio(t.statio, "heap"), **{i.name: _blocks_ratio(i.statio, "idx") for i in t.indexes}}


def check_cache(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        tp = f.probe.tables.get(t.table.name)
        cumulative = _cumulative(t)
        if tp is not None and tp.error:
            out.append(Finding("cache", t.subject, Status.WARN, f"probe failed: {tp.error}", "see the schema check",
                               measured={"cumulative_hit_ratio": cumulative}))
            continue
        names = [t.table.name, *(i.name for i in t.indexes)]
        ratios = {n: f.probe.blocks[n].ratio for n in names if n in f.probe.blocks and f.probe.blocks[n].fetched}
        # Judge what lookups read, of which the probe read enough blocks to tell (not an empty index's metapage).
        read = _read_by_lookups(f, t)
        judged = {n: r for n, r in ratios.items() if n in read and f.probe.blocks[n].fetched >= HIT_MIN_BLOCKS}
        worst = min((r for r in judged.values() if r is not None), default=1.0)
        status = Status.PASS if worst >= HIT_PASS else Status.WARN if worst >= HIT_WARN else Status.FAIL
        parts = ", ".join(f"{n} {_pct(r)}" + ("" if n in judged else " (not judged)") for n, r in ratios.items())
        since_reset = ", ".join(f"{n} {_pct(r)}" for n, r in cumulative.items())
        value = f"{f.probe.places}: hit {_pct(f.probe.total(judged).ratio)} ({parts}); since stats reset: {since_reset}"
        measured = {"probe_hit_ratio": ratios, "judged": sorted(judged), "cumulative_hit_ratio": cumulative}
        if status is Status.PASS:
            out.append(Finding("cache", t.subject, status, value, measured=measured))
            continue
        fix = ("CREATE EXTENSION IF NOT EXISTS pg_prewarm",
               *(f"SELECT pg_prewarm({_regclass(f.registry.schema, n)})" for n in names))
        out.append(Finding(
            "cache", t.subject, status, value,
            "lookups read blocks from outside shared_buffers: warm the cache with 'pgfeatures warmup' "
            "(pg_prewarm loads the table and its indexes) after every restart; if the ratio falls again "
            "under load, the working set does not fit (see working_set)",
            fix, measured))
    return out


def check_scans(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        seq, idx = int(t.stat.get("seq_scan") or 0), int(t.stat.get("idx_scan") or 0)
        seq_rows = int(t.stat.get("seq_tup_read") or 0)
        last = t.stat.get("last_seq_scan")
        measured = {"seq_scan": seq, "seq_tup_read": seq_rows, "idx_scan": idx, "last_seq_scan": last}
        value = f"{idx:,} index scans; {seq:,} sequential scans read {seq_rows:,} rows"
        if last and seq_rows:
            value += f" (last {last})"
        if seq_rows == 0:
            out.append(Finding("scans", t.subject, Status.PASS, value, measured=measured))
        elif t.pages < SMALL_TABLE_PAGES:
            out.append(Finding("scans", t.subject, Status.PASS, value,
                               f"a table of {t.pages} pages is scanned sequentially by choice: that is right", measured=measured))
        else:
            name = t.ident
            out.append(Finding(
                "scans", t.subject, Status.FAIL, value,
                f"a statement reads {t.subject} without its key index: find it in pg_stat_statements (queries "
                f"naming the table, by shared_blks_read); lookups must filter on {KEY_COLUMN} = <key>; check the "
                "primary key (schema check) and that no session turns enable_indexscan off. One-off scans (an index "
                "build, a count(*)) are harmless; once explained, reset the counters: SELECT "
                f"pg_stat_reset_single_table_counters({_regclass(f.registry.schema, t.table.name)}::regclass); ANALYZE {name} "
                "(ANALYZE restores the dead-row counts the reset zeroes)",
                measured=measured))
    return out


def check_index_only(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        tp = f.probe.tables.get(t.table.name)
        scans = tp.scans if tp else ()
        kinds = sorted({s.node for s in scans})
        vm = t.vm_coverage
        vm_text = f"visibility map covers {_pct(vm)} of {t.pages:,} pages"
        measured: dict[str, Any] = {"nodes": kinds, "vm_coverage": vm, "pages": t.pages,
                                    "vm_source": "pg_visibility" if t.all_visible is not None else "pg_class.relallvisible"}
        if tp and tp.error:
            out.append(Finding("index_only", t.subject, Status.WARN, f"probe failed: {tp.error}", "see the schema check",
                               measured=measured))
            continue
        if any(s.node == "Seq Scan" for s in scans):
            out.append(Finding("index_only", t.subject, Status.FAIL, f"lookups run as {', '.join(kinds)}",
                               f"the key lookup uses no index: {t.subject} needs its primary key on {KEY_COLUMN}",
                               measured=measured))
            continue
        ios = [s for s in scans if s.node == "Index Only Scan"]
        if not t.table.covering_index:
            used = ", ".join(sorted({f"{s.node} using {s.index}" for s in scans})) or "no keys to explain (never analyzed)"
            out.append(Finding("index_only", t.subject, Status.PASS, f"{used}: each found key also reads a heap page",
                               "covering_index = true would make lookups index-only (measured effect: docs/doctor.md)",
                               measured=measured))
            continue
        vacuum = (_vacuum(t),)
        why = ("index-only scans read the heap for every row on a page not marked all-visible; VACUUM marks "
               "them, except rows newer than the oldest open transaction (see the vacuum check). Keep autovacuum "
               "frequent on tables updated in place: ALTER TABLE "
               f"{t.ident} SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02)")
        if scans and not ios:
            used = ", ".join(sorted({f"{s.node} using {s.index}" for s in scans}))
            out.append(Finding("index_only", t.subject, Status.FAIL, f"{used}, not index-only; {vm_text}",
                               "the planner skips the covering index while the visibility map is unset: " + why,
                               vacuum, measured))
            continue
        rows = sum(s.rows for s in ios)
        fetches = sum(s.heap_fetches or 0 for s in ios)
        ratio = fetches / rows if rows else 0.0
        measured.update(heap_fetches=fetches, rows=rows, heap_fetch_ratio=ratio)
        if ios:
            value = (f"Index Only Scan using {ios[0].index}: {fetches:,.0f} heap fetches for {rows:,} rows "
                     f"({_pct(ratio)}); {vm_text}")
        else:
            value = f"no keys to explain (never analyzed); {vm_text}"
        if ratio > HEAP_FETCH_FAIL or (not ios and vm < VM_WARN):
            status = Status.FAIL
        elif ratio > HEAP_FETCH_WARN or vm < VM_WARN:
            status = Status.WARN
        else:
            out.append(Finding("index_only", t.subject, Status.PASS, value, measured=measured))
            continue
        out.append(Finding("index_only", t.subject, status, value, why, vacuum, measured))
    return out


_TYPE_MODIFIERS = re.compile(r"\(.*\)")
BIGINT_ADVICE = "8 bytes where the values ANALYZE sampled fit in integer (4 bytes, up to ±2^31); use integer"


def _base_type(type_name: str) -> str:
    return _TYPE_MODIFIERS.sub("", type_name).strip()


def check_row_width(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        variable, fixed = [], []
        for c in t.columns:
            if c.name == KEY_COLUMN:
                continue
            base = _base_type(c.type)
            if base in WIDE_TYPES:
                (variable if c.varlena else fixed).append(f"{c.name} {c.type}: {WIDE_TYPES[base]}")
            elif base == "bigint" and c.fits_integer:
                fixed.append(f"{c.name} bigint: {BIGINT_ADVICE}")
        per_row = (t.heap_bytes + t.toast_bytes) / max(t.rows, 1)
        widths = [c.avg_width for c in t.columns]
        data = sum(w for w in widths if w is not None) if None not in widths else None
        value = f"{per_row:,.0f} B/row on disk" + (f" ({data} B of column data)" if data is not None else "")
        if t.toast_bytes:
            value += f", {_size(t.toast_bytes)} in TOAST"
        measured = {"bytes_per_row": per_row, "column_bytes": data, "heap_bytes": t.heap_bytes, "toast_bytes": t.toast_bytes,
                    "wide_columns": [*variable, *fixed]}
        if variable:
            status = Status.FAIL
        elif fixed:
            status = Status.WARN
        else:
            out.append(Finding("row_width", t.subject, Status.PASS, value + "; narrow fixed-width types", measured=measured))
            continue
        advice = ("; ".join([*variable, *fixed]) + ". Changing a type rewrites the table under an exclusive lock "
                  "(ALTER TABLE ... ALTER COLUMN ... TYPE ... USING ...) and changes what readers get: plan it")
        out.append(Finding("row_width", t.subject, status, value, advice, measured=measured))
    return out


def _lookup_bytes(f: Facts, t: TableFacts) -> int:
    """Bytes of the relations lookups of ``t`` read: what must stay cached. Everything when the probe failed."""
    tp = f.probe.tables.get(t.table.name)
    if tp is None or tp.error:
        return t.total_bytes
    read = _read_by_lookups(f, t)
    return sum(i.bytes for i in t.indexes if i.name in read) + (t.heap_bytes + t.toast_bytes if t.table.name in read else 0)


def check_working_set(f: Facts) -> list[Finding]:
    s = f.server
    total = sum(_lookup_bytes(f, t) for t in f.existing)
    stored = sum(t.total_bytes for t in f.existing)
    value = (f"lookups read {_size(total)} of tables and indexes ({_size(stored)} stored); shared_buffers "
             f"{_size(s.shared_buffers)}, effective_cache_size {_size(s.effective_cache_size)}")
    measured = {"working_set_bytes": total, "stored_bytes": stored, "shared_buffers_bytes": s.shared_buffers,
                "effective_cache_size_bytes": s.effective_cache_size}
    if total <= WORKING_SET_SHARE * s.shared_buffers:
        return [Finding("working_set", SERVER, Status.PASS, value, measured=measured)]
    options = (f"raise shared_buffers to at least {_size(total / WORKING_SET_SHARE)} (needs a restart), "
               "make hot tables index-only (covering_index = true: their heap then leaves the working set), or "
               "serve reads from a replica with its own memory. Separate read and write pools do not help: "
               "shared_buffers is one cache shared by every backend of the server")
    if total <= s.effective_cache_size:
        return [Finding("working_set", SERVER, Status.WARN, value,
                        "the working set exceeds what shared_buffers can hold for it: misses are copied from the OS "
                        "page cache (microseconds each, and the two caches hold the same pages twice); " + options,
                        measured=measured)]
    return [Finding("working_set", SERVER, Status.FAIL, value,
                    "the working set exceeds effective_cache_size too: misses go to disk; " + options, measured=measured)]


def check_vacuum(f: Facts) -> list[Finding]:
    out = [_vacuum_server(f.server)]
    for t in f.existing:
        live, dead = t.live_rows, t.dead_rows
        ratio = dead / (live + dead) if live + dead else 0.0
        enabled = t.reloptions.get("autovacuum_enabled", "true").lower() not in ("false", "off", "0", "no")
        scale = t.reloptions.get("autovacuum_vacuum_scale_factor", f"{f.server.vacuum_scale_factor:g}")
        last_analyze = t.stat.get("last_analyze") or t.stat.get("last_autoanalyze")
        vacuumed = t.stat.get("last_vacuum") or t.stat.get("last_autovacuum")
        value = (f"{dead:,} dead / {live:,} live rows ({_pct(ratio)}); last vacuum {vacuumed or 'never'}, "
                 f"last analyze {last_analyze or ('unknown' if t.analyzed else 'never')}; "
                 f"autovacuum {'on' if enabled else 'OFF'} (scale factor {scale})")
        measured = {"dead_rows": dead, "live_rows": live, "dead_ratio": ratio, "autovacuum_enabled": enabled,
                    "scale_factor": scale, "last_vacuum": vacuumed, "last_analyze": last_analyze}
        status, advice, fix = Status.PASS, [], []
        if not enabled:
            status = Status.FAIL
            advice.append("autovacuum is disabled on this table: dead rows and unset visibility-map pages accumulate")
            fix.append(f"ALTER TABLE {t.ident} RESET (autovacuum_enabled)")
        if ratio > DEAD_WARN:
            status = max(status, Status.FAIL if ratio > DEAD_FAIL else Status.WARN, key=lambda x: x.rank)
            advice.append(f"{_pct(ratio)} of the rows are dead: lookups step over them and index-only scans visit the heap; "
                          f"VACUUM now, and for a table updated in place lower the trigger: ALTER TABLE {t.ident} "
                          "SET (autovacuum_vacuum_scale_factor = 0.02)")
            fix.append(_vacuum(t))
        if not t.analyzed and t.rows:
            status = max(status, Status.WARN, key=lambda x: x.rank)
            advice.append("never analyzed: the planner guesses its size and the doctor has no keys to explain")
            fix.append(_vacuum(t))
        out.append(Finding("vacuum", t.subject, status, value, "; ".join(advice), tuple(dict.fromkeys(fix)), measured))
    return out


def _vacuum_server(s: ServerFacts) -> Finding:
    who, age = s.oldest_xact or ("none", 0.0)
    value = (f"autovacuum {'on' if s.autovacuum else 'OFF'}, track_counts {'on' if s.track_counts else 'OFF'}; "
             f"oldest open transaction: {who}" + (f", {age:,.0f}s" if s.oldest_xact else ""))
    measured = {"autovacuum": s.autovacuum, "track_counts": s.track_counts, "oldest_xact": who, "oldest_xact_seconds": age}
    off = [name for name, on in (("autovacuum", s.autovacuum), ("track_counts", s.track_counts)) if not on]
    if off:
        return Finding("vacuum", SERVER, Status.FAIL, value,
                       "without autovacuum dead rows pile up and the visibility map decays; turn it back on: "
                       + "; ".join(f"ALTER SYSTEM SET {name} = on" for name in off) + "; SELECT pg_reload_conf()",
                       measured=measured)
    if age > LONG_XACT_SECONDS:
        return Finding("vacuum", SERVER, Status.WARN, value,
                       "VACUUM can neither remove rows that died after this transaction began nor mark newer pages "
                       "all-visible, so index-only scans decay while it stays open: end it (pg_terminate_backend(pid) "
                       "if it is stuck; COMMIT PREPARED / ROLLBACK PREPARED a forgotten prepared transaction). "
                       "Replication slots (pg_replication_slots.xmin) hold VACUUM back the same way",
                       measured=measured)
    return Finding("vacuum", SERVER, Status.PASS, value, measured=measured)


CHECKS: dict[str, Callable[[Facts], list[Finding]]] = {
    "schema": check_schema,
    "prepared": check_prepared,
    "cache": check_cache,
    "scans": check_scans,
    "index_only": check_index_only,
    "row_width": check_row_width,
    "working_set": check_working_set,
    "vacuum": check_vacuum,
}


def evaluate(facts: Facts) -> Report:
    """Every check's findings, in check order."""
    return Report(tuple(finding for check in CHECKS.values() for finding in check(facts)))
