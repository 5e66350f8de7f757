"""What knowing the age of a table's newest row costs, three ways: a scan, an index on ``updated_at``,
a per-table record kept by the writers.

``python -m pgfeatures_bench.freshness [--dsn DSN] [--rows 1000000] [--updates 20000] [--merge-rows 100000]
[--rounds 3]`` builds a scratch table of ``--rows`` rows (8 ``real`` features, like the demo's) per variant
and round (the variants interleaved, medians over the rounds reported):

- ``scan``: nothing; the age needs ``max(updated_at)``, a sequential scan of the table;
- ``index``: a btree on ``updated_at``; ``max(updated_at)`` is one probe of its end;
- ``record``: a one-row-per-table record (``newest timestamptz``) that every write also updates in
  the same statement (a data-modifying CTE: ``UPDATE record SET newest = max(written) WHERE newest <
  max(written) - 1 s``, so concurrent writers meet on it at most once a second); the age is one
  primary-key lookup of the record.

For each it measures, on the same data:

- **live updates**: the store's own newest-wins upsert (``write.compile_upsert``, prepared, batches of
  100 random keys, each setting ``f0`` and a newer ``updated_at``; the ``record`` variant wraps it in
  the CTE), after a first round and a VACUUM so the pages have a live table's free space; rows/s,
  database time per row (``pg_stat_statements``: steadier than rows/s on a shared machine) and the
  share of HOT updates (``pg_stat_user_tables.n_tup_hot_upd``: an update that changes an indexed
  column cannot be HOT);
- **a merge**: ``pgfeatures.load`` of ``--merge-rows`` rows of existing keys with a newer
  ``updated_at`` (``strategy="upsert"``), rows/s and database time per row of the statements on the
  table; for ``record``, plus what the loader's extra statement costs (``max(updated_at)`` of the
  staged rows, timed on a temp table of the same rows);
- **the read**: what finding the newest row takes (median of 5, warm, never prepared, as the
  inventory runs it).

``--scrape [--tables 30] [--rows-list 100000,1000000]`` measures instead what the inventory behind
``pgfeatures tables``, ``GET /v1/tables`` and every ``/metrics`` scrape costs on ``--tables`` tables of
each size, as pgfeatures creates them (with the index on ``updated_at``): the database time of one
``inventory.tables`` call (``pg_stat_statements``, summed over its statements; median of 5) and its
wall time, then the same with the indexes dropped (the scans every scrape ran before).

The scratch schema is dropped afterwards. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import statistics
import time
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from pgfeatures.connections import resolve_dsn
from pgfeatures.connections.rows import one_row
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.schema import apply_schema
from pgfeatures.write import compile_upsert

SCHEMA = "bench_freshness"
BATCH = 100
VARIANTS = ("scan", "index", "record")
RECORD = "_pgf_bench_newest"


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def _key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def _fill(conn: psycopg.Connection, registry: Registry, rows: int, variant: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    apply_schema(conn, registry)
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(_ident("t_updated_at")))  # what the variant says, not init
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT sha256(i::text::bytea), random(), random(), random(), random(), random(), random(), "
            "random(), random(), now() - interval '1 day' + i * interval '1 microsecond' FROM generate_series(1, {}) i"
        ).format(_ident("t"), sql.Literal(rows))
    )
    if variant == "index":
        conn.execute(sql.SQL("CREATE INDEX t_updated_at ON {} (updated_at)").format(_ident("t")))
    if variant == "record":
        conn.execute(
            sql.SQL("CREATE TABLE {} (table_name text PRIMARY KEY, newest timestamptz)").format(_ident(RECORD))
        )
        conn.execute(sql.SQL("INSERT INTO {} SELECT 't', max(updated_at) FROM {}").format(_ident(RECORD), _ident("t")))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(_ident("t")))


def _statement(registry: Registry, variant: str) -> bytes:
    """The live update: the store's newest-wins upsert, or (record) the same keeping the record."""
    upsert = compile_upsert(SCHEMA, registry.table("t"), ("f0", "updated_at"), True).statement
    if variant != "record":
        return upsert
    return (
        b"WITH w AS ("
        + upsert
        + b" RETURNING t.updated_at), m AS (SELECT max(updated_at) AS newest FROM w) "
        + sql.SQL(
            "UPDATE {} r SET newest = m.newest FROM m WHERE r.table_name = 't' "
            "AND r.newest < m.newest - interval '1 second'"
        )
        .format(_ident(RECORD))
        .as_bytes(None)
    )


def _updates(dsn: str, statement: bytes, rows: int, n: int, start: dt.datetime, rng: random.Random) -> float:
    keys = [_key(rng.randint(1, rows)) for _ in range(n)]
    step = dt.timedelta(microseconds=1)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        cur = psycopg.RawCursor(conn)
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            batch = sorted(set(keys[i : i + BATCH]))
            stamps = [start + step * (i + j) for j in range(len(batch))]
            cur.execute(statement, (batch, [rng.random() for _ in batch], stamps))
        return n / (time.perf_counter() - started)


def _hot(conn: psycopg.Connection) -> tuple[int, int]:
    row = one_row(
        conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 't'", [SCHEMA]
        )
    )
    return int(row[0]), int(row[1])


def _reset_statements(conn: psycopg.Connection) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # preloaded by the embedded server
    conn.execute("SELECT pg_stat_statements_reset()")


def _database_ms(conn: psycopg.Connection) -> float:
    """Milliseconds PostgreSQL spent executing statements that name the scratch schema since the last
    reset (pg_stat_statements): the write's cost in the database, less noisy than wall-clock rows/s
    on a shared machine."""
    row = one_row(
        conn.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
            "WHERE query LIKE %s AND query NOT LIKE '%%pg_stat%%'",
            [f"%{SCHEMA}%"],
        )
    )
    return float(row[0])


def _median_ms(conn: psycopg.Connection, query: sql.SQL | sql.Composed) -> float:
    times = []
    for _ in range(6):
        started = time.perf_counter()
        conn.execute(query, prepare=False).fetchone()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1000


def _merge(conn: psycopg.Connection, registry: Registry, rows: int, n: int, rng: random.Random) -> dict[str, Any]:
    from pgfeatures.load import load

    ids = np.array(sorted(rng.sample(range(1, rows + 1), n)))
    now = one_row(conn.execute("SELECT now()"))[0]
    frame = pa.table(
        {
            "hashkey": pa.array([_key(int(i)) for i in ids], pa.binary(32)),
            **{f"f{j}": pa.array(np.full(n, 0.5, np.float32)) for j in range(8)},
            "updated_at": pa.array([now - dt.timedelta(seconds=1)] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    _reset_statements(conn)
    summary = load(conn, registry, "t", frame, strategy="upsert", vacuum="never")
    return {
        "merge_rows_per_second": round(summary.rows_per_second),
        "merge_db_us_per_row": round(_database_ms(conn) * 1000 / n, 3),
    }


def _staged_max_ms(conn: psycopg.Connection, n: int) -> float:
    """What the record's loader statement adds to a merge: max(updated_at) over the staged rows."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT sha256(i::text::bytea) AS hashkey, "
                "now() - i * interval '1 microsecond' AS updated_at FROM generate_series(1, {}) i"
            ).format(sql.Literal(n))
        )
        return _median_ms(conn, sql.SQL("SELECT max(updated_at) FROM stage"))


def _variant(
    conn: psycopg.Connection, dsn: str, registry: Registry, variant: str, rows: int, updates: int, merge_rows: int
) -> dict[str, Any]:
    _fill(conn, registry, rows, variant)
    rng = random.Random(7)
    statement = _statement(registry, variant)
    now = one_row(conn.execute("SELECT now()"))[0] - dt.timedelta(minutes=1)
    _updates(dsn, statement, rows, updates, now, rng)  # the pages as a live table's are: some free space
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(_ident("t")))
    time.sleep(1.2)  # let the statistics of the first round land
    before = _hot(conn)
    _reset_statements(conn)
    per_second = _updates(dsn, statement, rows, updates, now + dt.timedelta(seconds=1), rng)
    db_ms = _database_ms(conn)
    time.sleep(1.2)  # the connection closed: its counts flush
    after = _hot(conn)
    upd, hot = after[0] - before[0], after[1] - before[1]
    read = (
        sql.SQL("SELECT newest FROM {} WHERE table_name = 't'").format(_ident(RECORD))
        if variant == "record"
        else sql.SQL("SELECT max(updated_at) FROM {}").format(_ident("t"))
    )
    out: dict[str, Any] = {
        "live_updates_per_second": round(per_second),
        "live_db_us_per_row": round(db_ms * 1000 / updates, 3),
        "hot_share": round(hot / upd, 3) if upd else None,
        "read_newest_ms": round(_median_ms(conn, read), 3),
    }
    out.update(_merge(conn, registry, rows, merge_rows, rng))
    if variant == "record":
        out["merge_extra_statement_ms"] = round(_staged_max_ms(conn, merge_rows), 3)
    out["table_bytes"] = one_row(conn.execute("SELECT pg_total_relation_size(%s::regclass)", [f"{SCHEMA}.t"]))[0]
    return out


def run(
    dsn: str, rows: int, updates: int, merge_rows: int, variants: tuple[str, ...] = VARIANTS, rounds: int = 1
) -> dict[str, Any]:
    """Every variant ``rounds`` times, interleaved (the machine's load drifts); per variant the median
    of each figure over the rounds, and every round's figures."""
    registry = Registry.of([FeatureTable.of("t", {f"f{j}": "real" for j in range(8)})], schema=SCHEMA)
    out: dict[str, Any] = {"rows": rows, "updates": updates, "merge_rows": merge_rows, "rounds": rounds}
    seen: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            for _ in range(rounds):
                for variant in variants:
                    seen[variant].append(_variant(conn, dsn, registry, variant, rows, updates, merge_rows))
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    for variant, results in seen.items():
        out[variant] = {
            k: statistics.median(r[k] for r in results if r.get(k) is not None)
            for k in results[0]
            if any(r.get(k) is not None for r in results)
        }
        out[variant]["each_round"] = results
    return out


def _scrape_once(conn: psycopg.Connection, registry: Registry) -> tuple[float, float]:
    """(database ms, wall ms) of one inventory refresh of every table."""
    from pgfeatures.inventory import tables

    _reset_statements(conn)
    started = time.perf_counter()
    found = tables(conn, registry, timeout=60)
    wall = (time.perf_counter() - started) * 1000
    assert all(t.newest_age is not None for t in found), [t.newest_note for t in found]
    row = one_row(
        conn.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
            "WHERE query NOT LIKE '%%pg_stat_statements%%'"
        )
    )
    return float(row[0]), wall


def scrape(dsn: str, n_tables: int, sizes: list[int], repeats: int = 5) -> dict[str, Any]:
    """The inventory's cost on ``n_tables`` tables of each size, with and without the indexes on updated_at."""
    registry = Registry.of(
        [FeatureTable.of(f"t{i:02d}", {f"f{j}": "real" for j in range(8)}) for i in range(n_tables)], schema=SCHEMA
    )
    out: dict[str, Any] = {"tables": n_tables, "sizes": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            apply_schema(conn, registry)
            filled = 0
            for rows in sorted(sizes):
                for table in registry.tables.values():
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} SELECT sha256(i::text::bytea), random(), random(), random(), random(), random(), "
                            "random(), random(), random(), now() - interval '1 day' + i * interval '1 microsecond' "
                            "FROM generate_series({}, {}) i"
                        ).format(_ident(table.name), sql.Literal(filled + 1), sql.Literal(rows))
                    )
                    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(_ident(table.name)))
                filled = rows
                entry: dict[str, Any] = {"rows_per_table": rows}
                for variant in ("index", "scan"):
                    if variant == "scan":  # as before: no index leads with updated_at
                        for table in registry.tables.values():
                            conn.execute(sql.SQL("DROP INDEX {}").format(_ident(f"{table.name}_updated_at")))
                    timings = [_scrape_once(conn, registry) for _ in range(repeats if variant == "index" else 2)]
                    entry[variant] = {
                        "database_ms": round(statistics.median(t[0] for t in timings), 2),
                        "wall_ms": round(statistics.median(t[1] for t in timings), 2),
                    }
                for table in registry.tables.values():  # back as pgfeatures makes them, for the next size
                    conn.execute(
                        sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(
                            sql.Identifier(f"{table.name}_updated_at"), _ident(table.name)
                        )
                    )
                entry["bytes"] = int(
                    one_row(
                        conn.execute(
                            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relkind = 'r'",
                            [SCHEMA],
                        )
                    )[0]
                )
                out["sizes"].append(entry)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m pgfeatures_bench.freshness", description=__doc__.splitlines()[0])
    p.add_argument("--dsn")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--merge-rows", type=int, default=100_000)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every variant, interleaved; medians reported")
    p.add_argument("--scrape", action="store_true", help="measure the inventory (a /metrics scrape) instead")
    p.add_argument("--tables", type=int, default=30, help="--scrape: tables of each size")
    p.add_argument("--rows-list", default="100000,1000000", help="--scrape: rows per table, comma-separated")
    args = p.parse_args()
    if args.scrape:
        sizes = [int(x) for x in args.rows_list.split(",") if x]
        print(json.dumps(scrape(resolve_dsn(args.dsn), args.tables, sizes), indent=2))
        return
    variants = tuple(v for v in args.variants.split(",") if v)
    print(
        json.dumps(
            run(resolve_dsn(args.dsn), args.rows, args.updates, args.merge_rows, variants, args.rounds), indent=2
        )
    )


if __name__ == "__main__":
    main()
