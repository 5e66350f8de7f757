"""An answer sent in pieces as they are produced (HTTP/1.1 chunked transfer encoding).

A large batch is read in chunks (``Service.open_batch``); its answer leaves
chunk by chunk, so the server never holds more than one chunk's results and
their encoding (JSON, or a vector batch's raw values), and the client starts
reading at once.

Once the 200 and the first piece are out, a failure cannot change the status.
The answer is then cut off: the failure is logged, and the response ends
without its final message, so the server closes the connection without the
terminating chunk. A client sees an incomplete response (httpx:
``RemoteProtocolError: incomplete chunked read``), never a short answer that
looks whole. When the client goes away, the pieces stop being produced (the
rest of the batch is not read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from .errors import classify

log = logging.getLogger("pgfeatures.server")


class Pieces(Protocol):
    def pieces(self) -> AsyncGenerator[bytes, None]: ...

    def describe(self) -> str:
        """How far it got, for the log line of a failure."""
        ...


class Encoder(Protocol):
    """A batch answer's encoding, piece by piece (``encoding.JSONBatch``, ``vectors.OctetBatch``)."""

    content_type: str
    headers: dict[str, str]

    def start(self) -> bytes: ...

    def chunk(self, keys: Sequence[Any], results: Sequence[Any]) -> bytes: ...

    def end(self) -> bytes: ...


class StreamedAnswer:
    """An ASGI response: status 200, ``content_type`` and ``headers``, body = the pieces, in order."""

    def __init__(self, body: Pieces, content_type: str, headers: Mapping[str, str] | None = None):
        self.body = body
        self.headers = [(b"content-type", content_type.encode())]
        self.headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        pieces = self.body.pieces()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async for piece in pieces:
                if gone.done():
                    return  # the client left: stop reading the database
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except Exception as exc:
            error = classify(exc)
            log.warning(
                "pgfeatures: a streamed answer was cut off after %s (%d %s): %s",
                self.body.describe(),
                error.status,
                error.type,
                exc,
            )
            return  # no final message: the connection is closed without the terminating chunk
        finally:
            gone.cancel()
            await pieces.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class BatchAnswer:
    """A batch's answer, one piece per chunk: the first chunk (already read, so that a failure there
    was still an ordinary error response), then the rest as they are read, in ``encoder``'s form."""

    def __init__(
        self, keys: Sequence[Any], first: list[Any], chunks: AsyncGenerator[list[Any], None], encoder: Encoder
    ):
        self.keys = keys
        self.first = first
        self.chunks = chunks
        self.encoder = encoder
        self.sent = 0

    def describe(self) -> str:
        return f"{self.sent} of {len(self.keys)} keys"

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        keys, encoder = self.keys, self.encoder
        try:
            yield encoder.start() + encoder.chunk(keys[: len(self.first)], self.first)
            self.sent = done = len(self.first)
            self.first = []
            async for chunk in self.chunks:
                piece = encoder.chunk(keys[done : done + len(chunk)], chunk)
                self.sent = done = done + len(chunk)
                if piece:
                    yield piece
            yield encoder.end()
        finally:
            await self.chunks.aclose()
