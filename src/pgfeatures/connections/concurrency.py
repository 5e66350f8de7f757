"""What differs between the asyncio and the threaded forms by more than ``await``, written once each,
side by side (hand-written, not generated).

An async source (``*_async.py``) uses the async form; ``tools/async_to_sync.py`` renames it to the
sync form in the generated twin (``sleep_async`` -> ``sleep``, ``AsyncBackground`` -> ``Background``),
so the twin carries no code of its own and no code is written inside a comment. Each pair has the
same signature (tests/unit/test_concurrency.py checks it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("pgfeatures")


async def sleep_async(seconds: float) -> None:
    """Wait ``seconds`` without blocking the event loop."""
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Wait ``seconds`` (this thread)."""
    time.sleep(seconds)


async def to_thread_async(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a worker thread: a blocking call (a file read, CPU work, a server
    started on demand) must not stall the event loop. Raises what ``fn`` raises."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def to_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, here: a sync caller blocks anyway. Raises what ``fn`` raises."""
    return fn(*args, **kwargs)


def open_in_constructor_async(resource: Any, open: bool | None) -> None:
    """An asyncio store cannot open in its constructor (opening awaits): ``open=True`` raises TypeError."""
    if open:
        raise TypeError("the asyncio store cannot open in its constructor: use `await store.open()` or `async with`")


def open_in_constructor(resource: Any, open: bool | None) -> None:
    """A sync store opens in its constructor unless ``open=False``. Raises what its ``open`` raises."""
    if open or open is None:
        resource.open()


AsyncLock = asyncio.Lock  # a lock between tasks of one event loop
Lock = threading.Lock  # a lock between threads


class AsyncBackground:
    """A store's background work (probes of read targets that are down, pool renewals): each started
    as a task, tracked, and stopped by ``stop`` (at close), which cancels them and waits for them
    (a cancelled renewal closes the pool it was filling)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background."""
        task = asyncio.ensure_future(fn(*args))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` between rounds of background work (``stop`` cancels the wait)."""
        await asyncio.sleep(seconds)

    def running(self) -> int:
        """How many are running."""
        return len(self._running)

    async def stop(self, timeout: float) -> None:
        """Cancel what runs and wait until it has stopped (``timeout``: bounds the wait of the threaded
        form; a cancelled task stops at its next await)."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class Background:
    """A store's background work (probes of read targets that are down, pool renewals): each started
    on a daemon thread, tracked, and stopped by ``stop`` (at close): ``sleep`` returns at once from
    then on, so a probe loop ends at its next round, and ``stop`` waits for the threads (up to
    ``timeout``: a thread in the middle of a connection attempt ends with it)."""

    def __init__(self) -> None:
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the background."""

        def run() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._running.discard(thread)

        thread = threading.Thread(target=run, name=f"pgfeatures-{getattr(fn, '__name__', 'background')}", daemon=True)
        with self._lock:
            self._running.add(thread)
        thread.start()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` between rounds of background work (``stop`` ends the wait)."""
        self._stopping.wait(seconds)

    def running(self) -> int:
        """How many are running."""
        with self._lock:
            return len(self._running)

    def stop(self, timeout: float) -> None:
        """Tell what runs to stop and wait for it, ``timeout`` seconds at most in all."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            running = list(self._running)
        for thread in running:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in running):
            logger.info("pgfeatures: background work still running %gs after close; it ends on its own", timeout)
