"""±Infinity and NaN never turn into another value, and what the server prints, it accepts.

PostgreSQL's ``real`` and ``double precision`` hold ±Infinity and NaN; JSON has no numbers for them.

- At write time they are refused by default (``check_value``, live updates, pushes, loads), NaN as
  before (``nan='null'`` writes NULL), ±Infinity with ``inf='keep'`` / ``--inf keep`` to store them.
- Values already stored (written by SQL) are served as themselves: in JSON as the strings
  ``"Infinity"``, ``"-Infinity"`` and ``"NaN"`` (the OpenAPI value schema says so), never ``null``
  under ``present``; as IEEE values in the raw vector (``application/octet-stream``) and in the
  library. Every read path: flexible and materialized, dict and vector, single, batch and
  coalesced, JSON and raw, the library and the CLI.
- ``3.4028235e+38``, how the largest ``real`` prints, pushes back (the range check compares with
  the float32 rounding boundary, not FLT_MAX itself); so does every float32 the server prints.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.cli import main as cli_main
from pgfeatures.definitions import TYPES, Registry, check_value
from pgfeatures.errors import FeatureValueError, LoadInputError
from pgfeatures.load import load
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema
from pgfeatures.server import ServerConfig
from pgfeatures.server.openapi import openapi_document
from support.inprocess import running_app

INF, NAN = math.inf, math.nan
DEFINITIONS = """
schema = "{schema}"

[entities.user]
key = "bigint"

[tables.reals]
entity = "user"
features = {{ a = "real", b = "real", c = "real" }}

[tables.mixed]
entity = "user"
features = {{ r = "real", d = "double precision", n = "integer" }}

[services.flat]
features = ["reals.*"]

[services.flat_m]
features = ["reals.*"]
materialize = true

[services.both]
features = ["reals.*", "mixed.*"]

[services.both_m]
features = ["reals.*", "mixed.*"]
materialize = true
"""
# key -> table -> values, written by SQL (the store refuses the non-finite ones)
ROWS: dict[int, dict[str, tuple[Any, ...]]] = {
    1: {"reals": (INF, -INF, NAN), "mixed": (NAN, INF, 1)},
    2: {"reals": (None, 0.5, -INF), "mixed": (-INF, NAN, None)},
    3: {"reals": (3.4028235e38, 0.25, None), "mixed": (0.5, -1e308, 3)},
}
SHOWN = {INF: "Infinity", -INF: "-Infinity"}


def shown(value: Any) -> Any:
    """A stored value as JSON carries it."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return SHOWN.get(value, value)


@pytest.fixture(scope="module")
def defs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    schema = f"test_inf_{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("nonfinite") / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    registry = Registry.from_toml(path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, registry)
        for service in ("flat_m", "both_m"):
            materialize(conn, registry, service)  # built empty: the inserts below reach them through the triggers
        for key, tables in ROWS.items():
            for table, values in tables.items():
                names = [f.name for f in registry.tables[table].features]
                conn.execute(
                    sql.SQL("INSERT INTO {} (user_id, {}) VALUES (%s, {})").format(
                        sql.Identifier(schema, table),
                        sql.SQL(", ").join(map(sql.Identifier, names)),
                        sql.SQL(", ").join(sql.Placeholder() * len(names)),
                    ),
                    [key, *values],
                )
        yield path, registry
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def strict_json(text: str | bytes) -> Any:
    """JSON as the standard has it: no bare NaN/Infinity tokens (Python's json takes them)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def features_of(key: int, tables: list[str] | None = None) -> dict[str, Any]:
    chosen = tables or ["reals", "mixed"]
    names = {"reals": "abc", "mixed": ("r", "d", "n")}
    return {t: {n: shown(v) for n, v in zip(names[t], ROWS[key][t])} for t in chosen}


def vector_of(key: int, service: str) -> list[Any]:
    values = list(ROWS[key]["reals"]) + (list(ROWS[key]["mixed"]) if service.startswith("both") else [])
    return [shown(v) for v in values]


# -- HTTP: JSON -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["plain", "coalesced"])
def client(request: pytest.FixtureRequest, dsn: str, defs: tuple[Path, Registry]) -> Iterator[httpx.Client]:
    config = ServerConfig(
        dsn=dsn,
        definitions=str(defs[0]),
        prewarm=False,
        pool_size=2,
        batch_chunk_keys=2,
        coalesce=request.param == "coalesced",
    )
    with running_app(config) as c:
        yield c


def test_flexible_dict_reads_serve_the_declared_strings(client: httpx.Client) -> None:
    for key in ROWS:
        r = client.post("/v1/features", json={"key": key})
        assert r.status_code == 200, r.text
        body = strict_json(r.content)
        assert body["features"] == features_of(key) and set(body["status"].values()) == {"present"}, body
    r = client.post("/v1/features/batch", json={"keys": [1, 2, 3, 1]})
    assert [row["features"] for row in strict_json(r.content)["results"]] == [features_of(k) for k in (1, 2, 3, 1)]
    # a subset of an all-real table, and a real alone in a mixed table
    r = client.post("/v1/features", json={"key": 1, "features": ["reals.a", "mixed.r"]})
    assert strict_json(r.content)["features"] == {"reals": {"a": "Infinity"}, "mixed": {"r": "NaN"}}


@pytest.mark.parametrize("service", ["flat", "flat_m", "both", "both_m"])
def test_service_reads_dict_and_vector_serve_the_declared_strings(client: httpx.Client, service: str) -> None:
    for key in ROWS:
        r = client.post(f"/v1/services/{service}", json={"key": key})
        tables = ["reals", "mixed"] if service.startswith("both") else ["reals"]
        assert strict_json(r.content)["features"] == features_of(key, tables), r.text
        r = client.post(f"/v1/services/{service}", json={"key": key, "output": "vector"})
        body = strict_json(r.content)
        assert body["values"] == vector_of(key, service) and set(body["status"].values()) == {"present"}, body
    r = client.post(f"/v1/services/{service}/batch", json={"keys": [3, 2, 1, 99], "output": "vector"})
    rows = strict_json(r.content)["results"]
    assert [row["values"] for row in rows[:3]] == [vector_of(k, service) for k in (3, 2, 1)]
    assert rows[3]["values"] == [None] * len(rows[3]["values"])  # missing: null, as before


@pytest.mark.parametrize("service", ["flat", "flat_m", "both", "both_m"])
def test_raw_vectors_carry_the_ieee_values(client: httpx.Client, service: str) -> None:
    r = client.post(
        f"/v1/services/{service}/batch", json={"keys": [1, 2, 3]}, headers={"Accept": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    dtype = "<f4" if r.headers["x-pgfeatures-dtype"] == "float32" else "<f8"
    values = np.frombuffer(r.content, dtype, count=3 * int(r.headers["x-pgfeatures-columns"])).reshape(3, -1)
    real = [True] * 3 + [True, False, False]  # reals.a-c, mixed.r; mixed.d and .n are not
    for row, key in zip(values, (1, 2, 3)):
        want = list(ROWS[key]["reals"]) + (list(ROWS[key]["mixed"]) if service.startswith("both") else [])
        for got, value, is_real in zip(row, want, real):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert math.isnan(got)  # NULL and a stored NaN are both NaN here, as documented
            else:
                assert got == (np.float32(value) if is_real else value), (key, list(row), want)


def test_the_openapi_value_schema_declares_the_strings(defs: tuple[Path, Registry]) -> None:
    document = openapi_document(defs[1], ServerConfig(definitions=str(defs[0])))
    value = document["components"]["schemas"]["FeaturesResult"]["properties"]["features"]["additionalProperties"][
        "additionalProperties"
    ]
    assert {"type": "string", "enum": ["Infinity", "-Infinity", "NaN"]}.items() <= next(
        s for s in value["anyOf"] if s.get("type") == "string"
    ).items()


# -- the library and the CLI --------------------------------------------------------------------------


def test_the_library_returns_the_stored_values(dsn: str, defs: tuple[Path, Registry]) -> None:
    with FeatureStore(defs[1], dsn, pool_size=1) as store:
        got = store.get_features(1)
        assert got["reals"]["a"] == INF and got["reals"]["b"] == -INF and math.isnan(got["reals"]["c"])
        assert math.isnan(got["mixed"]["r"]) and got["mixed"]["d"] == INF
        for service in ("both", "both_m"):
            vector = store.get_service(service, 1, output="list").values
            assert vector[:2] == [INF, -INF] and math.isnan(vector[2]) and math.isnan(vector[3]) and vector[4] == INF


def test_the_cli_prints_the_declared_strings(
    dsn: str, defs: tuple[Path, Registry], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["get", "--dsn", dsn, "-d", str(defs[0]), "1", "2"]) == 0
    results = strict_json(capsys.readouterr().out)["results"]
    assert [r["features"] for r in results] == [features_of(1), features_of(2)]
    assert cli_main(["get", "--dsn", dsn, "-d", str(defs[0]), "--service", "both_m", "-o", "vector", "1"]) == 0
    assert strict_json(capsys.readouterr().out)["values"] == vector_of(1, "both_m")


# -- writes -------------------------------------------------------------------------------------------


def test_writes_refuse_infinity_by_default_and_keep_it_when_asked(dsn: str, defs: tuple[Path, Registry]) -> None:
    with FeatureStore(defs[1], dsn, pool_size=1) as store:
        for value in (INF, -INF, np.float32("inf")):
            with pytest.raises(
                FeatureValueError,
                match=r"reals.a \(real\): .* is infinite, which this store refuses "
                r"by default \(inf='keep' writes it",
            ):
                store.update_features(50, "reals", {"a": value})
        with pytest.raises(FeatureValueError, match=r"mixed.d \(double precision\): -inf is infinite"):
            store.update_features(50, "mixed", {"d": -INF})
        with pytest.raises(FeatureValueError, match="is NaN"):
            store.update_features(50, "reals", {"a": NAN})
        assert store.get_features(50)["reals"] is None  # nothing was written
        assert store.update_features(50, "mixed", {"d": -INF, "r": INF}, inf="keep") == 1
        assert store.get_features(50, ["mixed"])["mixed"] == {"r": INF, "d": -INF, "n": None}
        with pytest.raises(FeatureValueError, match=r"invalid inf='null'; valid: reject, keep"):
            store.update_features(50, "mixed", {"d": 1.0}, inf="null")


def test_loads_refuse_infinity_by_default_and_keep_it_when_asked(
    conn: psycopg.Connection, dsn: str, defs: tuple[Path, Registry]
) -> None:
    registry = defs[1]
    frame = pa.table(
        {
            "user_id": pa.array([60, 61], pa.int64()),
            "a": pa.array([1.0, INF], pa.float32()),
            "d": pa.array([-INF, 2.0], pa.float64()),
        }
    )
    with pytest.raises(
        LoadInputError,
        match=r"row 1, column 'd': -inf is infinite, which this store refuses by "
        r"default \(inf='keep' / --inf keep loads it\)",
    ):
        load(conn, registry, "mixed", frame.select(["user_id", "d"]), partial=True)
    with pytest.raises(LoadInputError, match=r"row 2, column 'a': inf is infinite"):
        load(conn, registry, "reals", frame.select(["user_id", "a"]), partial=True)
    summary = load(conn, registry, "mixed", frame.select(["user_id", "d"]), partial=True, inf="keep")
    assert summary.inserted == 2
    with FeatureStore(registry, dsn, pool_size=1) as store:
        assert store.get_features(60, ["mixed"])["mixed"]["d"] == -INF


@pytest.fixture()
def push_client(dsn: str, defs: tuple[Path, Registry]) -> Iterator[httpx.Client]:
    with running_app(ServerConfig(dsn=dsn, definitions=str(defs[0]), prewarm=False, pool_size=1)) as c:
        yield c


def test_what_the_server_prints_it_accepts(push_client: httpx.Client) -> None:
    read = push_client.post("/v1/features", json={"key": 3, "features": ["reals.a"]})
    assert b'"a":3.4028235e+38' in read.content
    r = push_client.post(
        "/v1/push/reals",
        content=b'{"key": 70, "features": {"a": 3.4028235e+38, "b": -3.4028235e+38}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["written"] == 1, r.text
    back = push_client.post("/v1/features", json={"key": 70, "features": ["reals.a", "reals.b"]})
    assert b'"a":3.4028235e+38,"b":-3.4028235e+38' in back.content
    # a string form is read-only: pushing it back is refused, naming why
    r = push_client.post("/v1/push/reals", json={"key": 71, "features": {"a": "Infinity"}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_value", r.text
    assert "'Infinity' is not a number" in r.json()["error"]["message"]


BOUNDARY = 2.0**128 - 2.0**103  # halfway between the largest float32 and 2**128: rounds to infinity


def test_the_real_range_is_the_float32_rounding_boundary() -> None:
    real = TYPES["real"]
    below = np.nextafter(BOUNDARY, 0)
    assert check_value("t.a", real, float(below)) == below and np.float32(below) == np.finfo(np.float32).max
    assert check_value("t.a", real, -3.4028235e38) == -3.4028235e38
    for beyond in (BOUNDARY, -BOUNDARY, 1e39):
        with pytest.raises(FeatureValueError, match=r"is out of range for real \(at most ±3.4028235e\+38\)"):
            check_value("t.a", real, beyond)


@settings(max_examples=2000, deadline=None)
@given(bits=st.integers(min_value=0, max_value=2**32 - 1))
@example(bits=0x7F7FFFFF)  # the largest real, printed 3.4028235e+38 (above FLT_MAX as a double)
@example(bits=0xFF7FFFFF)
@example(bits=0x00000001)  # the smallest subnormal, printed 1e-45
def test_every_float32_the_server_prints_is_accepted_back_bit_for_bit(bits: int) -> None:
    value = np.frombuffer(struct.pack("<I", bits), "<f4")[0]
    if not np.isfinite(value):
        return
    printed = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)  # what server/encoding.py prints
    accepted = check_value("t.a", TYPES["real"], orjson.loads(printed))
    assert np.float32(accepted).tobytes() == value.tobytes(), printed
