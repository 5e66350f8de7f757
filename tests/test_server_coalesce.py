"""The Coalescer on a real store: batching, and its error and cancellation paths.

Where a test must hold a batch while it runs, ``gated`` wraps the store's real
``read_batch`` so the batch waits for an event before it goes to the database:
the reads themselves are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgfeatures.errors import SchemaDriftError, StoreClosedError
from pgfeatures.server.coalesce import Coalescer
from pgfeatures.store import AsyncFeatureStore
from support import server_data as data

TABLES = ("flags", "profile")


@pytest.fixture()
def definitions(dsn: str, schema: str, tmp_path: Path) -> Path:
    return data.create(dsn, schema, tmp_path)


@asynccontextmanager
async def opened(dsn: str, definitions: Path) -> AsyncIterator[AsyncFeatureStore]:
    async with AsyncFeatureStore(definitions, dsn, pool_size=1, write_pool_size=1) as store:
        yield store


class Gate:
    """The store's read_batch, held at an event: ``started`` is set once a batch waits there."""

    def __init__(self, read_batch: Callable[..., Awaitable[Any]]):
        self.read_batch = read_batch
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, reader: Any, keys: list[bytes]) -> Any:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return await self.read_batch(reader, keys)


def expected(i: int) -> dict:
    return data.expected(i % data.N_KEYS, TABLES)


@pytest.mark.parametrize("window, sizes", [(0.0, [16, 4]), (0.002, [16, 4])])
def test_batches_wait_for_a_free_slot(dsn: str, definitions: Path, window: float, sizes: list[int]) -> None:
    """20 reads in one loop iteration, one slot: a full batch of max_keys, the rest once it is back."""

    async def run() -> tuple[list[int], list[dict]]:
        async with opened(dsn, definitions) as store:
            seen: list[int] = []
            coalescer = Coalescer(store.read_batch, window=window, max_keys=16, max_in_flight=1, on_batch=seen.append)
            reader = store.batch_reader(TABLES)
            results = await asyncio.gather(*(coalescer.read(reader, data.key(i % data.N_KEYS)) for i in range(20)))
            await coalescer.close()
            return seen, results

    seen, results = asyncio.run(run())
    assert seen == sizes
    assert results == [expected(i) for i in range(20)]


def test_a_failing_batch_fails_every_request_in_it(dsn: str, schema: str, definitions: Path) -> None:
    async def run() -> tuple[list[int], list[Any], list[dict]]:
        async with opened(dsn, definitions) as store:
            seen: list[int] = []
            coalescer = Coalescer(store.read_batch, window=0, max_keys=16, max_in_flight=1, on_batch=seen.append)
            reader = store.batch_reader(TABLES)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "flags")))
            failed = await asyncio.gather(
                *(coalescer.read(reader, data.key(i)) for i in range(10)), return_exceptions=True
            )
            # the coalescer is not wedged by the failure: the next batch of another shape works
            other = store.batch_reader(["profile"])
            after = await asyncio.gather(*(coalescer.read(other, data.key(i)) for i in range(3)))
            await coalescer.close()
            return seen, failed, after

    seen, failed, after = asyncio.run(run())
    assert seen == [10, 3]
    assert all(isinstance(r, SchemaDriftError) for r in failed), failed  # the store names what is missing
    assert all(f"{schema}.flags" in str(r) for r in failed)
    assert after == [data.expected(i, ("profile",)) for i in range(3)]


def test_a_request_cancelled_while_parked_leaves_its_batch(dsn: str, definitions: Path) -> None:
    """No clock involved: the window is an hour, so a batch leaves only when it holds max_keys keys (the
    cancelled ones included), and every step is an event-loop iteration."""

    async def run() -> tuple[list[int], list[Any], int]:
        async with opened(dsn, definitions) as store:
            seen: list[int] = []
            coalescer = Coalescer(store.read_batch, window=3600, max_keys=5, max_in_flight=1, on_batch=seen.append)
            reader = store.batch_reader(TABLES)
            tasks = [asyncio.ensure_future(coalescer.read(reader, data.key(i))) for i in range(4)]
            await asyncio.sleep(0)  # one iteration: each read runs to its await, parked
            assert not any(t.done() for t in tasks) and seen == []
            tasks[1].cancel()
            tasks.append(asyncio.ensure_future(coalescer.read(reader, data.key(4))))  # the fifth: the batch is full
            results = await asyncio.gather(*tasks, return_exceptions=True)
            # every request of a batch cancelled while parked: no batch at all
            lone = [asyncio.ensure_future(coalescer.read(reader, data.key(i))) for i in range(5, 10)]
            await asyncio.sleep(0)  # all five parked; the fifth has scheduled the batch's send, after this task
            for task in lone:
                task.cancel()
            await asyncio.gather(*lone, return_exceptions=True)
            for _ in range(3):  # the send ran (and found nothing to send)
                await asyncio.sleep(0)
            batches = len(seen)
            await coalescer.close()
            return seen, results, batches

    seen, results, batches = asyncio.run(asyncio.wait_for(run(), 30))
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[i] for i in (0, 2, 3, 4)] == [expected(i) for i in (0, 2, 3, 4)]
    assert seen == [4]  # the cancelled key was not sent
    assert batches == 1


def test_a_request_cancelled_while_its_batch_runs(dsn: str, definitions: Path) -> None:
    async def run() -> tuple[list[Any], list[dict], Gate]:
        async with opened(dsn, definitions) as store:
            gate = Gate(store.read_batch)
            coalescer = Coalescer(gate, window=0, max_keys=16, max_in_flight=1)
            reader = store.batch_reader(TABLES)
            tasks = [asyncio.ensure_future(coalescer.read(reader, data.key(i))) for i in range(3)]
            await asyncio.wait_for(gate.started.wait(), 5)
            tasks[0].cancel()
            await asyncio.sleep(0)
            gate.release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            again = await asyncio.gather(*(coalescer.read(reader, data.key(i)) for i in (7, 8)))
            await coalescer.close()
            return results, again, gate

    results, again, gate = asyncio.run(run())
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [expected(1), expected(2)]  # the batch ran on for the others
    assert again == [expected(7), expected(8)]  # and the slot came back
    assert gate.calls == 2


def test_close_fails_parked_and_running_requests_as_shutting_down(dsn: str, definitions: Path) -> None:
    async def run() -> tuple[list[Any], list[Any], Any, dict]:
        async with opened(dsn, definitions) as store:
            gate = Gate(store.read_batch)
            coalescer = Coalescer(gate, window=0, max_keys=2, max_in_flight=1)
            reader = store.batch_reader(TABLES)
            running = [asyncio.ensure_future(coalescer.read(reader, data.key(i))) for i in range(2)]
            await asyncio.wait_for(gate.started.wait(), 5)
            parked = [asyncio.ensure_future(coalescer.read(reader, data.key(i))) for i in range(2, 5)]
            await asyncio.sleep(0)  # one iteration: each read runs to its await; the slot is taken: they wait
            assert not any(p.done() for p in parked)
            await coalescer.close()
            results = await asyncio.gather(*running, return_exceptions=True)
            waiting = await asyncio.gather(*parked, return_exceptions=True)
            late = await asyncio.gather(coalescer.read(reader, data.key(1)), return_exceptions=True)
            return results, waiting, late[0], store.read_pool.get_stats()

    results, waiting, late, stats = asyncio.run(asyncio.wait_for(run(), 20))
    for r in [*results, *waiting, late]:
        assert isinstance(r, StoreClosedError), r
        assert "shutting down" in str(r)
    assert stats.get("pool_available") == stats.get("pool_size") == 1  # no connection left behind
