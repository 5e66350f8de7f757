"""``real`` features over HTTP print as the shortest decimal that reads back as the same float32.

The store hands the service exact float32 values widened to doubles; printed as doubles they
come out as ``0.10999999940395355``. The answer must carry ``0.11``, and every number must read
back, rounded to float32, as the stored value bit for bit: through a single read, a batch, and
a coalesced read, for an all-real table (``real[]`` transport) and for a real feature in a
mixed table (``float8[]`` transport).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
from psycopg import sql

from pgfeatures.definitions import Registry
from pgfeatures.schema import apply_schema
from pgfeatures.server import ServerConfig
from support.inprocess import app_client, running_app

DEFINITIONS = """
schema = "{schema}"

[tables.reals.features]
a = "real"
b = "real"
c = "real"
d = "real"
e = "real"
f = "real"

[tables.mixed.features]
r = "real"
n = "integer"
"""
# Short shortest-forms, the largest float32, the smallest and the largest subnormal, a sign, zero.
REALS = {
    1: [0.11, 1e-7, 3.4028235e38, 1e-45, 1.1754942e-38, -2.5],
    2: [None, 0.3, 0.0, -1e-45, 16777217.0, 1.0e10],
    3: [0.1, 0.2, 0.7, 123.456, 1e-30, 5e-40],
}
MIXED = {1: (0.11, 7), 2: (None, 8), 3: (2.675, 9)}


def key(i: int) -> bytes:
    return bytes([i]) * 32


@pytest.fixture()
def definitions(dsn: str, schema: str, tmp_path: Path) -> Path:
    path = tmp_path / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, Registry.from_toml(path))
        for i, values in REALS.items():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (hashkey, updated_at, a, b, c, d, e, f) "
                    "VALUES (%s, to_timestamp(0), %s, %s, %s, %s, %s, %s)"
                ).format(sql.Identifier(schema, "reals")),
                [key(i), *values],
            )
            conn.execute(
                sql.SQL("INSERT INTO {} (hashkey, updated_at, r, n) VALUES (%s, to_timestamp(0), %s, %s)").format(
                    sql.Identifier(schema, "mixed")
                ),
                [key(i), *MIXED[i]],
            )
    return path


def stored(value: float | None) -> np.float32 | None:
    """What a real column holds for this input: the nearest float32."""
    return None if value is None else np.float32(value)


def check_values(results: list[dict], ids: list[int]) -> None:
    for i, got in zip(ids, results):
        expected = {
            "reals": dict(zip("abcdef", map(stored, REALS[i]))),
            "mixed": {"r": stored(MIXED[i][0]), "n": MIXED[i][1]},
        }
        for table, features in expected.items():
            for name, want in features.items():
                value = got["features"][table][name]
                if want is None or isinstance(want, int):
                    assert value == want, (table, name)
                    continue
                assert np.float32(value).tobytes() == want.tobytes(), (table, name, value)  # exact round-trip
                assert value == float(str(want)), (table, name, value)  # and the shortest form numpy knows


def check_text(body: bytes) -> None:
    """The numbers as printed, in JSON that holds rows 1-3."""
    for text in (b"0.11", b"1e-7", b"3.4028235e+38", b"1e-45", b"1.1754942e-38", b"16777216.0", b"5e-40"):
        assert re.search(rb"[:,\[]" + re.escape(text) + rb"[,}\]]", body), text
    assert b"0.10999999940395355" not in body and b"3.4028234663852886e+38" not in body


@pytest.mark.parametrize("coalesce", [False, True])
def test_single_reads(dsn: str, definitions: Path, coalesce: bool) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, coalesce=coalesce)
    with running_app(config) as client:
        bodies = []
        for i in REALS:
            r = client.post("/v1/features", json={"key": key(i).hex()})
            assert r.status_code == 200, r.text
            check_values([r.json()], [i])
            bodies.append(r.content)
        check_text(b"".join(bodies))


def test_batch(dsn: str, definitions: Path) -> None:
    ids = [3, 1, 2, 1, 3]
    config = ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False)
    with running_app(config) as client:
        r = client.post("/v1/features/batch", json={"keys": [key(i).hex() for i in ids]})
        assert r.status_code == 200, r.text
        check_values(r.json()["results"], ids)
        check_text(r.content)
        sub = client.post("/v1/features/batch", json={"keys": [key(1).hex()], "features": ["reals.c", "mixed.r"]})
        assert sub.json()["results"][0]["features"] == {"reals": {"c": 3.4028235e38}, "mixed": {"r": 0.11}}
        assert b'"c":3.4028235e+38' in sub.content and b'"r":0.11' in sub.content


def test_coalesced_concurrent_reads(dsn: str, definitions: Path) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, coalesce=True, pool_size=1)

    async def run() -> list[tuple[int, bytes]]:
        async with app_client(config) as (_, c):
            ids = [1, 2, 3] * 5
            responses = await asyncio.gather(*(c.post("/v1/features", json={"key": key(i).hex()}) for i in ids))
            return [(i, r.content) for i, r in zip(ids, responses)]

    out = asyncio.run(run())
    check_values([orjson.loads(body) for _, body in out], [i for i, _ in out])
    check_text(b"".join(body for _, body in out))
