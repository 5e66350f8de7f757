"""Timing loops: latency percentiles and client CPU per request, strategies interleaved.

Machines here are shared and noisy, so strategies are never timed one after
another in long blocks: ``measure_interleaved`` runs them in alternating
rounds, so a slow patch of the machine hits every strategy alike and their
ratios stay meaningful.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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
    rng = random.Random(seed)
    for call in calls.values():
        for _ in range(warmup):
            call(rng.choice(args))
    lat: dict[str, list[int]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    per_round = max(1, n // rounds)
    clock, cpu_clock = time.perf_counter_ns, time.process_time
    for _ in range(rounds):
        for name, call in calls.items():
            picks = [rng.choice(args) for _ in range(per_round)]
            out = lat[name]
            c0 = cpu_clock()
            for a in picks:
                t0 = clock()
                call(a)
                out.append(clock() - t0)
            cpu[name] += cpu_clock() - c0
    per = per or {}
    return {name: summarize(name, lat[name], cpu[name], per.get(name, 1)) for name in calls}
