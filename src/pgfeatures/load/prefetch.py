"""Async iteration over a CPU-bound iterator: each ``next()`` runs on a worker thread, the next
item while the caller awaits on the current one (the async driver encodes the next COPY chunk
while it sends this one). The sync driver needs none of this: psycopg's queued writer sends on
a thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")


async def prefetched(items: Iterator[T]) -> AsyncIterator[T]:
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
