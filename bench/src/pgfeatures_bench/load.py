"""``pgfeatures bench-load``: bulk-load throughput, exact read-back, and read latency while loads run.

One command, sensible defaults (1,000,000 rows x 8 ``real`` features, from Parquet), in a scratch
schema that is dropped afterwards:

1. **Throughput**, nothing else running: a merge into an empty table, a merge that updates every
   row, a merge of 5% of the rows (the upsert path), and a replace. Rows/s is the loader's own
   figure: opening the file to COMMIT (read, validate, encode, COPY, apply, swap); the ANALYZE or
   VACUUM after it is reported apart. After the first and the last load the whole table is read
   back with binary COPY and compared bit for bit with the file.
2. **Reads during loads**: reader processes (their own CPU, one connection each) read
   ``read_tables`` tables, the loaded one included, for random keys back to back: first with
   nothing else running (idle), then while the same loads run again. Latency percentiles per
   window come from one run, so their ratio means something on a noisy machine.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.load import LoadSummary, decode_copy, load
from pgfeatures.schema import apply_schema, drop_schema

from .runner import Stats, summarize

LOADED = "loaded"
COMPANION_ROWS = 100_000  # rows of each companion table; readers draw keys from these


def make_table(keys: np.ndarray, features: int, seed: int) -> pa.Table:
    """Random float32 features for ``keys`` ((n, 32) uint8), keys as fixed_size_binary(32)."""
    values = np.random.default_rng(seed).random((len(keys), features), dtype=np.float32)
    key_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(keys), [None, pa.py_buffer(keys.tobytes())])
    return pa.table({"hashkey": key_array, **{f"f{j}": values[:, j] for j in range(features)}})


def read_back(conn: psycopg.Connection, schema: str, features: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys (n, 32), values (n, features)) of the loaded table via binary COPY, sorted by key."""
    names = [f"f{j}" for j in range(features)]
    query = sql.SQL("COPY (SELECT hashkey, {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(schema, LOADED)
    )
    buffer = bytearray()
    with conn.cursor().copy(query) as copy:
        for chunk in copy:
            buffer += chunk
    decoded = decode_copy(buffer, [(32,), *[np.float32] * features])
    if any(nulls is not None for _, nulls in decoded):
        raise AssertionError("read-back found NULLs in a table loaded without any")
    keys = decoded[0][0]
    values = np.stack([v for v, _ in decoded[1:]], axis=1)
    return _sorted(keys, values)


def _sorted(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    words = np.ascontiguousarray(keys).view(">u8")
    order = np.lexsort(words.T[::-1])
    return keys[order], values[order]


def verify(conn: psycopg.Connection, schema: str, table: pa.Table, features: int) -> str:
    """Compare the table with ``table`` bit for bit; returns a one-line verdict (raises on mismatch)."""
    keys = np.frombuffer(table.column("hashkey").combine_chunks().buffers()[1], np.uint8).reshape(-1, 32)
    values = np.stack([table.column(f"f{j}").to_numpy() for j in range(features)], axis=1)
    want_keys, want_values = _sorted(keys, values)
    got_keys, got_values = read_back(conn, schema, features)
    if not (
        np.array_equal(got_keys, want_keys) and np.array_equal(got_values.view(np.uint32), want_values.view(np.uint32))
    ):
        raise AssertionError(f"read-back mismatch: {len(got_keys):,} rows in the table, {len(want_keys):,} in the file")
    return f"verified: {len(got_keys):,} rows read back bit-exact"


# -- readers (separate processes) ------------------------------------------------------------------


def _reader(
    dsn: str,
    registry: dict[str, Any],
    tables: list[str],
    keys: bytes,
    seed: int,
    rate: float,
    ready: Any,
    stop: Any,
    out: Any,
) -> None:
    """Read random keys at ``rate`` reads/s (0: back to back) until ``stop``; send (starts, latencies) in ns."""
    from pgfeatures.store import FeatureStore

    pool = [keys[i : i + 32] for i in range(0, len(keys), 32)]
    rng = random.Random(seed)
    starts, latencies = [], []
    with FeatureStore(Registry.from_dict(registry), dsn, pool_size=1, write_pool_size=1) as store:
        reader = store.reader(tables)
        for _ in range(200):  # warm: prepared statements, caches
            store.read(reader, rng.choice(pool))
        ready.set()
        clock = time.monotonic_ns  # system-wide on Linux: comparable with the parent's windows
        interval = int(1e9 / rate) if rate > 0 else 0
        due = clock()
        while not stop.is_set():
            if interval:  # an open loop: a steady request rate, as a serving process sees it
                due += interval
                ahead = due - clock()
                if ahead > 0:
                    time.sleep(ahead / 1e9)
            key = rng.choice(pool)
            t0 = clock()
            store.read(reader, key)
            starts.append(t0)
            latencies.append(clock() - t0)
    out.put((np.array(starts, np.int64), np.array(latencies, np.int64)))


def _idle_window(seconds: float) -> tuple[int, int]:
    start = time.monotonic_ns()
    time.sleep(seconds)
    return start, time.monotonic_ns()


def _window_stats(
    name: str, samples: list[tuple[np.ndarray, np.ndarray]], windows: list[tuple[int, int]]
) -> Stats | None:
    lat = [d[(s >= a) & (s + d <= b)] for s, d in samples for a, b in windows]
    merged = np.concatenate(lat) if lat else np.zeros(0, np.int64)
    return summarize(name, merged.tolist(), 0.0) if len(merged) else None


# -- the run ---------------------------------------------------------------------------------------


def _loads(path1: Path, path2: Path, path3: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    return [
        ("merge, every row updated", path2, {}),
        ("merge 5% (upsert)", path3, {}),
        ("replace", path1, {"mode": "replace"}),
    ]


def run(
    dsn: str,
    *,
    rows: int = 1_000_000,
    features: int = 8,
    read_tables: int = 10,
    readers: int = 1,
    read_rate: float = 1000.0,
    idle_seconds: float = 8.0,
    schema: str = "bench_load",
    keep: bool = False,
    json_out: str | None = None,
    console: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the benchmark, printing its tables to ``console`` (rich); returns the figures (also
    written to ``json_out`` when given)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    companions = [f"other_{i:02d}" for i in range(1, read_tables)]
    registry = Registry.of(
        [
            FeatureTable.of(LOADED, {f"f{j}": "real" for j in range(features)}),
            *(FeatureTable.of(n, {f"f{j}": "real" for j in range(8)}) for n in companions),
        ],
        schema=schema,
    )
    keys = np.frombuffer(np.random.default_rng(seed).bytes(32 * rows), np.uint8).reshape(rows, 32)
    first, second = make_table(keys, features, seed + 1), make_table(keys, features, seed + 2)
    small = make_table(keys[: rows // 20], features, seed + 3)
    results: dict[str, Any] = {
        "rows": rows,
        "features": features,
        "read_tables": read_tables,
        "readers": readers,
        "read_rate": read_rate,
    }
    with (
        tempfile.TemporaryDirectory(prefix="pgfeatures-bench-load-") as tmp,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        paths = [Path(tmp) / name for name in ("first.parquet", "second.parquet", "small.parquet")]
        for table, path in zip((first, second, small), paths):
            pq.write_table(table, path)
        console.print(
            f"[bold]bench-load[/bold]: {rows:,} rows x {features} real features from Parquet "
            f"({paths[0].stat().st_size / 1e6:.0f} MB), PostgreSQL {conn.info.server_version // 10000}, schema {schema}"
        )
        drop_schema(conn, schema)
        apply_schema(conn, registry)
        try:
            for name in companions:
                load(conn, registry, name, make_table(keys[:COMPANION_ROWS], 8, hash(name) % 1000), vacuum="always")

            # 1. throughput, alone
            throughput = Table(title=f"bulk loads of {rows:,} rows, nothing else running")
            for col in ("load", "strategy", "rows", "seconds", "rows/s", "after the load"):
                throughput.add_column(col, justify="left" if col in ("load", "strategy", "after the load") else "right")
            figures = []
            plan = [("merge into an empty table", paths[0], {}), *_loads(*paths)]
            for label, path, options in plan:
                summary = load(conn, registry, LOADED, path, **options)
                figures.append(_figure(label, summary))
                throughput.add_row(
                    label,
                    summary.strategy,
                    f"{summary.rows_read:,}",
                    f"{summary.seconds:.2f}",
                    f"{summary.rows_per_second:,.0f}",
                    f"{summary.maintenance.split(':')[0]} {summary.maintenance_seconds:.2f}s",
                )
                if label == "merge into an empty table":
                    results["verified_first"] = verify(conn, schema, first, features)
            results["verified_last"] = verify(conn, schema, first, features)
            results["loads"] = figures
            console.print(throughput)
            console.print(
                f"{results['verified_first']} after the first load; {results['verified_last']} after the replace"
            )

            # 2. reads: idle, then during the same loads
            ctx = mp.get_context("spawn")
            stop, out = ctx.Event(), ctx.Queue()
            ready = [ctx.Event() for _ in range(readers)]
            sample = keys[:COMPANION_ROWS].tobytes()
            procs = [
                ctx.Process(
                    target=_reader,
                    args=(
                        dsn,
                        registry.to_dict(),
                        [LOADED, *companions],
                        sample,
                        seed + i,
                        read_rate,
                        ready[i],
                        stop,
                        out,
                    ),
                )
                for i in range(readers)
            ]
            for p in procs:
                p.start()
            for event in ready:
                event.wait(60)
            # Idle windows before and after the loads, so a drift of the (shared) machine hits both sides.
            idle = [_idle_window(idle_seconds / 2)]
            windows: list[tuple[str, tuple[int, int], LoadSummary]] = []
            for label, path, options in _loads(*paths):
                start = time.monotonic_ns()
                summary = load(conn, registry, LOADED, path, **options)
                windows.append((label, (start, time.monotonic_ns()), summary))
                time.sleep(1.0)  # let the machine settle between loads; these reads count as neither window
            idle.append(_idle_window(idle_seconds / 2))
            stop.set()
            samples = [out.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
        finally:
            if not keep:
                drop_schema(conn, schema)

    rate = f"{read_rate:,.0f} reads/s each" if read_rate > 0 else "back to back"
    reads = Table(
        title=f"read latency of a {read_tables}-table read (ms), {readers} reader process(es) at {rate}, same run"
    )
    for col in ("window", "reads", "p50", "p90", "p99", "p99 vs idle", "load rows/s"):
        reads.add_column(col, justify="left" if col == "window" else "right")
    idle_stats = _window_stats("idle", samples, idle)
    rows_stats: list[dict[str, Any]] = []
    entries: list[tuple[str, Stats | None, LoadSummary | None]] = [("idle", idle_stats, None)]
    entries += [(f"during {label}", _window_stats(label, samples, [w]), s) for label, w, s in windows]
    entries.append(("during any load", _window_stats("any", samples, [w for _, w, _ in windows]), None))
    for label, stats, during in entries:
        if stats is None or idle_stats is None:
            reads.add_row(label, "0", "-", "-", "-", "-", "-")
            continue
        reads.add_row(
            label,
            f"{stats.n:,}",
            f"{stats.p50_ms:.3f}",
            f"{stats.p90_ms:.3f}",
            f"{stats.p99_ms:.3f}",
            f"{stats.p99_ms / idle_stats.p99_ms:.1f}x",
            f"{during.rows_per_second:,.0f}" if during else "",
        )
        rows_stats.append(
            {"window": label, **stats.as_dict(), **({"load_rows_per_s": during.rows_per_second} if during else {})}
        )
    console.print(reads)
    console.print(
        "Reads use the read pool of their own process; loads use one write connection. On a 2-core machine "
        "the loader, its backend, the reader and its backend share two CPUs."
    )
    results["reads"] = rows_stats
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))
    return results


def _figure(label: str, summary: LoadSummary) -> dict[str, Any]:
    return {
        "load": label,
        "strategy": summary.strategy,
        "rows": summary.rows_read,
        "seconds": summary.seconds,
        "rows_per_s": summary.rows_per_second,
        "maintenance": summary.maintenance,
        "maintenance_seconds": summary.maintenance_seconds,
    }
