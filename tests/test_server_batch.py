"""Large batches: read in bounded chunks, answered as a stream, in input order, without starving
single-key reads of connections.

Correctness is checked against ground truth (the test schema's rows, the demo generator);
fairness by behaviour: with a small pool, a single-key read completes while batches are
held in the database by a table lock, never by timing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg
import pytest
from psycopg import sql

from pgfeatures.definitions import demo_registry
from pgfeatures.demo import entity_key
from pgfeatures.demo import expected as demo_expected
from pgfeatures.server import ServerConfig, create_app
from support import demo_data
from support import server_data as data
from support.inprocess import app_client, running_app

CHUNK = 4


@pytest.fixture()
def definitions(dsn: str, schema: str, tmp_path: Path) -> Path:
    return data.create(dsn, schema, tmp_path)


def config(dsn: str, definitions: Path, **settings: Any) -> ServerConfig:
    return ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, **settings)


def batch_body(ids: list[int], **extra: Any) -> dict[str, Any]:
    return {"keys": [data.hexkey(i) for i in ids], **extra}


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 7 * CHUNK + 3])
def test_chunked_batches_in_input_order_with_duplicates_and_misses(dsn: str, definitions: Path, n: int) -> None:
    rng = random.Random(n)
    ids = [rng.randrange(data.N_KEYS) for _ in range(n)]  # keys 10 and 11 are in no table; repeats are kept
    with running_app(config(dsn, definitions, batch_chunk_keys=CHUNK)) as client:
        r = client.post("/v1/features/batch", json=batch_body(ids))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        streamed = "content-length" not in r.headers
        assert streamed == (n > CHUNK)  # one chunk: a plain answer; more: streamed
        results = orjson.loads(r.content)["results"]  # the whole answer is one JSON document
        assert [x["key"] for x in results] == [data.hexkey(i) for i in ids]
        for i, got in zip(ids, results):
            assert got["features"] == data.expected(i)
            assert got["missing"] == [t for t, v in data.expected(i).items() if v is None]
        sub = client.post("/v1/features/batch", json=batch_body(ids, features={"profile": ["big"]}))
        big = [None if data.rows("profile", i) is None else {"big": 2**60 + i} for i in ids]
        assert [x["features"] for x in sub.json()["results"]] == [{"profile": b} for b in big]


def test_bad_key_in_a_later_chunk_is_a_400_before_any_read(dsn: str, definitions: Path) -> None:
    keys = [data.hexkey(i % data.N_KEYS) for i in range(3 * CHUNK)]
    keys[2 * CHUNK + 1] = keys[0][:-1] + "g"
    with running_app(config(dsn, definitions, batch_chunk_keys=CHUNK)) as client:
        before = data.metric(client.get("/metrics").text, "pgfeatures_db_duration_seconds_count", kind="batch")
        r = client.post("/v1/features/batch", json={"keys": keys})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_key"
        assert f"keys[{2 * CHUNK + 1}]" in r.json()["error"]["message"]
        after = data.metric(client.get("/metrics").text, "pgfeatures_db_duration_seconds_count", kind="batch")
        assert after == before  # nothing was read


@pytest.fixture()
def demo(dsn: str, schema: str, tmp_path: Path) -> tuple[Path, int]:
    """The demo layout (30 tables x 8 real) in the test schema, 600 entities."""
    path, _ = demo_data.create(dsn, schema, tmp_path, entities=600)
    return path, 600


def test_large_batch_against_the_demo_ground_truth(dsn: str, demo: tuple[Path, int]) -> None:
    """2,500 keys (repeats, and keys of no entity) over 30 tables, default chunk size: equal to the generator's data."""
    path, entities = demo
    registry = demo_registry(schema="x")
    rng = random.Random(7)
    ids = [rng.randrange(entities + 50) for _ in range(2500)]  # 50 of every 650 draws are absent everywhere
    with running_app(config(dsn, path, max_batch_keys=5000)) as client:
        r = client.post("/v1/features/batch", json={"keys": [entity_key(i).hex() for i in ids]})
        assert r.status_code == 200, r.text
        assert "content-length" not in r.headers
        results = orjson.loads(r.content)["results"]
    assert len(results) == len(ids)
    truth: dict[int, dict] = {}
    for i, got in zip(ids, results):
        assert got["key"] == entity_key(i).hex()
        want = truth.get(i) or truth.setdefault(
            i, demo_expected(registry, i, entities) if i < entities else dict.fromkeys(registry.tables)
        )
        assert got["missing"] == [t for t, v in want.items() if v is None]
        for table, values in want.items():
            if values is None:
                assert got["features"][table] is None
            else:  # float32 exact
                assert (
                    np.array(list(got["features"][table].values()), np.float32).tobytes()
                    == np.array(list(values.values()), np.float32).tobytes()
                )


# -- fairness: batches take a bounded share of the pool -------------------------------------------


@pytest.fixture()
def lock_table(dsn: str, schema: str) -> Iterator[Any]:
    """``lock(table)`` takes an ACCESS EXCLUSIVE lock in a side transaction (reads of that table
    wait in the database); ``release()`` commits it."""
    conn = psycopg.connect(dsn)

    class Lock:
        def lock(self, table: str) -> None:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, table)))

        def release(self) -> None:
            conn.commit()

    yield Lock()
    conn.rollback()
    conn.close()


async def waiting_on_lock(dsn: str, schema: str, at_least: int) -> None:
    """Until at least this many read connections wait for a lock on a table of the schema."""
    query = (
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
        "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.application_name = 'pgfeatures-read' AND n.nspname = %s"
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with asyncio.timeout(10):
            while (await (await conn.execute(query, [schema])).fetchone())[0] < at_least:  # type: ignore[index]
                await asyncio.sleep(0.02)


def test_single_key_read_completes_while_batches_hold_their_share(
    dsn: str, schema: str, definitions: Path, lock_table: Any
) -> None:
    """Pool of 2, batches may hold 1: two batches held in the database cannot take the connection a
    single-key read needs. Without the bound the second batch takes it and the read gets a 503."""
    settings = dict(pool_size=2, batch_connections=1, batch_chunk_keys=CHUNK, acquire_timeout=3.0, request_timeout=20.0)

    async def run() -> tuple[httpx.Response, list[httpx.Response]]:
        async with app_client(config(dsn, definitions, **settings)) as (_, c):
            await asyncio.to_thread(lock_table.lock, "stats")  # off the loop: the app's tasks run on it
            try:
                first = asyncio.ensure_future(c.post("/v1/features/batch", json=batch_body(list(range(10)))))
                await waiting_on_lock(dsn, schema, 1)
                second = asyncio.ensure_future(c.post("/v1/features/batch", json=batch_body([3, 1, 4, 1, 5])))
                await asyncio.sleep(
                    0.3
                )  # the second batch is waiting (for the batch slot, or, unbounded, for the lock)
                single = await c.post("/v1/features", json={"key": data.hexkey(2), "tables": ["profile"]})
            finally:
                lock_table.release()
            return single, list(await asyncio.gather(first, second))

    single, batches = asyncio.run(asyncio.wait_for(run(), 60))
    assert single.status_code == 200, single.text
    assert single.json()["features"] == data.expected(2, ("profile",))
    for r, ids in zip(batches, [list(range(10)), [3, 1, 4, 1, 5]]):
        assert r.status_code == 200, r.text
        assert [x["features"] for x in r.json()["results"]] == [data.expected(i) for i in ids]


def test_a_batch_that_cannot_get_its_share_is_a_503_pool_exhausted(
    dsn: str, schema: str, definitions: Path, lock_table: Any
) -> None:
    settings = dict(pool_size=2, batch_connections=1, acquire_timeout=0.5, request_timeout=20.0, retry_after=2)

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app_client(config(dsn, definitions, **settings)) as (_, c):
            await asyncio.to_thread(lock_table.lock, "stats")  # off the loop: the app's tasks run on it
            try:
                first = asyncio.ensure_future(c.post("/v1/features/batch", json=batch_body([1, 2])))
                await waiting_on_lock(dsn, schema, 1)
                second = await c.post("/v1/features/batch", json=batch_body([3]))
                single = await c.post("/v1/features", json={"key": data.hexkey(2), "tables": ["profile"]})
            finally:
                lock_table.release()
            return await first, second, single

    first, second, single = asyncio.run(asyncio.wait_for(run(), 60))
    assert first.status_code == 200 and [x["features"] for x in first.json()["results"]] == [
        data.expected(1),
        data.expected(2),
    ]
    assert second.status_code == 503 and second.headers["retry-after"] == "2", second.text
    error = second.json()["error"]
    assert error["type"] == "pool_exhausted" and error["retryable"] is True
    assert "batch_connections" in error["message"]
    assert single.status_code == 200


# -- a failure mid-stream cuts the answer off -----------------------------------------------------


def test_failure_mid_stream_leaves_the_answer_incomplete(
    dsn: str, schema: str, definitions: Path, lock_table: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the 200 is out, a failing chunk must not end the answer as if it were whole: the
    response stops without its final message (the server closes the connection), and the log says why."""
    app = create_app(config(dsn, definitions, batch_chunk_keys=CHUNK, request_timeout=0.5))
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
                while (await c.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.02)
            body = orjson.dumps(batch_body([i % data.N_KEYS for i in range(5 * CHUNK)]))
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.Event().wait()  # the client stays connected
                raise AssertionError("unreachable")

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)
                if message["type"] == "http.response.body" and len(messages) == 2:
                    # after the first chunk is out, the next one waits for the lock (taken off the loop, where
                    # the app's own tasks run: see tests/test_server_errors.py)
                    await asyncio.to_thread(lock_table.lock, "stats")

            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/features/batch",
                "raw_path": b"/v1/features/batch",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json")],
                "client": ("127.0.0.1", 1),
                "server": ("app", 80),
                "state": {},
            }
            try:
                await asyncio.wait_for(app(scope, receive, send), 30)
            finally:
                lock_table.release()

    with caplog.at_level(logging.WARNING, logger="pgfeatures"):
        asyncio.run(run())
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert bodies and all(m.get("more_body") for m in bodies)  # never the final message
    assert bodies[0]["body"].startswith(b'{"results":[')
    assert any("cut off" in r.getMessage() and "query_timeout" in r.getMessage() for r in caplog.records), caplog.text
