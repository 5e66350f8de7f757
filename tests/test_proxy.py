"""The latency proxy: bytes arrive exact and in order, each direction is delayed, chunks are not delayed in sequence.

Timing assertions are lower bounds only (a delay was applied); the claim that
chunks are not delayed one after another is checked on the scheduling itself,
with a stepped clock, not with a stopwatch.
"""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgfeatures_bench.harness.proxy import (
    LatencyProxy,
    Link,
    ProxyProcess,
    _Lead,
    _Pipe,
    dsn_target,
    parse_address,
    proxied_dsn,
)

RTT_MS = 20.0
SLACK_MS = 2.5  # the proxy may release a chunk up to 1 ms early per hop (timer lead), plus float rounding


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def _roundtrip_ms(sock: socket.socket, payload: bytes = b"ping") -> float:
    t0 = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(65536)
    return (time.perf_counter() - t0) * 1e3


def test_bytes_exact_and_in_order_both_ways(echo: tuple[str, int]) -> None:
    payload = os.urandom(3 << 20)  # 3 MB in ~1 KB writes: many chunks each way, interleaved with reading
    with LatencyProxy(echo, rtt_ms=4, jitter_ms=3) as proxy, socket.create_connection(proxy.address) as sock:
        received = bytearray()

        def read_all() -> None:
            while len(received) < len(payload):
                received.extend(sock.recv(1 << 16))

        reader = threading.Thread(target=read_all)
        reader.start()
        for i in range(0, len(payload), 1000):
            sock.sendall(payload[i : i + 1000])
        reader.join(timeout=60)
        assert not reader.is_alive(), "echo through the proxy did not complete"
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert proxy.stats.bytes_to_server == proxy.stats.bytes_to_client == len(payload)
        assert proxy.stats.connections == 1


def test_each_direction_is_delayed(echo: tuple[str, int]) -> None:
    with LatencyProxy(echo, rtt_ms=RTT_MS) as proxy, socket.create_connection(proxy.address) as sock:
        times = [_roundtrip_ms(sock) for _ in range(5)]
    assert min(times) >= RTT_MS - SLACK_MS, times


def test_asymmetric_links(echo: tuple[str, int]) -> None:
    with (
        LatencyProxy(echo, to_server=Link(15.0), to_client=Link(0.0)) as proxy,
        socket.create_connection(proxy.address) as sock,
    ):
        assert proxy.describe().startswith(f"{echo[0]}:{echo[1]}, delay 15 ms to server + 0 ms to client")
        assert min(_roundtrip_ms(sock) for _ in range(3)) >= 15.0 - SLACK_MS


def test_half_close_is_forwarded(echo: tuple[str, int]) -> None:
    with LatencyProxy(echo, rtt_ms=2) as proxy, socket.create_connection(proxy.address) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF only through the proxy, then closes
        sock.settimeout(10)
        got = b""
        while chunk := sock.recv(1024):
            got += chunk
        assert got == b"last words"


def test_target_down_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[:2]  # closed again: nothing listens there
    with LatencyProxy(free, rtt_ms=2) as proxy, socket.create_connection(proxy.address) as sock:
        sock.settimeout(10)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass


def test_postgres_through_the_proxy(dsn: str) -> None:
    with (
        LatencyProxy(dsn_target(dsn), rtt_ms=RTT_MS) as proxy,
        psycopg.connect(proxy.dsn(dsn), autocommit=True) as conn,
    ):
        t0 = time.perf_counter()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert (time.perf_counter() - t0) * 1e3 >= RTT_MS - SLACK_MS
        # A multi-megabyte answer, byte-exact: the server's checksum equals ours.
        text, digest = conn.execute(
            "SELECT string_agg(md5(i::text), ''), md5(string_agg(md5(i::text), '')) FROM generate_series(1, 60000) i"
        ).fetchone()  # type: ignore[misc]
        assert len(text) == 60000 * 32
        assert hashlib.md5(text.encode()).hexdigest() == digest


def test_proxy_process_and_cli(dsn: str) -> None:
    with ProxyProcess(dsn_target(dsn), RTT_MS) as proxy:
        assert proxy.address is not None
        with psycopg.connect(proxy.dsn(dsn), autocommit=True) as conn:
            t0 = time.perf_counter()
            conn.execute("SELECT 1")
            assert (time.perf_counter() - t0) * 1e3 >= RTT_MS - SLACK_MS


def test_proxy_process_reports_a_failed_start() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(RuntimeError, match="did not start listening"):
            with ProxyProcess(("127.0.0.1", 1), 1.0, listen=busy.getsockname()[:2]):
                pass


# -- scheduling, on a stepped clock ---------------------------------------------------------------


class _SteppedLoop:
    """Just enough of an event loop for a _Pipe: a clock we move by hand, and a timer list."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: object) -> _SteppedLoop:
        self.timers.append((when, callback))
        return self

    def cancel(self) -> None:
        pass


class _Sink:
    def __init__(self, loop: _SteppedLoop) -> None:
        self.loop = loop
        self.written: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.written.append((self.loop.now, data))

    def is_closing(self) -> bool:
        return False


def _run(loop: _SteppedLoop) -> None:
    while loop.timers:
        loop.timers.sort(key=lambda t: t[0])
        when, callback = loop.timers.pop(0)
        loop.now = max(loop.now, when)
        callback()  # type: ignore[operator]


def test_chunks_are_scheduled_at_arrival_plus_delay_not_in_sequence() -> None:
    import random

    loop = _SteppedLoop()
    pipe = _Pipe(loop, Link(10.0), random.Random(0), _Lead(), lambda n: None)  # type: ignore[arg-type]
    sink = _Sink(loop)
    pipe.attach(sink)  # type: ignore[arg-type]
    arrivals = [100.0 + i * 0.0001 for i in range(50)]  # a 50-chunk answer arriving over 5 ms
    for t, i in zip(arrivals, range(50)):
        loop.now = t
        pipe.push(b"%03d" % i)
    _run(loop)
    assert [d for _, d in sink.written] == [b"%03d" % i for i in range(50)]
    for (sent, _), arrived in zip(sink.written, arrivals):
        # Each chunk leaves one delay after its own arrival: the 50th is not 50 delays late.
        assert sent == pytest.approx(arrived + 0.010, abs=1e-9)


def test_jitter_never_reorders() -> None:
    import random

    loop = _SteppedLoop()
    pipe = _Pipe(loop, Link(5.0, jitter_ms=20.0), random.Random(1), _Lead(), lambda n: None)  # type: ignore[arg-type]
    sink = _Sink(loop)
    pipe.attach(sink)  # type: ignore[arg-type]
    for i in range(200):
        loop.now = 100.0 + i * 0.001
        pipe.push(b"%03d" % i)
    _run(loop)
    assert [d for _, d in sink.written] == [b"%03d" % i for i in range(200)]
    times = [t for t, _ in sink.written]
    assert times == sorted(times)
    assert all(t >= 100.0 + i * 0.001 + 0.005 - 1e-9 for i, t in enumerate(times))  # never below the floor delay


def test_addresses_and_dsns() -> None:
    assert parse_address("10.0.0.1:6432") == ("10.0.0.1", 6432)
    assert parse_address(":7000") == ("127.0.0.1", 7000)
    assert parse_address("7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:5432") == ("::1", 5432)
    for bad in ("host:port", "x:70000", ""):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)
    dsn = "host=db.example port=6543 user=u dbname=d password=secret"
    assert dsn_target(dsn) == ("db.example", 6543)
    rewritten = proxied_dsn(dsn, ("127.0.0.1", 9999))
    assert dsn_target(rewritten) == ("127.0.0.1", 9999)
    assert "password=secret" in rewritten and "dbname=d" in rewritten
    with pytest.raises(ValueError, match="Unix socket"):
        dsn_target("host=/var/run/postgresql")
    with pytest.raises(ValueError, match=">= 0"):
        Link(-1.0)
