"""Feast's own API on three online stores, measured in one run on one machine.

    PYTHONPATH=src python bench/feast_bench.py --dsn "$(pgfeatures db dsn)" [--redis 127.0.0.1:6379] \
        [--entities 1000] [--requests 1000] [--serve-seconds 10] [--materialize-rows 1000000]

- ``latency``: ``get_online_features(240 refs of 30 views x 8 float32, entity_rows).to_dict()`` for
  1 and 100 entities, interleaved round by round over the stores (pgfeatures, Feast's PostgreSQL
  store on the same server, Feast's Redis store when one answers): p50/p99 wall time and client CPU
  per call; then a profile of the pgfeatures calls: where the remaining time goes (Feast, pgfeatures,
  psycopg, protobuf).
- ``serve``: ``feast serve`` (1 worker) on pgfeatures and on Feast's PostgreSQL store, 1 and 8
  clients (threads, keep-alive) posting 1-entity requests for ``--serve-seconds`` each: requests/s.
- ``materialize``: ``FeatureStore.materialize`` (what ``feast materialize`` runs) of
  ``--materialize-rows`` rows into one view of 8 float32, into pgfeatures and into Feast's
  PostgreSQL store: rows/s.
- ``precompute``: ``get_online_features(feature_service).to_dict()`` of a service over the 30 views with
  ``precompute_online=True`` and of its twin without, 1 and 100 entities: on pgfeatures (the
  precomputed one read from a materialized service's serving rows) and on Feast's Redis store (the
  precomputed one from the vectors Feast writes after materializing), interleaved as ``latency``.

Each store's data lives in its own database schema / Redis project, dropped at the end. Loopback
only. Prints a Markdown table per part and writes the figures as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import http.client
import json
import os
import pstats
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

VIEWS, FEATURES = 30, 8
PRECOMPUTED, PLAIN = "every_view_precomputed", "every_view"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feast_postgres(dsn: str, schema: str) -> dict[str, Any]:
    p = conninfo_to_dict(dsn)
    return {
        "type": "postgres",
        "host": p.get("host", "127.0.0.1"),
        "port": int(p.get("port", 5432)),
        "database": p.get("dbname", "postgres"),
        "user": p.get("user", "postgres"),
        "password": p.get("password", ""),
        "db_schema": schema,
        "sslmode": "disable",
        "conn_type": "pool",
        "min_conn": 1,
        "max_conn": 8,
    }


def write_repo(
    root: Path,
    project: str,
    online: dict[str, Any],
    entities: int,
    views: int = VIEWS,
    name: str = "v",
    engine: str | None = None,
    services: bool = False,
) -> list[str]:
    """A repository of ``views`` views x 8 float32 keyed by driver_id (Int64), data for ``entities`` ids
    (``services``: with PRECOMPUTED, a service of every view with precompute_online=True, and PLAIN, its twin
    without); returns the feature refs."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"f{j}": rng.random(entities, dtype=np.float32) for j in range(FEATURES)})
    frame.insert(0, "driver_id", np.arange(1, entities + 1, dtype=np.int64))
    frame["event_timestamp"] = pd.Timestamp(NOW - dt.timedelta(hours=1))
    frame.to_parquet(root / "data.parquet")
    lines = [
        "from datetime import timedelta",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float32, Int64",
        "driver = Entity(name='driver', join_keys=['driver_id'], value_type=ValueType.INT64)",
        f"src = FileSource(name='data', path={str(root / 'data.parquet')!r}, timestamp_field='event_timestamp')",
    ]
    for i in range(views):
        fields = ", ".join(f"Field(name='f{j}', dtype=Float32)" for j in range(FEATURES))
        lines.append(
            f"{name}{i:02d} = FeatureView(name='{name}{i:02d}', entities=[driver], ttl=timedelta(days=7), "
            f"source=src, schema=[Field(name='driver_id', dtype=Int64), {fields}])"
        )
    if services:
        every = ", ".join(f"{name}{i:02d}" for i in range(views))
        lines.append(f"pre = FeatureService(name={PRECOMPUTED!r}, features=[{every}], precompute_online=True)")
        lines.append(f"plain = FeatureService(name={PLAIN!r}, features=[{every}])")
    (root / "repo.py").write_text("\n".join(lines) + "\n")
    config = {
        "project": project,
        "provider": "local",
        "registry": str(root / "registry.db"),
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    if engine:
        config["batch_engine"] = {"type": engine}
    (root / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return [f"{name}{i:02d}:f{j}" for i in range(views) for j in range(FEATURES)]


def apply(root: Path) -> Any:
    """``feast apply`` of the repository (through the CLI, as a user does), then its FeatureStore."""
    from feast import FeatureStore

    subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "-c", str(root), "apply"], check=True, stdout=subprocess.DEVNULL
    )
    return FeatureStore(repo_path=str(root))


def materialize(store: Any) -> float:
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # Feast prints a line per view
        store.materialize(NOW - dt.timedelta(days=2), NOW)
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(
    stores: dict[str, Any], refs: Any, entities: int, batch: int, requests: int, block: int = 20
) -> dict[str, Any]:
    """Calls in blocks of ``block`` per store, the stores in turn. The first call of each block is not
    counted: Feast caches a request's resolution in one process-wide cache that a call through
    another FeatureStore (another registry) clears, so a store's first call after another store's
    pays Feast's registry walk again; in a deployment (one FeatureStore per process) no call does.
    ``refs``: what every store is asked for, or {store name: what it is asked for}."""
    rng = random.Random(1)
    asked = refs if isinstance(refs, dict) else dict.fromkeys(stores, refs)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
    for name, store in stores.items():  # warm: registry cache, pools, prepared statements
        for _ in range(20):
            store.get_online_features(
                asked[name],
                full_feature_names=True,
                entity_rows=[{"driver_id": rng.randint(1, entities)} for _ in range(batch)],
            ).to_dict()
    for _ in range(max(1, requests // block)):
        for name, store in stores.items():
            for i in range(block + 1):
                rows = [{"driver_id": rng.randint(1, entities)} for _ in range(batch)]
                cpu, wall = time.process_time(), time.perf_counter()
                store.get_online_features(asked[name], rows, full_feature_names=True).to_dict()
                if i:
                    samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {}
    for name, got in samples.items():
        walls = [w * 1000 for w, _ in got]
        cpus = [c * 1000 for _, c in got]
        out[name] = {
            "p50_ms": round(pct(walls, 0.5), 3),
            "p99_ms": round(pct(walls, 0.99), 3),
            "cpu_ms": round(statistics.fmean(cpus), 3),
            "calls": len(got),
        }
    return out


def profile(store: Any, refs: list[str], entities: int, batch: int, calls: int = 300) -> list[tuple[str, float]]:
    """Share of the pgfeatures calls' time by owner (tottime of functions, grouped by package)."""
    rng = random.Random(2)
    rows = [[{"driver_id": rng.randint(1, entities)} for _ in range(batch)] for _ in range(calls)]
    store.get_online_features(refs, rows[0], full_feature_names=True).to_dict()  # Feast's cache: this store's
    prof = cProfile.Profile()
    prof.enable()
    for r in rows:
        store.get_online_features(refs, r, full_feature_names=True).to_dict()
    prof.disable()
    stats = pstats.Stats(prof)
    owners: dict[str, float] = {}
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/pgfeatures/" in filename:
            owner = "pgfeatures: " + filename.split("/pgfeatures/", 1)[1]
        elif "/feast/" in filename:
            owner = "feast: " + filename.split("/feast/", 1)[1]
        elif "/psycopg" in filename:
            owner = "psycopg"
        elif "protobuf" in filename or "pb2" in filename:
            owner = "protobuf"
        elif filename == "~":
            owner = f"builtins ({func.split(' ')[-1].strip('>')})" if "method" in func else "builtins"
        else:
            owner = "other: " + Path(filename).name
        owners[owner] = owners.get(owner, 0.0) + tottime
    total = sum(owners.values())
    return sorted(((k, round(100 * v / total, 1)) for k, v in owners.items()), key=lambda kv: -kv[1])[:14] + [
        ("total ms per call", round(1000 * total / calls, 3))
    ]


class Server:
    """``feast serve`` (1 worker) of a repository, on a free loopback port."""

    def __init__(self, root: Path):
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "feast"),
                "-c",
                str(root),
                "serve",
                "-p",
                str(self.port),
                "--no-access-log",
                "--max-requests",
                "10000000",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("feast serve did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def throughput(port: int, refs: list[str], entities: int, clients: int, seconds: float) -> dict[str, Any]:
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            body = json.dumps(
                {"features": refs, "entities": {"driver_id": [rng.randint(1, entities)]}, "full_feature_names": True}
            )
            conn.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status == 200:
                counts[i] += 1
            else:
                errors[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"requests_per_s": round(sum(counts) / elapsed, 1), "errors": sum(errors)}


def drop(dsn: str, schemas: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    lines = [f"\n{title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True, help="PostgreSQL for pgfeatures and Feast's PostgreSQL store")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Feast's Redis store ('' to skip)")
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000, help="1-entity calls per store (100-entity: a fifth)")
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    parser.add_argument("--materialize-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--materialize-peer-rows",
        type=int,
        default=None,
        help="rows for Feast's PostgreSQL store (default: --materialize-rows); its rows/s is compared",
    )
    parser.add_argument("--parts", default="latency,serve,materialize")
    parser.add_argument("--work", default="/tmp/pgfeatures-feast-bench")
    parser.add_argument("--out", default="feast_bench.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    work = Path(args.work)
    tag = f"fb{os.getpid()}"
    result: dict[str, Any] = {"when": NOW.isoformat(), "entities": args.entities}
    onlines = {
        "pgfeatures": {"type": "pgfeatures.feast.PgfeaturesOnlineStore", "dsn": args.dsn, "db_schema": f"{tag}_pgf"},
        "feast postgres": feast_postgres(args.dsn, f"{tag}_fpg"),
    }
    if args.redis:
        try:
            import redis

            host, _, port = args.redis.partition(":")
            redis.Redis(host=host, port=int(port or 6379)).ping()
            onlines["feast redis"] = {"type": "redis", "connection_string": args.redis}
        except Exception as exc:  # no Redis here: its rows are skipped, and the report says so
            print(f"redis at {args.redis} does not answer ({exc}): its rows are skipped", file=sys.stderr)
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        for schema in (f"{tag}_pgf", f"{tag}_fpg"):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    stores: dict[str, Any] = {}
    try:
        if parts & {"latency", "serve", "precompute"}:
            for name, online in onlines.items():
                root = work / name.replace(" ", "_")
                refs = write_repo(
                    root,
                    f"{tag}_{name.replace(' ', '_')}",
                    online,
                    args.entities,
                    services="precompute" in parts and name != "feast postgres",
                )
                stores[name] = apply(root)
                seconds = materialize(stores[name])
                print(
                    f"{name}: applied and materialized {VIEWS} views x {args.entities} entities in {seconds:.1f} s",
                    file=sys.stderr,
                )
        if "latency" in parts:
            result["latency"] = {}
            for batch, n in ((1, args.requests), (100, max(20, args.requests // 5))):
                result["latency"][batch] = latency(stores, refs, args.entities, batch, n)
                result.setdefault("profile", {})[batch] = profile(stores["pgfeatures"], refs, args.entities, batch)
                result.setdefault("profile_feast_postgres", {})[batch] = profile(
                    stores["feast postgres"], refs, args.entities, batch, 100
                )
            rows = []
            for batch, by_store in result["latency"].items():
                ref = by_store["pgfeatures"]["p50_ms"]
                for name, r in by_store.items():
                    rows.append(
                        [
                            batch,
                            name,
                            r["p50_ms"],
                            r["p99_ms"],
                            r["cpu_ms"],
                            f"{ref / r['p50_ms']:.2f}x" if name != "pgfeatures" else "1",
                        ]
                    )
            print(
                table(
                    "get_online_features(...).to_dict(), 30 views x 8 float32",
                    ["entities", "store", "p50 ms", "p99 ms", "client CPU ms", "pgfeatures p50 / this p50"],
                    rows,
                )
            )
            for batch, shares in result["profile"].items():
                print(
                    table(
                        f"where a pgfeatures call's time goes, {batch} entit{'y' if batch == 1 else 'ies'} "
                        "(cProfile tottime share)",
                        ["owner", "%"],
                        [list(s) for s in shares],
                    )
                )
        if "precompute" in parts:
            result["precompute"] = {}
            subjects: dict[str, Any] = {}
            asked: dict[str, Any] = {}
            for name in ("pgfeatures", "feast redis"):
                if name in stores:
                    for label, service in (("precomputed", PRECOMPUTED), ("plain", PLAIN)):
                        subjects[f"{name}, {label}"] = stores[name]
                        asked[f"{name}, {label}"] = stores[name].get_feature_service(service)
            for batch, n in ((1, args.requests), (100, max(20, args.requests // 5))):
                result["precompute"][batch] = latency(subjects, asked, args.entities, batch, n)
            rows = []
            for batch, by_store in result["precompute"].items():
                ref = by_store["pgfeatures, precomputed"]["p50_ms"]
                for name, r in by_store.items():
                    rows.append(
                        [
                            batch,
                            name,
                            r["p50_ms"],
                            r["p99_ms"],
                            r["cpu_ms"],
                            f"{ref / r['p50_ms']:.2f}x" if name != "pgfeatures, precomputed" else "1",
                        ]
                    )
            print(
                table(
                    "get_online_features(feature service of 30 views x 8 float32).to_dict()",
                    [
                        "entities",
                        "store, service",
                        "p50 ms",
                        "p99 ms",
                        "client CPU ms",
                        "pgfeatures precomputed p50 / this p50",
                    ],
                    rows,
                )
            )
        if "serve" in parts:
            result["serve"] = {}
            for name in ("pgfeatures", "feast postgres"):
                server = Server(work / name.replace(" ", "_"))
                try:
                    throughput(server.port, refs, args.entities, 1, 2.0)  # warm
                    result["serve"][name] = {
                        c: throughput(server.port, refs, args.entities, c, args.serve_seconds) for c in (1, 8)
                    }
                finally:
                    server.stop()
            rows = [
                [name, c, r["requests_per_s"], r["errors"]]
                for name, by in result["serve"].items()
                for c, r in by.items()
            ]
            print(
                table(
                    "feast serve (1 worker), /get-online-features of 240 features, 1 entity",
                    ["store", "clients", "requests/s", "errors"],
                    rows,
                )
            )
        if "materialize" in parts:
            result["materialize"] = {}
            runs = [
                ("pgfeatures, PgfeaturesComputeEngine", "pgfeatures", "pgfeatures.feast.PgfeaturesComputeEngine"),
                ("pgfeatures, Feast's local engine", "pgfeatures", None),
                ("feast postgres, Feast's local engine", "feast postgres", None),
            ]
            for i, (label, name, engine) in enumerate(runs):
                root = work / f"m{i}"
                n = (
                    (args.materialize_peer_rows or args.materialize_rows)
                    if name == "feast postgres"
                    else args.materialize_rows
                )
                write_repo(root, f"{tag}_m{i}", onlines[name], n, 1, "big", engine)
                store = apply(root)
                seconds = materialize(store)
                result["materialize"][label] = {
                    "rows": n,
                    "seconds": round(seconds, 2),
                    "rows_per_s": round(n / seconds),
                }
                print(f"materialize {label}: {n:,} rows in {seconds:.1f} s", file=sys.stderr)
            rows = [
                [name, r["rows"], r["seconds"], f"{r['rows_per_s']:,}"] for name, r in result["materialize"].items()
            ]
            print(table("feast materialize, one view of 8 float32", ["store", "rows", "seconds", "rows/s"], rows))
    finally:
        for store in stores.values():
            try:
                if store.config.online_store.type == "redis":
                    store.teardown()
            except Exception as exc:
                print(f"teardown: {exc}", file=sys.stderr)
        drop(args.dsn, [f"{tag}_pgf", f"{tag}_fpg"])
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
