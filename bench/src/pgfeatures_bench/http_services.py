"""HTTP benchmark, services mode: a materialized feature service against the same service read
table by table, through ``pgfeatures serve``.

``pgfeatures bench-http --mode services``: the demo layout (30 tables x 8 ``real`` features,
``--entities`` entities, the demo's deterministic data) in a schema of its own
(``--services-schema``, default ``bench_services``: the demo schema is shared and gets no
triggers), with two feature services over all 240 features: ``mat30`` (``materialize = true``,
built with ``pgfeatures.materialize.build.materialize``: one serving row per key, one index
lookup per request) and ``flex30`` (the flexible read: 30 lookups). Loaded and built once, reused
when present.

One ``pgfeatures serve`` process (coalescing off) serves both. Four variants, in alternating
rounds: each service with dict output and with ``"output": "vector"``, all through ``POST
/v1/services/{name}`` with the same random keys: p50/p99 at one client, then closed-loop
throughput at each ``--concurrency`` level, with the CPU per request of the server process and of
the PostgreSQL backends serving it (and of this client), read from ``/proc``. Before anything is
timed, both services' answers are compared on sample keys (they must be equal).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .harness.serve import ServeProcess, process_tree
from .http import (
    HttpBenchConfig,
    HTTPConnection,
    Throughput,
    backend_pids,
    closed_loop,
    cpu_seconds,
    percentile_ms,
    post_request,
    serve_flags,
)

MATERIALIZED, FLEXIBLE = "mat30", "flex30"
VARIANTS = ((FLEXIBLE, "dict"), (MATERIALIZED, "dict"), (FLEXIBLE, "vector"), (MATERIALIZED, "vector"))


def registry(schema: str) -> Any:
    from pgfeatures.definitions import FeatureService, Registry, demo_registry

    tables = demo_registry(schema=schema)
    features = tuple(f"{t}.*" for t in tables.tables)
    return Registry.of(
        tables.tables.values(),
        schema,
        services=[
            FeatureService(MATERIALIZED, features, materialize=True, description="30 tables x 8 real, materialized"),
            FeatureService(FLEXIBLE, features, description="the same 240 features, read table by table"),
        ],
    )


def definitions_toml(reg: Any) -> str:
    lines = [f'schema = "{reg.schema}"']
    for table in reg.tables.values():
        lines.append(f"[tables.{table.name}.features]")
        lines += [f'{f.name} = "{f.type.name}"' for f in table.features]
    for svc in reg.services.values():
        lines.append(f"[services.{svc.name}]")
        lines.append("features = [" + ", ".join(f'"{f}"' for f in svc.features) + "]")
        if svc.materialize:
            lines.append("materialize = true")
    return "\n".join(lines) + "\n"


def prepare(dsn: str, schema: str, entities: int, say: Callable[[str], None]) -> Any:
    """Load the demo data into ``schema`` (unless there) and build the materialized service (unless built)."""
    from pgfeatures.connections import connect
    from pgfeatures.demo import load_demo
    from pgfeatures.materialize.build import materialize, status

    reg = registry(schema)
    with connect(dsn, "pgfeatures-bench-http") as conn:
        if load_demo(conn, reg, entities):
            say(f"loaded {len(reg.tables)} tables x {entities:,} entities into schema {schema}")
        if status(conn, reg).get(MATERIALIZED) != "built":
            summary = materialize(conn, reg, MATERIALIZED)
            say(summary.describe())
    return reg


def _variant(service: str, output: str) -> str:
    return f"{service} {output}"


async def measure(args: HttpBenchConfig, dsn: str, server: ServeProcess) -> dict[str, Any]:
    import orjson

    from pgfeatures.demo import entity_keys

    rng = random.Random(args.seed)
    keys = entity_keys(args.entities)
    sample = [keys[rng.randrange(len(keys))].hex() for _ in range(5000)]
    requests = {
        _variant(s, o): [
            post_request(
                f"/v1/services/{s}", orjson.dumps({"key": k} | ({"output": "vector"} if o == "vector" else {}))
            )
            for k in sample
        ]
        for s, o in VARIANTS
    }
    concurrency = list(args.concurrency)
    conns = [await HTTPConnection.open("127.0.0.1", server.port) for _ in range(max(concurrency))]

    def caller(variant: str, client: int) -> Callable[[int], Awaitable[Any]]:
        conn, bodies = conns[client], requests[variant]

        async def call(i: int) -> Any:
            status, body = await conn.request(bodies[i])
            if status != 200:
                raise RuntimeError(f"{variant}: HTTP {status}: {body[:300]!r}")
            return orjson.loads(body)

        return call

    # The same answers from both services, before anything is timed.
    for output in ("dict", "vector"):
        for i in range(20):
            flex = await caller(_variant(FLEXIBLE, output), 0)(i)
            mat = await caller(_variant(MATERIALIZED, output), 0)(i)
            if flex != mat:
                raise RuntimeError(f"{MATERIALIZED} and {FLEXIBLE} disagree ({output}) for key {sample[i]}")
    variants = [_variant(s, o) for s, o in VARIANTS]

    # 1. one client, alternating rounds
    latency: dict[str, list[int]] = {v: [] for v in variants}
    for v in variants:  # warm-up (the serving table's pages, the prepared statements)
        await closed_loop([caller(v, 0)], len(sample), 0.3, args.seed)
    rounds = 10
    per_round = max(1, args.requests // rounds)
    for _ in range(rounds):
        for v in variants:
            call = caller(v, 0)
            for i in (rng.randrange(len(sample)) for _ in range(per_round)):
                t0 = time.perf_counter_ns()
                await call(i)
                latency[v].append(time.perf_counter_ns() - t0)

    # 2. throughput with CPU per request, alternating rounds per concurrency level
    assert server.proc is not None
    serving = process_tree(server.proc.pid)
    backends = backend_pids(dsn, serving)
    through: list[Throughput] = []
    for clients in concurrency:
        lat: dict[str, list[int]] = {v: [] for v in variants}
        elapsed = dict.fromkeys(variants, 0.0)
        cpu = {v: dict.fromkeys(("server", "postgres", "client"), 0.0) for v in variants}
        for r in range(args.rounds):
            for v in variants:
                before = (cpu_seconds(serving), cpu_seconds(backends), time.process_time())
                got, secs = await closed_loop(
                    [caller(v, c) for c in range(clients)], len(sample), args.seconds, args.seed + r
                )
                after = (cpu_seconds(serving), cpu_seconds(backends), time.process_time())
                for part, b, a in zip(("server", "postgres", "client"), before, after):
                    cpu[v][part] += a - b
                lat[v].extend(got)
                elapsed[v] += secs
        for v in variants:
            through.append(Throughput.of(v, clients, lat[v], elapsed[v], cpu[v]))
    for conn in conns:
        conn.close()
    return {
        "latency": {
            v: {"n": len(x), "p50_ms": percentile_ms(x, 50), "p99_ms": percentile_ms(x, 99)} for v, x in latency.items()
        },
        "throughput": [asdict(t) for t in through],
    }


def ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """Materialized over flexible, per output: throughput per clients, p50/p99 at one client (flexible
    over materialized: how many times faster), CPU per request (server + PostgreSQL)."""
    out: dict[str, Any] = {}
    lat = figures["latency"]
    for output in ("dict", "vector"):
        mat, flex = _variant(MATERIALIZED, output), _variant(FLEXIBLE, output)
        entry: dict[str, Any] = {
            "p50": lat[flex]["p50_ms"] / lat[mat]["p50_ms"],
            "p99": lat[flex]["p99_ms"] / lat[mat]["p99_ms"],
            "throughput": {},
            "cpu": {},
        }
        rows = {(r["variant"], r["clients"]): r for r in figures["throughput"]}
        for (variant, clients), r in rows.items():
            if variant != mat:
                continue
            f = rows[flex, clients]
            entry["throughput"][clients] = r["per_second"] / f["per_second"]
            entry["cpu"][clients] = (f["cpu_ms"]["server"] + f["cpu_ms"]["postgres"]) / (
                r["cpu_ms"]["server"] + r["cpu_ms"]["postgres"]
            )
        out[output] = entry
    return out


def run(args: HttpBenchConfig, dsn: str, runner: Callable[..., Any], say: Callable[[str], None]) -> dict[str, Any]:
    reg = prepare(dsn, args.services_schema, args.entities, say)
    with tempfile.TemporaryDirectory(prefix="pgfeatures-bench-") as tmp:
        path = Path(tmp) / "services.toml"
        path.write_text(definitions_toml(reg))
        flags = serve_flags(dsn, coalesce=False, pool_size=args.pool_size, workers=args.workers, window_us=0)
        with ServeProcess(*flags, "--definitions", str(path)) as server:
            figures = runner(measure(args, dsn, server))
    figures["ratios"] = ratios(figures)
    return {"services": figures}


def report(figures: dict[str, Any], args: HttpBenchConfig, console: Any) -> None:
    from rich.table import Table

    f = figures["services"]
    lat = f["latency"]
    table = Table(title=f"one client, {args.requests} requests per variant")
    for col in ["variant", "p50 ms", "p99 ms"]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v, s in lat.items():
        table.add_row(v, f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}")
    console.print(table)
    table = Table(
        title=f"throughput, closed loop, pool {args.pool_size}, {args.workers} worker(s), "
        f"{args.rounds} x {args.seconds:g} s per cell (alternating rounds)"
    )
    for col in [
        "clients",
        "variant",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/req: server",
        "postgres",
        "client",
        "server + postgres",
    ]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for clients in sorted({r["clients"] for r in f["throughput"]}):
        for r in (r for r in f["throughput"] if r["clients"] == clients):
            cpu = r["cpu_ms"]
            table.add_row(
                str(clients),
                r["variant"],
                f"{r['per_second']:,.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                f"{cpu['server']:.3f}",
                f"{cpu['postgres']:.3f}",
                f"{cpu['client']:.3f}",
                f"{cpu['server'] + cpu['postgres']:.3f}",
            )
        table.add_section()
    console.print(table)
    table = Table(title=f"{MATERIALIZED} (materialized) against {FLEXIBLE} (table by table)")
    for col in [
        "output",
        "p50 speed-up",
        "p99 speed-up",
        *(f"req/s x, {c} clients" for c in sorted({int(c) for r in f["ratios"].values() for c in r["throughput"]})),
        "CPU/req saved x (server + postgres)",
    ]:
        table.add_column(col, justify="left" if col == "output" else "right")
    for output, r in f["ratios"].items():
        cpu = ", ".join(f"{r['cpu'][c]:.2f}x" for c in sorted(r["cpu"], key=int))
        table.add_row(
            output,
            f"{r['p50']:.2f}x",
            f"{r['p99']:.2f}x",
            *(f"{r['throughput'][c]:.2f}x" for c in sorted(r["throughput"], key=int)),
            cpu,
        )
    console.print(table)
