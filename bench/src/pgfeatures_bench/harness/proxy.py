"""Network distance on one machine: a TCP proxy that delays every byte by a one-way latency.

The kernel here has no netem, so the delay is added in userspace. Each
direction of each proxied connection is a ``_Pipe``: a chunk read from one
side is stamped with its arrival time, given a due time of arrival + one-way
delay (+ optional jitter), queued, and written to the other side when it is
due. Chunks are never slept on in sequence, so a large response split into
many chunks arrives about one delay after it was sent, not one delay per
chunk; and due times never decrease, so a chunk never overtakes the one
before it (byte order is TCP's, jitter or not).

Timers are the crux. asyncio's default epoll selector rounds every timeout up
to a whole millisecond, which would add ~0.5 ms per hop on average (half of a
2 ms round-trip). The proxy's loop therefore runs on ``select()``, whose
timeout has microsecond resolution (it only needs a handful of sockets), and
sets each timer early by how late its timers have been firing (``_Lead``:
waking a sleeping process takes 0.1-0.3 ms on a virtual machine), so chunks
leave on time on average.

Three ways to run it:

- ``async with LatencyProxy(...)`` inside a running loop;
- ``with LatencyProxy(...)`` runs it on its own loop in a background thread
  (tests, notebooks). Its CPU and the GIL are then shared with the caller;
- ``with ProxyProcess(...)`` (and ``pgfeatures proxy``) runs it in a separate
  process: what the benchmark uses, so the proxy's work never shows up as
  the client's CPU or delays the client's threads.

Not modelled: the TCP handshake (connections are pooled anyway), bandwidth
limits and packet loss.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import selectors
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_EOF = None  # queued in a pipe when its source has closed its side


@dataclass(frozen=True)
class Link:
    """One direction of the simulated network: every chunk waits ``delay_ms`` plus U(0, ``jitter_ms``)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(
                f"delay and jitter must be >= 0 ms, got delay {self.delay_ms} ms, jitter {self.jitter_ms} ms"
            )

    def sample_s(self, rng: random.Random) -> float:
        jitter = rng.uniform(0.0, self.jitter_ms) if self.jitter_ms else 0.0
        return (self.delay_ms + jitter) / 1e3


@dataclass
class ProxyStats:
    """Counters since the proxy started (read them from any thread; they only grow)."""

    connections: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port`` or ``:port`` or ``port`` into a (host, port) pair. Raises ValueError saying what is valid."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"bad address {text!r}: expected host:port, :port or port, with port 0-65535")
    return (host.strip("[]") or default_host), number


def dsn_target(dsn: str) -> tuple[str, int]:
    """The (host, port) a libpq DSN connects to (first host only)."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("hostaddr") or params.get("host") or "127.0.0.1").split(",")[0]
    if host.startswith("/"):
        raise ValueError(f"the DSN points at a Unix socket ({host}); the proxy forwards TCP only")
    return host, int(str(params.get("port") or 5432).split(",")[0])


def proxied_dsn(dsn: str, address: tuple[str, int]) -> str:
    """The DSN rewritten to connect through a proxy listening at ``address``."""
    params = conninfo_to_dict(dsn)
    params.pop("hostaddr", None)
    params.update(host=address[0], port=str(address[1]))
    return make_conninfo("", **params)


class _Lead:
    """How late this loop's timers fire (an EWMA, learnt as they fire), so pipes can set them that much early.

    Waking a sleeping process costs 0.1-0.3 ms on a virtual machine; uncorrected,
    that would add to every hop. With the lead, chunks leave on time on average,
    a few (never more than ``MAX``) slightly early.
    """

    MAX = 1e-3

    def __init__(self) -> None:
        self.s = 0.0

    def observe(self, late: float) -> None:
        self.s = min(self.MAX, max(0.0, 0.9 * self.s + 0.1 * late))


class _Pipe:
    """One direction of one connection: queue chunks with their due times, write each when due."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, link: Link, rng: random.Random, lead: _Lead, count: Callable[[int], None]
    ):
        self.loop = loop
        self.lead = lead
        self.armed_at = 0.0
        self.link = link
        self.rng = rng
        self.count = count
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.sink: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.closed = False  # EOF forwarded, or the sink is gone
        self.on_closed: Callable[[], None] = lambda: None

    def push(self, data: bytes | None) -> None:
        if self.closed:
            return
        # max(): a later chunk never overtakes an earlier one, whatever the jitter drew.
        due = max(self.loop.time() + self.link.sample_s(self.rng), self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self._arm()

    def attach(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            # Never in the past: the lead learns how late timers fire, not how late a chunk was attached.
            self.armed_at = max(self.queue[0][0] - self.lead.s, self.loop.time())
            self.timer = self.loop.call_at(self.armed_at, self._release)

    def _release(self) -> None:
        self.timer = None
        now = self.loop.time()
        self.lead.observe(now - self.armed_at)
        horizon = now + self.lead.s
        sink = self.sink
        assert sink is not None
        while self.queue and self.queue[0][0] <= horizon:
            _, data = self.queue.popleft()
            if data is _EOF:
                if sink.can_write_eof() and not sink.is_closing():
                    sink.write_eof()
                self.close()
                return
            if not sink.is_closing():
                sink.write(data)
                self.count(len(data))
        self._arm()

    def close(self) -> None:
        """Drop what is queued; nothing more goes this way."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if not self.closed:
            self.closed = True
            self.on_closed()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: what it receives goes into ``outbound``, ``inbound`` writes to it."""

    def __init__(self, outbound: _Pipe, inbound: _Pipe):
        self.outbound = outbound
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.outbound.push(data)

    def eof_received(self) -> bool:
        self.outbound.push(_EOF)
        return True  # keep this socket open for the other direction until the session closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbound.push(_EOF)  # what was already read still goes through, then the EOF
        self.inbound.close()  # nothing can be written here any more

    # Flow control: while this socket cannot take more, stop reading from the peer that feeds it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class _Session:
    """A client connection and its upstream connection, with one pipe per direction."""

    def __init__(self, proxy: LatencyProxy, loop: asyncio.AbstractEventLoop):
        stats = proxy.stats

        def up(n: int) -> None:
            stats.bytes_to_server += n

        def down(n: int) -> None:
            stats.bytes_to_client += n

        self.proxy = proxy
        self.to_server = _Pipe(loop, proxy.to_server, proxy.rng, proxy.lead, up)
        self.to_client = _Pipe(loop, proxy.to_client, proxy.rng, proxy.lead, down)
        self.to_server.on_closed = self.to_client.on_closed = self._check
        self.client = _Side(self.to_server, self.to_client)
        self.server = _Side(self.to_client, self.to_server)
        self.client.peer, self.server.peer = self.server, self.client

    async def connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.server, *self.proxy.target)
        except OSError:
            self.close()  # the target is down: reset the client, as a broken network path would
            return
        assert self.server.transport is not None and self.client.transport is not None
        self.to_server.attach(self.server.transport)
        self.to_client.attach(self.client.transport)

    def _check(self) -> None:
        # Both directions done (EOF forwarded or sink gone): the connection is over.
        if self.to_server.closed and self.to_client.closed:
            self.close()

    def close(self) -> None:
        self.proxy.sessions.discard(self)
        for side in (self.client, self.server):
            side.inbound.close()
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()


class LatencyProxy:
    """A TCP proxy from ``listen`` to ``target`` adding a one-way delay in each direction.

    ``rtt_ms`` splits a round-trip evenly into the two directions (so does
    ``jitter_ms``: each chunk waits an extra U(0, jitter/2) per direction, so
    ``rtt_ms`` is the floor); pass ``to_server`` / ``to_client`` links for
    asymmetric paths. Use ``async with`` inside a loop, or ``with`` to run it
    in a background thread; ``address`` is the bound (host, port) once started.
    """

    def __init__(
        self,
        target: tuple[str, int],
        rtt_ms: float = 0.0,
        jitter_ms: float = 0.0,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        to_server: Link | None = None,
        to_client: Link | None = None,
        seed: int = 0,
    ):
        half = Link(rtt_ms / 2, jitter_ms / 2)
        self.target = target
        self.listen = listen
        self.to_server = to_server or half
        self.to_client = to_client or half
        self.rng = random.Random(seed)
        self.lead = _Lead()
        self.stats = ProxyStats()
        self.sessions: set[_Session] = set()
        self.address: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        t, c = self.to_server, self.to_client
        jitter = f", jitter +U(0, {t.jitter_ms:g}) / +U(0, {c.jitter_ms:g}) ms" if t.jitter_ms or c.jitter_ms else ""
        return f"{self.target[0]}:{self.target[1]}, delay {t.delay_ms:g} ms to server + {c.delay_ms:g} ms to client{jitter}"

    def dsn(self, dsn: str) -> str:
        """``dsn`` rewritten to go through this (started) proxy."""
        assert self.address is not None, "proxy not started"
        return proxied_dsn(dsn, self.address)

    # -- in a running loop ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def accept() -> _Side:
            session = _Session(self, loop)
            self.sessions.add(session)
            self.stats.connections += 1
            loop.create_task(session.connect_upstream())
            return session.client

        self._server = await loop.create_server(accept, *self.listen)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self.sessions):
                session.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LatencyProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- in a background thread -------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Run on a private select()-based loop in a daemon thread; returns once listening.

        Raises OSError when the listen address cannot be bound.
        """
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = new_event_loop()
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name="pgfeatures-proxy", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = self._loop = None

    def __enter__(self) -> LatencyProxy:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers wake within microseconds (select()), not whole milliseconds (epoll)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


READY_LINE = re.compile(r"^proxy listening on (\S+):(\d+)")


def serve(proxy: LatencyProxy, announce: Any = print) -> None:
    """Run ``proxy`` in the foreground until interrupted; announce ``proxy listening on host:port ...`` first."""
    loop = new_event_loop()

    async def main() -> None:
        async with proxy:
            assert proxy.address is not None
            announce(f"proxy listening on {proxy.address[0]}:{proxy.address[1]} -> {proxy.describe()}")
            await asyncio.Event().wait()

    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


class ProxyProcess:
    """A ``LatencyProxy`` in a child process (``python -m pgfeatures.cli proxy``), as a context manager.

    ``address`` is its listening (host, port) once entered. Raises RuntimeError
    with the child's output when it does not come up.
    """

    def __init__(
        self,
        target: tuple[str, int],
        rtt_ms: float,
        jitter_ms: float = 0.0,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int = 0,
    ):
        self.target = target
        self.rtt_ms = rtt_ms
        self.jitter_ms = jitter_ms
        self.listen = listen
        self.seed = seed
        self.address: tuple[str, int] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pgfeatures.cli",
            "proxy",
            "--target",
            f"{self.target[0]}:{self.target[1]}",
            "--listen",
            f"{self.listen[0]}:{self.listen[1]}",
            "--rtt",
            repr(self.rtt_ms),
            "--jitter",
            repr(self.jitter_ms),
            "--seed",
            str(self.seed),
        ]

    def dsn(self, dsn: str) -> str:
        assert self.address is not None, "proxy not started"
        return proxied_dsn(dsn, self.address)

    def __enter__(self) -> ProxyProcess:
        # Only the ready line goes to stdout; anything else (errors) to a file, so no pipe can fill up and block the child.
        self._log = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        match = READY_LINE.match(line)
        if match:
            self.address = (match.group(1), int(match.group(2)))
            return self
        self._proc.wait(timeout=10)
        self._log.seek(0)
        output = self._log.read()[-2000:]
        self.__exit__()
        raise RuntimeError(f"proxy process did not start listening: {line}{output}".strip())

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def maybe_proxied(
    target: tuple[str, int], rtt_ms: float, jitter_ms: float = 0.0, seed: int = 0
) -> Iterator[ProxyProcess | None]:
    """A proxy process at ``rtt_ms``, or None (connect directly) when both rtt and jitter are 0."""
    if rtt_ms <= 0 and jitter_ms <= 0:
        yield None
        return
    with ProxyProcess(target, rtt_ms, jitter_ms, seed=seed) as proxy:
        yield proxy
