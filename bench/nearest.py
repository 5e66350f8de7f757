"""Nearest neighbours at scale: HNSW build time, ``store.nearest`` latency and recall@k against exact search.

Standalone (no benchmark package needed). It makes a table of ``--rows`` random embeddings of ``--dim``
floats keyed by a bigint (a pgfeatures table: ``init``'s DDL), loads them with one binary COPY, builds the
HNSW index ``init`` would have built (timed; ``--m``, ``--ef-construction``, ``maintenance_work_mem``), then
asks ``--queries`` random query vectors through ``FeatureStore.nearest`` (one sequential caller, loopback),
at the server's default ``ef_search`` and at each ``--ef`` value, and reports per setting: p50 and p99
latency (ms) and recall@k against exact search computed in numpy over the same float32 values (the
same metric; ``--metric``). Data: ``gaussian`` (i.i.d. normal: the hard case for any graph index) or
``clustered`` (a mixture of ``--clusters`` normal clusters, closer to real embeddings). Run it::

    PYTHONPATH=src python bench/nearest.py --rows 100000
    PYTHONPATH=src python bench/nearest.py --rows 1000000 --ef 100 200     # ~15 min on 2 cores

``--keep`` leaves the table (schema ``--schema``) for another run with ``--reuse`` (no load, no build).
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import Registry
from pgfeatures.schema import create_table_sql, vector_index_sql
from pgfeatures.store import FeatureStore

TABLE, FEATURE = "vectors", "emb"


def registry(schema: str, dim: int, metric: str) -> Registry:
    return Registry.from_dict(
        {
            "schema": schema,
            "entities": {"item": {"key": "bigint"}},
            "tables": {
                TABLE: {
                    "entity": "item",
                    "features": {FEATURE: {"type": "embedding", "dim": dim, "index": "hnsw", "metric": metric}},
                }
            },
        }
    )


def make_data(rows: int, dim: int, kind: str, clusters: int, seed: int, draw: int = 0) -> np.ndarray:
    """``rows`` vectors: i.i.d. normal, or points around ``clusters`` centres (the centres from ``seed``, the
    points from ``draw``: the queries are other points around the same centres)."""
    rng = np.random.default_rng(seed + draw)
    if kind == "gaussian":
        return rng.standard_normal((rows, dim), dtype=np.float32)
    centres = np.random.default_rng(seed).standard_normal((clusters, dim), dtype=np.float32) * 2
    out = np.empty((rows, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        out[start : start + n] = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    return out


def copy_rows(vectors: np.ndarray, first_key: int) -> bytes:
    """Binary COPY rows of (bigint key, vector): pgvector's binary form is int16 dim, int16 0, float4s."""
    n, dim = vectors.shape
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("klen", ">i4"),
            ("key", ">i8"),
            ("vlen", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("v", ">f4", (dim,)),
        ]
    )
    out = np.empty(n, dtype=row)
    out["fields"], out["klen"], out["vlen"], out["dim"], out["unused"] = 2, 8, 4 + 4 * dim, dim, 0
    out["key"] = np.arange(first_key, first_key + n)
    out["v"] = vectors
    return out.tobytes()


def load(dsn: str, reg: Registry, vectors: np.ndarray, m: int, ef_construction: int, work_mem: str) -> dict[str, float]:
    table = reg.table(TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(reg.schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(reg.schema)))
        conn.execute(create_table_sql(reg.schema, table))
        started = time.perf_counter()
        target = sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(reg.schema, TABLE), sql.Identifier(table.key_column), sql.Identifier(FEATURE)
        )
        with conn.cursor() as cur, cur.copy(target) as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            for start in range(0, len(vectors), 50_000):
                copy.write(copy_rows(vectors[start : start + 50_000], start + 1))
            copy.write(struct.pack(">h", -1))
        loaded = time.perf_counter() - started
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(reg.schema, TABLE)))
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(work_mem)))
        index = vector_index_sql(reg.schema, table, table.feature(FEATURE)).as_string(conn)
        index += f" WITH (m = {m}, ef_construction = {ef_construction})"
        started = time.perf_counter()
        conn.execute(index.encode())
        built = time.perf_counter() - started
        size = conn.execute(
            sql.SQL("SELECT pg_relation_size({})").format(
                sql.Literal(f"{reg.schema}.{TABLE}_{FEATURE}_hnsw"),
            )
        ).fetchone()
    return {
        "load_s": round(loaded, 2),
        "build_s": round(built, 2),
        "index_mb": round((size[0] if size else 0) / 2**20, 1),
    }


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """The keys (1-based) of each query's k nearest rows, by brute force in numpy (float32 values, float64 sums)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64) if metric == "l2" else None
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    for start in range(0, len(queries), 25):
        q = queries[start : start + 25].astype(np.float32)
        dots = (unit @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T if metric == "cosine" else vectors @ q.T).T
        if metric == "l2":
            d = norms[None, :] - 2 * dots.astype(np.float64)  # |v|^2 - 2 v.q: the order of |v - q|
        else:
            d = -dots.astype(np.float64)  # ip: the negative inner product; cosine: 1 - similarity
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        out[start : start + 25] = np.take_along_axis(part, order, axis=1) + 1
    return out


def measure(store: FeatureStore, queries: np.ndarray, truth: np.ndarray, k: int, ef: int | None) -> dict[str, Any]:
    for q in queries[:20]:  # prepared on the connection, pages touched
        store.nearest(TABLE, FEATURE, q, k, ef_search=ef)
    times, hits, shown_ef = [], 0, None
    for q, expected in zip(queries, truth):
        started = time.perf_counter()
        found = store.nearest(TABLE, FEATURE, q, k, ef_search=ef)
        times.append(time.perf_counter() - started)
        assert found.search == "hnsw", found.search
        shown_ef = found.ef_search
        hits += len(set(found.keys) & set(expected.tolist()))
    times.sort()
    return {
        "ef_search": shown_ef,
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 3),
        f"recall@{k}": round(hits / (k * len(queries)), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", help="default: $PGFEATURES_DSN, else the embedded server")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--metric", choices=["l2", "cosine", "ip"], default="l2")
    p.add_argument("--data", choices=["gaussian", "clustered"], default="gaussian")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ef", type=int, nargs="*", default=[200], help="raised ef_search values (besides the default)")
    p.add_argument("--m", type=int, default=16, help="HNSW m (pgvector's default 16)")
    p.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction (pgvector's default 64)")
    p.add_argument("--maintenance-work-mem", default="2GB", help="for the index build")
    p.add_argument("--schema", default="bench_nearest")
    p.add_argument("--reuse", action="store_true", help="the table and index of a --keep run are there: no load")
    p.add_argument("--keep", action="store_true", help="leave the table for --reuse")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry(args.schema, args.dim, args.metric)
    vectors = make_data(args.rows, args.dim, args.data, args.clusters, args.seed)
    queries = make_data(args.queries, args.dim, args.data, args.clusters, args.seed, draw=1)  # not rows of the table
    report: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "metric": args.metric, "data": args.data}
    report["m"], report["ef_construction"] = args.m, args.ef_construction
    if not args.reuse:
        report.update(load(dsn, reg, vectors, args.m, args.ef_construction, args.maintenance_work_mem))
    started = time.perf_counter()
    truth = exact_neighbours(vectors, queries, args.k, args.metric)
    report["exact_numpy_s"] = round(time.perf_counter() - started, 1)
    runs = []
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        for ef in [None, *args.ef]:
            runs.append(measure(store, queries, truth, args.k, ef))
    report["runs"] = runs
    if not args.keep:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(args.schema)))
    if args.json:
        print(json.dumps(report))
        return
    head = {k: v for k, v in report.items() if k != "runs"}
    print(" ".join(f"{k}={v}" for k, v in head.items()))
    print(f"{'ef_search':>10} {'p50 ms':>8} {'p99 ms':>8} {'recall@' + str(args.k):>10}")
    for run in runs:
        print(f"{run['ef_search']:>10} {run['p50_ms']:>8} {run['p99_ms']:>8} {run[f'recall@{args.k}']:>10}")


if __name__ == "__main__":
    main()
