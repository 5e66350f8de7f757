"""What ``pgfeatures expire`` costs the readers and writers running beside it.

``python -m pgfeatures_bench.retention [--dsn DSN] [--tables 10] [--rows 200000] [--old 0.5] [--seconds 5]
[--batch-rows 5000] [--materialized]`` builds ``--tables`` tables of ``--rows`` rows (8 ``real``, ttl 1 h, as
pgfeatures creates them: with the index on ``updated_at``), ``--old`` of each table's rows older than
the ttl plus the grace, the others fresh (with ``--materialized``, a materialized service over all the
tables, kept in step by the deletes' triggers). Then one reader (the 10-table read of one random key,
back to back) and one writer (a live update of one random fresh key, back to back) run for
``--seconds`` idle, and again while ``expire`` deletes the old rows. Reports rows deleted, the expire's
seconds, and p50/p99/max of the reads and writes idle and during it. Prints one JSON document; the
scratch schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import FeatureService, FeatureTable, Registry
from pgfeatures.materialize.build import materialize
from pgfeatures.retention import expire
from pgfeatures.schema import apply_schema
from pgfeatures.store import FeatureStore

SCHEMA = "bench_retention"
TTL = 3600
GRACE = 600


def _key(i: int) -> bytes:
    return hashlib.sha256(b"entity:%d" % i).digest()


def _fill(conn: psycopg.Connection, registry: Registry, rows: int, old: float) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    apply_schema(conn, registry)
    boundary = int(rows * old)
    for table in registry.tables.values():
        # rows 1..boundary: 2 h (older than ttl + grace) and more; the others: minutes old. Keys interleave the two.
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT sha256(('entity:' || i)::bytea), random(), random(), random(), random(), random(), "
                "random(), random(), random(), CASE WHEN (i * 7919) % {} < {} THEN now() - interval '2 hours' - i * "
                "interval '1 millisecond' ELSE now() - interval '5 minutes' END FROM generate_series(1, {}) i"
            ).format(sql.Identifier(SCHEMA, table.name), sql.Literal(rows), sql.Literal(boundary), sql.Literal(rows))
        )
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(SCHEMA, table.name)))


def _fresh_keys(conn: psycopg.Connection, rows: int, old: float) -> list[bytes]:
    boundary = int(rows * old)
    return [_key(i) for i in range(1, rows + 1) if (i * 7919) % rows >= boundary][:10_000]


def _loop(stop: threading.Event, call: Any, samples: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        call()
        samples.append((started, time.perf_counter() - started))


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def run(
    dsn: str, n_tables: int, rows: int, old: float, seconds: float, batch_rows: int, materialized: bool
) -> dict[str, Any]:
    tables = [FeatureTable.of(f"t{i:02d}", {f"f{j}": "real" for j in range(8)}, ttl=TTL) for i in range(n_tables)]
    services = [FeatureService("all", tuple(f"{t.name}.*" for t in tables), materialize=True)] if materialized else []
    registry = Registry.of(tables, schema=SCHEMA, services=services)
    rng = random.Random(3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _fill(conn, registry, rows, old)
            if materialized:
                materialize(conn, registry, "all")
            fresh = _fresh_keys(conn, rows, old)
            with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:

                def read() -> None:
                    store.get_features(_key(rng.randint(1, rows)))

                def write() -> None:
                    store.update_features(rng.choice(fresh), tables[0].name, {"f0": rng.random()})

                reads: list[tuple[float, float]] = []
                writes: list[tuple[float, float]] = []
                stop = threading.Event()
                threads = [
                    threading.Thread(target=_loop, args=(stop, read, reads)),
                    threading.Thread(target=_loop, args=(stop, write, writes)),
                ]
                for t in threads:
                    t.start()
                try:
                    time.sleep(seconds)
                    started = time.perf_counter()
                    results = expire(conn, registry, grace=GRACE, batch_rows=batch_rows)
                    ended = time.perf_counter()
                finally:
                    stop.set()
                    for t in threads:
                        t.join()
            before = [d for at, d in reads if at < started]
            during = [d for at, d in reads if started <= at < ended]
            writes_before = [d for at, d in writes if at < started]
            writes_during = [d for at, d in writes if started <= at < ended]
            return {
                "tables": n_tables,
                "rows_per_table": rows,
                "old_share": old,
                "batch_rows": batch_rows,
                "materialized": materialized,
                "deleted": sum(r.deleted for r in results),
                "batches": sum(r.batches for r in results),
                "expire_seconds": round(ended - started, 2),
                "vacuumed": sorted({n for r in results for n in r.vacuumed}),
                "reads": {"idle": _stats(before), "during_expire": _stats(during)},
                "writes": {"idle": _stats(writes_before), "during_expire": _stats(writes_during)},
            }
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m pgfeatures_bench.retention", description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--tables", type=int, default=10)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--old", type=float, default=0.5, help="share of each table's rows past ttl + grace")
    p.add_argument("--seconds", type=float, default=5.0, help="idle measurement before the expire")
    p.add_argument("--batch-rows", type=int, default=5000)
    p.add_argument("--materialized", action="store_true", help="a materialized service over every table")
    args = p.parse_args()
    print(
        json.dumps(
            run(
                resolve_dsn(args.dsn),
                args.tables,
                args.rows,
                args.old,
                args.seconds,
                args.batch_rows,
                args.materialized,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
