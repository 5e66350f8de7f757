"""Throughput loops: concurrent callers back to back for a fixed time (``measure_threads`` /
``measure_tasks``). The interleaved latency loops live in the core (``pgfeatures.timing``, which the
demo uses too) and are re-exported here.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pgfeatures.timing import Measured, Stats, measure_interleaved, run_interleaved, summarize

__all__ = [
    "Measured",
    "Stats",
    "Throughput",
    "measure_interleaved",
    "measure_tasks",
    "measure_threads",
    "run_interleaved",
    "summarize",
]


# -- throughput -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Requests completed by ``clients`` concurrent callers in ``seconds``."""

    mode: str  # "threads" or "async"
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # client CPU per request (all threads of this process)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _throughput(mode: str, clients: int, lat_ns: list[int], seconds: float, cpu_s: float) -> Throughput:
    lat = np.asarray(lat_ns, dtype=np.float64) / 1e6
    n = len(lat)
    if n == 0:
        return Throughput(mode, clients, 0, seconds, 0.0, float("nan"), float("nan"), float("nan"))
    return Throughput(
        mode,
        clients,
        n,
        seconds,
        n / seconds,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        cpu_s * 1e3 / n,
    )


def measure_threads(
    call: Callable[[Any], Any], args: Sequence[Any], clients: int, seconds: float, *, seed: int = 0
) -> Throughput:
    """``clients`` threads calling ``call`` back to back for ``seconds``; each thread draws its own seeded arguments.

    Raises the first exception a client thread hit.
    """
    start = threading.Barrier(clients + 1)
    lat: list[list[int]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    deadline = [0.0]

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        out, clock = lat[i], time.perf_counter_ns
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                a = rng.choice(args)
                t0 = clock()
                call(a)
                out.append(clock() - t0)
        except BaseException as exc:  # reported in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return _throughput("threads", clients, [x for xs in lat for x in xs], elapsed, time.process_time() - c0)


async def measure_tasks(
    call: Callable[[Any], Awaitable[Any]], args: Sequence[Any], clients: int, seconds: float, *, seed: int = 0
) -> Throughput:
    """``clients`` asyncio tasks awaiting ``call`` back to back for ``seconds`` on the running loop."""
    lat: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.perf_counter() < deadline:
            a = rng.choice(args)
            t0 = clock()
            await call(a)
            lat.append(clock() - t0)

    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return _throughput("async", clients, lat, time.perf_counter() - t0, time.process_time() - c0)
