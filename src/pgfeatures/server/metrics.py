"""Prometheus metrics of the service, served at ``/metrics``.

- ``pgfeatures_http_requests_total{endpoint,status}`` and
  ``pgfeatures_http_request_duration_seconds{endpoint}``: every request,
  timed from the first byte the app sees to the last it sends;
- ``pgfeatures_db_duration_seconds{kind}``: time in the store per database
  call (``single``, ``batch``, ``coalesced``), pool wait included;
- ``pgfeatures_db_errors_total{reason}``: ``unavailable`` (pool timeout,
  lost connection) and ``timeout`` (request deadline);
- ``pgfeatures_coalesced_batch_keys``: keys per coalesced query;
- ``pgfeatures_service_requests_total{service,endpoint,status}``,
  ``pgfeatures_service_request_duration_seconds{service,endpoint}`` and
  ``pgfeatures_service_db_duration_seconds{service}``: the same per feature
  service (label values: the definitions' services only);
- ``pgfeatures_transform_duration_seconds{service,transform}``: seconds a feature service's
  request-time transform took, output checks included: one observation per request, or per batch
  chunk (a ``batch = true`` transform's one call; a row-wise one's calls on the chunk's rows together);
- ``pgfeatures_table_rows_total{table}`` / ``pgfeatures_table_misses_total{table}`` /
  ``pgfeatures_table_expired_total{table}``: per feature table, rows served,
  keys without a row, rows older than the ttl;
- ``pgfeatures_table_newest_row_age_seconds{table}``: seconds since the
  newest row's ``updated_at`` (server clock; an upper bound, see
  ``inventory.py``; NaN when it is no longer known, absent until first known),
  set at each scrape;
- ``pgfeatures_push_rows_total{table,result}``: pushed keys ``written`` or
  ``skipped`` (the stored row was newer);
- ``pgfeatures_pool_connections{state}`` (size, available),
  ``pgfeatures_pool_requests_waiting``, ``pgfeatures_pool_errors{kind}``:
  the read pool, from psycopg_pool's statistics;
- ``pgfeatures_ready``: 1 once warmed up (with several workers, the number
  of ready workers: ``/readyz`` answers for the worker that took the request).

Per-table counts are summed in plain dicts on the request path and moved to
the Prometheus counters by ``flush()`` (once a second and at every scrape):
thirty counter increments per request would cost more than the rest of the
bookkeeping together.

With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``pgfeatures serve``
does) and every worker writes its values there; a scrape of any worker then
reports the sum over all of them (gauges: the sum over live workers). A
worker that exits cleanly drops its live gauges itself; one that is killed
cannot, so every scrape first drops the live-gauge files of workers that no
longer run (their counters stay: counts never go backwards).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from ..definitions import Registry
from ..reader import EXPIRED, PRESENT

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # the *_created series double the exposition and no dashboard uses them
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Loopback requests take 0.3-3 ms; the tail and timeouts reach seconds.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# A transform is meant to take microseconds (docs/transforms.md); a slow one reaches milliseconds.
TRANSFORM_BUCKETS = (
    0.000005,
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.1,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


class WithStatus(Protocol):
    """A read's result: a FeatureResult or a ServiceVector, each with its tables' status."""

    @property
    def status(self) -> Mapping[str, str]: ...


POOL_STATS = {"requests_errors": "requests", "connections_errors": "connections", "connections_lost": "lost"}


def multiprocess_mode() -> bool:
    """Whether metrics live in files shared by worker processes: decided, as prometheus_client decides
    it, once, when it was imported (``$PROMETHEUS_MULTIPROC_DIR`` set then). A variable set later (Feast
    sets one when it is imported) must not make this process read files its metrics were never written to."""
    return values.ValueClass is not values.MutexValue and bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The service's metrics, in a registry of their own (several apps may live in one process)."""

    def __init__(self, tables: Iterable[str], services: Iterable[str] = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pgfeatures_http_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "pgfeatures_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_time = Histogram(
            "pgfeatures_db_duration_seconds",
            "time in the store per database call (pool wait included)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_errors = Counter("pgfeatures_db_errors", "database calls that failed", ["reason"], registry=r)
        self.batch_keys = Histogram(
            "pgfeatures_coalesced_batch_keys", "keys per coalesced query", buckets=BATCH_BUCKETS, registry=r
        )
        self.service_requests = Counter(
            "pgfeatures_service_requests",
            "HTTP requests per feature service",
            ["service", "endpoint", "status"],
            registry=r,
        )
        self.service_latency = Histogram(
            "pgfeatures_service_request_duration_seconds",
            "HTTP request latency per feature service",
            ["service", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.service_db_time = Histogram(
            "pgfeatures_service_db_duration_seconds",
            "time in the store per database call, per feature service",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transform_time = Histogram(
            "pgfeatures_transform_duration_seconds",
            "seconds per call of a feature service's request-time transform",
            ["service", "transform"],
            buckets=TRANSFORM_BUCKETS,
            registry=r,
        )
        self._transform_children: dict[tuple[str, str], Histogram] = {}
        self.rows = Counter("pgfeatures_table_rows", "rows found, per feature table", ["table"], registry=r)
        self.misses = Counter("pgfeatures_table_misses", "keys absent, per feature table", ["table"], registry=r)
        self.expired = Counter(
            "pgfeatures_table_expired", "rows older than the ttl, per feature table", ["table"], registry=r
        )
        self.newest_age = Gauge(
            "pgfeatures_table_newest_row_age_seconds",
            "seconds since the newest row's updated_at (an upper bound; NaN: unknown)",
            ["table"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.pushed_rows = Counter(
            "pgfeatures_push_rows",
            "pushed keys, written or skipped (a newer row was kept)",
            ["table", "result"],
            registry=r,
        )
        self.expired_rows = Counter(
            "pgfeatures_expired_rows",
            "rows deleted past their table's ttl (serve --expire-every)",
            ["table"],
            registry=r,
        )
        self.services = frozenset(services)
        self.pool_connections = Gauge(
            "pgfeatures_pool_connections", "read pool connections", ["state"], registry=r, multiprocess_mode="livesum"
        )
        self.pool_waiting = Gauge(
            "pgfeatures_pool_requests_waiting",
            "requests waiting for a read connection",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_errors = Gauge(
            "pgfeatures_pool_errors",
            "read pool errors since start (psycopg_pool statistics)",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "pgfeatures_ready",
            "1 once warmed up (with several workers: how many are)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.definitions = Gauge(
            "pgfeatures_definitions",
            "the fingerprint of the definitions served (with several workers: how many serve it)",
            ["fingerprint"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._fingerprint: str | None = None
        tables = list(tables)
        self._rows: dict[str, int] = dict.fromkeys(tables, 0)
        self._misses: dict[str, int] = dict.fromkeys(tables, 0)
        self._expired: dict[str, int] = dict.fromkeys(tables, 0)
        self._service_children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}
        # Bound children per (endpoint, status), so the request path skips label lookups.
        self._children: dict[tuple[str, int], tuple[Histogram, Counter]] = {}

    def serve(self, registry: Registry) -> None:
        """Count for ``registry``'s tables and services too (those of earlier definitions stay: labels stay
        bounded by the definitions served), and show its fingerprint."""
        for table in registry.tables:
            for pending in (self._rows, self._misses, self._expired):
                pending.setdefault(table, 0)
        self.services = self.services | frozenset(registry.services)
        if self._fingerprint is not None and self._fingerprint != registry.fingerprint:
            self.definitions.labels(self._fingerprint).set(0)
        self._fingerprint = registry.fingerprint
        self.definitions.labels(registry.fingerprint).set(1)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:
            children = self._children[endpoint, status] = (
                self.latency.labels(endpoint),
                self.requests.labels(endpoint, str(status)),
            )
        children[0].observe(seconds)
        children[1].inc()

    def observe_service(self, service: str, endpoint: str, status: int, seconds: float) -> None:
        """A request of a feature service (ignored for a name that is not one: labels stay bounded)."""
        if service not in self.services:
            return
        children = self._service_children.get((service, endpoint, status))
        if children is None:
            children = self._service_children[service, endpoint, status] = (
                self.service_latency.labels(service, endpoint),
                self.service_requests.labels(service, endpoint, str(status)),
            )
        children[0].observe(seconds)
        children[1].inc()

    def observe_transform(self, service: str, transform: str, seconds: float) -> None:
        """One call of a service's transform (the store's ``on_transform``; labels: the definitions' own)."""
        child = self._transform_children.get((service, transform))
        if child is None:
            child = self._transform_children[service, transform] = self.transform_time.labels(service, transform)
        child.observe(seconds)

    def count(self, results: Iterable[WithStatus]) -> None:
        """Add rows present, missing and expired per table, from each result's ``status`` (cheap: plain
        dict increments, flushed later)."""
        rows, misses, expired = self._rows, self._misses, self._expired
        for result in results:
            for table, state in result.status.items():
                if state == PRESENT:
                    rows[table] += 1
                elif state == EXPIRED:
                    expired[table] += 1
                else:
                    misses[table] += 1

    def pushed(self, table: str, written: int, skipped: int) -> None:
        if written:
            self.pushed_rows.labels(table, "written").inc(written)
        if skipped:
            self.pushed_rows.labels(table, "skipped").inc(skipped)

    def expired_deleted(self, table: str, deleted: int) -> None:
        if deleted:
            self.expired_rows.labels(table).inc(deleted)

    def set_ages(self, ages: Mapping[str, float]) -> None:
        for table, age in ages.items():
            self.newest_age.labels(table).set(age)

    def flush(self, pool_stats: Mapping[str, int] | None) -> None:
        """Move the per-table sums into the counters and refresh the pool gauges."""
        for pending, counter in ((self._rows, self.rows), (self._misses, self.misses), (self._expired, self.expired)):
            for table, n in pending.items():
                if n:
                    counter.labels(table).inc(n)
                    pending[table] = 0
        if pool_stats is not None:
            self.pool_connections.labels("size").set(pool_stats.get("pool_size", 0))
            self.pool_connections.labels("available").set(pool_stats.get("pool_available", 0))
            self.pool_waiting.set(pool_stats.get("requests_waiting", 0))
            for stat, kind in POOL_STATS.items():
                self.pool_errors.labels(kind).set(pool_stats.get(stat, 0))

    def exposition(self) -> bytes:
        """The text format of every metric (of every worker, in multiprocess mode)."""
        if multiprocess_mode():
            forget_dead_workers()
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode only)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that no longer run (killed, so they could not)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    pids = {int(m.group(1)) for p in Path(folder).glob("gauge_live*.db") if (m := _LIVE_GAUGE_FILE.fullmatch(p.name))}
    for pid in pids:
        if not _running(pid):
            multiprocess.mark_process_dead(pid, folder)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed worker not yet reaped is one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
