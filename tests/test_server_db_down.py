"""The service when the database goes away: 503s with Retry-After, /readyz failing, recovery without restart.

The server reaches PostgreSQL through a TCP proxy owned by the test, so the
database can be made to disappear (listener closed, every connection reset:
what clients see when a server stops or fails over) or to hang (bytes held:
what they see when it stalls), and come back, without touching the shared
PostgreSQL. Time bounds in here are generous ceilings that only a hung
request would reach; no test asserts a latency.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import server_data as data
from pgfeatures.bench.http import ServeProcess, free_port

ACQUIRE_TIMEOUT = 0.5
REQUEST_TIMEOUT = 2.0
CEILING = 15.0  # no request may take longer: a hung request fails the test through httpx's timeout


class Proxy:
    """A TCP proxy on its own event loop thread that can be stopped, restarted on the same port, and paused."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event = self._call(self._event())

    async def _event(self) -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        """Listen (again) on the same port."""
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True))

    def stop(self) -> None:
        """Stop listening and reset every proxied connection."""
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(stop())

    def pause(self) -> None:
        """Hold every byte in both directions: the database seems to hang."""
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 16):
            await self._flowing.wait()
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()


@pytest.fixture(scope="module")
def proxy(dsn: str) -> Iterator[Proxy]:
    params = conninfo_to_dict(dsn)
    p = Proxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    p.start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_down_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("down"))
    data.drop(dsn, schema)


def start_server(dsn: str, proxy: Proxy, definitions: Path, *, ready: bool = True) -> ServeProcess:
    proxied = make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))
    return ServeProcess(
        "--dsn", proxied, "--definitions", str(definitions), "--pool-size", "2", "--retry-after", "3",
        "--acquire-timeout", str(ACQUIRE_TIMEOUT), "--request-timeout", str(REQUEST_TIMEOUT), "--connect-timeout", "2",
        "--graceful-timeout", "20",
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
        assert r.json()["status"] == "not_ready" and "database unavailable" in r.json()["reason"]
        assert r.headers["retry-after"] == "3"
        assert c.get("/healthz").status_code == 200  # alive all along: no restart wanted

        proxy.start()
        wait_until(lambda: c.get("/readyz").status_code == 200, "ready again")
        wait_until(lambda: read(c).status_code == 200, "reading again")
        assert read(c, 7).json()["features"] == data.expected(7)
        assert data.metric(c.get("/metrics").text, "pgfeatures_db_errors_total", reason="unavailable") >= 4
    assert server.proc is not None and server.proc.poll() is None  # the same process throughout


def test_hung_database_is_a_503_not_a_hung_request(server: ServeProcess, proxy: Proxy) -> None:
    with httpx.Client(base_url=server.url, timeout=CEILING) as c:
        assert read(c).status_code == 200
        proxy.pause()
        assert_unavailable(read(c))  # after request_timeout, not never
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
        request = threading.Thread(target=lambda: result.setdefault("r", read(httpx.Client(base_url=server.url, timeout=CEILING))))
        request.start()
        # In flight once it holds a pool connection (the metrics scrape refreshes the pool gauges).
        wait_until(lambda: data.metric(c.get("/metrics").text, "pgfeatures_pool_connections", state="available") < 2,
                   "in flight", within=REQUEST_TIMEOUT)
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
            assert r.status_code == 503 and r.json()["reason"].startswith("warming up")
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
