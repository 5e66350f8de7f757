"""The warm-up itself: load the feature tables and their indexes into shared_buffers, read the
hot keys, and report the hit ratios before and after.

Owns the method (pg_prewarm, else full index reads: ``Method``), the whole warm-up as steps
(``warmup_steps``) and its report (``WarmupReport``), and the entry points: ``warmup`` /
``warmup_async`` on a connection, ``warm_store`` / ``warm_store_async`` for an open store,
``connect`` (an autocommit connection), ``load_hot_keys`` (a hot-key file).

Every finished warm-up is logged (logger ``pgfeatures.warmup``): what it did and how long it took
(info; a warning past SLOW_WARMUP, as it holds a server's readiness back), and as warnings what
keeps the cache from being warm (a working set larger than shared_buffers, missing tables).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..connections import unavailable
from ..definitions import UPDATED_AT, Registry
from ..errors import KeyFormatError, WarmupError
from ..reader import compile_batch_reader, parse_key, parse_keys, select
from ..schema import covering_index_name, qualified
from .cache_probe import Probe, Relation, existing_tables, hot_tables, probe, relations, sample_keys
from .driver import run
from .driver_async import run_async
from .steps import Query, Steps

if TYPE_CHECKING:
    from ..store import AsyncFeatureStore, FeatureStore

HOT_KEY_CHUNK = 1000  # hot keys per batch statement
SLOW_WARMUP = 30.0  # seconds: a warm-up slower than this is logged as a warning (it holds readiness back)

logger = logging.getLogger("pgfeatures.warmup")


# -- warm-up --------------------------------------------------------------------------------------


class Method(str, enum.Enum):
    AUTO = "auto"  # pg_prewarm when it can be used, else index reads
    PREWARM = "prewarm"  # pg_prewarm or fail
    READ = "read"  # full index reads only

    @classmethod
    def parse(cls, value: str | Method) -> Method:
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
            rows = yield Query(
                sql.SQL("SELECT count(s.*) FROM (SELECT {} FROM {} ORDER BY {}) s").format(columns, ident, key)
            )
            warmed.append(Warmed(covering_index_name(table), True, rows=int(rows[0][0])))
        yield Query("COMMIT")
    return warmed


def _read_hot_keys(registry: Registry, tables: Sequence[str], hot_keys: Sequence[bytes]) -> Steps[None]:
    tables = hot_tables(registry, tables)  # hot keys are 32-byte keys: tables of other key types have none
    if not tables or not hot_keys:
        return
    statement = compile_batch_reader(select(registry, tables)).statement
    for start in range(0, len(hot_keys), HOT_KEY_CHUNK):
        yield Query(statement, (list(hot_keys[start : start + HOT_KEY_CHUNK]),), raw=True)


def warmup_steps(
    registry: Registry, hot_keys: Sequence[bytes] = (), method: Method = Method.AUTO
) -> Steps[WarmupReport]:
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
        used,
        tuple(warmed),
        len(hot_keys),
        before,
        after,
        time.perf_counter() - t0,
        int(working_set),
        int(shared_buffers),
        note,
        missing,
    )


def connect(dsn: str, application_name: str) -> psycopg.Connection:
    """An autocommit connection for the warm-up or the doctor. Raises DatabaseUnavailableError."""
    try:
        return psycopg.connect(dsn, autocommit=True, application_name=application_name, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from exc


def _logged(report: WarmupReport) -> WarmupReport:
    """Log a finished warm-up: what it did (info), and what keeps the cache from being warm (warnings)."""

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    level = logging.WARNING if report.seconds > SLOW_WARMUP else logging.INFO
    logger.log(
        level,
        "pgfeatures: warm-up (%s) of %d relation(s) and %d hot key(s) took %.1fs%s: hit ratio %s -> %s",
        report.method,
        len(report.warmed),
        report.hot_keys,
        report.seconds,
        f" (slower than {SLOW_WARMUP:g}s)" if level == logging.WARNING else "",
        ratio(report.before.ratio),
        ratio(report.after.ratio),
    )
    if report.note:  # the fallback (index reads): slower, but it warms the same pages
        logger.info("pgfeatures: warm-up: %s", report.note)
    if not report.fits:
        logger.warning(
            "pgfeatures: warm-up: the tables and indexes (%d MB) do not fit in shared_buffers (%d MB): "
            "the last loaded evicted the first",
            report.working_set_bytes >> 20,
            report.shared_buffers_bytes >> 20,
        )
    if report.missing:
        logger.warning(
            "pgfeatures: warm-up: table(s) %s do not exist (create them with 'pgfeatures init')",
            ", ".join(report.missing),
        )
    return report


def _check_autocommit(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    if not conn.autocommit:
        raise WarmupError("warm-up needs an autocommit connection (it manages its own transactions)")


def warmup(
    conn: psycopg.Connection,
    registry: Registry,
    hot_keys: Iterable[bytes | str] = (),
    *,
    method: Method | str = Method.AUTO,
) -> WarmupReport:
    """Load the registry's tables and indexes into shared_buffers, read the hot keys, report hit ratios.

    Raises KeyFormatError for a malformed hot key (before any I/O), WarmupError as in
    ``warmup_steps``, and psycopg errors when the database fails.
    """
    _check_autocommit(conn)
    return _logged(run(conn, warmup_steps(registry, parse_keys(hot_keys), Method.parse(method))))


async def warmup_async(
    conn: psycopg.AsyncConnection,
    registry: Registry,
    hot_keys: Iterable[bytes | str] = (),
    *,
    method: Method | str = Method.AUTO,
) -> WarmupReport:
    """The asyncio twin of ``warmup``."""
    _check_autocommit(conn)
    return _logged(await run_async(conn, warmup_steps(registry, parse_keys(hot_keys), Method.parse(method))))


def warm_store(store: FeatureStore, *, method: Method | str = Method.AUTO) -> WarmupReport:
    """Warm the cache for an open store: its registry and hot keys, on a write-pool connection
    (shared_buffers is shared by every backend, so any connection warms it for the readers)."""
    assert store.write_pool is not None, "store is not open"
    with store.write_pool.connection() as conn:
        return warmup(conn, store.registry, store.hot_keys, method=method)


async def warm_store_async(store: AsyncFeatureStore, *, method: Method | str = Method.AUTO) -> WarmupReport:
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
