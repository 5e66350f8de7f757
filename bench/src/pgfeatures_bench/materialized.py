"""The read benchmark's materialized-service part: a 30-table feature service read from its serving
rows against the same service read table by table, in the same run.

``pgfeatures bench`` (``BenchConfig.materialized``, on by default) measures, on the demo data:

- **latency rows** at every distance: ``service`` / ``service materialized`` (dict output) and
  ``service vector`` / ``service vector materialized`` (the flat vector), through
  ``FeatureStore.get_service``, interleaved with the other rows (``reads.py``);
- **throughput** at 1, 8 and 32 concurrent async clients on one process (``AsyncFeatureStore``):
  requests/s and *whole-machine* CPU per request (``/proc/stat``: client, PostgreSQL and all);
- **cold reads** (``cold_entities`` > 0) on a private cluster (``clusters.Cluster``) with a
  ``shared_buffers`` smaller than the data: the mean latency of the first ``cold_requests`` requests
  after a PostgreSQL restart, flexible and materialized in alternating rounds. The OS page cache
  is kept unless ``drop_os_cache`` (``--drop-os-cache``) asks to empty it before each cold start:
  that empties the page cache of the whole host, so it is never done by default; it needs root,
  and the result says whether it was done (``os_cache_drops``: how many times).

Two services over the same tables: ``bench_flex`` (never materialized) and ``bench_mat``
(``materialize = true``, built with ``materialize.build.materialize`` at the start of the run,
which also puts its maintenance triggers on the demo tables). Both are checked to return the same
results before anything is timed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from pgfeatures import demo
from pgfeatures.definitions import FeatureService, Registry
from pgfeatures.errors import BenchmarkError
from pgfeatures.materialize.build import materialize
from pgfeatures.store import AsyncFeatureStore, FeatureStore

from .runner import measure_tasks

FLEX = "bench_flex"
MAT = "bench_mat"


def service_registry(registry: Registry) -> Registry:
    """``registry`` plus the two services over all its tables."""
    refs = tuple(f"{t}.*" for t in registry.tables)
    return Registry.of(
        registry.tables.values(),
        registry.schema,
        services=[FeatureService(FLEX, refs), FeatureService(MAT, refs, materialize=True)],
    )


def build(conn: psycopg.Connection, registry: Registry) -> float:
    """Materialize ``bench_mat``; seconds taken."""
    t0 = time.perf_counter()
    materialize(conn, registry, MAT)
    return time.perf_counter() - t0


def check_same(store: FeatureStore, keys: Sequence[bytes]) -> None:
    for key in keys:
        flex, mat = store.get_service(FLEX, key), store.get_service(MAT, key)
        if flex != mat or flex.status != mat.status:
            raise BenchmarkError(f"the materialized service disagrees with the flexible read for key {key.hex()}")
        if store.get_service(FLEX, key, output="list").values != store.get_service(MAT, key, output="list").values:
            raise BenchmarkError(f"the materialized vector disagrees with the flexible one for key {key.hex()}")


def latency_calls(store: FeatureStore) -> dict[str, Callable[[bytes], Any]]:
    """The four latency rows (``reads_cell._rows`` adds them to every cell with all the tables)."""
    get = store.get_service
    return {
        "service": lambda k: get(FLEX, k),
        "service materialized": lambda k: get(MAT, k),
        "service vector": lambda k: get(FLEX, k, output="list"),
        "service vector materialized": lambda k: get(MAT, k, output="list"),
    }


def _busy_seconds() -> float:
    """Busy CPU time of the whole machine (every core; /proc/stat), in seconds."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / 100.0  # USER_HZ


def throughput(
    registry: Registry, dsn: str, keys: Sequence[bytes], clients: Sequence[int], seconds: float, seed: int = 0
) -> list[dict[str, Any]]:
    """Requests/s and whole-machine CPU per request, per variant and client count (rounds alternate)."""
    variants: dict[str, Callable[[AsyncFeatureStore], Callable[[bytes], Any]]] = {
        "service": lambda s: lambda k: s.get_service(FLEX, k),
        "service materialized": lambda s: lambda k: s.get_service(MAT, k),
        "service vector materialized": lambda s: lambda k: s.get_service(MAT, k, output="list"),
    }
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async with AsyncFeatureStore(registry, dsn, pool_size=max(clients), write_pool_size=0) as store:
            for make in variants.values():  # every pooled connection warm for every variant
                await measure_tasks(make(store), keys, max(clients), min(0.3, seconds), seed=seed)
            for c in clients:
                for name, make in variants.items():
                    busy0 = _busy_seconds()
                    t = await measure_tasks(make(store), keys, c, seconds, seed=seed)
                    busy = _busy_seconds() - busy0
                    row = t.as_dict()
                    row.update(name=name, mode="async", clients=c, machine_cpu_ms=1e3 * busy / max(t.requests, 1))
                    out.append(row)

    asyncio.run(run())
    return out


def cold(
    entities: int,
    requests: int,
    rounds: int = 2,
    tables: int = 30,
    shared_buffers: str = "32MB",
    progress: Callable[[str], None] = print,
    seed: int = 0,
    drop_os_cache: bool = False,
) -> dict[str, Any]:
    """Mean latency of the first ``requests`` requests after a restart (and, with ``drop_os_cache``
    only, with the host's OS page cache dropped before each)."""
    from pgfeatures.definitions import demo_registry

    from . import schema_effects
    from .harness.clusters import Cluster

    registry = service_registry(demo_registry(n_tables=tables, schema="cold"))
    rng = random.Random(seed)
    keys = [demo.entity_key(i) for i in rng.sample(range(entities), min(entities, 20 * requests))]
    with Cluster(name="bench-cold", shared_buffers=shared_buffers) as cluster:
        cluster.create_role("bench", "bench-cold", superuser=True)
        dsn = cluster.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            demo.load_demo(conn, registry, entities, seed)
            build(conn, registry)
            size = conn.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'cold' AND c.relkind = 'r'"
            ).fetchone()
        progress(
            f"cold reads: {tables} tables x {entities:,} entities ({size[0] if size else '?'} with the serving rows) "
            f"loaded in {time.perf_counter() - t0:.0f}s, shared_buffers {shared_buffers}"
        )
        means: dict[str, list[float]] = {FLEX: [], MAT: []}
        refused: str | None = None if drop_os_cache else "not asked: pass --drop-os-cache (whole host, root only)"
        drops = 0
        for r in range(rounds):
            for service in (FLEX, MAT) if r % 2 == 0 else (MAT, FLEX):
                cluster.restart()
                if drop_os_cache:
                    failed = schema_effects.drop_os_cache()
                    drops += failed is None
                    refused = failed or refused
                sample = rng.sample(keys, requests)
                with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
                    t = time.perf_counter()
                    for k in sample:
                        store.get_service(service, k)
                    means[service].append(1e3 * (time.perf_counter() - t) / requests)
    flex, mat = statistics.median(means[FLEX]), statistics.median(means[MAT])
    return {
        "entities": entities,
        "tables": tables,
        "requests": requests,
        "rounds": rounds,
        "shared_buffers": shared_buffers,
        "os_cache_dropped": refused is None,
        "os_cache_refused": refused,
        "os_cache_drops": drops,
        "flexible_mean_ms": flex,
        "materialized_mean_ms": mat,
        "speedup": flex / mat if mat else None,
        "rounds_ms": {k: [round(x, 3) for x in v] for k, v in means.items()},
    }
