"""Newest-wins writes and the flexible read, measured the same way whatever ``updated_at`` is, so two
versions of pgfeatures can be compared in one run (the event-time type: ``integer`` before,
``timestamptz`` now).

``python -m pgfeatures_bench.event_time [--dsn DSN] [--compare BASE_SRC] [--rounds 3] ...`` measures, in
its own scratch schema:

- **newest-wins live updates**: ``update_features_batch`` of 100 random keys, each carrying a newer
  ``updated_at`` (epoch seconds), into a table of ``--rows`` rows; rows/s and database time per row
  (``pg_stat_statements``);
- **a newest-wins merge**: ``load`` of ``--merge-rows`` rows with an ``updated_at`` column (epoch
  seconds, ``strategy="upsert"``); rows/s;
- **the flexible read**: 30 tables of 8 ``real`` with a ttl (so every read compares ``updated_at``
  with ``now()``), ``--read-rows`` keys: single-key reads back to back for ``--seconds``, reads/s,
  p50 and p99; and 100-key batches, keys/s.

``--keep-freshness-index`` keeps the index on ``updated_at`` that versions with freshness tracking
create (by default it is dropped, so the comparison is of the type alone).

``--compare BASE_SRC`` runs this file once per round with ``PYTHONPATH=BASE_SRC`` (e.g. a ``git worktree
add --detach /tmp/base main``'s ``src``) and once with this tree's, interleaved, and prints the medians
side by side. It only uses APIs both versions have. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.connections import resolve_dsn
from pgfeatures.connections.rows import one_row
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.load import load
from pgfeatures.schema import apply_schema

BATCH = 100


def _key(i: int) -> bytes:
    return hashlib.sha256(b"k:%d" % i).digest()


def _now(conn: psycopg.Connection) -> int:
    return int(one_row(conn.execute("SELECT extract(epoch FROM now())::int8"))[0])


def _event_type(conn: psycopg.Connection, schema: str, table: str) -> str:
    return str(
        one_row(
            conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                "%s::regclass AND attname = 'updated_at'",
                [f"{schema}.{table}"],
            )
        )[0]
    )


def _drop_freshness_indexes(conn: psycopg.Connection, schema: str, tables: list[str]) -> None:
    for t in tables:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(schema, f"{t}_updated_at")))


def _fill(conn: psycopg.Connection, schema: str, table: str, rows: int, width: int, stamp: int) -> None:
    """``rows`` rows: keys k:1..rows, ``width`` real features, updated_at ``stamp`` (epoch seconds) in the column's type."""
    kind = _event_type(conn, schema, table)
    value = (
        sql.SQL("to_timestamp({})").format(sql.Literal(stamp)) if kind.startswith("timestamp") else sql.Literal(stamp)
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT sha256(('k:' || i)::bytea), {}, {} FROM generate_series(1, {}) i").format(
            sql.Identifier(schema, table), sql.SQL(", ").join([sql.SQL("random()")] * width), value, sql.Literal(rows)
        )
    )
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, table)))


def _database_ms(conn: psycopg.Connection, schema: str) -> float:
    row = one_row(
        conn.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements WHERE query LIKE %s "
            "AND query NOT LIKE '%%pg_stat%%'",
            [f"%{schema}%"],
        )
    )
    return float(row[0])


def measure(
    dsn: str, schema: str, rows: int, updates: int, merge_rows: int, read_rows: int, seconds: float, keep_index: bool
) -> dict[str, Any]:
    rng = random.Random(5)
    out: dict[str, Any] = {}
    writes = Registry.of([FeatureTable.of("w", {f"f{j}": "real" for j in range(8)})], schema=schema)
    reads = Registry.of(
        [FeatureTable.of(f"r{i:02d}", {f"f{j}": "real" for j in range(8)}, ttl=86400) for i in range(30)],
        schema=schema + "_r",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        try:
            for registry in (writes, reads):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(registry.schema)))
                apply_schema(conn, registry)
                if not keep_index:
                    _drop_freshness_indexes(conn, registry.schema, list(registry.tables))
            now = _now(conn)
            out["updated_at"] = _event_type(conn, schema, "w")
            _fill(conn, schema, "w", rows, 8, now - 3600)
            with FeatureStore(writes, dsn, pool_size=1, write_pool_size=1) as store:
                keys = [_key(rng.randint(1, rows)) for _ in range(updates)]

                def round_(first: int) -> float:
                    started = time.perf_counter()
                    for i in range(0, updates, BATCH):
                        stamp = first + i // BATCH
                        store.update_features_batch(
                            "w", {k: {"f0": rng.random(), "updated_at": stamp} for k in keys[i : i + BATCH]}
                        )
                    return updates / (time.perf_counter() - started)

                round_(now - 1800)  # leave the pages as a live table's are
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, "w")))
                conn.execute("SELECT pg_stat_statements_reset()")
                out["live_updates_per_second"] = round(round_(now - 900))
                out["live_db_us_per_row"] = round(_database_ms(conn, schema) * 1000 / updates, 3)
            ids = np.array(sorted(rng.sample(range(1, rows + 1), merge_rows)))
            frame = pa.table(
                {
                    "hashkey": pa.array([_key(int(i)) for i in ids], pa.binary(32)),
                    **{f"f{j}": pa.array(np.full(merge_rows, 0.5, np.float32)) for j in range(8)},
                    "updated_at": pa.array(np.full(merge_rows, now - 60, np.int64)),
                }
            )
            summary = load(conn, writes, "w", frame, strategy="upsert", vacuum="never")
            out["merge_rows_per_second"] = round(summary.rows_per_second)
            for table in reads.tables:
                _fill(conn, reads.schema, table, read_rows, 8, now - 60)
            with FeatureStore(reads, dsn, pool_size=1, write_pool_size=0) as store:
                for _ in range(200):  # warm
                    store.get_features(_key(rng.randint(1, read_rows)))
                latencies = []
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    store.get_features(_key(rng.randint(1, read_rows)))
                    latencies.append(time.perf_counter() - started)
                latencies.sort()
                out["reads_per_second"] = round(len(latencies) / seconds)
                out["read_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 3)
                out["read_p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 3)
                batches, started = 0, time.perf_counter()
                while time.perf_counter() < started + seconds:
                    store.get_features_batch([_key(rng.randint(1, read_rows)) for _ in range(100)])
                    batches += 1
                out["batch_keys_per_second"] = round(batches * 100 / (time.perf_counter() - started))
        finally:
            for registry in (writes, reads):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(registry.schema)))
    return out


def compare(dsn: str, base_src: str, rounds: int, args: list[str]) -> dict[str, Any]:
    """This file run with the base tree's pgfeatures and with this tree's, ``rounds`` times, interleaved."""
    own_src = str(Path(__file__).resolve().parents[2])
    results: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    for _ in range(rounds):
        for name, src in (("base", base_src), ("this", own_src)):
            env = {**os.environ, "PYTHONPATH": src}
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--dsn", dsn, *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(done.stdout))
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
        for name, runs in results.items()
    }
    return {
        "median": medians,
        "types": {name: runs[0]["updated_at"] for name, runs in results.items()},
        "rounds": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m pgfeatures_bench.event_time", description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--schema", default="bench_event_time")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--merge-rows", type=int, default=50_000)
    p.add_argument("--read-rows", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--keep-freshness-index", action="store_true")
    p.add_argument("--compare", metavar="BASE_SRC", help="also run the pgfeatures in BASE_SRC, interleaved")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    if args.compare:
        passed = [
            "--schema",
            args.schema,
            "--rows",
            str(args.rows),
            "--updates",
            str(args.updates),
            "--merge-rows",
            str(args.merge_rows),
            "--read-rows",
            str(args.read_rows),
            "--seconds",
            str(args.seconds),
            *(["--keep-freshness-index"] if args.keep_freshness_index else []),
        ]
        print(json.dumps(compare(dsn, args.compare, args.rounds, passed), indent=2))
        return
    print(
        json.dumps(
            measure(
                dsn,
                args.schema,
                args.rows,
                args.updates,
                args.merge_rows,
                args.read_rows,
                args.seconds,
                args.keep_freshness_index,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
