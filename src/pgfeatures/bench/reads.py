"""The read benchmark: every strategy, at 10/20/30 tables, at 0/2/20 ms round-trip, through the public API.

For each network distance (``rtts_ms``; 0 is a direct loopback connection,
anything else goes through a ``ProxyProcess`` adding that round-trip) and
each table count, these rows are timed in interleaved rounds (so a noisy
patch of a shared machine hits them all alike):

``select1``     ``SELECT 1`` on a plain connection: the round-trip itself, the baseline;
``raw``         the default strategy's prepared statement on that plain connection,
                fetched but not decoded: what the library adds is ``single`` / ``raw``;
``single`` ...  each strategy through ``FeatureStore.get_features(key, tables, strategy=...)``
                (``single`` is the default);
``batch``       ``get_features_batch`` of ``batch_size`` keys, figures per key;
``parallel``    the tables split across ``parallel`` connections, read at once
                (``AsyncFeatureStore``, one ``read`` per part, gathered);
``redis`` / ``redis batch``  the same features from Redis hashes at the same
                distance (``redis_baseline``), when ``redis_url`` answers;
``variants`` of the default read over the same data (``BenchConfig.variants``):
                ``3 entities`` (the tables split among three entities, keyed alike: one key
                parameter per entity), ``ttl`` (every table with a ttl: the freshness predicate
                decided in the statement), ``pooler functions`` (``pooler="transaction"``: no
                prepared statement, the read through its server-side function) and ``unprepared``
                (the default statement on a plain connection that never prepares: what a
                transaction pooler costs without the functions).

Each row gets about ``row_seconds`` of requests (``requests`` at most,
``min_requests`` at least); the baseline and default rows, the ones quoted,
get three times that, and at least ``TARGET_SAMPLES`` in the cell where the
targets are checked (the farthest distance, the most tables). Then, at each
distance and the largest table count, requests/s at each client count
(threads on a ``FeatureStore``, tasks on an ``AsyncFeatureStore``) and
instrumented reads (``instrument.py``). Every strategy (and Redis) is
first checked to return the same features for a key. The result is one
JSON-able dict: ``meta`` (machine, versions, command), ``latency``,
``throughput``, ``breakdown``, ``checks`` (the issue's targets, evaluated).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from .. import __version__, demo
from ..connections import connection_kwargs, redact
from ..connections.rows import one_row
from ..definitions import Registry, demo_registry
from ..errors import BenchmarkError
from ..reader import DEFAULT_STRATEGY, Strategy
from ..reader.decode import TableValues
from ..store import AsyncFeatureStore, FeatureStore
from . import redis_baseline
from .instrument import measure_breakdown
from .proxy import dsn_target, maybe_proxied
from .runner import measure_tasks, measure_threads, run_interleaved

STRATEGIES = ("pipeline", "sequential", "single", "union", "join", "batch", "parallel")
VARIANTS = ("entities", "ttl", "pooler", "unprepared")
BENCH_TTL = 10 * 365 * 86400  # the ttl variant: long enough that every demo row is fresh (same results)
CLIENT_MODES = ("threads", "async")
HEADLINE_WEIGHT = 3  # select1 and the default strategy get this many times the requests of other rows
TARGET_SAMPLES = 300  # ... and at least this many where the targets are checked (farthest, most tables): a p99
RAW_APP = "pgfeatures-bench-raw"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. The defaults are the reference run (about 2.5 minutes on 2 cores)."""

    rtts_ms: tuple[float, ...] = (0.0, 2.0, 20.0)
    table_counts: tuple[int, ...] = (10, 20, 30)
    strategies: tuple[str, ...] = STRATEGIES
    requests: int = 1000  # most timed requests per row and cell
    min_requests: int = 5
    row_seconds: float = 0.5  # time budget per row and cell, before the headline weight
    batch_size: int = 100
    parallel: int = 3  # connections the "parallel" row splits the tables across
    clients: tuple[int, ...] = (1, 2, 4, 8)
    client_seconds: float = 1.0
    client_modes: tuple[str, ...] = CLIENT_MODES
    instrument: tuple[str, ...] = ("single", "pipeline")  # strategies broken down (empty: none)
    explain_every: int = 5
    jitter_ms: float = 0.0
    entities: int = 100_000
    sample: int = 5000  # distinct entities the keys are drawn from (seeded)
    schema: str = "demo"
    seed: int = 0
    redis_url: str | None = None
    variants: tuple[str, ...] = VARIANTS
    materialized: bool = True  # the materialized-service part (bench/materialized.py)
    service_clients: tuple[int, ...] = (1, 8, 32)  # its throughput (empty: skip)
    cold_entities: int = 100_000  # its cold-read part, on a private cluster (0: skip)
    cold_requests: int = 1000

    @classmethod
    def quick(cls, **changes: Any) -> "BenchConfig":
        """A ~50 s smoke run: loopback and 20 ms, 30 tables, shorter rows."""
        return replace(cls(rtts_ms=(0.0, 20.0), table_counts=(30,), row_seconds=0.3, clients=(1, 4),
                           client_seconds=0.5, instrument=("single",), service_clients=(1, 8),
                           cold_entities=20_000, cold_requests=300), **changes)

    def validate(self) -> None:
        """Raises BenchmarkError naming the bad setting and what is valid."""
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise BenchmarkError(f"unknown strategies {', '.join(bad)}; valid: {', '.join(STRATEGIES)}")
        bad = [s for s in self.instrument if s not in STRATEGIES or s == "parallel"]
        if bad:
            raise BenchmarkError(f"cannot instrument {', '.join(bad)}; valid: {', '.join(s for s in STRATEGIES if s != 'parallel')}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise BenchmarkError(f"unknown variants {', '.join(bad)}; valid: {', '.join(VARIANTS)}")
        bad = [m for m in self.client_modes if m not in CLIENT_MODES]
        if bad:
            raise BenchmarkError(f"unknown client modes {', '.join(bad)}; valid: {', '.join(CLIENT_MODES)}")
        if not self.table_counts or min(self.table_counts) < 1 or max(self.table_counts) > 30:
            raise BenchmarkError(f"table counts must be between 1 and 30 (the demo has 30 tables), got {self.table_counts}")
        if not self.rtts_ms or min(self.rtts_ms) < 0 or self.jitter_ms < 0:
            raise BenchmarkError(f"round-trips and jitter must be >= 0 ms, got {self.rtts_ms} and {self.jitter_ms}")
        if min(self.clients, default=1) < 1 or self.parallel < 1 or self.batch_size < 1 or self.explain_every < 1:
            raise BenchmarkError("clients, parallel, batch size and explain-every must be >= 1")
        if self.entities < 1 or self.sample < 1 or self.requests < 1 or self.min_requests < 1:
            raise BenchmarkError("entities, sample, requests and min-requests must be >= 1")
        if self.parallel > max(self.table_counts) and "parallel" in self.strategies:
            raise BenchmarkError(f"parallel ({self.parallel}) cannot exceed the table count ({max(self.table_counts)})")


# -- rows -----------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One timed call of a cell, before timing."""

    name: str
    kind: str  # "baseline", "raw", "strategy", "redis"
    call: Callable[[Any], Any]
    batch: bool = False  # takes a list of keys; figures per key
    round_trips: int = 1
    local_ms: float = 0.5  # rough cost at loopback, to budget requests before anything is measured
    default: bool = False
    weight: float = 1.0


def _split(names: Sequence[str], parts: int) -> list[list[str]]:
    size, extra = divmod(len(names), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(names[start:end]))
        start = end
    return out


class _AsyncSide:
    """An AsyncFeatureStore driven from synchronous timing loops through a private event loop."""

    def __init__(self, registry: Registry, dsn: str, pool_size: int):
        self.loop = asyncio.new_event_loop()
        self.store = AsyncFeatureStore(registry, dsn, pool_size=pool_size, write_pool_size=1)

    def __enter__(self) -> "_AsyncSide":
        self.loop.run_until_complete(self.store.open())
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()

    def parallel(self, names: Sequence[str], parts: int) -> Callable[[bytes], dict[str, TableValues]]:
        readers = [self.store.reader(chunk) for chunk in _split(names, parts)]
        read, run = self.store.read, self.loop.run_until_complete

        async def read_all(key: bytes) -> dict[str, TableValues]:
            out: dict[str, TableValues] = {}
            for part in await asyncio.gather(*(read(r, key) for r in readers)):
                out.update(part)
            return out

        return lambda key: run(read_all(key))


@dataclass
class _Distance:
    """Everything open at one network distance."""

    rtt_ms: float
    dsn: str  # through this distance's proxy (or direct)
    store: FeatureStore
    raw: psycopg.Connection
    parallel: _AsyncSide | None
    redis: redis_baseline.RedisFeatures | None
    variants: dict[str, FeatureStore]
    unprepared: psycopg.Connection | None
    services: FeatureStore | None = None  # a store of the registry with the bench services (materialized part)


def _rows(cfg: BenchConfig, d: _Distance, names: list[str]) -> list[_Row]:
    count = len(names)
    store, cur = d.store, psycopg.RawCursor(d.raw)
    default_stmt = store.reader(names).statements[0]

    def select1(_: bytes) -> Any:
        cur.execute(b"SELECT 1", prepare=True, binary=True)
        return cur.fetchone()

    def raw(key: bytes) -> Any:
        cur.execute(default_stmt, (key,), prepare=True, binary=True)
        return cur.fetchone()

    rows = [_Row("select1", "baseline", select1, local_ms=0.1, weight=HEADLINE_WEIGHT),
            _Row("raw", "raw", raw, local_ms=0.3)]
    per_key_ms = 0.15 * count / 30
    for s in cfg.strategies:
        if s == "batch":
            rows.append(_Row("batch", "strategy", lambda ks: store.get_features_batch(ks, names), batch=True,
                             local_ms=per_key_ms * cfg.batch_size))
        elif s == "parallel":
            assert d.parallel is not None
            rows.append(_Row("parallel", "strategy", d.parallel.parallel(names, cfg.parallel), local_ms=1.0))
        else:
            strategy = Strategy(s)
            sequential = strategy is Strategy.SEQUENTIAL
            rows.append(_Row(
                s, "strategy", (lambda st: lambda k: store.get_features(k, names, strategy=st))(strategy),
                round_trips=count if sequential else 1, local_ms=(0.12 * count) if sequential else 0.6,
                default=strategy is DEFAULT_STRATEGY, weight=HEADLINE_WEIGHT if strategy is DEFAULT_STRATEGY else 1,
            ))
    if "entities" in d.variants:
        multi = d.variants["entities"]
        reader = multi.reader(names)
        entity_names = [e.name for e in reader.selection.entities]
        rows.append(_Row(f"{len(entity_names)} entities", "strategy",
                         lambda k: multi.read(reader, {e: k for e in entity_names}), local_ms=0.6))
    if "ttl" in d.variants:
        rows.append(_Row("ttl", "strategy", (lambda st: lambda k: st.get_features(k, names))(d.variants["ttl"]), local_ms=0.6))
    if "pooler" in d.variants:
        rows.append(_Row("pooler functions", "strategy", (lambda st: lambda k: st.get_features(k, names))(d.variants["pooler"]),
                         local_ms=0.7))
    if d.unprepared is not None:
        plain = psycopg.RawCursor(d.unprepared)

        def unprepared(key: bytes) -> Any:
            plain.execute(default_stmt, (key,), prepare=False, binary=True)
            return plain.fetchone()

        rows.append(_Row("unprepared", "raw", unprepared, local_ms=1.2))
    if d.services is not None and count == len(d.store.registry.tables):
        from . import materialized

        for name, call in materialized.latency_calls(d.services).items():
            rows.append(_Row(name, "service", call, local_ms=0.4 if "materialized" in name else 0.6,
                             weight=HEADLINE_WEIGHT))
    if d.redis is not None:
        rows.append(_Row("redis", "redis", d.redis.reader(names), local_ms=0.2))
        rows.append(_Row("redis batch", "redis", d.redis.batch_reader(names), batch=True, local_ms=0.02 * cfg.batch_size))
    return rows


def _check_same(rows: list[_Row], key: bytes, batch: list[bytes]) -> None:
    """Every strategy (and Redis) must return the same features, or comparing their speed means nothing."""
    results: dict[str, Any] = {}
    for row in rows:
        if row.kind in ("strategy", "redis"):
            results[row.name] = row.call(batch)[0] if row.batch else row.call(key)
    reference = results.get("single", next(iter(results.values()), None))
    for name, got in results.items():
        if got != reference:
            raise BenchmarkError(f"{name} returned different features than single for key {key.hex()}: {got!r} != {reference!r}")


# -- one cell: one distance x one table count -----------------------------------------------------


def _measure_cell(
    cfg: BenchConfig, d: _Distance, names: list[str], keys: list[bytes], batches: list[list[bytes]],
    local: dict[tuple[int, str], float], seed: int, target_cell: bool,
) -> list[dict[str, Any]]:
    rows = _rows(cfg, d, names)
    _check_same(rows, batches[0][0], batches[0])
    rtt_ms = d.rtt_ms + (0.3 if d.rtt_ms else 0.0)  # what the proxy measures, waking up included
    n: dict[str, int] = {}
    warm: dict[str, int] = {}
    for row in rows:
        est_ms = row.round_trips * rtt_ms + local.get((len(names), row.name), row.local_ms)
        n[row.name] = int(min(cfg.requests, max(cfg.min_requests, cfg.row_seconds * row.weight * 1e3 / est_ms)))
        if target_cell and row.weight == HEADLINE_WEIGHT:
            n[row.name] = max(n[row.name], min(cfg.requests, TARGET_SAMPLES))
        # Enough untimed calls to prepare the statements and let PostgreSQL settle on a generic plan (6th
        # run); one for slow rows (sequential far away: its statements are pipeline's, already warm).
        warm[row.name] = int(max(1, min(8, 250 / est_ms)))
    calls = {row.name: row.call for row in rows}
    args = {row.name: batches if row.batch else keys for row in rows}
    per = {row.name: cfg.batch_size for row in rows if row.batch}
    measured = run_interleaved(calls, args, n, warmup=warm, per=per, seed=seed)
    out = []
    for row in rows:
        m = measured[row.name]
        if d.rtt_ms == 0:
            local[(len(names), row.name)] = m.stats.p50_ms * (cfg.batch_size if row.batch else 1)
        out.append({
            "rtt_ms": d.rtt_ms, "tables": len(names), "kind": row.kind, "default": row.default,
            "round_trips": row.round_trips, "keys_per_call": cfg.batch_size if row.batch else 1,
            **m.stats.as_dict(), "quantiles": [round(q, 5) for q in m.quantiles()],
        })
    return out


# -- the whole run --------------------------------------------------------------------------------


def _keys(cfg: BenchConfig) -> tuple[list[int], list[bytes], list[list[bytes]]]:
    rng = random.Random(cfg.seed)
    ids = rng.sample(range(cfg.entities), min(cfg.sample, cfg.entities))
    keys = [demo.entity_key(i) for i in ids]
    size = min(cfg.batch_size, len(keys))
    batches = [rng.sample(keys, size) for _ in range(200)]
    return ids, keys, batches


@contextlib.contextmanager
def _distance(cfg: BenchConfig, registry: Registry, dsn: str, rtt: float, redis_ok: bool) -> Iterator[_Distance]:
    seed = cfg.seed
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(maybe_proxied(dsn_target(dsn), rtt, cfg.jitter_ms, seed))
        cell_dsn = pg.dsn(dsn) if pg else dsn
        store = stack.enter_context(FeatureStore(registry, cell_dsn, pool_size=1, write_pool_size=1))
        raw = stack.enter_context(psycopg.connect(cell_dsn, **connection_kwargs(RAW_APP, 10)))
        par = stack.enter_context(_AsyncSide(registry, cell_dsn, cfg.parallel)) if "parallel" in cfg.strategies else None
        variants: dict[str, FeatureStore] = {}
        shapes = [list(registry.tables)[:c] for c in cfg.table_counts]
        for name, variant in variant_registries(registry, cfg.variants).items():
            options: dict[str, Any] = {"pooler": "transaction"} if name == "pooler" else {}
            store_v = FeatureStore(variant, cell_dsn, pool_size=1, write_pool_size=0, open=False, **options)
            store_v.extra_warm = [store_v.reader(names) for names in shapes]  # every timed shape has its function
            stack.enter_context(store_v)
            variants[name] = store_v
        unprepared = None
        if "unprepared" in cfg.variants:
            unprepared = stack.enter_context(psycopg.connect(cell_dsn, **connection_kwargs(RAW_APP, 10, "transaction")))
        rf = None
        if redis_ok and cfg.redis_url:
            url = cfg.redis_url
            rp = stack.enter_context(maybe_proxied(redis_baseline.redis_target(url), rtt, cfg.jitter_ms, seed))
            client = redis_baseline.connect(redis_baseline.via(url, rp.address) if rp and rp.address else url)
            stack.callback(client.close)
            rf = redis_baseline.RedisFeatures(client, registry)
        services = None
        if cfg.materialized:
            from . import materialized

            services = stack.enter_context(FeatureStore(materialized.service_registry(registry), cell_dsn, pool_size=1,
                                                        write_pool_size=0))
        yield _Distance(rtt, cell_dsn, store, raw, par, rf, variants, unprepared, services)


def variant_registries(registry: Registry, variants: Sequence[str]) -> dict[str, Registry]:
    """The same tables as other definitions: split among three entities (keyed alike, so the same
    key reads the same rows), with a ttl on every table, or unchanged (for the pooler variant)."""
    from ..definitions import Entity

    out: dict[str, Registry] = {}
    tables = list(registry.tables.values())
    if "entities" in variants:
        entities = [Entity(name, column="hashkey") for name in ("user", "merchant", "card")]
        split = [replace(t, entity=entities[i * len(entities) // len(tables)]) for i, t in enumerate(tables)]
        out["entities"] = Registry.of(split, registry.schema)
    if "ttl" in variants:
        out["ttl"] = Registry.of([replace(t, ttl=BENCH_TTL) for t in tables], registry.schema)
    if "pooler" in variants:
        out["pooler"] = registry
    return out


def _throughput(cfg: BenchConfig, registry: Registry, d: _Distance, names: list[str], keys: list[bytes]) -> list[dict[str, Any]]:
    """Requests/s of the default read at each client count: threads on a FeatureStore, tasks on an AsyncFeatureStore."""
    out = []
    size = max(cfg.clients)
    warm_s = min(0.3, cfg.client_seconds)  # every pooled connection prepares its statements and settles its plan
    if "threads" in cfg.client_modes:
        with FeatureStore(registry, d.dsn, pool_size=size, write_pool_size=1) as store:
            call = lambda k: store.get_features(k, names)  # noqa: E731
            measure_threads(call, keys, size, warm_s, seed=cfg.seed)
            for c in cfg.clients:
                out.append(measure_threads(call, keys, c, cfg.client_seconds, seed=cfg.seed).as_dict())
    if "async" in cfg.client_modes:
        with _AsyncSide(registry, d.dsn, size) as side:
            acall = lambda k: side.store.get_features(k, names)  # noqa: E731
            run = side.loop.run_until_complete
            run(measure_tasks(acall, keys, size, warm_s, seed=cfg.seed))
            for c in cfg.clients:
                out.append(run(measure_tasks(acall, keys, c, cfg.client_seconds, seed=cfg.seed)).as_dict())
    return [{"rtt_ms": d.rtt_ms, "tables": len(names), **t} for t in out]


def _breakdowns(cfg: BenchConfig, d: _Distance, names: list[str], keys: list[bytes], batches: list[list[bytes]]) -> list[dict[str, Any]]:
    out = []
    store = d.store
    est_ms = d.rtt_ms + 0.8
    for s in cfg.instrument:
        if s == "batch":
            reader: Any = store.batch_reader(names)
            plain: Callable[[Any], Any] = functools.partial(store.read_batch, reader)
            args: Sequence[Any] = batches
            n = int(max(cfg.min_requests, min(cfg.requests // 10, cfg.row_seconds * 1e3 / (est_ms + 0.15 * cfg.batch_size))))
        else:
            reader = store.reader(names, strategy=s)
            plain = functools.partial(store.read, reader)
            args = keys
            trips = len(names) if s == "sequential" else 1
            n = int(max(cfg.min_requests, min(cfg.requests, cfg.row_seconds * 1e3 / (trips * est_ms))))

        def same(a: Any, b: Any, s: str = s) -> None:
            if a != b:
                raise BenchmarkError(f"the instrumented {s} read returned different features than the store")

        b = measure_breakdown(s, store.read_pool, reader, plain, args, n, rtt_ms=d.rtt_ms,
                              explain_every=cfg.explain_every, seed=cfg.seed, check=same)
        out.append(b.as_dict())
    return out


def run_benchmark(dsn: str, cfg: BenchConfig, *, argv: Sequence[str] | None = None, progress: Progress = print) -> dict[str, Any]:
    """Load (or reuse) the demo data, measure everything ``cfg`` asks for, and return the results.

    Raises BenchmarkError for a bad configuration or when strategies disagree,
    DatabaseUnavailableError when the database cannot be reached.
    """
    cfg.validate()
    started = time.time()
    registry = demo_registry(n_tables=max(cfg.table_counts), schema=cfg.schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        loaded = demo.load_demo(conn, registry, cfg.entities, cfg.seed)
        progress(f"demo data {'loaded' if loaded else 'present'}: {len(registry.tables)} tables x 8 real, "
                 f"{cfg.entities:,} entities in schema {cfg.schema} ({time.perf_counter() - t0:.1f}s)")
        server_version = one_row(conn.execute("SHOW server_version"))[0]
        mat: dict[str, Any] = {}
        if cfg.materialized:
            from . import materialized

            mat["build_s"] = round(materialized.build(conn, materialized.service_registry(registry)), 2)
            progress(f"materialized service {materialized.MAT} built in {mat['build_s']:.1f}s")
    ids, keys, batches = _keys(cfg)
    skipped: dict[str, str] = {}
    redis_version = None
    reason = redis_baseline.probe(cfg.redis_url)
    if reason is None:
        assert cfg.redis_url
        client = redis_baseline.connect(cfg.redis_url)
        with contextlib.closing(client):
            redis_version = redis_baseline.server_version(client)
            redis_baseline.RedisFeatures(client, registry).load(ids, cfg.entities, cfg.seed)
        progress(f"redis {redis_version}: {len(ids):,} entities written as hashes")
    else:
        skipped["redis"] = reason
        progress(f"redis rows skipped: {reason}")

    names_all = list(registry.tables)
    latency: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []
    local: dict[tuple[int, str], float] = {}
    for rtt in sorted(cfg.rtts_ms):
        with _distance(cfg, registry, dsn, rtt, reason is None) as d:
            for count in cfg.table_counts:
                target_cell = rtt == max(cfg.rtts_ms) and count == max(cfg.table_counts)
                rows = _measure_cell(cfg, d, names_all[:count], keys, batches, local, cfg.seed, target_cell)
                latency += rows
                by = {r["name"]: r for r in rows}
                default = next(r for r in rows if r["default"]) if any(r["default"] for r in rows) else by["raw"]
                progress(f"rtt {rtt:g} ms, {count} tables: select1 p50 {by['select1']['p50_ms']:.3f} ms, "
                         f"{default['name']} p50 {default['p50_ms']:.3f} ms ({time.time() - started:.0f}s)")
            widest = names_all[: max(cfg.table_counts)]
            if cfg.instrument:
                breakdown += _breakdowns(cfg, d, widest, keys, batches)
            if cfg.clients and cfg.client_modes:
                throughput += _throughput(cfg, registry, d, widest, keys)
        progress(f"rtt {rtt:g} ms done ({time.time() - started:.0f}s)")
    if cfg.materialized:
        from . import materialized

        svc_registry = materialized.service_registry(registry)
        with FeatureStore(svc_registry, dsn, pool_size=1, write_pool_size=0) as store:
            materialized.check_same(store, keys[:50])
        if cfg.service_clients:
            progress(f"materialized service throughput at {', '.join(map(str, cfg.service_clients))} async clients")
            mat["throughput"] = materialized.throughput(svc_registry, dsn, keys, cfg.service_clients, cfg.client_seconds,
                                                        cfg.seed)
        if cfg.cold_entities:
            mat["cold"] = materialized.cold(cfg.cold_entities, cfg.cold_requests, progress=progress, seed=cfg.seed)
    result = {
        "meta": environment(dsn, server_version, redis_version, cfg, argv, started),
        "latency": latency,
        "throughput": throughput,
        "breakdown": breakdown,
        "materialized": mat,
        "skipped": skipped,
    }
    result["checks"] = evaluate(result)
    return result


# -- targets --------------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], rtt: float, tables: int, name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["rtt_ms"] == rtt and r["tables"] == tables and r["name"] == name), None)


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures: ``{check, target, value, ok}`` (ok None: for information)."""
    rows = result["latency"]
    checks: list[dict[str, Any]] = []

    def add(check: str, target: str, value: str, ok: bool | None) -> None:
        checks.append({"check": check, "target": target, "value": value, "ok": ok})

    default = DEFAULT_STRATEGY.value
    tables = max((r["tables"] for r in rows), default=0)
    far = max((r["rtt_ms"] for r in rows), default=0.0)
    base, best = _find(rows, far, tables, "select1"), _find(rows, far, tables, default)
    if far > 0 and base and best:
        d50, d99 = best["p50_ms"] - base["p50_ms"], best["p99_ms"] - base["p99_ms"]
        add(f"{default} p50 - SELECT 1 ({far:g} ms, {tables} tables)", "<= +0.7 ms", f"{d50:+.3f} ms", d50 <= 0.7)
        add(f"{default} p99 - SELECT 1 ({far:g} ms, {tables} tables)", "<= +3 ms", f"{d99:+.3f} ms", d99 <= 3.0)
        seq = _find(rows, far, tables, "sequential")
        if seq:
            trips = seq["p50_ms"] / base["p50_ms"]
            add(f"sequential round-trips ({far:g} ms, {tables} tables)", f"~{tables}", f"{trips:.1f}",
                0.8 * tables <= trips <= 1.3 * tables)
    near = min((r["rtt_ms"] for r in rows), default=None)
    if near == 0:
        best = _find(rows, 0.0, tables, default)
        if best:
            add(f"{default} p50 (loopback, {tables} tables)", "<= 0.3 ms", f"{best['p50_ms']:.3f} ms", best["p50_ms"] <= 0.3)
            add(f"{default} client CPU (loopback, {tables} tables)", "<= 0.06 ms", f"{best['cpu_ms']:.3f} ms", best["cpu_ms"] <= 0.06)
            raw = _find(rows, 0.0, tables, "raw")
            if raw:
                add(f"library cost: {default} / raw (loopback)", "-",
                    f"x{best['p50_ms'] / raw['p50_ms']:.2f} (CPU x{best['cpu_ms'] / raw['cpu_ms']:.2f})", None)
            for count in sorted({r["tables"] for r in rows} - {tables}):
                fewer = _find(rows, 0.0, count, default)
                if fewer:
                    add(f"{default} p50 (loopback, {count} tables)", f"< {best['p50_ms']:.3f} ms",
                        f"{fewer['p50_ms']:.3f} ms", fewer["p50_ms"] < best["p50_ms"])
        batch = _find(rows, 0.0, tables, "batch")
        if batch:
            add(f"batch x{batch['keys_per_call']} per key (loopback, {tables} tables)", "<= 0.15 ms",
                f"{batch['p50_ms']:.3f} ms", batch["p50_ms"] <= 0.15)
        redis = _find(rows, 0.0, tables, "redis")
        if redis and best:
            add(f"{default} / redis p50 (loopback, {tables} tables)", "-", f"x{best['p50_ms'] / redis['p50_ms']:.2f}", None)
    _materialized_checks(result, add)
    for b in result.get("breakdown", []):
        add(f"breakdown adds up ({b['label']}, {b['rtt_ms']:g} ms)", "within 5%",
            f"{b['unattributed_pct']:+.2f}% left", b["sums_ok"])
    return checks


# -- environment ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def environment(
    dsn: str, server_version: str, redis_version: str | None, cfg: BenchConfig, argv: Sequence[str] | None, started: float
) -> dict[str, Any]:
    import matplotlib
    import numpy
    import psycopg_pool
    import redis
    import redis.utils

    return {
        "command": shlex.join(argv if argv is not None else ["pgfeatures", *sys.argv[1:]]),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "dsn": redact(dsn),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "memory_gb": _memory_gb(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: how busy the box was
        },
        "versions": {
            "pgfeatures": __version__,
            "python": platform.python_version(),
            "postgresql": server_version,
            "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()})",
            "psycopg_pool": psycopg_pool.__version__,
            "numpy": numpy.__version__,
            "matplotlib": matplotlib.__version__,
            "redis_server": redis_version,
            "redis_py": f"{redis.__version__}{' + hiredis' if redis.utils.HIREDIS_AVAILABLE else ''}",
        },
        "config": asdict(cfg) | {"redis_url": redact(cfg.redis_url) if cfg.redis_url else None},
    }


# -- output ---------------------------------------------------------------------------------------


def save(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def load(path: str | Path) -> dict[str, Any]:
    """A saved result. Raises BenchmarkError when the file is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read benchmark results from {path}: {exc}") from None
    missing = {"meta", "latency", "throughput", "breakdown", "checks"} - set(result if isinstance(result, dict) else ())
    if missing:
        raise BenchmarkError(f"{path} is not a pgfeatures bench result (missing {', '.join(sorted(missing))})")
    return result


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"  # keeps the table within 80 columns


def _materialized_checks(result: dict[str, Any], add: Callable[[str, str, str, bool | None], None]) -> None:
    """Issue 13's targets: materialized against unmaterialized, within the same run."""
    rows = result["latency"]
    tables = max((r["tables"] for r in rows), default=0)
    flex, mat = _find(rows, 0.0, tables, "service"), _find(rows, 0.0, tables, "service materialized")
    if flex and mat:
        ratio = mat["p50_ms"] / flex["p50_ms"]
        add(f"materialized / unmaterialized p50 (loopback, {tables} tables)", "<= 0.5x", f"x{ratio:.2f}", ratio <= 0.5)
        redis = _find(rows, 0.0, tables, "redis")
        if redis:
            r = mat["p50_ms"] / redis["p50_ms"]
            add(f"materialized / redis p50 (loopback, {tables} tables)", "<= 1.5x", f"x{r:.2f}", r <= 1.5)
    through = result.get("materialized", {}).get("throughput", [])
    by = {(t["name"], t["clients"]): t for t in through}
    for c in sorted({t["clients"] for t in through} - {1}):
        base = by.get(("service", c))
        for name, target in (("service materialized", 2.0), ("service vector materialized", 3.0)):
            got = by.get((name, c))
            if base and got:
                x = got["rps"] / base["rps"]
                add(f"{name} / service req/s ({c} async clients)", f">= {target:g}x", f"x{x:.2f}", x >= target)
        got = by.get(("service materialized", c))
        if base and got:
            x = got["machine_cpu_ms"] / base["machine_cpu_ms"]
            add(f"machine CPU per request, materialized / service ({c} clients)", "<= 0.4x", f"x{x:.2f}", x <= 0.4)
    cold = result.get("materialized", {}).get("cold")
    if cold:
        how = "restart + dropped OS cache" if cold["os_cache_dropped"] else "restart (OS cache kept)"
        add(f"cold reads ({how}), first {cold['requests']}: service / materialized mean", ">= 5x",
            f"x{cold['speedup']:.2f}", cold["speedup"] >= 5)


def print_result(result: dict[str, Any], console: Any) -> None:
    """Rich tables: latency per distance, throughput, breakdown, targets."""
    from rich import box
    from rich.table import Table

    rows = result["latency"]
    for rtt in sorted({r["rtt_ms"] for r in rows}):
        where = "direct loopback" if rtt == 0 else f"{rtt:g} ms round-trip through the proxy"
        t = Table(title=f"latency per request (ms), {where}", caption="* default strategy; /key: per key of a batch; "
                  "-select1: p50 above SELECT 1's; xraw: p50 over the raw statement's", box=box.SIMPLE_HEAD)
        for col in ["row", "n", "p50", "p90", "p99", "CPU", "-select1", "xraw"]:
            t.add_column(col, justify="left" if col == "row" else "right", no_wrap=True)
        for count in sorted({r["tables"] for r in rows if r["rtt_ms"] == rtt}):
            t.add_row(f"[bold]{count} tables[/bold]")
            cell = [r for r in rows if r["rtt_ms"] == rtt and r["tables"] == count]
            base, raw = _find(cell, rtt, count, "select1"), _find(cell, rtt, count, "raw")
            for r in cell:
                single = r["keys_per_call"] == 1
                label = r["name"] + ("*" if r["default"] else "") + ("" if single else "/key")
                above = r["p50_ms"] - base["p50_ms"] if base else 0.0
                diff = f"{above:+.3f}" if abs(above) < 10 else f"{above:+.1f}"
                diff = diff if base and single and r is not base else ""
                x = r["p50_ms"] / raw["p50_ms"] if raw else 0.0
                ratio = f"{x:.2f}" if x < 10 else f"{x:.0f}"
                ratio = ratio if raw and r["kind"] == "strategy" and single else ""
                t.add_row(label, str(r["n"]), _ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]), _ms(r["cpu_ms"]), diff, ratio)
        console.print(t)
    if result["throughput"]:
        t = Table(title="throughput: concurrent clients reading the default strategy back to back (ms)", box=box.SIMPLE_HEAD)
        for col in ["rtt", "tables", "mode", "clients", "req/s", "p50", "p99", "CPU/req"]:
            t.add_column(col, justify="right", no_wrap=True)
        for r in result["throughput"]:
            t.add_row(f"{r['rtt_ms']:g}", str(r["tables"]), r["mode"], str(r["clients"]), f"{r['rps']:.0f}",
                      f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['cpu_ms']:.3f}")
        console.print(t)
    mat = result.get("materialized") or {}
    if mat.get("throughput"):
        t = Table(title=f"feature service over every table: materialized or not, async clients, one process "
                        f"(built in {mat.get('build_s', 0):.1f}s)", box=box.SIMPLE_HEAD)
        for col in ["variant", "clients", "req/s", "p50", "p99", "client CPU/req", "machine CPU/req"]:
            t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        for r in mat["throughput"]:
            t.add_row(r["name"], str(r["clients"]), f"{r['rps']:.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                      f"{r['cpu_ms']:.3f}", f"{r['machine_cpu_ms']:.3f}")
        console.print(t)
    if mat.get("cold"):
        c = mat["cold"]
        how = "restart + dropped OS page cache" if c["os_cache_dropped"] else f"restart only ({c['os_cache_refused']})"
        console.print(f"cold reads ({how}, shared_buffers {c['shared_buffers']}, {c['tables']} tables x "
                      f"{c['entities']:,} entities): mean of the first {c['requests']} requests: service "
                      f"{c['flexible_mean_ms']:.3f} ms, materialized {c['materialized_mean_ms']:.3f} ms "
                      f"(x{c['speedup']:.1f})", highlight=False)
    for b in result["breakdown"]:
        t = Table(title=f"where the time goes: {b['label']}, {b['tables']} tables, {b['rtt_ms']:g} ms round-trip "
                        f"({b['n']} requests, {b['explained']} EXPLAIN twins)", box=box.SIMPLE_HEAD)
        for col in ["component", "p50 ms", "p99 ms", "mean ms", "share"]:
            t.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
        total = b["total"]["mean_ms"]
        for name, q in b["components"].items():
            t.add_row(name, f"{q['p50_ms']:.3f}", f"{q['p99_ms']:.3f}", f"{q['mean_ms']:.3f}", f"{q['mean_ms'] / total:.0%}")
        t.add_section()
        t.add_row("total", f"{b['total']['p50_ms']:.3f}", f"{b['total']['p99_ms']:.3f}", f"{total:.3f}",
                  f"{b['unattributed_pct']:+.1f}% left")
        u = b["uninstrumented"]
        t.add_row("uninstrumented", f"{u['p50_ms']:.3f}", f"{u['p99_ms']:.3f}", f"{u['mean_ms']:.3f}", "")
        console.print(t)
        slowest = sorted(b["per_table"].items(), key=lambda kv: -kv[1]["p50_ms"])[:3]
        if slowest:
            console.print("  slowest tables on the server (p50): " + ", ".join(f"{k} {v['p50_ms']:.3f} ms" for k, v in slowest))
    for name, why in result.get("skipped", {}).items():
        console.print(f"[yellow]skipped {name}:[/yellow] {why}")
    t = Table(title="targets (issue 6)", box=box.SIMPLE_HEAD)
    for col in ["check", "target", "this run", ""]:
        t.add_column(col, no_wrap=col != "this run")
    for c in result["checks"]:
        mark = "" if c["ok"] is None else ("[green]PASS[/green]" if c["ok"] else "[red]MISS[/red]")
        t.add_row(c["check"], c["target"], c["value"], mark)
    console.print(t)
    m = result["meta"]
    console.print(f"{m['machine']['cpu']} x{m['machine']['cpus']}, PostgreSQL {m['versions']['postgresql']}, "
                  f"Python {m['versions']['python']}, psycopg {m['versions']['psycopg']}; {m['duration_s']}s; command: {m['command']}")

