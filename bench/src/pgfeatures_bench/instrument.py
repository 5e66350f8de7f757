"""Instrumented reads: where each millisecond of a request goes.

The production read path (``FeatureStore.read``) carries no timers. This
module rebuilds the same request from the store's public pieces (its
``read_pool``, the compiled reader's ``statements`` and ``decode``) on
psycopg's lower level (``conn.pgconn``: libpq's send / flush / consume /
get_result, and a ``Transformer`` to dump parameters and load rows), with a
timestamp between every step. Each request is split into:

``acquire``  taking a connection from the pool (``getconn``, as the store does);
``send``     binding parameters and writing the request to the socket;
``server``   the executor's time on the server (``EXPLAIN (ANALYZE)``, sampled);
``network``  the rest of the time spent waiting for the answer: the wire (and
             the proxy's delay), the server's protocol work and wake-ups;
``receive``  libpq reading and parsing the answer (client CPU);
``decode``   loading values into Python and building ``{table: {feature: value}}``;
``release``  giving it back (``putconn``).

``server`` comes from a twin: every ``explain_every``-th request is followed,
outside its timed window, by ``EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE`` of the
same prepared statement for another key drawn the same way (the same key,
read again, would be hot and flatter the server); a request's server time is
that of the latest twin, and ``network`` is its waiting time minus that. The twin's plan also gives each table's index-lookup time (per-table
server time). The components add up to the timed window by construction; what
the breakdown checks is that the window covers the request as measured from
outside (``unattributed``), and it reports the uninstrumented ``read`` timed
alternately with it, so the instrumentation's own cost is visible.

Statements are prepared under their own names (``pgfb_<hash>``), once per
connection, so they never collide with psycopg's automatically prepared ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import select
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import pq, sql
from psycopg.adapt import PyFormat, Transformer

from pgfeatures.connections.rows import one_row
from pgfeatures.reader import BatchReader, Fetch, Reader

COMPONENTS = ("acquire", "send", "server", "network", "receive", "decode", "release")
SUM_TOLERANCE = 0.05  # the components must cover the measured total within 5%

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.PIPELINE_SYNC)


def _statement_name(statement: bytes) -> bytes:
    return b"pgfb_" + hashlib.sha1(statement).hexdigest()[:16].encode()


@dataclass(frozen=True)
class Quantiles:
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, values_ms: Sequence[float] | np.ndarray) -> Quantiles:
        a = np.asarray(values_ms, dtype=np.float64)
        if not len(a):
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean()))


@dataclass(frozen=True)
class Breakdown:
    """Component times of ``n`` instrumented requests of one shape at one network distance."""

    label: str
    rtt_ms: float
    tables: int
    n: int
    explained: int  # EXPLAIN (ANALYZE) twins run
    total: Quantiles  # each request timed from outside the instrumented call
    components: dict[str, Quantiles]
    per_table: dict[str, Quantiles]  # server time of each table's lookup(s), from the twins
    uninstrumented: Quantiles  # the production read, timed alternately
    unattributed_pct: float  # (mean total - sum of component means) / mean total, in %

    @property
    def sums_ok(self) -> bool:
        return abs(self.unattributed_pct) <= SUM_TOLERANCE * 100

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sums_ok": self.sums_ok}


# -- one connection's view ------------------------------------------------------------------------


class _Prepared:
    """Per connection: our named statements, a Transformer, a poller on the socket."""

    def __init__(self, conn: psycopg.Connection):
        self.names: set[bytes] = set()
        self.tx = Transformer(conn)
        self.fd = conn.pgconn.socket
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def ensure(self, conn: psycopg.Connection, statements: Sequence[bytes]) -> list[bytes]:
        names = [_statement_name(s) for s in statements]
        for name, stmt in zip(names, statements):
            if name not in self.names:
                res = conn.pgconn.prepare(name, stmt)
                if res.status != pq.ExecStatus.COMMAND_OK:
                    raise psycopg.OperationalError(
                        f"cannot prepare the instrumented statement: {res.error_message.decode()}"
                    )
                self.names.add(name)
        return names


# Shared by every InstrumentedRead: readers of different strategies can share statements (pipeline, sequential).
_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection, _Prepared] = weakref.WeakKeyDictionary()


class _Timer:
    """Accumulates the waiting and the parsing of one request's answers."""

    __slots__ = ("wait", "receive")

    def __init__(self) -> None:
        self.wait = self.receive = 0


def _send(pgconn: pq.abc.PGconn, prep: _Prepared, sender: Callable[[], None]) -> None:
    sender()
    while pgconn.flush():  # nonblocking connection: the kernel buffer was full
        select.select([prep.fd], [prep.fd], [])
        pgconn.consume_input()


def _collect(
    pgconn: pq.abc.PGconn, prep: _Prepared, clock: Callable[[], int], t: _Timer, until_sync: bool
) -> list[pq.abc.PGresult]:
    """Results until the connection is idle (or, in pipeline mode, until the sync); waiting and parsing timed apart."""
    t0 = clock()
    waited = 0
    results = []
    while True:
        while pgconn.is_busy():
            w0 = clock()
            prep.poller.poll()
            waited += clock() - w0
            pgconn.consume_input()
        res = pgconn.get_result()
        if res is None:
            if until_sync:
                continue  # end of one query's results in a pipeline
            break
        if res.status not in _OK:
            raise psycopg.DatabaseError(res.error_message.decode(errors="replace"))
        if res.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        results.append(res)
    t.wait += waited
    t.receive += clock() - t0 - waited
    return results


def _rows(prep: _Prepared, res: pq.abc.PGresult) -> list[tuple[Any, ...]]:
    prep.tx.set_pgresult(res, set_loaders=True, format=pq.Format.BINARY)
    return prep.tx.load_rows(0, res.ntuples, tuple)


# -- one instrumented request ---------------------------------------------------------------------


class InstrumentedRead:
    """Runs a compiled reader (or batch reader) like the store does, timing every phase.

    ``__call__(key_or_keys)`` returns ``(features, phases_ns)``; ``explain(arg)``
    runs the EXPLAIN twin and returns ``(server_ms, {table: ms})``.
    """

    def __init__(self, pool: Any, reader: Reader | BatchReader):
        self.pool = pool
        self.reader = reader
        self.statements: tuple[bytes, ...] = (
            (reader.statement,) if isinstance(reader, BatchReader) else reader.statements
        )
        self.fetch = None if isinstance(reader, BatchReader) else reader.fetch

    def _prep(self, conn: psycopg.Connection) -> tuple[_Prepared, list[bytes]]:
        prep = _PREPARED.get(conn)
        if prep is None:
            prep = _PREPARED[conn] = _Prepared(conn)
        return prep, prep.ensure(conn, self.statements)

    def __call__(self, arg: Any) -> tuple[Any, dict[str, int]]:
        clock = time.perf_counter_ns
        t = _Timer()
        pool = self.pool
        t0 = clock()
        conn = pool.getconn()  # as the store does: getconn/putconn, not the pool's context manager
        t1 = clock()
        try:
            results = self._exchange(conn, arg, t)
            t3 = clock()
            features = self._decode(_PREPARED[conn], results)
            t4 = clock()
        finally:
            pool.putconn(conn)
        t5 = clock()
        return features, {
            "acquire": t1 - t0,
            "send": t3 - t1 - t.wait - t.receive,  # writing, plus binding the parameters and the glue around it
            "wait": t.wait,
            "receive": t.receive,
            "decode": t4 - t3,
            "release": t5 - t4,
        }

    def _exchange(self, conn: psycopg.Connection, arg: Any, t: _Timer) -> list[pq.abc.PGresult]:
        """Send the statement(s) for ``arg`` and collect the results, as the store's fetch mode does."""
        clock = time.perf_counter_ns
        prep, names = self._prep(conn)
        pgconn = conn.pgconn
        values = prep.tx.dump_sequence((arg,), [PyFormat.BINARY])
        formats = prep.tx.formats
        binary = pq.Format.BINARY
        if self.fetch is Fetch.PIPELINE:
            pgconn.enter_pipeline_mode()
            try:

                def send_all() -> None:
                    for name in names:
                        pgconn.send_query_prepared(name, values, formats, binary)
                    pgconn.pipeline_sync()

                _send(pgconn, prep, send_all)
                return _collect(pgconn, prep, clock, t, until_sync=True)
            finally:
                pgconn.exit_pipeline_mode()
        results = []
        for name in names:  # one name, except for sequential: one round-trip per statement
            _send(pgconn, prep, functools.partial(pgconn.send_query_prepared, name, values, formats, binary))
            results += _collect(pgconn, prep, clock, t, until_sync=False)
        return results

    def _decode(self, prep: _Prepared, results: list[pq.abc.PGresult]) -> Any:
        reader = self.reader
        if isinstance(reader, BatchReader):  # self.fetch is None
            return reader.decode(_rows(prep, results[0]))
        if self.fetch is Fetch.ONE:
            rows = _rows(prep, results[0])
            return reader.decode(rows[0] if rows else None)
        if self.fetch is Fetch.ALL:
            return reader.decode(_rows(prep, results[0]))
        per_statement = [_rows(prep, r) for r in results]
        return reader.decode([rows[0] if rows else None for rows in per_statement])

    def explain(self, arg: Any) -> tuple[float, dict[str, float]]:
        """Server execution time (ms, summed over statements) and per-table lookup time of one execution."""
        server = 0.0
        per_table: dict[str, float] = {}
        conn = self.pool.getconn()
        try:
            _, names = self._prep(conn)
            for name in names:
                query = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}({})").format(
                    sql.Identifier(name.decode()), sql.Literal(arg)
                )
                # prepare=False: a twin per key must not fill (and evict from) the connection's prepared cache
                plan = one_row(conn.execute(query, prepare=False))[0]
                doc = (json.loads(plan) if isinstance(plan, str) else plan)[0]
                server += float(doc["Execution Time"])
                _relation_times(doc["Plan"], per_table)
        finally:
            self.pool.putconn(conn)
        return server, per_table


def _relation_times(node: dict[str, Any], out: dict[str, float]) -> None:
    """Add each scan node's inclusive time (per-loop time x loops) to its table."""
    relation = node.get("Relation Name")
    if relation is not None:
        out[relation] = out.get(relation, 0.0) + float(node.get("Actual Total Time", 0.0)) * int(
            node.get("Actual Loops", 1)
        )
    for child in node.get("Plans", ()):
        _relation_times(child, out)


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class _Samples:
    total: list[int] = field(default_factory=list)
    phases: list[dict[str, int]] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    per_table: list[dict[str, float]] = field(default_factory=list)
    plain: list[int] = field(default_factory=list)


def measure_breakdown(
    label: str,
    pool: Any,
    reader: Reader | BatchReader,
    plain: Callable[[Any], Any],
    args: Sequence[Any],
    n: int,
    *,
    rtt_ms: float = 0.0,
    explain_every: int = 5,
    warmup: int = 8,
    seed: int = 0,
    check: Callable[[Any, Any], None] | None = None,
) -> Breakdown:
    """Instrumented requests on ``args`` (keys, or key lists for a batch reader), alternating with ``plain(arg)``.

    ``plain`` is the production call (``store.read`` / ``read_batch``) for the
    same reader. ``check(instrumented_result, plain_result)`` (optional)
    runs once after warm-up, to prove both paths return the same features.
    """
    if explain_every < 1:
        raise ValueError(f"explain_every must be >= 1, got {explain_every}")
    rng = random.Random(seed)
    read = InstrumentedRead(pool, reader)
    for _ in range(warmup):
        a = rng.choice(args)
        read(a)
        plain(a)
    a = rng.choice(args)
    if check is not None:
        check(read(a)[0], plain(a))
    server_ms, per_table = read.explain(rng.choice(args))
    s = _Samples()
    clock = time.perf_counter_ns
    for i in range(n):
        # Every call gets its own draw: a key read twice in a row is hot the second time (CPU caches,
        # buffer pins), which would flatter whichever call came second.
        a = rng.choice(args)
        t0 = clock()
        features, phases = read(a)
        s.total.append(clock() - t0)
        del features  # freeing a result (3,000 dicts for a batch) must not land in the next request's time
        if i % explain_every == 0:
            server_ms, per_table = read.explain(rng.choice(args))
            s.per_table.append(per_table)
        s.phases.append(phases)
        s.server_ms.append(server_ms)
        b = rng.choice(args)
        t0 = clock()
        features = plain(b)
        s.plain.append(clock() - t0)
        del features
    return _summarize(label, rtt_ms, len(reader.tables), s)


def _summarize(label: str, rtt_ms: float, tables: int, s: _Samples) -> Breakdown:
    ms = 1e-6
    server = np.asarray(s.server_ms)
    wait = np.asarray([p["wait"] for p in s.phases]) * ms
    columns = {
        "acquire": np.asarray([p["acquire"] for p in s.phases]) * ms,
        "send": np.asarray([p["send"] for p in s.phases]) * ms,
        "server": server,
        "network": wait - server,
        "receive": np.asarray([p["receive"] for p in s.phases]) * ms,
        "decode": np.asarray([p["decode"] for p in s.phases]) * ms,
        "release": np.asarray([p["release"] for p in s.phases]) * ms,
    }
    total = np.asarray(s.total) * ms
    covered = sum(c.mean() for c in columns.values())
    names = sorted({t for d in s.per_table for t in d})
    return Breakdown(
        label=label,
        rtt_ms=rtt_ms,
        tables=tables,
        n=len(total),
        explained=len(s.per_table),
        total=Quantiles.of(total),
        components={name: Quantiles.of(columns[name]) for name in COMPONENTS},
        per_table={t: Quantiles.of([d.get(t, 0.0) for d in s.per_table]) for t in names},
        uninstrumented=Quantiles.of(np.asarray(s.plain) * ms),
        unattributed_pct=float((total.mean() - covered) / total.mean() * 100),
    )
