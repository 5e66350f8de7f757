"""The read benchmark's rows and cells: what one cell (one network distance x one table count) times,
and timing it.

Owns what is open at one distance (``Distance``: the store, a plain connection, the parallel
AsyncFeatureStore side (``AsyncSide``), Redis, the variant stores), the rows of a cell (select1,
raw, each strategy, the variants, the services, Redis), the check that every strategy returns the
same features, and ``measure_cell``: the rows timed in interleaved rounds, each given its share of
requests. The run over every distance and table count is ``reads.py``; the targets and output of
the result are ``reads_result.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from pgfeatures.definitions import Registry
from pgfeatures.errors import BenchmarkError
from pgfeatures.reader import DEFAULT_STRATEGY, Strategy
from pgfeatures.reader.decode import TableValues
from pgfeatures.store import AsyncFeatureStore, FeatureStore

from . import redis_baseline
from .runner import run_interleaved

if TYPE_CHECKING:
    from .reads import BenchConfig

HEADLINE_WEIGHT = 3  # select1 and the default strategy get this many times the requests of other rows
TARGET_SAMPLES = 300  # ... and at least this many where the targets are checked (farthest, most tables): a p99


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


class AsyncSide:
    """An AsyncFeatureStore driven from synchronous timing loops through a private event loop."""

    def __init__(self, registry: Registry, dsn: str, pool_size: int):
        self.loop = asyncio.new_event_loop()
        self.store = AsyncFeatureStore(registry, dsn, pool_size=pool_size, write_pool_size=1)

    def __enter__(self) -> AsyncSide:
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
class Distance:
    """Everything open at one network distance."""

    rtt_ms: float
    dsn: str  # through this distance's proxy (or direct)
    store: FeatureStore
    raw: psycopg.Connection
    parallel: AsyncSide | None
    redis: redis_baseline.RedisFeatures | None
    variants: dict[str, FeatureStore]
    unprepared: psycopg.Connection | None
    services: FeatureStore | None = None  # a store of the registry with the bench services (materialized part)


def _rows(cfg: BenchConfig, d: Distance, names: list[str]) -> list[_Row]:
    count = len(names)
    store, cur = d.store, psycopg.RawCursor(d.raw)
    default_stmt = store.reader(names).statements[0]

    def select1(_: bytes) -> Any:
        cur.execute(b"SELECT 1", prepare=True, binary=True)
        return cur.fetchone()

    def raw(key: bytes) -> Any:
        cur.execute(default_stmt, (key,), prepare=True, binary=True)
        return cur.fetchone()

    rows = [
        _Row("select1", "baseline", select1, local_ms=0.1, weight=HEADLINE_WEIGHT),
        _Row("raw", "raw", raw, local_ms=0.3),
    ]
    per_key_ms = 0.15 * count / 30
    for s in cfg.strategies:
        if s == "batch":
            rows.append(
                _Row(
                    "batch",
                    "strategy",
                    lambda ks: store.get_features_batch(ks, names),
                    batch=True,
                    local_ms=per_key_ms * cfg.batch_size,
                )
            )
        elif s == "parallel":
            assert d.parallel is not None
            rows.append(_Row("parallel", "strategy", d.parallel.parallel(names, cfg.parallel), local_ms=1.0))
        else:
            strategy = Strategy(s)
            sequential = strategy is Strategy.SEQUENTIAL
            rows.append(
                _Row(
                    s,
                    "strategy",
                    (lambda st: lambda k: store.get_features(k, names, strategy=st))(strategy),
                    round_trips=count if sequential else 1,
                    local_ms=(0.12 * count) if sequential else 0.6,
                    default=strategy is DEFAULT_STRATEGY,
                    weight=HEADLINE_WEIGHT if strategy is DEFAULT_STRATEGY else 1,
                )
            )
    if "entities" in d.variants:
        multi = d.variants["entities"]
        reader = multi.reader(names)
        entity_names = [e.name for e in reader.selection.entities]
        rows.append(
            _Row(
                f"{len(entity_names)} entities",
                "strategy",
                lambda k: multi.read(reader, {e: k for e in entity_names}),
                local_ms=0.6,
            )
        )
    if "ttl" in d.variants:
        rows.append(
            _Row("ttl", "strategy", (lambda st: lambda k: st.get_features(k, names))(d.variants["ttl"]), local_ms=0.6)
        )
    if "pooler" in d.variants:
        rows.append(
            _Row(
                "pooler functions",
                "strategy",
                (lambda st: lambda k: st.get_features(k, names))(d.variants["pooler"]),
                local_ms=0.7,
            )
        )
    if d.unprepared is not None:
        plain = psycopg.RawCursor(d.unprepared)

        def unprepared(key: bytes) -> Any:
            plain.execute(default_stmt, (key,), prepare=False, binary=True)
            return plain.fetchone()

        rows.append(_Row("unprepared", "raw", unprepared, local_ms=1.2))
    if d.services is not None and count == len(d.store.registry.tables):
        from . import materialized

        for name, call in materialized.latency_calls(d.services).items():
            rows.append(
                _Row(name, "service", call, local_ms=0.4 if "materialized" in name else 0.6, weight=HEADLINE_WEIGHT)
            )
    if d.redis is not None:
        rows.append(_Row("redis", "redis", d.redis.reader(names), local_ms=0.2))
        rows.append(
            _Row("redis batch", "redis", d.redis.batch_reader(names), batch=True, local_ms=0.02 * cfg.batch_size)
        )
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
            raise BenchmarkError(
                f"{name} returned different features than single for key {key.hex()}: {got!r} != {reference!r}"
            )


# -- one cell: one distance x one table count -----------------------------------------------------


def measure_cell(
    cfg: BenchConfig,
    d: Distance,
    names: list[str],
    keys: list[bytes],
    batches: list[list[bytes]],
    local: dict[tuple[int, str], float],
    seed: int,
    target_cell: bool,
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
        out.append(
            {
                "rtt_ms": d.rtt_ms,
                "tables": len(names),
                "kind": row.kind,
                "default": row.default,
                "round_trips": row.round_trips,
                "keys_per_call": cfg.batch_size if row.batch else 1,
                **m.stats.as_dict(),
                "quantiles": [round(q, 5) for q in m.quantiles()],
            }
        )
    return out
