"""``pgfeatures bench-soak``: a bounded load test of ``pgfeatures serve`` through the faults of managed PostgreSQL.

Everything runs on loopback against private processes it starts and removes
(``clusters``): a primary with scram-sha-256 logins, a streaming replica, and
``pgfeatures serve`` processes reading through a password file
(``--password-file``). A fixed number of requests at a fixed concurrency goes
through each phase, and the faults come at fixed points of the request stream:

phase ``direct`` (the service reads from the primary):
    ``restart`` (fast stop, the primary down for ``outage`` seconds, start),
    ``kill -9`` of the postmaster (down for ``outage`` seconds, then crash
    recovery), ``rotation`` (the role's password changes, the password file
    follows, every backend is terminated);
phase ``replica`` (the service reads from the replica, the primary as fallback):
    ``replica stop`` (the replica down for ``replica_down`` seconds), and a
    second ``rotation``.

For each fault the report gives the failed requests inside its window (from
the fault until the database is reachable again, plus the recovery time) and
outside it, p50/p99 before, during and after, and how long after the
database was reachable the first request succeeded and ``/readyz`` was ready
again. It also compares the service's open database connections, file
descriptors and RSS before the run and after it. The client shares the
machine's cores with the service and PostgreSQL: the latencies are for this
box under load, the failure counts and recovery times are the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from pgfeatures.definitions import demo_registry

from .harness.clusters import Cluster, Replica, process_stats
from .harness.serve import ServeProcess, process_tree
from .http import HTTPConnection, percentile_ms, post_request

ROLE = "app"
AFTER = 3.0  # seconds of load after the last fault
READ_APPS = ("pgfeatures-read", "pgfeatures-write", "pgfeatures-probe", "pgfeatures-check")


@dataclass(frozen=True)
class SoakConfig:
    """What the soak does. The defaults take about two minutes on a 2-core machine."""

    requests: int = 40_000  # per phase
    concurrency: int = 8
    tables: int = 10
    entities: int = 10_000
    outage: float = 3.0  # seconds the primary stays down (restart, kill -9)
    replica_down: float = 4.0
    pool_size: int = 4
    seed: int = 0


@dataclass
class Fault:
    name: str
    phase: str
    started: float = 0.0
    reachable: float = 0.0  # when the database answered again (the fault's own end)
    first_ok: float | None = None  # first successful request after ``reachable``
    ready_again: float | None = None  # first /readyz 200 after ``reachable``
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sample:
    sent: float
    seconds: float
    status: int
    error: str | None = None  # a failed request's answer (the first ones are kept for the report)


class _Phase:
    """One serve process under load, with faults injected at fixed request counts."""

    def __init__(self, name: str, cfg: SoakConfig, server: ServeProcess, faults: list[tuple[str, Callable[[], float]]]):
        self.name = name
        self.cfg = cfg
        self.server = server
        self.faults = faults  # (name, run: blocking, returns when the database is reachable again)
        self.samples: list[_Sample] = []
        self.ready: list[tuple[float, bool]] = []
        self.done = asyncio.Event()
        self.count = 0

    async def run(self, resources: Callable[[], dict[str, Any]]) -> tuple[list[Fault], dict[str, Any]]:
        """Load the service; the faults at fixed request counts; at least ``AFTER`` seconds of load after
        the last one. Returns the faults and the resources measured once the load is steady."""
        rng = random.Random(self.cfg.seed)
        keys = [_key(i) for i in range(self.cfg.entities)]
        bodies = [orjson.dumps({"key": k.hex()}) for k in rng.sample(keys, min(2000, len(keys)))]
        requests = [post_request("/v1/features", b) for b in bodies]
        clients = [await HTTPConnection.open("127.0.0.1", self.server.port) for _ in range(self.cfg.concurrency)]
        steady = int(self.cfg.requests * 0.1)
        points = [
            steady + int((self.cfg.requests - steady) * (i + 1) / (len(self.faults) + 1))
            for i in range(len(self.faults))
        ]
        faults: list[Fault] = []
        tasks = [asyncio.ensure_future(self._client(c, requests, rng.randrange(10**6))) for c in clients]
        poller = asyncio.ensure_future(self._poll_ready())
        try:
            while self.count < steady:
                await asyncio.sleep(0.01)
            before = await asyncio.to_thread(resources)
            for point, (name, inject) in zip(points, self.faults):
                while self.count < point:
                    await asyncio.sleep(0.01)
                fault = Fault(name, self.name, started=time.monotonic())
                fault.reachable = await asyncio.to_thread(inject)
                faults.append(fault)
            last = time.monotonic()
            while self.count < self.cfg.requests or time.monotonic() - last < AFTER:
                await asyncio.sleep(0.01)
        finally:
            self.done.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            poller.cancel()
            for c in clients:
                c.close()
        for fault in faults:
            fault.first_ok = next(
                (s.sent + s.seconds for s in self.samples if s.sent >= fault.reachable and s.status == 200), None
            )
            fault.ready_again = next((t for t, ok in self.ready if t >= fault.reachable and ok), None)
        return faults, before

    async def _client(self, conn: HTTPConnection, requests: Sequence[bytes], seed: int) -> None:
        rng = random.Random(seed)
        while not self.done.is_set():
            self.count += 1
            raw = requests[rng.randrange(len(requests))]
            sent = time.monotonic()
            error = None
            try:
                status, body = await conn.request(raw)
                if status != 200:
                    error = body[:300].decode(errors="replace")
            except (OSError, asyncio.IncompleteReadError) as exc:
                status, error = 0, f"connection: {exc}"
                conn = await HTTPConnection.open("127.0.0.1", self.server.port)
            self.samples.append(_Sample(sent, time.monotonic() - sent, status, error))

    async def _poll_ready(self) -> None:
        conn = await HTTPConnection.open("127.0.0.1", self.server.port)
        probe = b"GET /readyz HTTP/1.1\r\nHost: soak\r\n\r\n"
        while not self.done.is_set():
            try:
                status, _ = await conn.request(probe)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                conn = await HTTPConnection.open("127.0.0.1", self.server.port)
            self.ready.append((time.monotonic(), status == 200))
            await asyncio.sleep(0.05)


def _key(i: int) -> bytes:
    from pgfeatures import demo

    return demo.entity_key(i)


def _summarise(faults: list[Fault], samples: list[_Sample]) -> None:
    """Fill each fault's results: failures in and out of its window, latencies before/during/after."""
    bounds = [f.started for f in faults[1:]] + [float("inf")]
    previous_end = float("-inf")
    for fault, next_start in zip(faults, bounds):
        recovery_end = max(fault.reachable, fault.first_ok or fault.reachable)
        window = (fault.started, recovery_end)
        before = [s for s in samples if previous_end <= s.sent < fault.started]
        during = [s for s in samples if window[0] <= s.sent <= window[1]]
        after = [s for s in samples if window[1] < s.sent < next_start]

        def stats(part: list[_Sample]) -> dict[str, Any]:
            ok = [int(s.seconds * 1e9) for s in part if s.status == 200]
            return {
                "requests": len(part),
                "failed": sum(1 for s in part if s.status != 200),
                "p50_ms": percentile_ms(ok, 50) if ok else None,
                "p99_ms": percentile_ms(ok, 99) if ok else None,
            }

        fault.results = {
            "before": stats(before),
            "during": stats(during),
            "after": stats(after),
            "down_seconds": round(fault.reachable - fault.started, 3),
            "first_ok_after_reachable_s": None
            if fault.first_ok is None
            else round(max(0.0, fault.first_ok - fault.reachable), 3),
            "ready_after_reachable_s": None
            if fault.ready_again is None
            else round(max(0.0, fault.ready_again - fault.reachable), 3),
        }
        previous_end = window[1]


def _resources(server: ServeProcess, clusters: Sequence[Cluster]) -> dict[str, Any]:
    assert server.proc is not None
    pids = process_tree(server.proc.pid)
    stats = [process_stats(p) for p in pids]
    conns = sum(c.connections(app) for c in clusters if c.is_running() for app in READ_APPS)
    return {
        "rss_mb": round(sum(s.rss_bytes for s in stats) / 2**20, 1),
        "fds": sum(s.open_fds for s in stats),
        "db_connections": conns,
    }


def _wait_reachable(cluster: Cluster, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(cluster.dsn(ROLE), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"{cluster.name} not reachable within {timeout:g} s")


def run_soak(cfg: SoakConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both phases; return the report (see the module docstring)."""
    import tempfile

    registry = demo_registry(n_tables=cfg.tables, n_features=8, schema="soak")
    started = time.time()
    with (
        Cluster(replication=True, name="soak-primary", shared_buffers="128MB") as primary,
        tempfile.TemporaryDirectory(prefix="pgfeatures-soak-") as tmp,
    ):
        secret = Path(tmp) / "password"
        passwords = iter(f"soak-{i}-{random.Random(cfg.seed + i).getrandbits(32):x}" for i in range(100))
        password = next(passwords)
        primary.create_role(ROLE, password)
        secret.write_text(password)
        progress(f"loading {cfg.tables} tables x {cfg.entities:,} entities")
        with psycopg.connect(primary.admin_dsn(), autocommit=True) as conn:
            from pgfeatures import demo

            demo.load_demo(conn, registry, cfg.entities, cfg.seed)
            conn.execute(f"GRANT USAGE ON SCHEMA soak TO {ROLE}; GRANT SELECT ON ALL TABLES IN SCHEMA soak TO {ROLE}")
        replica: Replica = primary.replica(name="soak-replica")
        defs = Path(tmp) / "defs.toml"
        defs.write_text(_toml(registry))

        def rotate() -> float:
            new = next(passwords)
            primary.set_password(ROLE, new)
            secret.write_text(new)
            replica.wait_caught_up()
            primary.terminate(user=ROLE)
            replica.terminate(user=ROLE)
            return time.monotonic()

        def restart() -> float:
            primary.stop("fast")
            time.sleep(cfg.outage)
            primary.start()
            return _wait_reachable(primary)

        def kill9() -> float:
            primary.kill9()
            time.sleep(cfg.outage)
            primary.start()
            return _wait_reachable(primary)

        def replica_stop() -> float:
            replica.stop("fast")
            time.sleep(cfg.replica_down)
            replica.start()
            return _wait_reachable(replica)

        base = [
            "--definitions",
            str(defs),
            "--password-file",
            str(secret),
            "--pool-size",
            str(cfg.pool_size),
            "--log-level",
            "warning",
            "--no-prewarm",
        ]
        phases = [
            (
                "direct",
                ["--dsn", primary.dsn(ROLE, password="")],
                [("restart", restart), ("kill -9", kill9), ("rotation", rotate)],
                [primary],
            ),
            (
                "replica",
                ["--dsn", primary.dsn(ROLE, password=""), "--read-dsn", replica.dsn(ROLE, password="")],
                [("replica stop", replica_stop), ("rotation", rotate)],
                [primary, replica],
            ),
        ]
        report: dict[str, Any] = {"config": asdict(cfg), "phases": []}
        for name, flags, faults, clusters in phases:
            log = Path(tmp) / f"serve-{name}.log"
            with open(log, "wb") as output, ServeProcess(*base, *flags, output=output) as server:
                progress(
                    f"phase {name}: {cfg.requests:,} requests at concurrency {cfg.concurrency}, "
                    f"faults: {', '.join(f for f, _ in faults)} (service log: {log})"
                )
                phase = _Phase(name, cfg, server, faults)
                t0 = time.monotonic()
                done, before = asyncio.run(phase.run(functools.partial(_resources, server, clusters)))
                seconds = time.monotonic() - t0
                time.sleep(2.0)  # let the pools settle (replaced connections, probes)
                after = _resources(server, clusters)
                _summarise(done, phase.samples)
                in_windows = sum(f.results["during"]["failed"] for f in done)
                total_failed = sum(1 for s in phase.samples if s.status != 200)
                errors = [f"{s.sent - t0:.2f}s {s.status} {s.error}" for s in phase.samples if s.status != 200][:8]
                report["phases"].append(
                    {
                        "phase": name,
                        "requests": len(phase.samples),
                        "seconds": round(seconds, 1),
                        "errors": errors,
                        "failed": total_failed,
                        "failed_outside_windows": total_failed - in_windows,
                        "resources_before": before,
                        "resources_after": after,
                        "faults": [{"fault": f.name, **f.results} for f in done],
                    }
                )
    report["seconds"] = round(time.time() - started, 1)
    return report


def _toml(registry: Any) -> str:
    lines = [f'schema = "{registry.schema}"', ""]
    for table in registry.tables.values():
        lines.append(f"[tables.{table.name}.features]")
        lines += [f'{f.name} = "{f.type.name}"' for f in table.features]
        lines.append("")
    return "\n".join(lines)


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for phase in report["phases"]:
        table = Table(
            title=f"phase {phase['phase']}: {phase['requests']:,} requests in {phase['seconds']} s, "
            f"{phase['failed']} failed ({phase['failed_outside_windows']} outside fault windows)"
        )
        for col in (
            "fault",
            "down s",
            "failed in window",
            "failed after",
            "first ok after up s",
            "ready after up s",
            "p50/p99 before",
            "p50/p99 during",
            "p50/p99 after",
        ):
            table.add_column(col, justify="right")

        def pp(part: dict[str, Any]) -> str:
            return "-" if part["p50_ms"] is None else f"{part['p50_ms']:.2f}/{part['p99_ms']:.2f}"

        for f in phase["faults"]:
            table.add_row(
                f["fault"],
                f"{f['down_seconds']:.1f}",
                str(f["during"]["failed"]),
                str(f["after"]["failed"]),
                str(f["first_ok_after_reachable_s"]),
                str(f["ready_after_reachable_s"]),
                pp(f["before"]),
                pp(f["during"]),
                pp(f["after"]),
            )
        console.print(table)
        for line in phase.get("errors", []):
            console.print(f"  failed: {line}", markup=False, highlight=False)
        b, a = phase["resources_before"], phase["resources_after"]
        console.print(
            f"  service RSS {b['rss_mb']} -> {a['rss_mb']} MB, fds {b['fds']} -> {a['fds']}, "
            f"database connections {b['db_connections']} -> {a['db_connections']}",
            highlight=False,
        )
