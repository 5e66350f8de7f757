"""``pgfeatures bench-load --part write-cost``: what materialization costs writers (issue #13).

In one scratch schema: a plain table (in no service) and 30 tables of one materialized service
(``materialize = true``, all their features), every table ``features`` real features, 32-byte keys.
The plain table and the service's first table hold ``rows`` keys, the other 29 tables the first
``companion_rows`` of them; the service is built once. Then, nothing else running:

- **merge**: ``rows`` rows, every one an update, loaded into the plain table and into the service's
  table, with each merge strategy (``upsert``: one ``INSERT ... ON CONFLICT``, the serving rows kept by
  the statement-level trigger; ``rebuild``: new table and swap, the serving rows refreshed for the
  keys staged). Rows/s is the loader's figure (open to COMMIT); after each merge the table and the
  serving rows are vacuumed (what the loader's ``vacuum="auto"`` does after COMMIT), so each merge
  starts from a clean table;
- **trigger share**: ``EXPLAIN (ANALYZE)`` of one UPDATE of ``trigger_rows`` rows of each table, rolled
  back: the statement's time and the time in triggers;
- **live updates**: ``FeatureStore.update_features`` of one key (8 features), ``updates`` times per
  table, interleaved: p50/p99 latency of the round trip (the trigger runs inside it).
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgfeatures.definitions import FeatureService, FeatureTable, Registry
from pgfeatures.load import load
from pgfeatures.materialize.build import materialize, materialized_layouts
from pgfeatures.schema import apply_schema, drop_schema

from .load import make_table
from .runner import summarize

PLAIN = "plain"
SERVICE = "mat"


def _registry(schema: str, tables: int, features: int) -> Registry:
    feats = {f"f{j}": "real" for j in range(features)}
    names = [f"t{i:02d}" for i in range(tables)]
    return Registry.of(
        [FeatureTable.of(PLAIN, feats), *(FeatureTable.of(n, feats) for n in names)],
        schema,
        services=[FeatureService(SERVICE, tuple(f"{n}.*" for n in names), materialize=True)],
    )


def _trigger_share(conn: psycopg.Connection, schema: str, table: str, n: int) -> dict[str, float]:
    """ms of one UPDATE of ``n`` rows of ``table`` and ms in its triggers, from EXPLAIN ANALYZE (rolled back)."""
    query = sql.SQL(
        "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE {t} SET f0 = f0 + 1 WHERE hashkey IN (SELECT hashkey FROM {t} LIMIT {n})"
    ).format(t=sql.Identifier(schema, table), n=sql.Literal(n))
    with conn.transaction(force_rollback=True):
        plan = conn.execute(query).fetchone()[0][0]  # type: ignore[index]
    triggers = sum(t.get("Time", 0.0) for t in plan.get("Triggers", []))
    return {"rows": n, "statement_ms": float(plan["Execution Time"]), "trigger_ms": float(triggers)}


def run(
    dsn: str,
    *,
    rows: int = 1_000_000,
    tables: int = 30,
    features: int = 8,
    companion_rows: int = 100_000,
    updates: int = 1000,
    trigger_rows: int = 100_000,
    schema: str = "bench_write",
    keep: bool = False,
    console: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the write-cost rows, printing their table to ``console``; returns the figures."""
    from rich.console import Console
    from rich.table import Table

    from pgfeatures.store import FeatureStore

    console = console or Console()
    registry = _registry(schema, tables, features)
    first = registry.services[SERVICE].features[0].split(".")[0]
    keys = np.frombuffer(np.random.default_rng(seed).bytes(32 * rows), np.uint8).reshape(rows, 32)
    results: dict[str, Any] = {"rows": rows, "tables": tables, "features": features, "companion_rows": companion_rows}
    with psycopg.connect(dsn, autocommit=True) as conn:
        console.print(
            f"[bold]bench-load write cost[/bold]: merges of {rows:,} rows x {features} real features into a "
            f"plain table and into table {first} of a materialized {tables}-table service "
            f"(other tables {companion_rows:,} rows), PostgreSQL {conn.info.server_version // 10000}"
        )
        drop_schema(conn, schema)
        apply_schema(conn, registry)
        try:
            t0 = time.perf_counter()
            load(conn, registry, PLAIN, make_table(keys, features, seed + 1))
            load(conn, registry, first, make_table(keys, features, seed + 1))
            for i, name in enumerate(n for n in registry.tables if n not in (PLAIN, first)):
                load(conn, registry, name, make_table(keys[:companion_rows], features, seed + 10 + i))
            results["setup_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            built = materialize(conn, registry, SERVICE)
            [serving] = [layout.table_name for layout in materialized_layouts(registry)]
            results["materialize_seconds"] = time.perf_counter() - t0
            results["serving_rows"] = sum(built.rows.values())
            merges = []
            for n, strategy in enumerate(("upsert", "rebuild")):
                data = make_table(keys, features, seed + 2 + n)
                for table in (PLAIN, first):
                    s = load(conn, registry, table, data, strategy=strategy, vacuum="never")
                    merges.append(
                        {
                            "table": "plain" if table == PLAIN else f"in a materialized {tables}-table service",
                            "strategy": s.strategy,
                            "rows": s.rows_read,
                            "seconds": s.seconds,
                            "rows_per_s": s.rows_per_second,
                        }
                    )
                    # Each merge starts clean: the table's and the serving rows' dead versions reclaimed, as
                    # the loader's own maintenance (vacuum="auto") does after COMMIT, outside its rows/s.
                    conn.execute(
                        sql.SQL("VACUUM {}").format(
                            sql.SQL(", ").join(
                                [
                                    sql.Identifier(schema, table),
                                    *([sql.Identifier(schema, serving)] if table == first else []),
                                ]
                            )
                        )
                    )
            results["merges"] = merges
            results["trigger_share"] = {
                t: _trigger_share(conn, schema, t, min(trigger_rows, rows)) for t in (PLAIN, first)
            }
            rng = random.Random(seed)
            latencies: dict[str, list[int]] = {PLAIN: [], first: []}
            with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
                for i in range(updates + 50):
                    for table in (PLAIN, first) if i % 2 else (first, PLAIN):
                        key = keys[rng.randrange(rows)].tobytes()
                        values = {f"f{j}": rng.random() for j in range(features)}
                        t = time.perf_counter_ns()
                        store.update_features(key, table, values)
                        if i >= 50:  # the first ones warm the prepared statements
                            latencies[table].append(time.perf_counter_ns() - t)
            results["live_updates"] = {
                ("plain" if t == PLAIN else "materialized"): summarize(t, v, 0.0).as_dict()
                for t, v in latencies.items()
            }
        finally:
            if not keep:
                drop_schema(conn, schema)

    out = Table(
        title=f"write cost of materialization: merges of {rows:,} rows (every row updated), nothing else running"
    )
    for col in ("write", "table", "strategy", "seconds", "rows/s"):
        out.add_column(col, justify="right" if col in ("seconds", "rows/s") else "left")
    for m in results["merges"]:
        out.add_row(
            f"merge {m['rows']:,} rows", m["table"], m["strategy"], f"{m['seconds']:.2f}", f"{m['rows_per_s']:,.0f}"
        )
    for name, stats in results["live_updates"].items():
        out.add_row(
            f"update_features p50 / p99 ms ({stats['n']:,})",
            name,
            "live",
            "",
            f"{stats['p50_ms']:.3f} / {stats['p99_ms']:.3f}",
        )
    console.print(out)
    for table, share in results["trigger_share"].items():
        console.print(
            f"EXPLAIN ANALYZE, UPDATE of {share['rows']:,} rows of {table}: {share['statement_ms']:,.0f} ms, "
            f"of which triggers {share['trigger_ms']:,.0f} ms"
        )
    console.print(
        f"setup {results['setup_seconds']:.1f}s; materialize {results['materialize_seconds']:.1f}s "
        f"({results['serving_rows']:,} serving rows)"
    )
    return results
