"""A TCP proxy owned by a test, so the database can disappear, hang and come back.

Stopping it closes the listener and resets every proxied connection (what
clients see when a server stops or fails over); pausing it holds every byte
in both directions (what they see when it stalls). The shared PostgreSQL
itself is never touched.
"""

from __future__ import annotations

import asyncio
import threading

from .serve import free_port


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

    @classmethod
    def to(cls, dsn: str) -> Proxy:
        """A started proxy in front of the server of ``dsn``."""
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        proxy = cls(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
        proxy.start()
        return proxy

    def dsn(self, dsn: str) -> str:
        """``dsn`` with host and port pointing at this proxy."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
