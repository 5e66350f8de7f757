"""Interleaved timing: latency percentiles and client CPU per request, callables measured in alternating rounds.

Machines here are shared and noisy, so callables are never timed one after another in long blocks:
``measure_interleaved`` runs them in alternating rounds, so a slow patch of the machine hits every one
alike and their ratios stay meaningful. The demo measures its strategies with it; the benchmarks
(pgfeatures-bench) build their throughput loops beside it. Needs numpy (the load extra).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
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
