"""Timing loops: latency percentiles and client CPU per request, strategies interleaved.

Machines here are shared and noisy, so strategies are never timed one after
another in long blocks: ``measure_interleaved`` runs them in alternating
rounds, so a slow patch of the machine hits every strategy alike and their
ratios stay meaningful. ``measure_threads`` / ``measure_tasks`` measure
throughput: concurrent callers back to back for a fixed time.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    name: str
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_ms: float  # client CPU (user + system of this process) per request

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, latencies_ns: Sequence[int], cpu_s: float, per: int = 1) -> Stats:
    """Stats over a set of timed calls; ``per`` divides everything (e.g. keys per batch call)."""
    lat = np.asarray(latencies_ns, dtype=np.float64) / 1e6 / per
    n = len(lat)
    return Stats(
        name,
        n,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 90)),
        float(np.percentile(lat, 99)),
        float(lat.mean()),
        cpu_s * 1e3 / n / per,
    )


@dataclass(frozen=True)
class Measured:
    """One call's timings: its summary and the latencies behind it (ms per request, i.e. divided by ``per``)."""

    stats: Stats
    latencies_ms: np.ndarray

    def quantiles(self, points: int = 101) -> list[float]:
        """Latency at ``points`` evenly spaced percentiles (0..100): the distribution, compactly."""
        return [float(q) for q in np.percentile(self.latencies_ms, np.linspace(0, 100, points))]


def _each(value: T | Mapping[str, T], name: str) -> T:
    return value[name] if isinstance(value, Mapping) else value


def run_interleaved(
    calls: Mapping[str, Callable[[Any], Any]],
    args: Sequence[Any] | Mapping[str, Sequence[Any]],
    n: int | Mapping[str, int],
    *,
    rounds: int = 10,
    warmup: int | Mapping[str, int] = 20,
    per: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, Measured]:
    """Time ``n`` calls of each callable, spread over ``rounds`` alternating rounds, after ``warmup`` untimed calls.

    ``args``, ``n`` and ``warmup`` may be given per call name (a mapping) or
    for all; arguments are drawn from ``args`` with a seeded generator.
    Client CPU is this process's user + system time over the timed calls.
    """
    rng = random.Random(seed)
    for name, call in calls.items():
        pool = _each(args, name)
        for _ in range(_each(warmup, name)):
            call(rng.choice(pool))
    lat: dict[str, list[int]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    clock, cpu_clock = time.perf_counter_ns, time.process_time
    for r in range(rounds):
        for name, call in calls.items():
            pool = _each(args, name)
            want = max(1, _each(n, name))
            # Spread ``want`` calls over the rounds (a row of 5 slow calls gets one in every other round).
            picks = [rng.choice(pool) for _ in range((r + 1) * want // rounds - r * want // rounds)]
            out = lat[name]
            c0 = cpu_clock()
            for a in picks:
                t0 = clock()
                call(a)
                out.append(clock() - t0)
            cpu[name] += cpu_clock() - c0
    per = per or {}
    return {
        name: Measured(
            summarize(name, lat[name], cpu[name], per.get(name, 1)),
            np.asarray(lat[name], dtype=np.float64) / 1e6 / per.get(name, 1),
        )
        for name in calls
    }


def measure_interleaved(
    calls: Mapping[str, Callable[[Any], Any]],
    args: Sequence[Any],
    n: int,
    *,
    rounds: int = 10,
    warmup: int = 20,
    per: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, Stats]:
    """Time ``n`` calls of each callable on arguments drawn from ``args``, in ``rounds`` alternating rounds."""
    measured = run_interleaved(
        calls, args, max(1, n // rounds) * rounds, rounds=rounds, warmup=warmup, per=per, seed=seed
    )
    return {name: m.stats for name, m in measured.items()}


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
