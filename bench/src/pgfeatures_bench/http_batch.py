"""HTTP benchmark, batch modes: do large batches starve single-key reads, and do they leave memory behind?

``pgfeatures bench-http --mode batch``: for each server variant, N single-key
clients (``--batch-singles``, closed loop, all 30 demo tables) run alone and
then alongside one client that loops big batches (``--batch-keys`` keys, all
30 tables), in alternating rounds. Reported: the single-key p50/p99 without
and with the batch client, and the batches' own rate and latency. The batch
client is a process of its own (httpx, reading every answer whole), so its
JSON work does not run on the single-key clients' event loop.

``pgfeatures bench-http --mode memory``: for each variant, the server's RSS
(all its processes) before one huge batch (``--memory-keys``), right after
it, and after a few ordinary batches; with the batch's status, time and
answer size.

Variants: ``chunked`` is this tree with its defaults (``batch_chunk_keys``,
``batch_connections``); ``unchunked`` is this tree with one statement per
batch and no bound on the batch share of the pool (what the service did
before chunking); ``--baseline-src DIR`` adds ``baseline``, a server run from
another source tree (e.g. a checkout of main), for a true before/after.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .harness.serve import ServeProcess, process_tree
from .http import HttpBenchConfig, HTTPConnection, closed_loop, percentile_ms, post_request, serve_flags

SINGLE_TIMEOUT = 30.0


def variants(args: HttpBenchConfig, dsn: str) -> dict[str, ServeProcess]:
    """The servers to compare, not yet started."""
    common = serve_flags(dsn, coalesce=False, pool_size=args.pool_size, workers=args.workers, window_us=0)
    big = max(args.batch_keys, args.memory_keys)
    common += ["--max-batch-keys", str(big), "--no-prewarm"]
    out = {
        "chunked": ServeProcess(*common, *args.serve_flag),
        "unchunked": ServeProcess(*common, "--batch-chunk-keys", str(big), "--batch-connections", str(args.pool_size)),
    }
    if args.baseline_src:
        out["baseline"] = ServeProcess(*common, env={"PYTHONPATH": os.path.abspath(args.baseline_src)})
    return out


# -- the batch client (a process of its own) -----------------------------------------------------


def _batch_client(url: str, bodies: list[bytes], go: Any, idle: Any, quit: Any, out: Any) -> None:
    """Loop batches while ``go`` is set; ``idle`` is set whenever no batch is in flight."""
    import httpx

    latencies: list[float] = []
    answer_bytes = 0
    with httpx.Client(base_url=url, timeout=300, headers={"Content-Type": "application/json"}) as client:
        i = 0
        while not quit.is_set():
            if not go.wait(0.05):
                continue
            idle.clear()
            t0 = time.perf_counter()
            r = client.post("/v1/features/batch", content=bodies[i % len(bodies)])
            content = r.content
            if r.status_code != 200 or not content.endswith(b"]}"):
                out.put(("error", f"HTTP {r.status_code}: {content[:200]!r}"))
                idle.set()
                return
            latencies.append(time.perf_counter() - t0)
            answer_bytes = len(content)
            i += 1
            if not go.is_set():
                idle.set()
    idle.set()
    out.put(("done", latencies, answer_bytes))


class BatchClient:
    def __init__(self, url: str, bodies: list[bytes]):
        ctx = multiprocessing.get_context("spawn")
        self.go, self.idle, self.quit, self.out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        self.idle.set()
        self.proc = ctx.Process(
            target=_batch_client, args=(url, bodies, self.go, self.idle, self.quit, self.out), daemon=True
        )
        self.proc.start()

    def start(self) -> None:
        self.idle.clear()
        self.go.set()

    def pause(self) -> None:
        self.go.clear()
        if not self.idle.wait(600):
            raise RuntimeError("the batch client did not finish its batch within 600 s")

    def finish(self) -> tuple[list[float], int]:
        self.go.clear()
        self.quit.set()
        kind, *rest = self.out.get(timeout=600)
        self.proc.join(30)
        if kind == "error":
            raise RuntimeError(f"batch client: {rest[0]}")
        return rest[0], rest[1]


# -- batch starvation -----------------------------------------------------------------------------


async def starvation(args: HttpBenchConfig, servers: dict[str, ServeProcess]) -> dict[str, Any]:
    import orjson

    from pgfeatures.demo import entity_keys

    rng = random.Random(args.seed)
    keys = entity_keys(args.entities)
    sample = [keys[rng.randrange(len(keys))] for _ in range(5000)]
    singles = [post_request("/v1/features", orjson.dumps({"key": k.hex()})) for k in sample]
    bodies = [
        orjson.dumps({"keys": [keys[rng.randrange(len(keys))].hex() for _ in range(args.batch_keys)]}) for _ in range(4)
    ]
    batchers = {name: BatchClient(srv.url, bodies) for name, srv in servers.items()}
    conns = {
        name: [await HTTPConnection.open("127.0.0.1", srv.port) for _ in range(args.batch_singles)]
        for name, srv in servers.items()
    }

    def caller(conn: HTTPConnection) -> Callable[[int], Awaitable[Any]]:
        async def call(i: int) -> Any:
            status, body = await asyncio.wait_for(conn.request(singles[i]), SINGLE_TIMEOUT)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
            return body

        return call

    lat: dict[tuple[str, bool], list[int]] = {(n, b): [] for n in servers for b in (False, True)}
    for name in servers:  # warm-up
        await closed_loop([caller(c) for c in conns[name]], len(sample), 0.3, args.seed)
    for r in range(args.rounds):
        for with_batches in (False, True):
            for name in servers:
                if with_batches:
                    batchers[name].start()
                    await asyncio.sleep(0.2)  # the first batch is under way
                got, _ = await closed_loop([caller(c) for c in conns[name]], len(sample), args.seconds, args.seed + r)
                lat[name, with_batches].extend(got)
                if with_batches:
                    await asyncio.to_thread(batchers[name].pause)
    for group in conns.values():
        for conn in group:
            conn.close()
    out: dict[str, Any] = {}
    for name in servers:
        batch_lat, answer = batchers[name].finish()
        alone, busy = lat[name, False], lat[name, True]
        out[name] = {
            "alone": {"n": len(alone), "p50_ms": percentile_ms(alone, 50), "p99_ms": percentile_ms(alone, 99)},
            "with_batches": {"n": len(busy), "p50_ms": percentile_ms(busy, 50), "p99_ms": percentile_ms(busy, 99)},
            "batches": {
                "n": len(batch_lat),
                "p50_ms": percentile_ms([int(x * 1e9) for x in batch_lat], 50),
                "answer_mb": answer / 1e6,
            },
        }
    return out


# -- memory ---------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def memory(args: HttpBenchConfig, servers: dict[str, ServeProcess]) -> dict[str, Any]:
    import httpx
    import orjson

    from pgfeatures.demo import entity_keys

    rng = random.Random(args.seed)
    keys = entity_keys(args.entities)
    ordinary = orjson.dumps({"keys": [keys[rng.randrange(len(keys))].hex() for _ in range(1000)]})
    huge = orjson.dumps({"keys": [keys[rng.randrange(len(keys))].hex() for _ in range(args.memory_keys)]})
    out: dict[str, Any] = {}
    for name, srv in servers.items():
        assert srv.proc is not None
        with httpx.Client(base_url=srv.url, timeout=600, headers={"Content-Type": "application/json"}) as c:
            for _ in range(3):
                c.post("/v1/features/batch", content=ordinary).raise_for_status()
            before = rss(srv.proc.pid)
            t0 = time.perf_counter()
            try:
                r = c.post("/v1/features/batch", content=huge)
                status, size = r.status_code, len(r.content)
                error = r.json()["error"]["type"] if status != 200 else None
            except httpx.HTTPError as exc:
                status, size, error = 0, 0, type(exc).__name__
            seconds = time.perf_counter() - t0
            right_after = rss(srv.proc.pid)
            for _ in range(3):
                c.post("/v1/features/batch", content=ordinary).raise_for_status()
            time.sleep(1)
            after = rss(srv.proc.pid)
        out[name] = {
            "status": status,
            "error": error,
            "seconds": seconds,
            "answer_mb": size / 1e6,
            "rss_before_mb": before / 1e6,
            "rss_right_after_mb": right_after / 1e6,
            "rss_after_mb": after / 1e6,
        }
    return out


# -- report ---------------------------------------------------------------------------------------


def report(figures: dict[str, Any], args: HttpBenchConfig, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.width = max(console.width, 132)
    if "starvation" in figures:
        table = Table(
            title=f"{args.batch_singles} single-key clients (30 tables), alone and with one client looping "
            f"{args.batch_keys}-key batches; pool {args.pool_size}, {args.rounds} x {args.seconds:g} s"
        )
        for col in [
            "variant",
            "alone p50 ms",
            "alone p99 ms",
            "with batches p50 ms",
            "with batches p99 ms",
            "p99 ratio",
            "batches",
            "batch p50 ms",
            "answer MB",
        ]:
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, f in figures["starvation"].items():
            a, b, k = f["alone"], f["with_batches"], f["batches"]
            table.add_row(
                name,
                f"{a['p50_ms']:.3f}",
                f"{a['p99_ms']:.3f}",
                f"{b['p50_ms']:.3f}",
                f"{b['p99_ms']:.3f}",
                f"{b['p99_ms'] / a['p99_ms']:.1f}x",
                str(k["n"]),
                f"{k['p50_ms']:.0f}",
                f"{k['answer_mb']:.1f}",
            )
        console.print(table)
    if "memory" in figures:
        table = Table(title=f"server RSS around one {args.memory_keys:,}-key batch (30 tables)")
        for col in ["variant", "status", "seconds", "answer MB", "RSS before MB", "right after MB", "after MB"]:
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, f in figures["memory"].items():
            status = str(f["status"]) + (f" {f['error']}" if f["error"] else "")
            table.add_row(
                name,
                status,
                f"{f['seconds']:.1f}",
                f"{f['answer_mb']:.1f}",
                f"{f['rss_before_mb']:.0f}",
                f"{f['rss_right_after_mb']:.0f}",
                f"{f['rss_after_mb']:.0f}",
            )
        console.print(table)
    console.print(
        "chunked = this tree's defaults; unchunked = one statement per batch, no bound on the batch share of "
        "the pool" + ("; baseline = " + args.baseline_src if args.baseline_src else "")
    )


def run(args: HttpBenchConfig, dsn: str, runner: Callable[..., Any]) -> dict[str, Any]:
    servers = variants(args, dsn)
    for srv in servers.values():
        srv.start()
    try:
        figures: dict[str, Any] = {}
        if args.mode == "batch":
            figures["starvation"] = runner(starvation(args, servers))
        if args.mode == "memory":
            figures["memory"] = memory(args, servers)
        return figures
    finally:
        for srv in servers.values():
            srv.stop()
