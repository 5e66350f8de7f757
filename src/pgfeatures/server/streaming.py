"""A JSON answer sent in pieces as they are produced (HTTP/1.1 chunked transfer encoding).

A large batch is read in chunks (``Service.open_batch``); its answer leaves
chunk by chunk, so the server never holds more than one chunk's results and
their JSON, and the client starts reading at once.

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
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from starlette.types import Receive, Scope, Send

from ..reader import Features
from .encoding import BATCH_HEAD, BATCH_TAIL, batch_pieces
from .errors import classify

log = logging.getLogger("pgfeatures.server")


class Pieces(Protocol):
    def pieces(self) -> AsyncIterator[bytes]: ...

    def describe(self) -> str:
        """How far it got, for the log line of a failure."""
        ...


class StreamedAnswer:
    """An ASGI response: status 200, ``content_type``, body = the pieces, in order."""

    def __init__(self, body: Pieces, content_type: str):
        self.body = body
        self.content_type = content_type.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        pieces = self.body.pieces()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", self.content_type)]})
            async for piece in pieces:
                if gone.done():
                    return  # the client left: stop reading the database
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except Exception as exc:
            error = classify(exc)
            log.warning("pgfeatures: a streamed answer was cut off after %s (%d %s): %s",
                        self.body.describe(), error.status, error.type, exc)
            return  # no final message: the connection is closed without the terminating chunk
        finally:
            gone.cancel()
            await pieces.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class BatchAnswer:
    """``{"results": [...]}`` of a batch, one piece per chunk: the first chunk (already read, so
    that a failure there was still an ordinary error response), then the rest as they are read."""

    def __init__(self, texts: Sequence[str], first: list[Features], chunks: AsyncIterator[list[Features]]):
        self.texts = texts
        self.first = first
        self.chunks = chunks
        self.sent = 0

    def describe(self) -> str:
        return f"{self.sent} of {len(self.texts)} keys"

    async def pieces(self) -> AsyncIterator[bytes]:
        texts = self.texts
        try:
            yield BATCH_HEAD + batch_pieces(texts[:len(self.first)], self.first, True)
            self.sent = done = len(self.first)
            self.first = []
            async for chunk in self.chunks:
                yield batch_pieces(texts[done:done + len(chunk)], chunk, False)
                self.sent = done = done + len(chunk)
            yield BATCH_TAIL
        finally:
            await self.chunks.aclose()  # type: ignore[attr-defined]
