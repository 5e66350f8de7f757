"""What the age of a table's newest row costs, and what an index on ``updated_at`` costs writers.

``python -m pgfeatures.bench.freshness [--dsn DSN] [--rows 1000000] [--updates 20000]`` builds a
scratch table of ``--rows`` rows (8 ``real`` features, like the demo's), then, without and then with
an index on ``updated_at``:

- times ``max(updated_at)`` (what ``pgfeatures tables`` and ``GET /v1/tables`` run; the median of
  5, warm cache) and ``pgfeatures.inventory.tables`` on the table;
- runs live updates through ``FeatureStore.update_features_batch`` (batches of 100 random keys,
  each setting a feature and a newer ``updated_at``): a first round to leave the pages as a live
  table's are, VACUUM, then a measured round; reports rows/s and the share of HOT updates
  (``pg_stat_user_tables.n_tup_hot_upd``). An update that changes an indexed column cannot be HOT:
  with the index, every update inserts into both indexes.

The scratch schema is dropped afterwards. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from ..connections import resolve_dsn
from ..connections.rows import one_row
from ..definitions import FeatureTable, Registry
from ..inventory import tables
from ..schema import apply_schema
from ..store import FeatureStore

SCHEMA = "bench_freshness"
BATCH = 100


def _fill(conn: psycopg.Connection, registry: Registry, rows: int) -> None:
    ident = sql.Identifier(registry.schema, "t")
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(registry.schema)))
    apply_schema(conn, registry)
    conn.execute(sql.SQL(
        "INSERT INTO {} SELECT sha256(i::text::bytea), random(), random(), random(), random(), random(), random(), "
        "random(), random(), now() - interval '1 day' + i * interval '1 microsecond' FROM generate_series(1, {}) i").format(ident, sql.Literal(rows)))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))


def _time_max(conn: psycopg.Connection, registry: Registry) -> tuple[float, str]:
    """Median milliseconds of ``max(updated_at)`` (never prepared: each run is planned as the
    inventory's is), and the scan its plan uses."""
    query = sql.SQL("SELECT max(updated_at) FROM {}").format(sql.Identifier(registry.schema, "t"))
    plan = one_row(conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), prepare=False))[0]
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", ()))
        if "Relation Name" in node:
            nodes.append(node["Node Type"])
    times = []
    for _ in range(6):
        started = time.perf_counter()
        conn.execute(query, prepare=False).fetchone()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1000, ", ".join(nodes)


def _hot(conn: psycopg.Connection, registry: Registry) -> tuple[int, int]:
    row = one_row(conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 't'",
                               [registry.schema]))
    return int(row[0]), int(row[1])


def _updates(dsn: str, registry: Registry, rows: int, n: int, stamp: int, rng: random.Random) -> float:
    keys = [hashlib.sha256(str(rng.randint(1, rows)).encode()).digest() for _ in range(n)]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            store.update_features_batch("t", [(k, {"f0": rng.random(), "updated_at": stamp}) for k in keys[i:i + BATCH]])
        return n / (time.perf_counter() - started)


def _round(conn: psycopg.Connection, dsn: str, registry: Registry, rows: int, updates: int, stamp: int) -> dict[str, Any]:
    rng = random.Random(stamp)
    ident = sql.Identifier(registry.schema, "t")
    _updates(dsn, registry, rows, updates, stamp, rng)  # the pages as a live table's are: some free space
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
    time.sleep(1.2)  # let the statistics of the first round land
    before = _hot(conn, registry)
    per_second = _updates(dsn, registry, rows, updates, stamp + 1, rng)
    time.sleep(1.2)  # the store's connections closed: their counts flush
    after = _hot(conn, registry)
    upd, hot = after[0] - before[0], after[1] - before[1]
    max_ms, plan = _time_max(conn, registry)
    started = time.perf_counter()
    (info,) = tables(conn, registry)
    return {"max_updated_at_ms": round(max_ms, 3), "max_plan": plan,
            "inventory_ms": round((time.perf_counter() - started) * 1000, 2),
            "inventory_newest_age_known": info.newest_age is not None,
            "updates_per_second": round(per_second), "updates_counted": upd,
            "hot_share": round(hot / upd, 3) if upd else None}


def run(dsn: str, rows: int, updates: int) -> dict[str, Any]:
    registry = Registry.of([FeatureTable.of("t", {f"f{j}": "real" for j in range(8)})], schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _fill(conn, registry, rows)
            size = one_row(conn.execute("SELECT pg_total_relation_size(%s::regclass)", [f"{SCHEMA}.t"]))[0]
            out: dict[str, Any] = {"rows": rows, "table_bytes": size}
            out["without_index"] = _round(conn, dsn, registry, rows, updates, 1800000000)
            conn.execute(sql.SQL("CREATE INDEX t_updated_at ON {} (updated_at)").format(sql.Identifier(SCHEMA, "t")))
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(SCHEMA, "t")))
            out["with_index"] = _round(conn, dsn, registry, rows, updates, 1800000010)
            return out
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m pgfeatures.bench.freshness", description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--updates", type=int, default=20_000)
    args = p.parse_args()
    print(json.dumps(run(resolve_dsn(args.dsn), args.rows, args.updates), indent=2))


if __name__ == "__main__":
    main()
