"""uvicorn's HTTP protocol (httptools) with the bounds uvicorn lacks: headers in time, size and
number, bodies in time.

uvicorn bounds a kept-alive connection that is idle between requests
(``keep_alive``), but nothing else a client controls before the app runs:
a new connection that sends nothing, a request whose headers never finish,
headers of any size (httptools buffers a header until it ends: four 50 MB
headers took a server from 63 MB to a 409 MB peak, before any token was
checked) or number, and a body trickled in for ever. ``HeaderTimeoutProtocol``:

- treats a new connection like an idle kept-alive one: closed after
  ``keep_alive`` seconds without a byte (clients that open their pool ahead
  of traffic keep it that long);
- starts a timer when a request's first byte arrives and stops it when the
  request's headers are complete; if it fires (``header_timeout``), the
  client gets a 408 and the connection is closed;
- counts the bytes of a request's line and headers as they arrive and feeds
  the parser no more than ``max_header_bytes`` of them: past it (or past
  ``max_headers`` headers) the client gets a 431 and the connection is closed,
  so a request's head never costs more than that bound (about twice it when
  it follows another request in the same read);
- starts a timer when the headers are complete and stops it when the body is:
  if it fires (``body_timeout``) before the app answered, the client gets a
  408 (the app sees the client gone); after the app answered (a 401, or an
  endpoint that reads no body), the connection is closed, the rest of the
  body not waited for.

A response goes out in one write where it can: uvicorn writes a response's status line and headers
as soon as the app starts the response, and its body in a second write, so a client on loopback is
woken twice per answer (two segments; on two shared cores, a context switch to the client and back
between them, measured 0.04-0.3 ms). ``OneWriteTransport`` holds the head until the body's first
write, which sends both at once; a head the app follows with no body in the same loop iteration (a
streamed answer waiting for its first chunk) leaves at the end of that iteration, as before.

A refusal is sent whole: the answer, then the end of our side of the
connection; what the client still sends is read and dropped for at most
``LINGER`` seconds or ``LINGER_BYTES`` before the connection is closed, so
that a client that finishes sending reads the answer rather than a reset. ``max_body_bytes`` (in the app) bounds a body's size.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from .config import ServerConfig

log = logging.getLogger("pgfeatures.server")

LINGER = 2.0  # seconds a refused connection is drained (its input dropped) before it is closed...
LINGER_BYTES = 1 << 20  # ...or bytes, whichever comes first
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def refusal(status: int, message: str) -> bytes:
    """A whole plain-text response that closes the connection."""
    body = message.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, REASONS[status], len(body), body)
    )


@functools.cache
def configured() -> ServerConfig:
    """The settings the service was started with (``$PGFEATURES_SERVER_CONFIG``)."""
    from .runner import config_from_env

    return config_from_env()


class OneWriteTransport:
    """A response cycle's transport that sends the response's head with the first write after it (the
    body's), in one write; held at most until the end of the loop iteration. Everything else is the
    connection's transport's (``__getattr__``)."""

    __slots__ = ("transport", "cycle", "loop", "held", "_flush")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self.cycle = cycle
        self.loop = loop
        self.held: bytes | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held + data)
        elif self.cycle.response_started and self._flush is None:  # the head: uvicorn's first write once started
            self.held = data
            self._flush = self.loop.call_soon(self.flush)
        else:  # a 100 Continue (before the head), or the body's further writes
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds what a client sends before and besides what the app reads:
    a new connection's silence (``keep_alive``), a request's headers in time (``header_timeout``:
    408), size (``max_header_bytes``: 431) and number (``max_headers``: 431), and its body in
    time (``body_timeout``: 408, or closed if the answer was sent). Each refusal closes the connection."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        config = configured()
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.max_header_bytes = config.max_header_bytes
        self.max_headers = config.max_headers
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._in_head = True  # the bytes arriving are a request's line and headers (or precede them)
        self._head_bytes = 0
        self._header_count = 0
        self._heads_done = 0  # requests whose headers were complete, so far
        self._refused = False
        self._drained = 0  # bytes dropped since the refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's own idle timer, which it arms only after a response; the first byte cancels it.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered and closing: dropped unparsed, up to a bound
            self._drained += len(data)
            if self._drained > LINGER_BYTES:
                self.transport.close()
            return
        while self._in_head:
            room = self.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                break
            head, data = data[:room], data[room:]
            self._head_bytes += len(head)
            heads_done = self._heads_done
            super().data_received(head)  # may complete the headers (and the body, and begin another request)
            if self._refused or self.transport.is_closing():
                return
            if self._heads_done == heads_done:  # the headers did not end within the limit: not a byte more
                self._refuse(
                    431, f"the request line and headers exceed {self.max_header_bytes} bytes (max_header_bytes)"
                )
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self.max_headers:  # past it: not kept, refused when the headers end
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._heads_done += 1
        self._in_head = False
        self._cancel_header_timer()
        if self._header_count > self.max_headers:
            self._refuse(
                431, f"the request has {self._header_count} headers, more than {self.max_headers} headers (max_headers)"
            )
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a request's cycle (not an upgrade)
            cycle.transport = OneWriteTransport(self.transport, cycle, self.loop)  # type: ignore[assignment]
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_body_timer()
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parse error after a refusal is not answered twice
            super().send_400_response(msg)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "request headers not received in time")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_complete:  # answered without the body (a 401, ...)
            log.debug(
                "pgfeatures: closing %s: the request's body did not end within %gs", self.client, self.body_timeout
            )
            self.transport.close()
            return
        self._refuse(
            408, f"the request body was not received within {self.body_timeout:g}s (body_timeout)", current=True
        )

    def _refuse(self, status: int, message: str, current: bool = False) -> None:
        """Answer ``status`` and close the connection (the answer sent whole: see ``LINGER``).

        ``current``: the request refused is the one ``self.cycle`` runs (its body is late), else one
        whose headers did not make it (``self.cycle`` is the previous request's, if any). A request
        still running is told the client is gone; if an answer is already on its way, or the
        previous request is unanswered, there is no place for this one: the connection is just closed.
        """
        log.debug("pgfeatures: refusing %s with %d: %s", self.client, status, message)
        self._refused = True
        self._cancel_header_timer()
        self._cancel_body_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its app's receive() says http.disconnect; what it sends is dropped
            cycle.message_event.set()
            if cycle.response_started or not current:
                self.transport.close()
                return
        self.transport.write(refusal(status, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER, self.transport.close)
        else:  # pragma: no cover - TCP transports can
            self.transport.close()
