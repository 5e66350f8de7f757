"""HTTP benchmark: what ``pgfeatures serve`` adds over the library call, and what coalescing does.

One command, ``pgfeatures bench-http``, against the demo data (schema
``demo``, read-only). ``--mode batch`` and ``--mode memory`` measure large
batches instead (see ``http_batch.py``), ``--mode services`` a materialized
feature service against the same service read table by table (see
``http_services.py``). The default mode, in one run:

1. **Added latency, one client.** The same reads (random demo keys, all 30
   tables) through ``AsyncFeatureStore.read`` in this process and through
   ``POST /v1/features`` of two servers (coalescing off and on), in
   alternating rounds; added = HTTP percentile minus library percentile.
2. **Throughput at 1, 8 and 32 concurrent clients** for the library, HTTP
   with coalescing off and HTTP with coalescing on, again in alternating
   rounds of ``--seconds`` each, closed loop (each client sends its next
   request when the previous answer arrived).
3. **The cost of printing ``real`` features as float32** (the shortest
   decimal), in-process on the same decoded results: the conversion to
   numpy float32 scalars plus the encoding, against plain encoding.

Both servers are real ``pgfeatures serve`` processes on loopback ports. The
client is a minimal HTTP/1.1 keep-alive client on asyncio (uvloop when
installed), one connection per simulated client, requests pre-encoded; it
parses each response with orjson, as a model server would, so the library
and HTTP timings both end with a Python dict. The client shares the
machine's cores with the servers and PostgreSQL: throughput figures are for
the whole box, and only ratios within one run are meaningful on a shared
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .harness.serve import ServeProcess, process_tree

MODES = ("standard", "batch", "memory", "services")


@dataclass(frozen=True)
class HttpBenchConfig:
    """What ``pgfeatures bench-http`` measures (``pgfeatures_bench.cli`` makes one flag per field)."""

    requests: int = 2000  # one-client latency: timed requests per variant
    concurrency: tuple[int, ...] = (1, 8, 32)  # concurrent clients for the throughput runs
    seconds: float = 1.0  # length of one throughput round per variant
    rounds: int = 5  # alternating rounds per concurrency level
    pool_size: int = 4  # read connections (servers and library alike)
    workers: int = 1  # server worker processes
    window_us: int = 0  # coalescing window of the coalescing server (µs)
    entities: int = 100_000  # demo entities keys are drawn from
    seed: int = 0
    mode: str = "standard"  # one of MODES
    services_schema: str = "bench_services"  # services mode: its copy of the demo data and its two services
    batch_singles: int = 8  # batch mode: single-key clients
    batch_keys: int = 1000  # batch mode: keys per batch of the batch client
    memory_keys: int = 100_000  # memory mode: keys of the huge batch
    baseline_src: str | None = None  # also run a server (coalescing off) from this source tree ('baseline')
    serve_flag: tuple[str, ...] = ()  # batch/memory modes: extra flags for the 'chunked' server

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")


# -- a minimal HTTP/1.1 client --------------------------------------------------------------------


class HTTPConnection:
    """One keep-alive connection that sends pre-encoded requests and reads Content-Length responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HTTPConnection:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        start = head.lower().find(b"content-length:")
        if start < 0:
            raise RuntimeError(f"response without Content-Length: {head!r}")
        length = int(head[start + 15 : head.index(b"\r\n", start)])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def post_request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- servers --------------------------------------------------------------------------------------


def serve_flags(dsn: str, *, coalesce: bool, pool_size: int, workers: int, window_us: int) -> list[str]:
    return [
        "--dsn",
        dsn,
        "--pool-size",
        str(pool_size),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--coalesce" if coalesce else "--no-coalesce",
        "--coalesce-window-us",
        str(window_us),
    ]


# -- measurement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    variant: str
    clients: int
    requests: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]  # CPU per request: server process(es), their PostgreSQL backends, this client

    @classmethod
    def of(
        cls, variant: str, clients: int, latencies_ns: Sequence[int], seconds: float, cpu: Mapping[str, float]
    ) -> Throughput:
        """One variant's closed-loop round(s): its latencies, elapsed seconds and CPU seconds per part."""
        n = len(latencies_ns)
        return cls(
            variant,
            clients,
            n,
            seconds,
            n / seconds,
            percentile_ms(latencies_ns, 50),
            percentile_ms(latencies_ns, 99),
            {part: 1e3 * v / n for part, v in cpu.items()},
        )


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU used so far by these processes (Linux /proc; 0 for one that is gone or unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(dsn: str, client_pids: Iterable[int]) -> list[int]:
    """The PostgreSQL backends serving these client processes' connections (matched by TCP port, Linux /proc)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    pg_port = int(conninfo_to_dict(dsn).get("port") or 5432)
    inodes = set()
    for pid in client_pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[9] in inodes and int(f[2].rsplit(":", 1)[1], 16) == pg_port:
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL").fetchall()
    return [pid for pid, port in rows if port in ports]


def percentile_ms(latencies_ns: Sequence[int], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(latencies_ns, dtype=np.float64), q)) / 1e6 if latencies_ns else float("nan")


async def closed_loop(
    calls: Sequence[Callable[[int], Awaitable[Any]]], n_keys: int, seconds: float, seed: int
) -> tuple[list[int], float]:
    """Each call (one per client) runs back to back for ``seconds``; returns every latency and the elapsed time."""
    latencies: list[int] = []
    clock = time.perf_counter_ns
    stop_at = clock() + int(seconds * 1e9)

    async def client(call: Callable[[int], Awaitable[Any]], rng: random.Random) -> None:
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            await call(rng.randrange(n_keys))
            latencies.append(clock() - t0)

    t0 = clock()
    await asyncio.gather(*(client(c, random.Random(seed + i)) for i, c in enumerate(calls)))
    return latencies, (clock() - t0) / 1e9


def as_float32(features: dict[str, Any]) -> dict[str, Any]:
    """The demo's (all-real) features with every value rounded to float32, for comparing answers."""
    import numpy as np

    return {t: None if v is None else {f: np.float32(x) for f, x in v.items()} for t, v in features.items()}


async def run_benchmark(args: HttpBenchConfig, dsn: str, servers: dict[str, ServeProcess]) -> dict[str, Any]:
    import orjson

    from pgfeatures.definitions import demo_registry
    from pgfeatures.demo import entity_keys
    from pgfeatures.store import AsyncFeatureStore

    rng = random.Random(args.seed)
    keys = entity_keys(args.entities)
    sample = [keys[rng.randrange(len(keys))] for _ in range(5000)]
    requests = [post_request("/v1/features", orjson.dumps({"key": k.hex()})) for k in sample]
    concurrency = list(args.concurrency)
    most = max(concurrency)

    async with AsyncFeatureStore(demo_registry(), dsn, pool_size=args.pool_size, write_pool_size=1) as store:
        reader = store.reader()
        conns = {
            name: [await HTTPConnection.open("127.0.0.1", srv.port) for _ in range(most)]
            for name, srv in servers.items()
        }

        def library(_: int) -> Callable[[int], Awaitable[Any]]:
            return lambda i: store.read(reader, sample[i])

        def http(name: str, client: int) -> Callable[[int], Awaitable[Any]]:
            conn = conns[name][client]

            async def call(i: int) -> Any:
                status, body = await conn.request(requests[i])
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
                return orjson.loads(body)["features"]

            return call

        variants: dict[str, Callable[[int], Callable[[int], Awaitable[Any]]]] = {"library": library}
        for name in servers:
            variants[name] = functools.partial(http, name)

        # Same answers everywhere, before anything is timed (HTTP prints reals as float32: compare as float32).
        for i in range(20):
            expected = as_float32(await store.read(reader, sample[i]))
            for name in servers:
                answer = as_float32(await variants[name](0)(i))
                if answer != expected:
                    raise RuntimeError(f"{name} disagrees with the library for key {sample[i].hex()}")

        # 1. one client, alternating rounds
        latency: dict[str, list[int]] = {name: [] for name in variants}
        rounds = 10
        per_round = max(1, args.requests // rounds)
        for name in variants:  # warm-up
            await closed_loop([variants[name](0)], len(sample), 0.2, args.seed)
        for _ in range(rounds):
            for name, make in variants.items():
                call = make(0)
                order = [rng.randrange(len(sample)) for _ in range(per_round)]
                out = latency[name]
                for i in order:
                    t0 = time.perf_counter_ns()
                    await call(i)
                    out.append(time.perf_counter_ns() - t0)

        # 2. throughput, alternating rounds per concurrency level, with CPU time per request
        # (robust where throughput is not: other processes on a shared machine take CPU, not CPU per request)
        serving: dict[str, list[int]] = {"library": []}
        serving |= {name: process_tree(srv.proc.pid) for name, srv in servers.items() if srv.proc}
        backends = {name: backend_pids(dsn, pids or [os.getpid()]) for name, pids in serving.items()}
        through: list[Throughput] = []
        for clients in concurrency:
            lat: dict[str, list[int]] = {name: [] for name in variants}
            elapsed: dict[str, float] = dict.fromkeys(variants, 0.0)
            cpu = {name: dict.fromkeys(("server", "postgres", "client"), 0.0) for name in variants}
            for r in range(args.rounds):
                for name, make in variants.items():
                    before = (cpu_seconds(serving[name]), cpu_seconds(backends[name]), time.process_time())
                    got, secs = await closed_loop(
                        [make(c) for c in range(clients)], len(sample), args.seconds, args.seed + r
                    )
                    after = (cpu_seconds(serving[name]), cpu_seconds(backends[name]), time.process_time())
                    for part, b, a in zip(("server", "postgres", "client"), before, after):
                        cpu[name][part] += a - b
                    lat[name].extend(got)
                    elapsed[name] += secs
            for name in variants:
                through.append(Throughput.of(name, clients, lat[name], elapsed[name], cpu[name]))
        for group in conns.values():
            for conn in group:
                conn.close()

        float32 = await float32_cost(store, reader, sample)

    return {
        "latency": {
            name: {"n": len(v), "p50_ms": percentile_ms(v, 50), "p99_ms": percentile_ms(v, 99)}
            for name, v in latency.items()
        },
        "throughput": [asdict(t) for t in through],
        "float32": float32,
    }


async def float32_cost(store: Any, reader: Any, sample: Sequence[bytes], n: int = 2000) -> dict[str, float]:
    """µs per request: plain JSON of a decoded 30-table result, the float32 conversion, JSON with numpy scalars."""
    import orjson

    from pgfeatures.server.encoding import Float32Plan, dumps, result

    plan = Float32Plan(reader.selection)
    fresh = [await store.read(reader, sample[i % len(sample)]) for i in range(2 * n)]
    clock = time.perf_counter
    t0 = clock()
    for r in fresh[:n]:
        orjson.dumps(result("k", r))
    plain = clock() - t0
    convert = encode = 0.0
    for r in fresh[n:]:
        t0 = clock()
        plan.apply((r,))
        t1 = clock()
        dumps(result("k", r))
        convert += t1 - t0
        encode += clock() - t1
    return {
        "plain_encode_us": 1e6 * plain / n,
        "convert_us": 1e6 * convert / n,
        "numpy_encode_us": 1e6 * encode / n,
        "added_us": 1e6 * (convert + encode - plain) / n,
    }


def report(figures: dict[str, Any], args: HttpBenchConfig, console: Any = None) -> None:
    """Print the figures as tables on ``console`` (a rich Console; default: stdout)."""
    if figures.get("mode") == "services":
        from rich.console import Console

        from . import http_services

        console = console or Console()
        console.width = max(console.width, 132)
        http_services.report(figures, args, console)
        return
    if figures.get("mode", "standard") != "standard":
        from . import http_batch

        http_batch.report(figures, args, console)
        return
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.width = max(console.width, 132)  # the throughput table is wide; never wrap its cells
    lat = figures["latency"]
    base = lat["library"]
    table = Table(title=f"one client, loopback, 30 tables, {args.requests} requests per variant (alternating rounds)")
    for col in ["variant", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, s in lat.items():
        added = name != "library"
        table.add_row(
            name,
            f"{s['p50_ms']:.3f}",
            f"{s['p99_ms']:.3f}",
            f"{s['p50_ms'] - base['p50_ms']:+.3f}" if added else "",
            f"{s['p99_ms'] - base['p99_ms']:+.3f}" if added else "",
        )
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
        "vs off",
        "CPU ms/req: server",
        "postgres",
        "client",
        "total",
    ]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    rows = figures["throughput"]
    for clients in sorted({r["clients"] for r in rows}):
        level = {r["variant"]: r for r in rows if r["clients"] == clients}
        off = level.get("http")
        for name, r in level.items():
            ratio = f"{r['per_second'] / off['per_second']:.2f}x" if off and name != "library" else ""
            cpu = r["cpu_ms"]
            table.add_row(
                str(clients),
                name,
                f"{r['per_second']:,.0f}",
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                ratio,
                f"{cpu['server']:.3f}" if name != "library" else "",
                f"{cpu['postgres']:.3f}",
                f"{cpu['client']:.3f}",
                f"{sum(cpu.values()):.3f}",
            )
        table.add_section()
    console.print(table)
    f32 = figures.get("float32")
    if f32:
        console.print(
            f"real features printed as float32 (in-process, per 30-table request): conversion "
            f"{f32['convert_us']:.1f} µs + encoding {f32['numpy_encode_us']:.1f} µs against plain encoding "
            f"{f32['plain_encode_us']:.1f} µs: {f32['added_us']:+.1f} µs"
        )
    console.print(
        "library = AsyncFeatureStore.read in the client process; http = POST /v1/features, coalescing off; "
        f"http+coalesce = coalescing on (window {args.window_us} µs). The client shares the CPU with the "
        f"servers and PostgreSQL ({os.cpu_count()} cores). CPU ms/req: user+system time per request of the "
        "server process, of the PostgreSQL backends serving it (the library's own, for 'library'), and of "
        "this client process; on a shared machine it is steadier than req/s."
    )


def main(args: HttpBenchConfig, dsn: str) -> dict[str, Any]:
    """Measure (see the module docstring) and return the figures with the settings. Raises
    BenchmarkError when the demo data is missing, DatabaseUnavailableError when the database is down."""
    from pgfeatures.connections import connect
    from pgfeatures.connections.rows import one_row
    from pgfeatures.errors import BenchmarkError

    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    settings = asdict(args)
    if args.mode == "services":  # loads its own copy of the demo data
        from . import http_services

        return {
            "settings": settings,
            "mode": args.mode,
            **http_services.run(args, dsn, runner, lambda m: print(m, file=sys.stderr)),
        }
    with connect(dsn, "pgfeatures-bench-http") as conn:
        present = one_row(conn.execute("SELECT to_regclass('demo.t29') IS NOT NULL"))[0]
    if not present:
        raise BenchmarkError("the demo data is missing: run 'pgfeatures demo' first")
    if args.mode != "standard":
        from . import http_batch

        return {"settings": settings, "mode": args.mode, **http_batch.run(args, dsn, runner)}
    common = dict(pool_size=args.pool_size, workers=args.workers, window_us=args.window_us)
    servers = {
        "http": ServeProcess(*serve_flags(dsn, coalesce=False, **common)),
        "http+coalesce": ServeProcess(*serve_flags(dsn, coalesce=True, **common)),
    }
    if args.baseline_src:  # coalescing off, from another source tree
        servers["baseline"] = ServeProcess(
            *serve_flags(dsn, coalesce=False, **common), env={"PYTHONPATH": os.path.abspath(args.baseline_src)}
        )
    with contextlib.ExitStack() as stack:
        for srv in servers.values():
            stack.enter_context(srv)
        figures = runner(run_benchmark(args, dsn, servers))
    return {"settings": settings, "mode": "standard", **figures}
