"""A huge batch leaves no memory behind in a real ``pgfeatures serve`` process.

Before chunking and streaming, a 30,000-key batch over 10 tables (a 42 MB answer) built every
result and the whole JSON in memory, and the process kept 70+ MB of it afterwards (freed
objects, fragmented heap). Now it holds one chunk at a time: RSS after the batch must stay
within a small margin of RSS before it, once the steady state of ordinary batches is reached.
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import orjson
import pytest

from pgfeatures.demo import entity_key
from support import demo_data
from support.serve import ServeProcess, rss_bytes

ENTITIES = 1000
HUGE = 30_000
MARGIN = 25 << 20  # bytes of RSS a huge batch may leave (measured: about 6 MB; 73 MB before the fix)


@pytest.mark.slow
def test_rss_does_not_grow_after_a_huge_batch(dsn: str, schema: str, tmp_path: Path) -> None:
    path, registry = demo_data.create(dsn, schema, tmp_path, entities=ENTITIES, n_tables=10)
    rng = random.Random(0)

    def body(n: int) -> bytes:
        return orjson.dumps({"keys": [entity_key(rng.randrange(ENTITIES)).hex() for _ in range(n)]})

    with (
        ServeProcess(
            "--dsn",
            dsn,
            "--definitions",
            str(path),
            "--max-batch-keys",
            str(HUGE),
            "--request-timeout",
            "120",
            "--no-prewarm",
        ) as proc,
        httpx.Client(base_url=proc.url, timeout=300) as client,
    ):
        for _ in range(3):  # the steady state of ordinary batches
            assert client.post("/v1/features/batch", content=body(1000)).status_code == 200
        before = rss_bytes(proc.pid)
        keys = body(HUGE)
        with client.stream("POST", "/v1/features/batch", content=keys) as r:
            assert r.status_code == 200
            answer = r.read()
        results = orjson.loads(answer)["results"]
        assert [x["key"] for x in results] == orjson.loads(keys)["keys"]  # whole and in order
        for _ in range(3):
            assert client.post("/v1/features/batch", content=body(1000)).status_code == 200
        after = rss_bytes(proc.pid)
    assert after - before < MARGIN, (
        f"RSS grew by {(after - before) / 2**20:.1f} MiB ({before / 2**20:.1f} -> {after / 2**20:.1f})"
    )
