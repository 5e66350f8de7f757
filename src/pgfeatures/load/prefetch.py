"""The load driver's async and sync forms of a COPY, side by side (hand-written, not generated: the
generated driver.py calls the sync form where driver_async.py calls the async one).

Async: each ``next()`` of a CPU-bound iterator runs on a worker thread, the next item while the
caller awaits on the current one (the async driver encodes the next COPY chunk while it sends this
one), and the COPY uses psycopg's default writer. Sync: the chunks are encoded in the caller's
thread while psycopg's queued writer sends the previous one on a thread of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from psycopg.copy import AsyncWriter, QueuedLibpqWriter

T = TypeVar("T")


async def prefetched_async(items: Iterator[T]) -> AsyncIterator[T]:
    """``items`` produced on a worker thread, one ahead. Exceptions from ``next()`` surface here."""
    done = object()
    pending = asyncio.ensure_future(asyncio.to_thread(next, items, done))
    try:
        while (item := await pending) is not done:
            pending = asyncio.ensure_future(asyncio.to_thread(next, items, done))
            yield item  # type: ignore[misc]
    finally:
        if not pending.done():  # never leave a worker running on the iterator
            await asyncio.wait([pending])


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items`` as they are: the sync driver's queued writer already overlaps encoding and sending."""
    return items


def copy_writer_async(cur: Any) -> AsyncWriter | None:
    """The writer of an async COPY: psycopg's default (None)."""
    return None


def copy_writer(cur: Any) -> QueuedLibpqWriter:
    """The writer of a sync COPY: psycopg's queued writer, which sends on a thread of its own."""
    return QueuedLibpqWriter(cur)
