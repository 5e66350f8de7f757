"""``pgfeatures bench-schema``: what the doctor's advice buys, measured.

Everything runs on a private cluster (``clusters.Cluster``: the embedded
server's binaries and buffer cache size, in a folder under /tmp, stopped and
removed at the end), never on the shared server: the cold-cache case restarts
PostgreSQL. Three measurements:

1. **Covering vs plain index.** The same rows (8 ``real`` + ``updated_at``) in
   a table with only its primary key and in one with a covering index (after
   VACUUM, so lookups are index-only). The store's own statements, one key
   and 100-key batches: server execution time per request from
   ``pg_stat_statements`` (mean_exec_time), shared blocks touched per request,
   and client latency.
2. **Narrow vs wide rows.** The same values as 8 ``real`` + integer epoch, as
   one ``jsonb`` document + ``timestamptz``, and as 8 ``numeric`` + a ``text``
   label + ``timestamptz``: bytes per row on disk, size, server time, client
   latency and client CPU (decoding Decimal / JSON / datetime included).
3. **Cold vs warm first request.** ``--tables`` demo-layout tables. Each
   round restarts PostgreSQL (its buffer cache is then empty; the OS page
   cache still holds the files unless ``--drop-os-cache`` empties it, which
   affects every process on the host), then times the first requests of a
   fresh FeatureStore (the first, and the mean of the first 100 random keys):
   without warm-up, after ``pgfeatures warmup``, and warm.

Client latencies are interleaved (``measure_interleaved``) so a noisy
machine hits every variant alike; compare within one run.
"""

from __future__ import annotations

import os
import platform
import random
import secrets
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from pgfeatures import demo, embedded
from pgfeatures.connections.rows import one_row
from pgfeatures.definitions import KEY_LENGTH, UPDATED_AT, FeatureTable, Registry, demo_registry
from pgfeatures.reader import compile_batch_reader, compile_reader, select
from pgfeatures.schema import apply_schema
from pgfeatures.store import FeatureStore
from pgfeatures.warmup import warmup

from .harness.clusters import Cluster
from .runner import Stats, measure_interleaved

SCHEMA = "bench"
FEATURES = [f"f{j}" for j in range(8)]
BATCH = 100
FIRST_N = 100  # requests timed after a restart: misses go on long after the first


@dataclass(frozen=True)
class SchemaBenchConfig:
    """What ``pgfeatures bench-schema`` measures (``pgfeatures_bench.cli`` makes one flag per field)."""

    rows: int = 100_000  # rows per table
    requests: int = 2000  # timed requests per variant
    tables: int = 30  # tables read by the first-request case
    rounds: int = 5  # restarts per first-request case
    drop_os_cache: bool = False  # also measure with the OS page cache dropped (root only; affects the whole host)
    seed: int = 0


# -- the private cluster --------------------------------------------------------------------------


# The embedded server's settings that matter to these measurements: its buffer cache size and the
# libraries the doctor and warm-up use.
BENCH_SETTINGS: dict[str, str | int | float | bool] = {
    "max_connections": 200,
    "shared_preload_libraries": "pg_stat_statements,pg_prewarm",
    "pg_prewarm.autoprewarm": False,
    "track_io_timing": True,
}


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A private cluster configured like the embedded server (``clusters.Cluster``), removed at the end.

    ``dsn()`` is a superuser over loopback TCP (scram-sha-256), like the embedded server's DSN.
    """
    with Cluster(
        shared_buffers=embedded.SERVER_SETTINGS["shared_buffers"], settings=BENCH_SETTINGS, name="bench-schema"
    ) as cluster:
        cluster.create_role("bench", secrets.token_urlsafe(16), superuser=True)
        yield cluster


# Writing 3 here empties the page cache of the whole host: only ever on an explicit --drop-os-cache.
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_os_cache() -> str | None:
    """Empty the OS page cache of the whole host (``DROP_CACHES``); None on success, else why it was
    refused. Call it only when the user asked (``--drop-os-cache``)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# -- data -----------------------------------------------------------------------------------------


def narrow_registry() -> Registry:
    features = {f: "real" for f in FEATURES}
    return Registry.of(
        [FeatureTable.of("plain", features), FeatureTable.of("covering", features, covering_index=True)], SCHEMA
    )


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


WIDE_DDL = {
    "wide_jsonb": (
        "hashkey bytea PRIMARY KEY, doc jsonb, updated_at timestamptz",
        "hashkey, jsonb_build_object({pairs}), updated_at",
    ),
    "wide_mixed": (
        f"hashkey bytea PRIMARY KEY, {', '.join(f'{f} numeric' for f in FEATURES)}, label text, updated_at timestamptz",
        f"hashkey, {', '.join(f'{f}::numeric' for f in FEATURES)}, 'segment-' || get_byte(hashkey, 0) % 20, updated_at",
    ),
}


def load(conn: psycopg.Connection, rows: int, n_tables: int, seed: int) -> list[bytes]:
    """Create and fill every table of the benchmark; returns the entity keys."""
    registry = narrow_registry()
    apply_schema(conn, registry)
    keys = np.frombuffer(b"".join(demo.entity_keys(rows)), dtype=f"S{KEY_LENGTH}")
    values = np.random.default_rng(seed).random((rows, len(FEATURES)), dtype=np.float32)
    for table in registry.tables.values():
        demo.copy_binary_float4(conn, SCHEMA, table, keys, values, demo.DEMO_EPOCH)
    pairs = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(f), sql.Identifier(f)) for f in FEATURES)
    for name, (columns, select_list) in WIDE_DDL.items():
        conn.execute(sql.SQL("CREATE TABLE {} (" + columns + ")").format(_ident(name)))
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT " + select_list + " FROM {}").format(
                _ident(name), _ident("plain"), pairs=pairs
            )
        )
    for name in ("plain", "covering", *WIDE_DDL):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(_ident(name)))
    demo.load_demo(conn, cold_registry(n_tables), rows, seed)
    return demo.entity_keys(rows)  # not from the numpy array: its "S32" items drop trailing zero bytes


def cold_registry(n_tables: int) -> Registry:
    return demo_registry(n_tables=n_tables, schema="cold")


# -- per-request measurements ---------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    statement: bytes
    decode: Callable[[Any], Any]
    batch: bool = False


@dataclass
class Measured:
    name: str
    client: Stats
    server_us: float | None = None  # mean execution time per request, pg_stat_statements
    blocks: float | None = None  # shared blocks touched per request
    bytes_per_row: float | None = None
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server_us": self.server_us,
            "blocks": self.blocks,
            "bytes_per_row": self.bytes_per_row,
            "size_bytes": self.size_bytes,
            **self.client.as_dict(),
            **self.extra,
        }


def narrow_variants() -> list[Variant]:
    registry = narrow_registry()
    out = []
    wanted = [*FEATURES, UPDATED_AT]
    for table in ("plain", "covering"):
        selection = select(registry, [table], {table: wanted})
        reader = compile_reader(selection)
        out.append(Variant(table, reader.statements[0], reader.decode))
        batch = compile_batch_reader(selection)
        out.append(Variant(f"{table} x{BATCH}", batch.statement, batch.decode, batch=True))
    return out


def _as_is(row: Any) -> Any:
    return row  # psycopg already built the Python values (dict, Decimal, datetime): that is the decoding


def wide_variants() -> list[Variant]:
    mixed = ", ".join([*FEATURES, "label", UPDATED_AT])
    return [
        Variant(
            "wide_jsonb", f"SELECT doc, updated_at FROM {SCHEMA}.wide_jsonb WHERE hashkey = $1::bytea".encode(), _as_is
        ),
        Variant("wide_mixed", f"SELECT {mixed} FROM {SCHEMA}.wide_mixed WHERE hashkey = $1::bytea".encode(), _as_is),
    ]


def _call(conn: psycopg.Connection, variant: Variant) -> Callable[[Any], Any]:
    cur = psycopg.RawCursor(conn)
    fetch = cur.fetchall if variant.batch else cur.fetchone

    def call(arg: Any) -> Any:
        cur.execute(variant.statement, (arg,), prepare=True, binary=True)
        return variant.decode(fetch())

    return call


def measure_requests(
    dsn: str, variants: Sequence[Variant], keys: Sequence[bytes], requests: int, seed: int
) -> dict[str, Measured]:
    """Client latency (interleaved) and server time / blocks per request (pg_stat_statements) of each variant."""
    batches = [list(keys[i : i + BATCH]) for i in range(0, len(keys) - BATCH, BATCH)]
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        singles = {v.name: _call(conn, v) for v in variants if not v.batch}
        multi = {v.name: _call(conn, v) for v in variants if v.batch}
        for call in [*singles.values()]:
            call(keys[0])  # prepare before the reset: planning is not part of per-request time
        for call in multi.values():
            call(batches[0])
        admin.execute("SELECT pg_stat_statements_reset()")
        stats = measure_interleaved(singles, keys, requests, seed=seed) if singles else {}
        if multi:
            stats.update(measure_interleaved(multi, batches, max(20, requests // 20), seed=seed))
        server = {
            q: (mean_ms, calls, blocks)
            for q, mean_ms, calls, blocks in admin.execute(
                "SELECT query, mean_exec_time, calls, (shared_blks_hit + shared_blks_read)::float8 / calls FROM pg_stat_statements"
            )
        }
    out = {}
    for v in variants:
        mean_ms, calls, blocks = server.get(v.statement.decode(), (None, None, None))
        out[v.name] = Measured(v.name, stats[v.name], mean_ms * 1000 if mean_ms is not None else None, blocks)
    return out


# What single-key lookups read, so what must stay cached: the heap and the key index of a plain
# table; only the covering index (and the visibility map) of a vacuumed covered table.
_LOOKUP_BYTES = """
SELECT pg_relation_size('bench.plain') + pg_relation_size('bench.plain_pkey'),
       pg_relation_size('bench.covering_covering') + pg_relation_size('bench.covering', 'vm')
"""


def table_sizes(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, tuple[float, int]]:
    """(heap + TOAST bytes per row, total size with indexes) per table."""
    out = {}
    for name in names:
        rel = sql.Identifier(SCHEMA, name).as_string(conn)
        heap, total, rows = one_row(
            conn.execute(
                "SELECT pg_relation_size(c.oid) + coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0), "
                "pg_total_relation_size(c.oid), greatest(c.reltuples, 1) FROM pg_class c WHERE c.oid = %s::regclass",
                [rel],
            )
        )
        out[name] = (heap / rows, total)
    return out


# -- first request, cold and warm ------------------------------------------------------------------


def first_requests(dsn: str, registry: Registry, keys: Sequence[bytes]) -> list[float]:
    """Latency (ms) of each of ``keys`` read in turn by a freshly opened FeatureStore (all tables)."""
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        reader = store.reader()
        times = []
        for key in keys:
            t0 = time.perf_counter()
            store.read(reader, key)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def measure_first_requests(
    cluster: Cluster, registry: Registry, keys: Sequence[bytes], rounds: int, drop: bool, seed: int
) -> tuple[dict[str, dict[str, float]], str]:
    rng = random.Random(seed)
    cases: list[tuple[str, bool, bool, bool]] = [  # name, restart, drop OS cache, warm up
        ("cold: PostgreSQL restarted", True, False, False),
        ("cold + pgfeatures warmup", True, False, True),
        ("warm", False, False, False),
    ]
    os_cache = "not dropped (run with --drop-os-cache, as root, to drop it)"
    if drop:
        refused = drop_os_cache()
        if refused:
            os_cache = f"could not be dropped here ({refused}): cold means PostgreSQL buffer cache cold, OS cache warm"
        else:
            os_cache = "dropped for the 'OS cache dropped' cases"
            cases[1:1] = [
                ("cold: restarted + OS cache dropped", True, True, False),
                ("cold + OS cache dropped + warmup", True, True, True),
            ]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"first": [], "first_n": [], "warmup_s": []} for name, *_ in cases
    }
    for _ in range(rounds):
        for name, restart, drop_cache, warm in cases:
            if restart:
                cluster.restart()
            if drop_cache:
                drop_os_cache()
            if warm:
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    samples[name]["warmup_s"].append(warmup(conn, registry).seconds)
            times = first_requests(cluster.dsn(), registry, rng.sample(list(keys), FIRST_N))
            samples[name]["first"].append(times[0])
            samples[name]["first_n"].append(statistics.fmean(times))
    figures = {name: {k: statistics.median(v) for k, v in s.items() if v} for name, s in samples.items()}
    return figures, os_cache


# -- main -----------------------------------------------------------------------------------------


def main(args: SchemaBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Measure on a private cluster, print the tables on ``console`` (default: stdout); returns the figures."""
    console = console or Console()
    console.print(
        f"[bold]pgfeatures bench-schema[/bold]: private embedded cluster, {args.rows:,} rows per table, "
        f"{args.requests} requests per variant, {args.tables} tables x {args.rounds} rounds for first requests"
    )
    t0 = time.perf_counter()
    with private_cluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            keys = load(conn, args.rows, args.tables, args.seed)
            version = conn.info.server_version
            sizes = table_sizes(conn, ["plain", "covering", *WIDE_DDL])
            plain_bytes, covering_bytes = one_row(conn.execute(_LOOKUP_BYTES))
        console.print(f"loaded in {time.perf_counter() - t0:.1f}s")
        index = measure_requests(cluster.dsn(), narrow_variants(), keys, args.requests, args.seed)
        rows = measure_requests(
            cluster.dsn(),
            [v for v in narrow_variants() if v.name == "plain"] + wide_variants(),
            keys,
            args.requests,
            args.seed,
        )
        for name, m in rows.items():
            m.bytes_per_row, m.size_bytes = sizes[name]
        for name, lookup_bytes in (("plain", plain_bytes), ("covering", covering_bytes)):
            index[name].extra["lookup_working_set_bytes"] = lookup_bytes
        cold_keys = demo.entity_keys(args.rows)
        first, os_cache = measure_first_requests(
            cluster, cold_registry(args.tables), cold_keys, args.rounds, args.drop_os_cache, args.seed
        )
    _print(console, index, rows, first, os_cache, args, version)
    return {
        "server_version": version,
        "rows": args.rows,
        "requests": args.requests,
        "tables": args.tables,
        "rounds": args.rounds,
        "os_cache": os_cache,
        "covering_vs_plain": [m.as_dict() for m in index.values()],
        "row_width": [m.as_dict() for m in rows.values()],
        "first_request": first,
    }


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _print(
    console: Console,
    index: dict[str, Measured],
    rows: dict[str, Measured],
    first: dict[str, dict[str, float]],
    os_cache: str,
    args: SchemaBenchConfig,
    version: int,
) -> None:
    env = f"PostgreSQL {version // 10000}, Python {platform.python_version()}, loopback TCP, {args.rows:,} rows"
    t = Table(title=f"covering vs plain index: one lookup of 8 real + updated_at ({env})")
    for col in ("variant", "server us/request", "blocks/request", "client p50 ms", "client p99 ms", "lookups read"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for m in index.values():
        per = f" (per {BATCH} keys)" if "x" in m.name else ""
        read = m.extra.get("lookup_working_set_bytes")
        t.add_row(
            m.name + per,
            _num(m.server_us, ".1f"),
            _num(m.blocks, ".1f"),
            f"{m.client.p50_ms:.3f}",
            f"{m.client.p99_ms:.3f}",
            f"{read / 2**20:.1f} MB" if read else "",
        )
    console.print(t)
    t = Table(title="narrow vs wide rows: the same values, one lookup")
    for col in ("table", "bytes/row", "size", "server us/request", "blocks/request", "client p50 ms", "client CPU ms"):
        t.add_column(col, justify="left" if col == "table" else "right")
    for m in rows.values():
        t.add_row(
            m.name,
            _num(m.bytes_per_row, ".0f"),
            f"{(m.size_bytes or 0) / 2**20:.1f} MB",
            _num(m.server_us, ".1f"),
            _num(m.blocks, ".1f"),
            f"{m.client.p50_ms:.3f}",
            f"{m.client.cpu_ms:.3f}",
        )
    console.print(t)
    console.print(
        "plain = 8 real + integer epoch; wide_jsonb = one jsonb document + timestamptz; "
        "wide_mixed = 8 numeric + text label + timestamptz"
    )
    t = Table(
        title=f"first requests of a fresh FeatureStore, {args.tables} tables per request (median of {args.rounds} rounds)"
    )
    for col in ("case", "first request ms", f"mean of first {FIRST_N} ms", "warm-up s"):
        t.add_column(col, justify="left" if col == "case" else "right")
    for name, f in first.items():
        t.add_row(name, f"{f['first']:.2f}", f"{f['first_n']:.3f}", _num(f.get("warmup_s"), ".2f"))
    console.print(t)
    console.print(f"OS page cache: {os_cache}")
