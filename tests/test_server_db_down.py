"""The service when the database goes away: 503s with Retry-After, /readyz failing, recovery without restart.

The server (a real process: these are about processes, sockets and signals)
reaches PostgreSQL through a TCP proxy owned by the test (support/proxy.py),
so the database can be made to disappear (listener closed, every connection
reset: what clients see when a server stops or fails over) or to hang (bytes
held: what they see when it stalls), and come back, without touching the
shared PostgreSQL. Time bounds in here are generous ceilings that only a hung
request would reach; no test asserts a latency.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import server_data as data
from support.proxy import Proxy
from support.serve import ServeProcess

ACQUIRE_TIMEOUT = 0.5
REQUEST_TIMEOUT = 2.0
CEILING = 15.0  # no request may take longer: a hung request fails the test through httpx's timeout


@pytest.fixture(scope="module")
def proxy(dsn: str) -> Iterator[Proxy]:
    p = Proxy.to(dsn)
    yield p
    p.close()


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_down_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("down"))
    data.drop(dsn, schema)


def start_server(dsn: str, proxy: Proxy, definitions: Path, *, ready: bool = True) -> ServeProcess:
    return ServeProcess(
        "--dsn",
        proxy.dsn(dsn),
        "--definitions",
        str(definitions),
        "--pool-size",
        "2",
        "--retry-after",
        "3",
        "--acquire-timeout",
        str(ACQUIRE_TIMEOUT),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--connect-timeout",
        "2",
        "--graceful-timeout",
        "20",
    ).start(ready_within=60 if ready else None)


@pytest.fixture()
def server(dsn: str, proxy: Proxy, definitions: Path) -> Iterator[ServeProcess]:
    proc = start_server(dsn, proxy, definitions)
    yield proc
    proxy.resume()
    proc.stop()


def read(client: httpx.Client, i: int = 3) -> httpx.Response:
    return client.post("/v1/features", json={"key": data.hexkey(i)})


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "database_unavailable"


def wait_until(condition, what: str, within: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {within:g} s")
        time.sleep(0.2)


def test_stopped_database_503_then_recovery_without_restart(server: ServeProcess, proxy: Proxy) -> None:
    with httpx.Client(base_url=server.url, timeout=CEILING) as c:
        assert read(c).json()["features"] == data.expected(3)
        proxy.stop()
        for _ in range(3):  # stale pooled connections, then no connection at all: 503 each time, never a hang
            assert_unavailable(read(c))
        batch = c.post("/v1/features/batch", json={"keys": [data.hexkey(1)]})
        assert_unavailable(batch)
        wait_until(lambda: c.get("/readyz").status_code == 503, "not ready")
        r = c.get("/readyz")
        assert r.json()["status"] == "not_ready" and r.json()["reason"] == "database_unavailable"
        assert "database unavailable" in r.json()["message"]
        assert r.headers["retry-after"] == "3"
        assert c.get("/healthz").status_code == 200  # alive all along: no restart wanted

        proxy.start()
        wait_until(lambda: c.get("/readyz").status_code == 200, "ready again")
        wait_until(lambda: read(c).status_code == 200, "reading again")
        assert read(c, 7).json()["features"] == data.expected(7)
        assert data.metric(c.get("/metrics").text, "pgfeatures_db_errors_total", reason="unavailable") >= 4
    assert server.proc is not None and server.proc.poll() is None  # the same process throughout


def test_hung_database_is_a_504_not_a_hung_request(server: ServeProcess, proxy: Proxy) -> None:
    with httpx.Client(base_url=server.url, timeout=CEILING) as c:
        assert read(c).status_code == 200
        proxy.pause()
        r = read(c)  # after request_timeout, not never
        assert r.status_code == 504 and r.headers["retry-after"] == "3", r.text
        assert r.json()["error"]["type"] == "query_timeout"
        assert "did not answer within" in read(c).json()["error"]["message"]
        proxy.resume()
        wait_until(lambda: read(c).status_code == 200, "reading again")
        assert data.metric(c.get("/metrics").text, "pgfeatures_db_errors_total", reason="timeout") >= 1


def test_sigterm_drains_in_flight_requests(server: ServeProcess, proxy: Proxy) -> None:
    """A request held up by the database when SIGTERM arrives still gets its answer; then the server exits."""
    assert server.proc is not None
    with httpx.Client(base_url=server.url, timeout=CEILING) as c:
        assert read(c).status_code == 200
        proxy.pause()
        result: dict[str, httpx.Response] = {}
        request = threading.Thread(
            target=lambda: result.setdefault("r", read(httpx.Client(base_url=server.url, timeout=CEILING)))
        )
        request.start()
        # In flight once it holds a pool connection (the metrics scrape refreshes the pool gauges).
        wait_until(
            lambda: data.metric(c.get("/metrics").text, "pgfeatures_pool_connections", state="available") < 2,
            "in flight",
            within=REQUEST_TIMEOUT,
        )
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # let the server start shutting down while the request is still held
    proxy.resume()
    request.join(CEILING)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["features"] == data.expected(3)
    # uvicorn re-raises the captured SIGTERM once shut down, so a clean exit reads as "killed by SIGTERM".
    assert server.proc.wait(CEILING) in (0, -signal.SIGTERM)


def test_unreachable_at_startup_serves_probes_and_becomes_ready(dsn: str, proxy: Proxy, definitions: Path) -> None:
    proxy.stop()
    server = start_server(dsn, proxy, definitions, ready=False)
    try:
        with httpx.Client(base_url=server.url, timeout=CEILING) as c:
            wait_until(lambda: _alive(c), "alive")
            r = c.get("/readyz")
            assert (
                r.status_code == 503
                and r.json()["reason"] == "warming_up"
                and r.json()["message"].startswith("warming up")
            )
            r = read(c)
            assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
            proxy.start()
            wait_until(lambda: c.get("/readyz").status_code == 200, "ready")
            assert read(c).json()["features"] == data.expected(3)
    finally:
        server.stop()


def _alive(c: httpx.Client) -> bool:
    try:
        return c.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
