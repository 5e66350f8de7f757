"""Cache warm-up: load feature tables and their indexes into shared_buffers, and measure how warm they are.

A lookup on a cold cache pays one read per missing block (from disk, or a
copy from the OS page cache) for each table's index leaf and heap page. After
a restart every block is cold, and the cumulative ``pg_statio_*`` counters do
not show it: they survive a clean restart and are dominated by history. So
warmth is measured directly, with a *probe*, inside one read-only transaction:

- cache: the store's real batch statement reads 100 random keys per table
  (absent keys, uniform over the key space: each descends to a random index
  leaf) and a TID scan reads 100 random heap pages; with a hot-key list, the
  batch statement reads the hot keys instead. The transaction's own block
  counters (``pg_stat_get_xact_blocks_fetched`` / ``_hit``) before and after
  give the hit ratio per table and per index: no other session's traffic is
  counted, nothing waits for statistics to be flushed, and since the places
  are random an earlier probe does not make a later one look warm;
- plans: the batch statement runs under ``EXPLAIN (ANALYZE, BUFFERS)`` for
  real keys (the hot keys, else the key histogram ANALYZE keeps in
  ``pg_stats``: found without reading the table), which shows the scan each
  table's lookup uses and its heap fetches (for the doctor).

``warmup`` then:

1. probes (hit ratio before);
2. loads every table (main fork and visibility map) and then every index with
   ``pg_prewarm`` (``CREATE EXTENSION IF NOT EXISTS pg_prewarm`` when it is not
   installed yet); where that is impossible, reads each table through a full
   ordered index scan instead (the key index and every heap page), plus a full
   index-only scan of the covering index once VACUUM has set the visibility map;
3. reads the hot keys with the store's batch statement;
4. probes again (hit ratio after).

Everything is written once, as generators of queries (``Steps``) executed by a
sync driver (``run``) or an async one (``run_async``), so the CLI, a
FeatureStore and the HTTP server's start-up (``warm_store_async``, before
/readyz turns ready) run the same warm-up.
"""

from __future__ import annotations

import enum
import random
import time
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import Int8

from .connections import unavailable
from .definitions import KEY_LENGTH, UPDATED_AT, Registry
from .errors import KeyFormatError, WarmupError
from .reader import compile_batch_reader, parse_key, parse_keys, select
from .schema import covering_index_name, qualified

if TYPE_CHECKING:
    from .store import AsyncFeatureStore, FeatureStore

T = TypeVar("T")
Rows = list[tuple[Any, ...]]

PROBE_KEYS = 1000  # at most this many hot keys per table in a probe
PROBE_PLACES = 100  # random index descents and heap pages per table in a probe
HOT_KEY_CHUNK = 1000  # hot keys per batch statement


# -- queries and their drivers --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One statement for a driver to run. ``raw``: ``$n`` placeholders (the store's own statements)."""

    statement: sql.SQL | sql.Composed | bytes | str  # what Cursor.execute takes (psycopg.abc.Query, bar t-strings)
    params: Sequence[Any] | None = None
    raw: bool = False


Steps = Generator[Query, Rows, T]
"""A generator that yields queries, receives their rows (or has the psycopg error thrown in), returns a result."""


def run(conn: psycopg.Connection, steps: Steps[T]) -> T:
    """Execute ``steps`` on an autocommit connection; a transaction left open by an error is rolled back."""
    try:
        query = next(steps)
        while True:
            try:
                cur = (psycopg.RawCursor if query.raw else psycopg.Cursor)(conn)
                cur.execute(query.statement, query.params, prepare=False)
                rows = cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(rows)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            conn.rollback()


async def run_async(conn: psycopg.AsyncConnection, steps: Steps[T]) -> T:
    """The asyncio twin of ``run``."""
    try:
        query = next(steps)
        while True:
            try:
                cur = (psycopg.AsyncRawCursor if query.raw else psycopg.AsyncCursor)(conn)
                await cur.execute(query.statement, query.params, prepare=False)
                rows = await cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(rows)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()


# -- relations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """A feature table or one of its indexes."""

    table: str
    name: str
    oid: int
    is_index: bool
    blocks: int
    has_vm: bool  # the visibility-map fork exists (VACUUM has run)


_RELATIONS = """
SELECT t.relname, c.relname, c.oid::int8, c.relkind IN ('i', 'I'),
       pg_relation_size(c.oid) / current_setting('block_size')::int,
       pg_relation_size(c.oid, 'vm') > 0
FROM pg_class t
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class c ON c.oid = t.oid OR c.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = t.oid)
WHERE n.nspname = %s AND t.relname = ANY(%s) AND t.relkind = 'r'
ORDER BY 1, 4, 2
"""


def relations(registry: Registry) -> Steps[list[Relation]]:
    """The registry's tables that exist, and their indexes (tables first)."""
    rows = yield Query(_RELATIONS, (registry.schema, list(registry.tables)))
    return [Relation(*row) for row in rows]


def existing_tables(registry: Registry, rels: Iterable[Relation]) -> list[str]:
    """Registry tables present in ``rels``, in registry order."""
    present = {r.table for r in rels}
    return [name for name in registry.tables if name in present]


# -- the probe ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocks:
    """Buffer accesses of one relation during a probe."""

    fetched: int
    hit: int

    @property
    def read(self) -> int:
        return self.fetched - self.hit

    @property
    def ratio(self) -> float | None:
        return self.hit / self.fetched if self.fetched else None


@dataclass(frozen=True)
class Scan:
    """One scan node of a probed plan."""

    node: str  # "Index Only Scan", "Index Scan", "Seq Scan", ...
    index: str | None
    rows: int  # rows returned over all loops (EXPLAIN gives a per-loop mean to 2 decimals: approximate)
    heap_fetches: float | None  # index-only scans only


@dataclass(frozen=True)
class TableProbe:
    table: str
    keys: int
    scans: tuple[Scan, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Probe:
    """What reading a sample of keys did to the buffer cache, per table and per index."""

    source: str  # of the keys whose plans were explained: "hot keys", "statistics" or "none"
    places: str  # what the cache measurement read
    tables: Mapping[str, TableProbe]
    blocks: Mapping[str, Blocks]  # relation name -> its buffer accesses

    def total(self, names: Iterable[str] | None = None) -> Blocks:
        chosen = self.blocks.values() if names is None else [self.blocks[n] for n in names if n in self.blocks]
        return Blocks(sum(b.fetched for b in chosen), sum(b.hit for b in chosen))

    @property
    def ratio(self) -> float | None:
        return self.total().ratio

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "places": self.places,
            "hit_ratio": self.ratio,
            "relations": {n: {"fetched": b.fetched, "hit": b.hit, "ratio": b.ratio} for n, b in self.blocks.items()},
            "tables": {
                t.table: {"keys": t.keys, "error": t.error, "scans": [s.__dict__ for s in t.scans]}
                for t in self.tables.values()
            },
        }


# The key histogram ANALYZE keeps, per table, of the table's own key column (its entity's), as text:
# parsed back by the key's own type in one statement per key type.
_KEY_SAMPLE = """
SELECT s.tablename::text, s.histogram_bounds::text
FROM pg_stats s JOIN unnest(%s::text[], %s::text[]) AS k(tablename, attname)
  ON k.tablename = s.tablename AND k.attname = s.attname
WHERE s.schemaname = %s AND NOT s.inherited AND s.histogram_bounds IS NOT NULL
"""

_KEY_ARRAY = {"bytea": "bytea[]", "int8": "int8[]", "text": "text[]", "uuid": "uuid[]"}

_BLOCK_COUNTS = """
SELECT oid::int8, pg_stat_get_xact_blocks_fetched(oid), pg_stat_get_xact_blocks_hit(oid)
FROM pg_class WHERE oid = ANY(%s::oid[])
"""

_INDEX_PATHS = "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
_EXPLAIN = b"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) "
_TID_SCAN = sql.SQL("SELECT count(*) FROM {} WHERE ctid = ANY(%s::text[]::tid[])")


def _hot_tables(registry: Registry, tables: Sequence[str]) -> list[str]:
    """The tables hot keys (32-byte keys, or 64 hex characters) apply to: those of 32-byte keys not hashed from natural ids."""
    return [t for t in tables if registry.tables[t].entity.key_type == "bytea32" and not registry.tables[t].entity.hash]


def sample_keys(
    registry: Registry, tables: Sequence[str], hot_keys: Sequence[bytes] = ()
) -> Steps[tuple[str, dict[str, list[Any]]]]:
    """Keys to probe per table: the hot keys when given (for the tables of 32-byte keys), else the
    key histogram of ``pg_stats`` (of each table's own key column, as its key type)."""
    if hot_keys:
        return "hot keys", {t: list(hot_keys[:PROBE_KEYS]) for t in _hot_tables(registry, tables)}
    keys: dict[str, list[Any]] = {}
    by_cast: dict[str, list[str]] = {}
    for t in tables:
        by_cast.setdefault(registry.tables[t].entity.cast, []).append(t)
    for cast, names in by_cast.items():
        rows = yield Query(_KEY_SAMPLE, (names, [registry.tables[t].key_column for t in names], registry.schema))
        for table, text in rows:
            parsed = yield Query(sql.SQL("SELECT %s::text::{}").format(sql.SQL(_KEY_ARRAY[cast])), (text,))
            keys[table] = [_key_param(cast, k) for k in parsed[0][0] or () if k is not None]
    return ("statistics" if keys else "none"), keys


def _key_param(cast: str, key: Any) -> Any:
    """A key as the batch statement's parameter takes it (bytes, an Int8, a str, a UUID)."""
    if cast == "int8":
        return Int8(key)
    return bytes(key) if cast == "bytea" else key


def random_keys(registry: Registry, table: str, n: int, known: Sequence[Any], rng: random.Random) -> list[Any]:
    """``n`` keys (mostly absent) spread over the table's key space, so each lookup descends to a
    random index leaf: uniform random bytes for 32-byte keys and UUIDs; for integer and text keys,
    between two random neighbours of the key histogram (``known``), which follows where the keys are."""
    entity = registry.tables[table].entity
    kind = entity.key_type
    if kind == "bytea32":
        return [rng.randbytes(KEY_LENGTH) for _ in range(n)]
    if kind == "uuid":
        return [uuid.UUID(int=rng.getrandbits(128)) for _ in range(n)]
    bounds = sorted(known)
    if kind == "bigint":
        lo, hi = (int(bounds[0]), int(bounds[-1])) if bounds else (0, 2**31)
        return [Int8(rng.randint(lo, max(lo, hi))) for _ in range(n)]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for _ in range(n):
        suffix = "".join(rng.choice(alphabet) for _ in range(4))
        base = rng.choice(bounds) if bounds else ""
        out.append((base + suffix)[: entity.max_length])
    return out


def scan_nodes(plan: Any) -> list[tuple[str, Scan]]:
    """``(relation, scan)`` for every node of an EXPLAIN (FORMAT JSON) plan that reads a relation."""
    found = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", ()))
        if "Relation Name" in node:
            rows = round(float(node.get("Actual Rows", 0)) * float(node.get("Actual Loops", 1)))
            found.append((node["Relation Name"], Scan(node["Node Type"], node.get("Index Name"), rows, node.get("Heap Fetches"))))
    return found


def _attempt(query: Query) -> Steps[tuple[Rows | None, str | None]]:
    """Run one table's statement under a savepoint: its failure (say, a column its definition
    names is missing) is returned, and the other tables are still probed."""
    yield Query("SAVEPOINT pgfeatures_probe")
    try:
        rows = yield query
    except psycopg.Error as exc:
        yield Query("ROLLBACK TO SAVEPOINT pgfeatures_probe")
        return None, str(exc).strip().splitlines()[0]
    return rows, None


def _block_counts(by_oid: Mapping[int, str]) -> Steps[dict[int, tuple[int, int]]]:
    rows = yield Query(_BLOCK_COUNTS, (list(by_oid),))
    return {oid: (int(fetched), int(hit)) for oid, fetched, hit in rows}


def probe(
    registry: Registry,
    tables: Sequence[str],
    keys: Mapping[str, Sequence[bytes]],
    rels: Sequence[Relation],
    source: str,
    *,
    places: int = PROBE_PLACES,
    rng: random.Random | None = None,
) -> Steps[Probe]:
    """Measure, in one read-only transaction: the cache, then the plans.

    Cache: with hot keys, the store's batch statement reads them; otherwise it
    reads ``places`` random keys per table (absent keys, uniform over the key
    space, so each descends to a random index leaf) and a TID scan reads
    ``places`` random heap pages. Random places change from run to run, so an
    earlier probe does not make a later one look warm. Plans: the batch
    statement runs under EXPLAIN (ANALYZE, BUFFERS) for ``keys[table]``
    (present keys), which shows the scan used and its heap fetches. Sequential and bitmap scans
    are disabled in the probe's transaction, so the plans are those of a big table's lookups.
    """
    rng = rng or random.Random()
    results: dict[str, TableProbe] = {}
    by_oid = {r.oid: r.name for r in rels}
    heap_blocks = {r.table: r.blocks for r in rels if not r.is_index}
    yield Query("BEGIN READ ONLY")
    # Lookups are probed as they run on a big table: on a small one the planner rightly prefers a
    # sequential scan, which says nothing about whether the key index serves lookups (and a
    # heap-only read would hide the covering index's heap fetches). Disabled, a Seq Scan is
    # chosen only where no index can serve the lookup at all.
    yield Query(_INDEX_PATHS)
    # The "xact" counters hold every access not yet flushed to the statistics system, which
    # can span earlier transactions; nothing is flushed inside a transaction, so differences
    # between points of this one are exactly what happened in between.
    start = yield from _block_counts(by_oid)
    errors: dict[str, str] = {}
    for name in tables:
        statement = compile_batch_reader(select(registry, [name])).statement
        hot = source == "hot keys" and name in keys
        lookups = list(keys[name]) if hot else random_keys(
            registry, name, places, () if source == "hot keys" else keys.get(name, ()), rng)
        _, error = yield from _attempt(Query(statement, (lookups,), raw=True))
        pages = rng.sample(range(heap_blocks[name]), min(places, heap_blocks[name]))
        if not hot and pages and error is None:
            tids = [f"({page},1)" for page in pages]
            _, error = yield from _attempt(Query(_TID_SCAN.format(qualified(registry, registry.tables[name])), (tids,)))
        if error:
            errors[name] = error
    cached = yield from _block_counts(by_oid)
    for name in tables:
        present = list(keys.get(name, ()))
        if name in errors or not present:
            results[name] = TableProbe(name, len(present), error=errors.get(name))
            continue
        statement = compile_batch_reader(select(registry, [name])).statement
        rows, error = yield from _attempt(Query(_EXPLAIN + statement, (present,), raw=True))
        scans = () if rows is None else tuple(s for rel, s in scan_nodes(rows[0][0]) if rel == name)
        results[name] = TableProbe(name, len(present), scans, error)
    yield Query("ROLLBACK")
    blocks = {
        by_oid[oid]: Blocks(fetched - start[oid][0], hit - start[oid][1])
        for oid, (fetched, hit) in cached.items()
        if oid in start
    }
    return Probe(source, "hot keys" if source == "hot keys" else f"{places} random keys and heap pages per table",
                 results, {r.name: blocks[r.name] for r in rels if r.name in blocks})


def measure(registry: Registry, hot_keys: Sequence[bytes] = ()) -> Steps[Probe]:
    """The probe on its own: how warm the registry's tables are right now."""
    rels = yield from relations(registry)
    tables = existing_tables(registry, rels)
    source, keys = yield from sample_keys(registry, tables, hot_keys)
    return (yield from probe(registry, tables, keys, rels, source))


# -- warm-up --------------------------------------------------------------------------------------


class Method(str, enum.Enum):
    AUTO = "auto"  # pg_prewarm when it can be used, else index reads
    PREWARM = "prewarm"  # pg_prewarm or fail
    READ = "read"  # full index reads only

    @classmethod
    def parse(cls, value: "str | Method") -> "Method":
        try:
            return cls(value)
        except ValueError:
            raise WarmupError(f"unknown warm-up method {value!r}; valid: {', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True)
class Warmed:
    """One relation loaded: blocks loaded by pg_prewarm, or rows read through the index."""

    relation: str
    is_index: bool
    blocks: int | None = None
    rows: int | None = None


@dataclass(frozen=True)
class WarmupReport:
    method: str  # "pg_prewarm" or "index read"
    warmed: tuple[Warmed, ...]
    hot_keys: int
    before: Probe
    after: Probe
    seconds: float
    working_set_bytes: int
    shared_buffers_bytes: int
    note: str | None = None  # why the fallback was used
    missing: tuple[str, ...] = field(default=())  # registry tables that do not exist

    @property
    def fits(self) -> bool:
        """Whether the tables and indexes fit in shared_buffers (else the last loaded evict the first)."""
        return self.working_set_bytes <= self.shared_buffers_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "note": self.note,
            "seconds": self.seconds,
            "hot_keys": self.hot_keys,
            "working_set_bytes": self.working_set_bytes,
            "shared_buffers_bytes": self.shared_buffers_bytes,
            "fits": self.fits,
            "missing_tables": list(self.missing),
            "warmed": [w.__dict__ for w in self.warmed],
            "hit_ratio_before": self.before.ratio,
            "hit_ratio_after": self.after.ratio,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
        }


_SIZES = """
SELECT pg_size_bytes(current_setting('shared_buffers')), coalesce(sum(pg_relation_size(oid)), 0)::int8
FROM pg_class WHERE oid = ANY(%s::oid[])
"""


def _choose_method(method: Method) -> Steps[tuple[str, str | None]]:
    if method is Method.READ:
        return "index read", None
    rows = yield Query("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_prewarm')")
    if rows[0][0]:
        return "pg_prewarm", None
    try:
        yield Query("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    except psycopg.errors.UniqueViolation:
        pass  # created by a concurrent warm-up between our check and our CREATE
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        if method is Method.PREWARM:
            raise WarmupError(
                f"pg_prewarm cannot be used in this database: {reason}; "
                "install it (CREATE EXTENSION pg_prewarm, as a user allowed to) or use method 'read' or 'auto'"
            ) from exc
        return "index read", f"pg_prewarm unavailable ({reason}): read every index instead"
    return "pg_prewarm", None


def _prewarm(rels: Sequence[Relation]) -> Steps[list[Warmed]]:
    warmed = []
    # Heaps first, indexes last: should the working set overflow shared_buffers, the
    # index blocks that every lookup walks are the ones that stay.
    for rel in sorted(rels, key=lambda r: r.is_index):
        rows = yield Query("SELECT pg_prewarm(%s::oid::regclass, 'buffer', 'main')", (rel.oid,))
        if rel.has_vm:  # index-only scans consult the visibility map for every row
            yield Query("SELECT pg_prewarm(%s::oid::regclass, 'buffer', 'vm')", (rel.oid,))
        warmed.append(Warmed(rel.name, rel.is_index, blocks=int(rows[0][0])))
    return warmed


_NO_SEQSCAN = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_indexonlyscan', 'off', true)"
)
_INDEX_ONLY = "SELECT set_config('enable_indexonlyscan', 'on', true)"


def _read_through_indexes(registry: Registry, tables: Sequence[str]) -> Steps[list[Warmed]]:
    """Without pg_prewarm: an ordered full index scan reads the key index and, through it, every heap page;
    then a query only the covering index can answer index-only reads that index, when the visibility
    map is set (when it is not, lookups do not use it index-only either and the planner reads the key
    index again). Sequential scans are avoided on purpose: they count as seq scans on a hot table and
    use a small ring buffer whose pages do not stay cached."""
    warmed = []
    for name in tables:
        table = registry.tables[name]
        key = sql.Identifier(table.key_column)
        ident = qualified(registry, table)
        yield Query("BEGIN READ ONLY")
        yield Query(_NO_SEQSCAN)
        rows = yield Query(sql.SQL("SELECT count(*) FROM (SELECT * FROM {} ORDER BY {}) s").format(ident, key))
        warmed.append(Warmed(name, False, rows=int(rows[0][0])))
        if table.covering_index:
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in (*table.feature_names, UPDATED_AT))
            yield Query(_INDEX_ONLY)
            rows = yield Query(sql.SQL("SELECT count(s.*) FROM (SELECT {} FROM {} ORDER BY {}) s").format(columns, ident, key))
            warmed.append(Warmed(covering_index_name(table), True, rows=int(rows[0][0])))
        yield Query("COMMIT")
    return warmed


def _read_hot_keys(registry: Registry, tables: Sequence[str], hot_keys: Sequence[bytes]) -> Steps[None]:
    tables = _hot_tables(registry, tables)  # hot keys are 32-byte keys: tables of other key types have none
    if not tables or not hot_keys:
        return
    statement = compile_batch_reader(select(registry, tables)).statement
    for start in range(0, len(hot_keys), HOT_KEY_CHUNK):
        yield Query(statement, (list(hot_keys[start : start + HOT_KEY_CHUNK]),), raw=True)


def warmup_steps(registry: Registry, hot_keys: Sequence[bytes] = (), method: Method = Method.AUTO) -> Steps[WarmupReport]:
    """The whole warm-up as steps. Raises WarmupError when no feature table exists, or when
    ``method`` is PREWARM and pg_prewarm cannot be used."""
    t0 = time.perf_counter()
    rels = yield from relations(registry)
    tables = existing_tables(registry, rels)
    missing = tuple(t for t in registry.tables if t not in tables)
    if not tables:
        raise WarmupError(
            f"none of the {len(registry.tables)} feature tables exists in schema {registry.schema!r}: "
            "create them with 'pgfeatures init' (same --definitions)"
        )
    sizes = yield Query(_SIZES, ([r.oid for r in rels],))
    shared_buffers, working_set = sizes[0]
    source, keys = yield from sample_keys(registry, tables, hot_keys)
    before = yield from probe(registry, tables, keys, rels, source)
    used, note = yield from _choose_method(method)
    if used == "pg_prewarm":
        warmed = yield from _prewarm(rels)
    else:
        warmed = yield from _read_through_indexes(registry, tables)
    yield from _read_hot_keys(registry, tables, hot_keys)
    after = yield from probe(registry, tables, keys, rels, source)
    return WarmupReport(
        used, tuple(warmed), len(hot_keys), before, after, time.perf_counter() - t0,
        int(working_set), int(shared_buffers), note, missing,
    )


def connect(dsn: str, application_name: str) -> psycopg.Connection:
    """An autocommit connection for the warm-up or the doctor. Raises DatabaseUnavailableError."""
    try:
        return psycopg.connect(dsn, autocommit=True, application_name=application_name, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from exc


def _check_autocommit(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    if not conn.autocommit:
        raise WarmupError("warm-up needs an autocommit connection (it manages its own transactions)")


def warmup(
    conn: psycopg.Connection, registry: Registry, hot_keys: Iterable[bytes | str] = (), *, method: Method | str = Method.AUTO
) -> WarmupReport:
    """Load the registry's tables and indexes into shared_buffers, read the hot keys, report hit ratios.

    Raises KeyFormatError for a malformed hot key (before any I/O), WarmupError as in
    ``warmup_steps``, and psycopg errors when the database fails.
    """
    _check_autocommit(conn)
    return run(conn, warmup_steps(registry, parse_keys(hot_keys), Method.parse(method)))


async def warmup_async(
    conn: psycopg.AsyncConnection, registry: Registry, hot_keys: Iterable[bytes | str] = (), *, method: Method | str = Method.AUTO
) -> WarmupReport:
    """The asyncio twin of ``warmup``."""
    _check_autocommit(conn)
    return await run_async(conn, warmup_steps(registry, parse_keys(hot_keys), Method.parse(method)))


def warm_store(store: "FeatureStore", *, method: Method | str = Method.AUTO) -> WarmupReport:
    """Warm the cache for an open store: its registry and hot keys, on a write-pool connection
    (shared_buffers is shared by every backend, so any connection warms it for the readers)."""
    assert store.write_pool is not None, "store is not open"
    with store.write_pool.connection() as conn:
        return warmup(conn, store.registry, store.hot_keys, method=method)


async def warm_store_async(store: "AsyncFeatureStore", *, method: Method | str = Method.AUTO) -> WarmupReport:
    """The asyncio twin of ``warm_store``: await it before reporting ready."""
    assert store.write_pool is not None, "store is not open"
    async with store.write_pool.connection() as conn:
        return await warmup_async(conn, store.registry, store.hot_keys, method=method)


def load_hot_keys(path: str | Path) -> list[bytes]:
    """Keys from a file: one 64-character hex key per line; blank lines and ``#`` comments are skipped.

    Raises WarmupError when the file cannot be read, KeyFormatError naming the line of a bad key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WarmupError(f"cannot read the hot-key file {path}: {exc.strerror or exc}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            keys.append(parse_key(line))
        except KeyFormatError as exc:
            raise KeyFormatError(f"{path}:{number}: {exc}") from None
    return keys
