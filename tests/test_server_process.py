"""What only a real ``pgfeatures serve`` process shows: socket-level behaviour (the header
timeout) and several workers sharing their metrics, one of them killed."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from support import server_data as data
from support.serve import ServeProcess, alive

HEADER_TIMEOUT = 1.0
KEEP_ALIVE = 2.0
CLOSED_WITHIN = 8.0  # a ceiling no working timeout reaches; before the fix the server held such connections 75 s+


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_proc_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("proc"))
    data.drop(dsn, schema)


@pytest.fixture(scope="module")
def server(dsn: str, definitions: Path) -> Iterator[ServeProcess]:
    with ServeProcess(
        "--dsn",
        dsn,
        "--definitions",
        str(definitions),
        "--no-prewarm",
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--keep-alive",
        str(KEEP_ALIVE),
    ) as proc:
        yield proc


def connect(server: ServeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLOSED_WITHIN)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, received = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {CLOSED_WITHIN:g} s; received {received!r}")
        if not chunk:
            return received, time.monotonic() - start
        received += chunk


def read_response(sock: socket.socket) -> bytes:
    """One whole Content-Length response."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def request(body: bytes = b'{"key": "' + data.hexkey(1).encode() + b'"}') -> bytes:
    return (
        b"POST /v1/features HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )


def test_unfinished_headers_are_cut_off_with_a_408(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/features HTTP/1.1\r\nHost: t\r\nContent-Le")
        received, took = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert took < CLOSED_WITHIN


@pytest.mark.timing  # a 1.5 s silence must end before the 2 s keep-alive
def test_a_silent_new_connection_is_closed_after_keep_alive(server: ServeProcess) -> None:
    """Like a kept-alive connection idle between requests: closed (no answer) after keep_alive."""
    with connect(server) as sock:
        start = time.monotonic()
        time.sleep(HEADER_TIMEOUT * 1.5)  # past the header timeout: a silent connection is not a slow request
        sock.sendall(request())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        received, took = read_until_closed(sock)
    assert received == b""
    assert time.monotonic() - start < CLOSED_WITHIN + KEEP_ALIVE


def test_a_new_connection_that_never_sends_is_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        received, took = read_until_closed(sock)
    assert received == b"" and took < CLOSED_WITHIN


def test_unfinished_headers_of_a_second_request_on_a_kept_alive_connection(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(request())
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 "), first
        sock.sendall(b"POST /v1/features HTTP/1.1\r\nHo")
        received, _ = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received


@pytest.mark.timing  # a third of the 1 s header timeout between the halves
def test_slow_but_timely_headers_are_served(server: ServeProcess) -> None:
    raw = request()
    with connect(server) as sock:
        sock.sendall(raw[:20])
        time.sleep(HEADER_TIMEOUT / 3)
        sock.sendall(raw[20:])
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


# -- several workers ------------------------------------------------------------------------------


def ready_gauge(folder: Path, pid: int) -> float:
    """A worker's own pgfeatures_ready, read from its file in the metrics folder."""
    files = [str(p) for p in folder.glob(f"gauge_livesum_{pid}.db")]
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        for sample in metric.samples:
            if sample.name == "pgfeatures_ready":
                return sample.value
    return 0.0


def wait_until(condition, what: str, within: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {within:g} s")
        time.sleep(0.1)


def test_several_workers_share_metrics_and_forget_a_killed_one(dsn: str, definitions: Path, tmp_path: Path) -> None:
    """Two workers: /metrics sums both; a killed worker (restarted by uvicorn) drops out of the
    live gauges, so pgfeatures_ready stays 2 instead of counting the dead one as ready too."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    with (
        ServeProcess(
            "--dsn",
            dsn,
            "--definitions",
            str(definitions),
            "--workers",
            "2",
            "--pool-size",
            "1",
            "--no-prewarm",
            env={"PROMETHEUS_MULTIPROC_DIR": str(folder)},
        ) as proc,
        httpx.Client(base_url=proc.url, timeout=10) as c,
    ):
        wait_until(lambda: data.metric(c.get("/metrics").text, "pgfeatures_ready") == 2, "both workers ready")
        for i in range(20):
            assert c.post("/v1/features", json={"key": data.hexkey(i % 10)}).json()["features"] == data.expected(i % 10)
        text = c.get("/metrics").text
        assert data.metric(text, "pgfeatures_http_requests_total", endpoint="/v1/features", status="200") == 20
        assert data.metric(text, "pgfeatures_pool_connections", state="size") == 2  # one connection per worker, summed

        workers = proc.workers()
        assert len(workers) == 2, workers
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), "the killed worker gone")
        wait_until(lambda: len(proc.workers()) == 2 and victim not in proc.workers(), "a replacement worker")
        replacement = next(p for p in proc.workers() if p not in workers)
        wait_until(lambda: ready_gauge(folder, replacement) == 1, "the replacement ready")
        for _ in range(5):
            text = c.get("/metrics").text
            assert data.metric(text, "pgfeatures_ready") == 2, "a dead worker still counted"
            assert data.metric(text, "pgfeatures_pool_connections", state="size") == 2
        # the counters keep the dead worker's requests: counts never go backwards
        assert data.metric(text, "pgfeatures_http_requests_total", endpoint="/v1/features", status="200") == 20
