"""Request coalescing: concurrent single-key reads merged into one batched query.

Under concurrency most of a single-key read's cost is per statement, not per
key: the pool hand-off, the protocol round-trip, executor start-up in
PostgreSQL, psycopg's Python per execute. ``Coalescer.read`` parks a key with
a future; keys of the same request shape (same ``BatchReader``) are sent
together through ``read_batch`` (one statement, ``unnest`` over the keys)
and each future gets its own row.

When a batch leaves:

- its first key has waited ``window`` seconds (0: until the end of the
  current event-loop iteration, i.e. every request already parsed joins);
- or it holds ``max_keys`` keys;
- and, in both cases, fewer than ``max_in_flight`` batches are running (the
  read pool's size). While every connection is busy keys keep accumulating,
  so batches grow exactly when the database is the bottleneck and stay at
  one key, with no added wait beyond ``window``, when it is idle.

Event-loop timers have millisecond resolution (uvloop rounds a 200 µs delay
down to 0, asyncio's epoll loop up to 1 ms; uvloop's ``loop.time()`` itself
is in whole milliseconds), so a sub-millisecond window is kept by re-checking
``time.monotonic()`` once per loop iteration instead of arming a timer; only
the part of a window beyond 1 ms is slept on a timer.

A failed batch fails every request in it with the same error (the database
is unavailable for all of them alike). A request cancelled while parked
leaves its batch (its key is not sent; a batch left empty is not sent at
all); one cancelled while its batch runs does not cancel the batch, whose
other requests get their rows. ``close()`` fails every parked and running
request with StoreClosedError (503 ``shutting_down``), and so does any read
after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import StoreClosedError
from ..reader import BatchReader, Features

Bound = tuple[Any, ...]  # one request's statement parameters (its keys bound once: ``parsing.bind_key``)
ReadBatch = Callable[[BatchReader, list[Bound]], Awaitable[list[Features]]]
OnBatch = Callable[[int], None]

_TIMER_RESOLUTION = 0.001
# Not loop.time(): uvloop's clock is libuv's, cached per iteration in whole milliseconds.
_now = time.monotonic


class _Queue:
    """Keys of one request shape waiting to be sent, and their futures."""

    __slots__ = ("reader", "since", "keys", "futures")

    def __init__(self, reader: BatchReader, since: float):
        self.reader = reader
        self.since = since
        self.keys: list[Bound] = []
        self.futures: list[asyncio.Future[Features]] = []


class Coalescer:
    """Merges concurrent ``read(reader, key)`` calls into ``read_batch(reader, keys)`` calls.

    ``read_batch`` is the caller's batched read (with its own deadline and
    error translation); ``on_batch`` is told each batch's size (metrics).
    """

    def __init__(
        self,
        read_batch: ReadBatch,
        *,
        window: float,
        max_keys: int,
        max_in_flight: int,
        on_batch: OnBatch | None = None,
    ):
        if window < 0 or max_keys < 1 or max_in_flight < 1:
            raise ValueError("window must be >= 0, max_keys and max_in_flight >= 1")
        self._read_batch = read_batch
        self.window = window
        self.max_keys = max_keys
        self.max_in_flight = max_in_flight
        self._on_batch = on_batch
        # Keyed by id(reader): the queue holds the reader, so the id cannot be reused while queued.
        self._queues: dict[int, _Queue] = {}
        self._in_flight = 0
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def read(self, reader: BatchReader, key: Bound) -> Features:
        """The features of one request (its keys already bound), read as part of a batch of its request shape.

        Raises what the batch's ``read_batch`` raised, or StoreClosedError once closed.
        """
        if self._closed:
            raise _closed()
        loop = self._loop or self._bind()
        queue = self._queues.get(id(reader))
        if queue is None:
            queue = self._queues[id(reader)] = _Queue(reader, _now())
        future: asyncio.Future[Features] = loop.create_future()
        queue.keys.append(key)
        queue.futures.append(future)
        if len(queue.keys) >= self.max_keys:
            self._arm(_now(), force=True)
        else:
            self._arm(queue.since + self.window)
        return await future

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _arm(self, due: float, force: bool = False) -> None:
        """Make sure ``_pump`` runs at (or just after) ``due``. An armed earlier wake-up is kept."""
        if self._timer is not None:
            if not force:
                return
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        wait = due - _now()
        if wait > 2 * _TIMER_RESOLUTION:
            self._timer = loop.call_later(wait - _TIMER_RESOLUTION, self._pump)
        else:
            self._timer = loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Send every due batch there is room for; re-arm for the rest."""
        if self._timer is not None:  # called early by a finishing batch: this pump replaces the wake-up
            self._timer.cancel()
            self._timer = None
        now = _now()
        for ident, queue in list(self._queues.items()):
            while (
                queue.keys
                and self._in_flight < self.max_in_flight
                and (len(queue.keys) >= self.max_keys or now >= queue.since + self.window)
            ):
                self._send(queue)
            if not queue.keys:
                del self._queues[ident]
        if self._queues and self._in_flight < self.max_in_flight:
            self._arm(min(q.since for q in self._queues.values()) + self.window)
        # else: nothing waits, or every slot is busy and a finishing batch pumps again

    def _send(self, queue: _Queue) -> None:
        n = self.max_keys
        keys, futures = queue.keys[:n], queue.futures[:n]
        del queue.keys[:n], queue.futures[:n]
        if any(f.done() for f in futures):  # requests cancelled while parked leave the batch
            kept = [(k, f) for k, f in zip(keys, futures) if not f.done()]
            keys, futures = [k for k, _ in kept], [f for _, f in kept]
            if not keys:
                return
        self._in_flight += 1
        if self._on_batch is not None:
            self._on_batch(len(keys))
        task = asyncio.ensure_future(self._run(queue.reader, keys, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, reader: BatchReader, keys: list[Bound], futures: list[asyncio.Future[Features]]) -> None:
        try:
            results = await self._read_batch(reader, keys)
        except asyncio.CancelledError:
            for future in futures:
                if future.done():
                    continue
                if self._closed:
                    future.set_exception(_closed())
                else:
                    future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        else:
            for future, result in zip(futures, results):
                if not future.done():  # the request was cancelled while parked
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._queues:
                self._pump()

    async def close(self) -> None:
        """Fail parked requests and cancel running batches: their requests, and any later read,
        get StoreClosedError."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queue in self._queues.values():
            for future in queue.futures:
                if not future.done():
                    future.set_exception(_closed())
        self._queues.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _closed() -> StoreClosedError:
    return StoreClosedError("the service is shutting down: retry on another instance")
