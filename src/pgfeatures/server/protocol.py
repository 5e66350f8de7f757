"""uvicorn's HTTP protocol (httptools) with a header timeout.

uvicorn bounds a kept-alive connection that is idle between requests
(``keep_alive``), but neither a new connection that sends nothing nor a
request whose headers never finish: either holds a connection (and a slot of
any connection limit in front of the service) until the kernel gives up,
many minutes later. ``HeaderTimeoutProtocol``:

- treats a new connection like an idle kept-alive one: closed after
  ``keep_alive`` seconds without a byte (clients that open their pool ahead
  of traffic keep it that long);
- starts a timer when a request's first byte arrives and stops it when the
  request's headers are complete; if it fires (``header_timeout``), the
  client gets a 408 and the connection is closed.

Bodies are not covered: once the headers are in, the request belongs to the
app (``max_body_bytes`` bounds its size).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("pgfeatures.server")

_MESSAGE = b"request headers not received in time"
RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


@functools.cache
def configured_header_timeout() -> float:
    """``header_timeout`` of the settings the service was started with (``$PGFEATURES_SERVER_CONFIG``)."""
    from .runner import config_from_env

    return config_from_env().header_timeout


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 408 and closes a connection whose request headers are not
    complete within ``header_timeout`` seconds of the request's first byte, and closes a new
    connection that sends nothing for ``keep_alive`` seconds."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout = configured_header_timeout()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's own idle timer, which it arms only after a response; the first byte cancels it.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.debug("pgfeatures: closing %s: no complete request headers within %gs", self.client, self.header_timeout)
        self.transport.write(RESPONSE_408)
        self.transport.close()
