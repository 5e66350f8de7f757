"""Hostile clients against a real ``pgfeatures serve`` process: oversized or countless request headers,
sent before any token is checked, and request bodies trickled in.

Before the bounds, four concurrent 50 MB headers without a token took the server from 63 MB to a
409 MB peak and it kept 368 MB; 300 connections trickling bodies were never cut (file descriptors
19 -> 320). Now the line and headers of a request are bounded in bytes (``max_header_bytes``, 64 KiB)
and in number (``max_headers``, 100) before they are buffered: 431 and the connection closed; and a
body must arrive within ``body_timeout`` of its headers: 408 and the connection closed (also when
the answer was already sent, e.g. a 401, and the body still trickles).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import server_data as data
from support.serve import ServeProcess, rss_bytes

TOKEN = "hostile-token-31c9"
BODY_TIMEOUT = 1.5
HUGE = 50 << 20  # bytes of one hostile header
ATTACKERS = 4
RSS_BOUND = 32 << 20  # bytes the server's peak RSS may rise during the attack (before: 346 MB)
TRICKLERS = 100
CUT_WITHIN = BODY_TIMEOUT + 3.0  # seconds after its headers by which a trickled body's connection is closed
FD_SLACK = 3  # descriptors the server may hold beyond its baseline (a pool connection being replaced)


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    schema = f"test_host_{uuid.uuid4().hex[:10]}"
    definitions = data.create(dsn, schema, tmp_path_factory.mktemp("hostile"))
    try:
        # the body timeout as an environment variable, so that a server that does not know it still starts
        with ServeProcess(
            "--dsn",
            dsn,
            "--definitions",
            str(definitions),
            "--no-prewarm",
            "--header-timeout",
            "30",
            env={"PGFEATURES_TOKEN": TOKEN, "PGFEATURES_BODY_TIMEOUT": str(BODY_TIMEOUT)},
        ) as proc:
            yield proc
    finally:
        data.drop(dsn, schema)


def status_value(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(server: ServeProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or resets) the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def post(body: bytes, token: str | None = TOKEN, extra: bytes = b"") -> bytes:
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    return (
        b"POST /v1/features HTTP/1.1\r\nHost: t\r\n%s%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (auth, extra, len(body), body)
    )


def read_ok(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            post(b'{"key": "%s"}' % data.hexkey(1).encode()).replace(
                b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1
            )
        )
        got = answer(sock)
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]


def test_a_huge_header_without_a_token_is_refused_before_it_is_buffered(server: ServeProcess) -> None:
    for _ in range(3):
        read_ok(server)
    rss_before, peak_before = rss_bytes(server.pid), status_value(server.pid, "VmHWM")
    answers: list[bytes] = []
    sent: list[int] = []
    line = b"a" * (1 << 20)

    def attack() -> None:
        total = 0
        with connect(server, timeout=30) as sock:
            try:
                sock.sendall(b"GET /v1/tables HTTP/1.1\r\nHost: t\r\nX-Big: ")
                deadline = time.monotonic() + 20
                while total < HUGE and time.monotonic() < deadline:
                    sock.sendall(line)
                    total += len(line)
                sock.sendall(b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped listening: what it said is read below
            sent.append(total)
            answers.append(answer(sock))

    threads = [threading.Thread(target=attack) for _ in range(ATTACKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    peak, rss_after = status_value(server.pid, "VmHWM"), rss_bytes(server.pid)
    rise = max(0, peak - max(peak_before, rss_before))
    assert rise < RSS_BOUND, f"peak RSS rose {rise / 2**20:.0f} MiB (to {peak / 2**20:.0f}); sent {sent}"
    assert rss_after - rss_before < RSS_BOUND, f"RSS kept {(rss_after - rss_before) / 2**20:.0f} MiB"
    assert max(sent) < HUGE, f"the server read every byte of {sent}"
    assert all(a == b"" or a.startswith(b"HTTP/1.1 431 ") for a in answers), [a[:80] for a in answers]
    read_ok(server)  # and it serves on


def test_headers_over_the_size_limit_get_a_431(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(post(b"{}", token=None, extra=b"X-Big: %s\r\n" % (b"b" * 100_000)))
        got = answer(sock)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert b"65536 bytes" in got and b"connection: close" in got.lower()


def test_too_many_headers_get_a_431(server: ServeProcess) -> None:
    many = b"".join(b"X-N%d: v\r\n" % i for i in range(1000))  # 11 KB: within the size limit
    with connect(server) as sock:
        sock.sendall(post(b"{}", token=None, extra=many))
        got = answer(sock)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert b"100 headers" in got


def test_large_but_reasonable_headers_are_served(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            post(
                b'{"key": "%s"}' % data.hexkey(1).encode(),
                extra=b"Connection: close\r\nX-Jwt: %s\r\n" % (b"j" * 16_000)
                + b"".join(b"X-N%d: v\r\n" % i for i in range(80)),
            )
        )
        got = answer(sock)
    assert got.startswith(b"HTTP/1.1 200 "), got[:200]


def test_trickled_bodies_are_cut_and_their_descriptors_freed(server: ServeProcess) -> None:
    read_ok(server)
    baseline = open_fds(server.pid)
    socks: list[tuple[socket.socket, float]] = []
    for i in range(TRICKLERS):
        sock = connect(server)
        sock.setblocking(False)
        # most with the token (the app waits for their bodies), some without (answered 401 at once,
        # then the body still trickles: the connection is cut all the same)
        sock.sendall(post(b"x" * 1000, token=TOKEN if i % 4 else None)[:-1000])
        socks.append((sock, time.monotonic()))
    held = time.monotonic() + 5
    while open_fds(server.pid) < baseline + TRICKLERS * 0.9:  # the server has accepted them (they hold its descriptors)
        assert time.monotonic() < held, f"{open_fds(server.pid)} descriptors open, {baseline} before"
        time.sleep(0.05)
    received = {id(s): b"" for s, _ in socks}
    closed_after: dict[int, float] = {}
    give_up = time.monotonic() + CUT_WITHIN + 5
    while len(closed_after) < len(socks) and time.monotonic() < give_up:
        for sock, began in socks:
            if id(sock) in closed_after:
                continue
            try:
                while chunk := sock.recv(65536):
                    received[id(sock)] += chunk
                closed_after[id(sock)] = time.monotonic() - began  # EOF
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed_after[id(sock)] = time.monotonic() - began
                continue
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.send(b"x")  # one byte of the body now and then
        time.sleep(0.25)
    for sock, _ in socks:
        sock.close()
    assert len(closed_after) == len(socks), f"{len(socks) - len(closed_after)} of {len(socks)} never cut"
    slowest = max(closed_after.values())
    assert slowest < CUT_WITHIN, f"the slowest was cut after {slowest:.1f} s"
    with_token = [received[id(s)] for i, (s, _) in enumerate(socks) if i % 4]
    without = [received[id(s)] for i, (s, _) in enumerate(socks) if not i % 4]
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in with_token), {r[:60] for r in with_token}
    assert all(r.startswith(b"HTTP/1.1 401 ") for r in without), {r[:60] for r in without}
    deadline = time.monotonic() + 5
    while open_fds(server.pid) > baseline + FD_SLACK:
        assert time.monotonic() < deadline, f"{open_fds(server.pid)} descriptors open, {baseline} before"
        time.sleep(0.1)
    read_ok(server)
    # the app saw each cut-off client leave (499 in the metrics), never an error of its own (a 500 and a traceback)
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert data.metric(metrics, "pgfeatures_http_requests_total", endpoint="/v1/features", status="499") == len(
        with_token
    )
    assert not data.metric(metrics, "pgfeatures_http_requests_total", endpoint="/v1/features", status="500")
