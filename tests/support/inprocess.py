"""The HTTP app in this process: its lifespan run (the store opens, warm-up hooks run), an HTTP
client over ASGI, no socket. Most HTTP tests use this; real processes are for what only a
process has (startup, workers, signals, sockets, memory).

- ``running_app``: sync, for module-scoped fixtures: the app runs on an event loop in a
  thread of its own, and an ``httpx.Client`` reaches it through ``httpx.ASGITransport`` on
  that loop (what Starlette's TestClient does, which is deprecated with httpx);
- ``app_client``: async, for tests that need concurrency in the app's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette

from pgfeatures.definitions import Registry
from pgfeatures.server import ServerConfig, create_app

BASE_URL = "http://app"


T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="app-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _ThreadedASGITransport(httpx.BaseTransport):
    """A sync transport that runs each request through ``httpx.ASGITransport`` on the app's loop."""

    def __init__(self, app: Starlette, loop: _LoopThread):
        self.asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            request.stream = httpx.ByteStream(request.read())  # a sync stream cannot be read on the loop
            response = await self.asgi.handle_async_request(request)
            return response.status_code, response.headers.raw, await response.aread()

        status, headers, body = self.loop.run(call())
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), request=request
        )  # no added Content-Length


@contextlib.contextmanager
def running_app(
    config: ServerConfig,
    *,
    warmup: Iterable[Any] | None = (),
    ready_within: float = 30,
    headers: dict[str, str] | None = None,
    registry: Registry | None = None,
) -> Iterator[httpx.Client]:
    """A client of the app, once ``/readyz`` says ready. Server errors come back as responses.

    ``warmup``: the app's warm-up hooks (default none; None: the config's, i.e. pg_prewarm).
    ``registry``: the definitions, instead of the config's file.
    """
    app = create_app(config, warmup=warmup, registry=registry)
    loop = _LoopThread()
    lifespan = app.router.lifespan_context(app)
    loop.run(lifespan.__aenter__())
    try:
        with httpx.Client(
            transport=_ThreadedASGITransport(app, loop), base_url=BASE_URL, headers=headers, timeout=30
        ) as client:
            deadline = time.monotonic() + ready_within
            while client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not become ready within {ready_within:g} s")
                time.sleep(0.02)
            yield client
    finally:
        loop.run(lifespan.__aexit__(None, None, None))
        loop.close()


@contextlib.asynccontextmanager
async def app_client(
    config: ServerConfig,
    *,
    warmup: Iterable[Any] | None = (),
    ready: bool = True,
    ready_within: float = 30,
    registry: Registry | None = None,
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app (lifespan running) and an async client over ASGI; with ``ready``, once ready."""
    app = create_app(config, warmup=warmup, registry=registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30) as client:
            if ready:
                async with asyncio.timeout(ready_within):
                    while (await client.get("/readyz")).status_code != 200:
                        await asyncio.sleep(0.02)
            yield app, client
