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

This module owns the configuration (``BenchConfig``) and the run (``run_benchmark``: the demo
data, each distance opened, its cells measured, throughput and breakdowns); a cell's rows and
their timing are ``reads_cell.py``, the result's targets and output ``reads_result.py`` (their
public names are importable from here too).
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from pgfeatures import demo
from pgfeatures.connections import connection_kwargs
from pgfeatures.connections.rows import one_row
from pgfeatures.definitions import Registry, demo_registry
from pgfeatures.errors import BenchmarkError
from pgfeatures.store import FeatureStore

from . import redis_baseline
from .harness.proxy import dsn_target, maybe_proxied
from .instrument import measure_breakdown
from .reads_cell import HEADLINE_WEIGHT, TARGET_SAMPLES, AsyncSide, Distance, measure_cell
from .reads_result import environment, evaluate, load, print_result, save
from .runner import measure_tasks, measure_threads

__all__ = [
    "BENCH_TTL",
    "CLIENT_MODES",
    "HEADLINE_WEIGHT",
    "RAW_APP",
    "STRATEGIES",
    "TARGET_SAMPLES",
    "VARIANTS",
    "BenchConfig",
    "Progress",
    "environment",
    "evaluate",
    "load",
    "print_result",
    "run_benchmark",
    "save",
    "variant_registries",
]

STRATEGIES = ("pipeline", "sequential", "single", "union", "join", "batch", "parallel")
VARIANTS = ("entities", "ttl", "pooler", "unprepared")
BENCH_TTL = 10 * 365 * 86400  # the ttl variant: long enough that every demo row is fresh (same results)
CLIENT_MODES = ("threads", "async")
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
    drop_os_cache: bool = False  # empty the host's OS page cache before each cold start (root; whole host)

    @classmethod
    def quick(cls, **changes: Any) -> BenchConfig:
        """A smoke run of about 2 minutes (108 s measured on 2 busy cores): loopback and 20 ms, 30 tables,
        shorter rows."""
        return replace(
            cls(
                rtts_ms=(0.0, 20.0),
                table_counts=(30,),
                row_seconds=0.3,
                clients=(1, 4),
                client_seconds=0.5,
                instrument=("single",),
                service_clients=(1, 8),
                cold_entities=20_000,
                cold_requests=300,
            ),
            **changes,
        )

    def validate(self) -> None:
        """Raises BenchmarkError naming the bad setting and what is valid."""
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise BenchmarkError(f"unknown strategies {', '.join(bad)}; valid: {', '.join(STRATEGIES)}")
        bad = [s for s in self.instrument if s not in STRATEGIES or s == "parallel"]
        if bad:
            raise BenchmarkError(
                f"cannot instrument {', '.join(bad)}; valid: {', '.join(s for s in STRATEGIES if s != 'parallel')}"
            )
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise BenchmarkError(f"unknown variants {', '.join(bad)}; valid: {', '.join(VARIANTS)}")
        bad = [m for m in self.client_modes if m not in CLIENT_MODES]
        if bad:
            raise BenchmarkError(f"unknown client modes {', '.join(bad)}; valid: {', '.join(CLIENT_MODES)}")
        if not self.table_counts or min(self.table_counts) < 1 or max(self.table_counts) > 30:
            raise BenchmarkError(
                f"table counts must be between 1 and 30 (the demo has 30 tables), got {self.table_counts}"
            )
        if not self.rtts_ms or min(self.rtts_ms) < 0 or self.jitter_ms < 0:
            raise BenchmarkError(f"round-trips and jitter must be >= 0 ms, got {self.rtts_ms} and {self.jitter_ms}")
        if min(self.clients, default=1) < 1 or self.parallel < 1 or self.batch_size < 1 or self.explain_every < 1:
            raise BenchmarkError("clients, parallel, batch size and explain-every must be >= 1")
        if self.entities < 1 or self.sample < 1 or self.requests < 1 or self.min_requests < 1:
            raise BenchmarkError("entities, sample, requests and min-requests must be >= 1")
        if self.parallel > max(self.table_counts) and "parallel" in self.strategies:
            raise BenchmarkError(f"parallel ({self.parallel}) cannot exceed the table count ({max(self.table_counts)})")


# -- the whole run --------------------------------------------------------------------------------


def _keys(cfg: BenchConfig) -> tuple[list[int], list[bytes], list[list[bytes]]]:
    rng = random.Random(cfg.seed)
    ids = rng.sample(range(cfg.entities), min(cfg.sample, cfg.entities))
    keys = [demo.entity_key(i) for i in ids]
    size = min(cfg.batch_size, len(keys))
    batches = [rng.sample(keys, size) for _ in range(200)]
    return ids, keys, batches


@contextlib.contextmanager
def _distance(cfg: BenchConfig, registry: Registry, dsn: str, rtt: float, redis_ok: bool) -> Iterator[Distance]:
    seed = cfg.seed
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(maybe_proxied(dsn_target(dsn), rtt, cfg.jitter_ms, seed))
        cell_dsn = pg.dsn(dsn) if pg else dsn
        store = stack.enter_context(FeatureStore(registry, cell_dsn, pool_size=1, write_pool_size=1))
        raw = stack.enter_context(psycopg.connect(cell_dsn, **connection_kwargs(RAW_APP, 10)))
        par = stack.enter_context(AsyncSide(registry, cell_dsn, cfg.parallel)) if "parallel" in cfg.strategies else None
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

            services = stack.enter_context(
                FeatureStore(materialized.service_registry(registry), cell_dsn, pool_size=1, write_pool_size=0)
            )
        yield Distance(rtt, cell_dsn, store, raw, par, rf, variants, unprepared, services)


def variant_registries(registry: Registry, variants: Sequence[str]) -> dict[str, Registry]:
    """The same tables as other definitions: split among three entities (keyed alike, so the same
    key reads the same rows), with a ttl on every table, or unchanged (for the pooler variant)."""
    from pgfeatures.definitions import Entity

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


def _throughput(
    cfg: BenchConfig, registry: Registry, d: Distance, names: list[str], keys: list[bytes]
) -> list[dict[str, Any]]:
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
        with AsyncSide(registry, d.dsn, size) as side:
            acall = lambda k: side.store.get_features(k, names)  # noqa: E731
            run = side.loop.run_until_complete
            run(measure_tasks(acall, keys, size, warm_s, seed=cfg.seed))
            for c in cfg.clients:
                out.append(run(measure_tasks(acall, keys, c, cfg.client_seconds, seed=cfg.seed)).as_dict())
    return [{"rtt_ms": d.rtt_ms, "tables": len(names), **t} for t in out]


def _breakdowns(
    cfg: BenchConfig, d: Distance, names: list[str], keys: list[bytes], batches: list[list[bytes]]
) -> list[dict[str, Any]]:
    out = []
    store = d.store
    est_ms = d.rtt_ms + 0.8
    for s in cfg.instrument:
        if s == "batch":
            reader: Any = store.batch_reader(names)
            plain: Callable[[Any], Any] = functools.partial(store.read_batch, reader)
            args: Sequence[Any] = batches
            n = int(
                max(cfg.min_requests, min(cfg.requests // 10, cfg.row_seconds * 1e3 / (est_ms + 0.15 * cfg.batch_size)))
            )
        else:
            reader = store.reader(names, strategy=s)
            plain = functools.partial(store.read, reader)
            args = keys
            trips = len(names) if s == "sequential" else 1
            n = int(max(cfg.min_requests, min(cfg.requests, cfg.row_seconds * 1e3 / (trips * est_ms))))

        def same(a: Any, b: Any, s: str = s) -> None:
            if a != b:
                raise BenchmarkError(f"the instrumented {s} read returned different features than the store")

        b = measure_breakdown(
            s,
            store.read_pool,
            reader,
            plain,
            args,
            n,
            rtt_ms=d.rtt_ms,
            explain_every=cfg.explain_every,
            seed=cfg.seed,
            check=same,
        )
        out.append(b.as_dict())
    return out


def run_benchmark(
    dsn: str, cfg: BenchConfig, *, argv: Sequence[str] | None = None, progress: Progress = print
) -> dict[str, Any]:
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
        progress(
            f"demo data {'loaded' if loaded else 'present'}: {len(registry.tables)} tables x 8 real, "
            f"{cfg.entities:,} entities in schema {cfg.schema} ({time.perf_counter() - t0:.1f}s)"
        )
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
                rows = measure_cell(cfg, d, names_all[:count], keys, batches, local, cfg.seed, target_cell)
                latency += rows
                by = {r["name"]: r for r in rows}
                default = next(r for r in rows if r["default"]) if any(r["default"] for r in rows) else by["raw"]
                progress(
                    f"rtt {rtt:g} ms, {count} tables: select1 p50 {by['select1']['p50_ms']:.3f} ms, "
                    f"{default['name']} p50 {default['p50_ms']:.3f} ms ({time.time() - started:.0f}s)"
                )
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
            mat["throughput"] = materialized.throughput(
                svc_registry, dsn, keys, cfg.service_clients, cfg.client_seconds, cfg.seed
            )
        if cfg.cold_entities:
            if cfg.drop_os_cache:
                progress(
                    "warning: --drop-os-cache empties the OS page cache of the whole host (every process's "
                    "cached files) before each cold start of the cold-read part"
                )
            mat["cold"] = materialized.cold(
                cfg.cold_entities, cfg.cold_requests, progress=progress, seed=cfg.seed, drop_os_cache=cfg.drop_os_cache
            )
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
