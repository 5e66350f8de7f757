"""What the sync and async stores share, without I/O: read targets and their health, tables that
cannot be served, the statements every read connection prepares.

The I/O shells (``store_async.py``, ``opening_async.py``, ``reads_async.py``, ``writes_async.py``,
and the sync twins generated from them) only take connections, run statements and hand rows to
these objects and to the compiled readers of ``reader.py``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.numeric import Int8

from ..connections import ConnectFailures, redact
from ..definitions import KEY_LENGTH, Registry
from ..errors import SchemaDriftError
from ..reader import BatchReader, Reader, ReaderCache
from ..reader.transforms import ServiceTransforms
from ..schema import TableCheck, check_catalog, drift_error

logger = logging.getLogger("pgfeatures")

WARMUP_KEY = bytes(KEY_LENGTH)  # any key will do: warm-up prepares statements, it does not need rows

# Read sessions always use the generic plan of a prepared statement. Under the default
# plan_cache_mode=auto, PostgreSQL re-plans the batch statement (an array parameter) at every
# execution, because a custom plan looks cheaper for each array length; planning thirty
# subqueries costs about as much as running them. Every read is a primary-key lookup whose best
# plan does not depend on the key, so the generic plan is always the right one. (Behind a
# transaction-mode pooler a session setting would leak to other clients: not set there.)
READ_SESSION_SETUP = b"SET plan_cache_mode = force_generic_plan"

# Replica lag: zero on a primary and while the standby has replayed all it received, else the age
# of the last replayed transaction; infinite when it is behind but has replayed no transaction yet
# since it started (no timestamp to measure by): too far behind for a bound, whatever the bound.
LAG_QUERY = (
    b"SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0::float8"
    b" WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8"
    b" ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 'Infinity') END"
)

# Each pooled read connection keeps one raw cursor, made when the connection is warmed:
# making a cursor per request costs more client CPU than decoding 30 tables.
READ_CURSOR = "_pgfeatures_cursor"
PIPELINE_CURSORS = "_pgfeatures_pipeline_cursors"

PROBE_INTERVAL = 0.5  # seconds between probes of a read target that is down (or too far behind)
RENEWAL_RETRY = 10.0  # seconds before a max_lifetime renewal that could not fill its pool is tried again
RECHECK_INTERVAL = 1.0  # seconds between catalog re-checks of a table that could not be served
ON_DRIFT = ("raise", "isolate")


# -- read targets ---------------------------------------------------------------------------------


@dataclass(eq=False)
class ReadTarget:
    """One server reads can go to: a replica, or the primary (the only one, or the fallback)."""

    name: str
    dsn: str
    is_primary: bool
    failures: ConnectFailures = field(default_factory=ConnectFailures)
    pool: Any = None
    down: bool = False
    reason: str = ""
    lag: float | None = None
    probing: bool = False
    next_probe: float = 0.0
    renew_at: float = float("inf")  # when its pool is due for renewal (max_lifetime)
    renewing: bool = False
    renewal_failure: str = ""  # why the latest renewal could not fill its pool

    def describe(self) -> str:
        state = f"down: {self.reason}" if self.down else "up"
        lag = f", lag {self.lag:.1f}s" if self.lag else ""
        return f"{self.name} ({state}{lag})"


def pipeline_cursors(conn: Any, n: int, factory: Any) -> list[Any]:
    """At least ``n`` cursors kept on the connection for the pipeline strategy (one per statement)."""
    cursors = getattr(conn, PIPELINE_CURSORS, None)
    if cursors is None or len(cursors) < n:
        cursors = [factory(conn) for _ in range(n)]
        setattr(conn, PIPELINE_CURSORS, cursors)
    return cursors


def target_name(dsn: str, role: str) -> str:
    """A target's name for logs and readiness: its role and address, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return f"{role} {redact(dsn)}"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{role} {host}:{port}"


class Router:
    """The order in which a read tries its targets.

    Healthy replicas first, taken in turn (round robin across requests), then the fallback (the
    primary) if healthy. A target that failed is marked down and skipped until a probe finds it
    serving again; if every target is down, all are tried anyway, in order (one of them may be back
    before its probe says so). With ``max_lag``, a replica further behind than that is skipped like
    a down one. Orders are precomputed when health changes, so a read only picks one.
    """

    def __init__(self, replicas: Sequence[ReadTarget], fallback: ReadTarget | None, max_lag: float | None = None):
        self.replicas = tuple(replicas)
        self.fallback = fallback
        self.max_lag = max_lag
        self.targets = (*self.replicas, *([fallback] if fallback else []))
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._orders: tuple[tuple[ReadTarget, ...], ...] = ()
        self.down_count = 0  # targets down now: reads start probes only while some are
        self.next_probe_at = float("inf")  # the earliest time a probe is due (read without the lock)
        self.next_renewal_at = float("inf")  # the earliest time a pool is due for renewal (read without the lock)
        self._rebuild()

    def serving(self, target: ReadTarget) -> bool:
        if target.down:
            return False
        return not (self.max_lag is not None and not target.is_primary and (target.lag or 0.0) > self.max_lag)

    def _rebuild(self) -> None:
        self.down_count = sum(1 for t in self.targets if t.down)
        self._next_renewal()
        self.next_probe_at = min((t.next_probe for t in self.targets if t.down), default=float("inf"))
        if self.max_lag is not None:
            self.next_probe_at = min(
                self.next_probe_at, min((t.next_probe for t in self.replicas), default=float("inf"))
            )
        healthy = [t for t in self.replicas if self.serving(t)]
        tail = [self.fallback] if self.fallback is not None and self.serving(self.fallback) else []
        if not healthy and not tail:
            self._orders = (self.targets,)
            return
        rotations = [tuple(healthy[i:] + healthy[:i]) for i in range(len(healthy))] or [()]
        self._orders = tuple((*r, *tail) for r in rotations)

    def order(self) -> tuple[ReadTarget, ...]:
        orders = self._orders
        return orders[next(self._turn) % len(orders)] if len(orders) > 1 else orders[0]

    def mark_down(self, target: ReadTarget, reason: str) -> None:
        with self._lock:
            if not target.down:
                logger.warning("pgfeatures: reads stop using %s: %s", target.name, reason)
            target.down, target.reason = True, reason
            target.next_probe = time.monotonic()
            self._rebuild()

    def mark_up(self, target: ReadTarget) -> None:
        with self._lock:
            if target.down:
                logger.warning("pgfeatures: reads use %s again", target.name)
            target.down, target.reason = False, ""
            self._rebuild()

    def set_lag(self, target: ReadTarget, lag: float | None) -> None:
        with self._lock:
            before = self.serving(target)
            target.lag = lag
            if self.serving(target) != before:
                logger.warning(
                    "pgfeatures: %s is %.1fs behind the primary (max_replica_lag %gs): reads %s it",
                    target.name,
                    lag or 0.0,
                    self.max_lag,
                    "use" if self.serving(target) else "skip",
                )
                self._rebuild()

    def renew_after(self, target: ReadTarget, seconds: float) -> None:
        """Make ``target``'s pool due for renewal ``seconds`` from now (its connections' lifetime, or a retry)."""
        with self._lock:
            target.renew_at = time.monotonic() + seconds
            self._next_renewal()

    def due_for_renewal(self, now: float) -> list[ReadTarget]:
        """Targets whose pool is due for renewal now (and not being renewed); marks them renewing."""
        with self._lock:
            due = [t for t in self.targets if not t.renewing and not t.down and now >= t.renew_at]
            for t in due:
                t.renewing, t.renew_at = True, float("inf")
            self._next_renewal()
        return due

    def _next_renewal(self) -> None:
        """A target that is down is not renewed (its probe renews its pool when it answers)."""
        self.next_renewal_at = min((t.renew_at for t in self.targets if not t.down), default=float("inf"))

    def due_for_probe(self, now: float) -> list[ReadTarget]:
        """Targets that need a probe now (down or lagging, and not being probed); marks them probing."""
        due = []
        with self._lock:
            for t in self.targets:
                lagging = self.max_lag is not None and not t.is_primary
                if (t.down or lagging) and not t.probing and now >= t.next_probe:
                    t.probing, t.next_probe = True, now + PROBE_INTERVAL
                    due.append(t)
            watched = [t for t in self.targets if t.down or (self.max_lag is not None and not t.is_primary)]
            self.next_probe_at = min((t.next_probe for t in watched), default=float("inf"))
        return due


# -- tables that cannot be served -----------------------------------------------------------------


class TableHealth:
    """Which tables cannot be served now, and why (the store's ``on_drift="isolate"`` mode).

    A table is broken when the live catalog says it is missing or a column it reads is missing or
    of another type. Requests that touch a broken table fail at once with a SchemaDriftError naming
    it; the others are served. A broken table is re-checked at most every RECHECK_INTERVAL, when a
    request touches it, and served again once the catalog matches.
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        self.checks: dict[str, TableCheck] = {}
        self.broken: frozenset[str] = frozenset()
        self._next_check: dict[str, float] = {}
        self._lock = threading.Lock()

    def update(self, checks: dict[str, TableCheck]) -> None:
        with self._lock:
            merged = {**self.checks, **checks}
            broken = frozenset(n for n, c in merged.items() if c.breaking)
            for name in broken - self.broken:
                logger.error("pgfeatures: table %s cannot be served: %s", name, "; ".join(merged[name].breaking))
            for name in self.broken - broken:
                logger.warning("pgfeatures: table %s matches its definition again: serving it", name)
            for name, c in checks.items():
                for warning in c.warnings:
                    logger.warning("pgfeatures: table %s: %s", name, warning)
            self.checks, self.broken = merged, broken
            now = time.monotonic()
            for name in broken:
                self._next_check[name] = now + RECHECK_INTERVAL

    def error(self, tables: Iterable[str]) -> SchemaDriftError:
        names = [t for t in tables if t in self.broken]
        return drift_error(self.registry, {n: self.checks[n] for n in names}, self.registry.source)

    def due(self, tables: Iterable[str]) -> list[str]:
        """Broken tables among ``tables`` whose re-check is due (claims the re-check)."""
        now = time.monotonic()
        due = []
        with self._lock:
            for t in tables:
                if t in self.broken and now >= self._next_check.get(t, 0.0):
                    self._next_check[t] = now + RECHECK_INTERVAL
                    due.append(t)
        return due

    def from_rows(self, rows: list[tuple[Any, ...]]) -> dict[str, TableCheck]:
        return check_catalog(self.registry, rows)

    def status(self) -> dict[str, list[str]]:
        """{table: problems} of every table that cannot be served now."""
        return {n: list(self.checks[n].breaking) for n in sorted(self.broken)}


# -- what a store serves from one set of definitions -----------------------------------------------


@dataclass(eq=False)
class Served:
    """Everything a store serves from one set of definitions: the registry, its compiled readers
    (and which services are read from serving rows), the health of its tables, the readers every
    read connection prepares, their pooler functions. Built whole before it serves (at open, and by
    ``reload`` while the previous one goes on serving), then swapped in with one assignment: a
    request takes the store's current one once, and finishes on it."""

    registry: Registry
    readers: ReaderCache
    health: TableHealth
    warm: list[Reader[Any] | BatchReader[Any]] = field(default_factory=list)
    via_functions: dict[bytes, Any] = field(default_factory=dict)
    # The services' compiled context checks and transforms (reader/transforms.py), by service: set when
    # the definitions are compiled (open, reload), so a function that cannot be imported fails there.
    transforms: dict[str, ServiceTransforms] = field(default_factory=dict)

    @classmethod
    def new(cls, registry: Registry, reader_cache_size: int) -> Served:
        return cls(registry, ReaderCache(registry, max_statements=reader_cache_size), TableHealth(registry))

    @property
    def fingerprint(self) -> str:
        return self.registry.fingerprint


# -- warm-up --------------------------------------------------------------------------------------


_DUMMY_KEYS = {"bytea32": WARMUP_KEY, "bigint": Int8(0), "text": "-", "uuid": uuid.UUID(int=0)}


def warmup_statements(
    readers: Iterable[Reader[Any] | BatchReader[Any]],
) -> list[tuple[Reader[Any] | BatchReader[Any], bytes, tuple[Any, ...]]]:
    """(reader, statement, parameters) that prepare every statement of ``readers``, with parameters of
    the types real requests send (so the prepared statement is the one they use)."""
    statements: list[tuple[Reader[Any] | BatchReader[Any], bytes, tuple[Any, ...]]] = []
    for r in readers:
        dummies = tuple(_DUMMY_KEYS[e.key_type] for e in r.selection.entities)
        if isinstance(r, BatchReader):
            statements.append((r, r.statement, tuple([d] for d in dummies)))
        elif r.param_index:
            statements.extend((r, s, (dummies[i],)) for s, i in zip(r.statements, r.param_index))
        else:
            statements.extend((r, s, dummies) for s in r.statements)
    return statements
