"""Reads while a definition changes: `pgfeatures apply` of an added feature under readers of a materialized
service, and `pgfeatures serve` reloaded (SIGHUP) under HTTP clients.

    python bench/evolve_under_load.py apply  --dsn "$(pgfeatures db dsn)" [--entities 1000000 --tables 30]
    python bench/evolve_under_load.py reload --dsn "$(pgfeatures db dsn)" [--entities 100000 --clients 8]

``apply``: a service over ``--tables`` tables of 8 ``real`` features, materialized (``--entities`` serving
rows); ``--readers`` threads read it through the library (a store of the old definitions, then reloaded),
while ``apply`` adds a feature to one table (the rows rebuilt beside the old ones, then switched). Prints
the reads and failures, read latency p50/p99/max before, during and after the apply, the apply's time and
its final switch (the only moment readers wait).

``reload``: the same service behind a real ``pgfeatures serve`` and ``--clients`` keep-alive HTTP clients;
the change is applied, then SIGHUP reloads the server. Prints failed requests (must be 0), p50/p99 before,
during (the second around the reload) and after, and how long until every answer was the new definition's.

Nothing here is shipped: it drives the public API and CLI like a user would. Numbers on a shared 2-core
machine are noisy: quote medians and the run's own before/after ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

SCHEMA = "evolve_bench"


def definitions(tables: int, extra: bool, materialize: bool = True) -> str:
    lines = [f'schema = "{SCHEMA}"', "[entities.user]", 'key = "bigint"']
    for i in range(tables):
        lines += [f"[tables.t{i:02d}]", 'entity = "user"', f"[tables.t{i:02d}.features]"]
        lines += [f'f{j} = "real"' for j in range(8)]
        if extra and i == 0:
            lines.append('added = "real"')
    lines += [
        "[services.s]",
        "features = [" + ", ".join(f'"t{i:02d}.*"' for i in range(tables)) + "]",
        f"materialize = {'true' if materialize else 'false'}",
    ]
    return "\n".join(lines) + "\n"


def setup(dsn: str, entities: int, tables: int, folder: Path) -> Path:
    from pgfeatures.definitions import Registry
    from pgfeatures.evolve.apply import apply

    path = folder / "v1.toml"
    path.write_text(definitions(tables, False))
    registry = Registry.from_toml(path)
    # The tables are filled before the service is materialized: filled after, every row would go
    # through its triggers (30 x entities trigger calls) and the build measured below would find nothing to do.
    (folder / "v0.toml").write_text(definitions(tables, False, materialize=False))
    plain = Registry.from_toml(folder / "v0.toml")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        apply(conn, plain)
        for i in range(tables):
            cols = ", ".join(f"(g %% 1000)::real / {j + 1}" for j in range(8))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (user_id, f0, f1, f2, f3, f4, f5, f6, f7) SELECT g, {} FROM generate_series(1, %s) g"
                ).format(sql.Identifier(SCHEMA, f"t{i:02d}"), sql.SQL(cols)),
                [entities],
            )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, f"t{i:02d}")))
        started = time.perf_counter()
        result = apply(conn, registry)
        print(
            f"built {sum(result.rows.values()):,} serving rows in {time.perf_counter() - started:.1f}s", file=sys.stderr
        )
    return path


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, object]:
    """Latency in ms of the reads that started before, during and after [start, end]."""
    out: dict[str, object] = {}
    for name, keep in (
        ("before", lambda t: t < start),
        ("during", lambda t: start <= t <= end),
        ("after", lambda t: t > end),
    ):
        ms = [d * 1000 for t, d in samples if keep(t)]
        out[name] = {
            "reads": len(ms),
            "p50_ms": round(pct(ms, 0.5), 3),
            "p99_ms": round(pct(ms, 0.99), 3),
            "max_ms": round(max(ms), 3) if ms else None,
        }
    return out


def run_apply(args: argparse.Namespace) -> dict[str, object]:
    from pgfeatures import FeatureStore
    from pgfeatures.definitions import Registry
    from pgfeatures.evolve.apply import apply

    folder = Path(tempfile.mkdtemp(prefix="pgf-evolve-"))
    old_path = setup(args.dsn, args.entities, args.tables, folder)
    new_path = folder / "v2.toml"
    new_path.write_text(definitions(args.tables, True))
    old, new = Registry.from_toml(old_path), Registry.from_toml(new_path)
    samples: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    with FeatureStore(old, args.dsn, pool_size=args.readers) as store:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                key = rng.randint(1, args.entities)
                t0 = time.perf_counter()
                try:
                    got = store.get_service("s", key, output="list")
                    assert got.values[0] == (key % 1000) / 1, (key, got.values[:2])
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                samples.append((t0, time.perf_counter() - t0))

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            start = time.perf_counter()
            result = apply(conn, new)
            end = time.perf_counter()
        time.sleep(args.seconds / 2)
        store.reload(new)
        reloaded = time.perf_counter()
        time.sleep(args.seconds / 2)
        stop.set()
        for t in threads:
            t.join()
    return {
        "what": "apply of an added feature under readers of the materialized service",
        "entities": args.entities,
        "tables": args.tables,
        "readers": args.readers,
        "failed": len(failures),
        "failures": failures[:5],
        "apply_seconds": round(end - start, 3),
        "switch_ms": round(result.switch_seconds * 1000, 1),
        "rebuilt_rows": sum(result.rows.values()),
        "reads": summary(samples, start, end),
        "after_reload": summary([s for s in samples if s[0] > reloaded], reloaded, reloaded)["after"],
    }


def run_reload(args: argparse.Namespace) -> dict[str, object]:
    import httpx

    from pgfeatures.definitions import Registry
    from pgfeatures.evolve.apply import apply

    folder = Path(tempfile.mkdtemp(prefix="pgf-reload-"))
    path = setup(args.dsn, args.entities, args.tables, folder)
    port = 18000 + random.randint(0, 999)
    token = "bench-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGFEATURES_")} | {"PGFEATURES_TOKEN": token}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgfeatures.cli",
            "serve",
            "--dsn",
            args.dsn,
            "-d",
            str(path),
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--no-prewarm",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("serve did not become ready")
            time.sleep(0.1)
        samples: list[tuple[float, float]] = []
        failures: list[str] = []
        first_new: list[float] = []
        stop = threading.Event()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
                while not stop.is_set():
                    key = rng.randint(1, args.entities)
                    t0 = time.perf_counter()
                    try:
                        r = http.post("/v1/services/s", json={"key": key, "output": "vector"})
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text[:200]}")
                        elif len(r.json()["values"]) == 8 * args.tables + 1 and not first_new:
                            first_new.append(time.perf_counter())
                    except httpx.HTTPError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    samples.append((t0, time.perf_counter() - t0))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        path.write_text(definitions(args.tables, True))
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            apply(conn, Registry.from_toml(path))
        start = time.perf_counter()
        proc.send_signal(signal.SIGHUP)
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        new_after = round(first_new[0] - start, 3) if first_new else None
        return {
            "what": "SIGHUP reload of pgfeatures serve under HTTP clients",
            "workers": args.workers,
            "clients": args.clients,
            "entities": args.entities,
            "tables": args.tables,
            "requests": len(samples),
            "failed": len(failures),
            "failures": failures[:5],
            "first_new_answer_after_s": new_after,
            "latency": summary(samples, start, start + 1.0),
            "p50_all_ms": round(statistics.median(d * 1000 for _, d in samples), 3),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["apply", "reload"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--entities", type=int, default=None)
    parser.add_argument("--tables", type=int, default=30)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.entities is None:
        args.entities = 1_000_000 if args.what == "apply" else 100_000
    result = run_apply(args) if args.what == "apply" else run_reload(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
