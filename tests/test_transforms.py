"""Request-time transforms of a feature service, through the library (sync and async), against a real
PostgreSQL: outputs in the answer and the vector, the context checked, one call per batch for a
``batch = true`` transform, errors naming the transform and the output, materialized services, offload.

The transform functions are in support/transforms.py; every expected value is computed here from the
rows the test wrote, never read back from the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import FeatureService, Registry
from pgfeatures.definitions.transforms import Transform
from pgfeatures.errors import ContextError, DefinitionError, TransformError
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema
from pgfeatures.server import ServerConfig
from support import transforms as fns
from support.inprocess import running_app
from support.server_data import metric

TOML = """
schema = "{schema}"

[entities.user]
key = "bigint"

[entities.merchant]
hash = "sha256"

[tables.user_stats]
entity = "user"
[tables.user_stats.features]
amount_avg = {{ type = "double precision", default = 10.0 }}
clicks_7d = "integer"

[tables.merchant_risk]
entity = "merchant"
[tables.merchant_risk.features]
chargeback_rate = {{ type = "real", default = 0.5 }}

[services.fraud_v2]
features = ["user_stats.*", "merchant_risk.chargeback_rate"]
context = {{ amount = "double", lat = "double" }}
materialize = {materialize}

[[services.fraud_v2.transforms]]
function = "support.transforms:ratios"
inputs = ["user_stats.amount_avg", "merchant_risk.*"]
outputs = {{ amount_ratio = "double", is_big = "boolean", risk = "real" }}

[[services.fraud_v2.transforms]]
function = "support.transforms:ratios_columns"
name = "cols"
batch = true
inputs = ["user_stats.amount_avg"]
outputs = {{ amount_ratio = "double", far = "boolean" }}

[services.plain]
features = ["user_stats.clicks_7d"]

[services.broken]
features = ["user_stats.amount_avg"]
[[services.broken.transforms]]
function = "support.transforms:raises"
outputs = {{ x = "double" }}
"""

ROWS = {42: {"amount_avg": 50.0, "clicks_7d": 3}, 43: {"amount_avg": 4.0, "clicks_7d": 9}}
MERCHANTS = {"m-1": {"chargeback_rate": 0.125}}
NAMES = (
    "user_stats.amount_avg",
    "user_stats.clicks_7d",
    "merchant_risk.chargeback_rate",
    "ratios.amount_ratio",
    "ratios.is_big",
    "ratios.risk",
    "cols.amount_ratio",
    "cols.far",
)


def registry_of(schema: str, tmp_path: Path, materialized: bool = False, toml: str = TOML) -> Registry:
    path = tmp_path / "features.toml"
    path.write_text(toml.format(schema=schema, materialize="true" if materialized else "false"))
    return Registry.from_toml(path)


def expected(user: int, merchant: str, amount: float, lat: float) -> dict[str, Any]:
    """The answer computed from the rows written (defaults where a row is missing)."""
    row = ROWS.get(user)
    avg = row["amount_avg"] if row else 10.0
    rate = MERCHANTS[merchant]["chargeback_rate"] if merchant in MERCHANTS else 0.5
    return {
        "user_stats": dict(row) if row else {"amount_avg": 10.0, "clicks_7d": None},
        "merchant_risk": {"chargeback_rate": rate},
        "ratios": {"amount_ratio": amount / avg, "is_big": amount > 100.0, "risk": rate * (1.0 if row else 2.0)},
        "cols": {"amount_ratio": amount / avg, "far": lat > 45.0},
    }


def fill(registry: Registry, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as s:
        s.update_features_batch("user_stats", ROWS)
        s.update_features_batch("merchant_risk", MERCHANTS)


@pytest.fixture()
def registry(schema: str, tmp_path: Path, dsn: str) -> Registry:
    reg = registry_of(schema, tmp_path)
    fill(reg, dsn)
    return reg


def test_outputs_join_the_answer_and_the_vector(registry: Registry, dsn: str) -> None:
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        keys = {"user": 42, "merchant": "m-1"}
        got = store.get_service("fraud_v2", keys, context={"amount": 125.0, "lat": 52.5})
        assert got == expected(42, "m-1", 125.0, 52.5)
        assert got.status == {"user_stats": "present", "merchant_risk": "present"}  # the stored tables only

        missing = store.get_service("fraud_v2", {"user": 99, "merchant": "m-9"}, context={"amount": 5, "lat": 1.0})
        assert missing == expected(99, "m-9", 5.0, 1.0)  # the transform saw the defaults and the status
        assert missing.status == {"user_stats": "missing", "merchant_risk": "missing"}

        vector = store.get_service("fraud_v2", keys, output="list", context={"amount": 125.0, "lat": 52.5})
        assert vector.names == NAMES
        want = expected(42, "m-1", 125.0, 52.5)
        assert vector.values == [want[t][f] for t, _, f in (n.partition(".") for n in NAMES)]
        array = store.get_service("fraud_v2", keys, output="numpy", context={"amount": 125.0, "lat": 52.5})
        assert array.values.dtype == np.float64 and array.values.tolist() == [float(v) for v in vector.values]


def test_a_batch_runs_a_batch_transform_once_and_a_row_transform_per_row(registry: Registry, dsn: str) -> None:
    keys = [{"user": 42, "merchant": "m-1"}, {"user": 43, "merchant": "m-1"}, {"user": 7, "merchant": "m-2"}]
    contexts = [{"amount": 125.0, "lat": 52.5}, {"amount": 8.0, "lat": 40.0}, {"amount": 1.0, "lat": 46.0}]
    want = [expected(k["user"], k["merchant"], c["amount"], c["lat"]) for k, c in zip(keys, contexts)]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        before = dict(fns.CALLS)
        assert store.get_service_batch("fraud_v2", keys, context=contexts) == want
        assert fns.CALLS["ratios_columns"] - before.get("ratios_columns", 0) == 1  # once, on columns
        assert fns.CALLS["ratios"] - before.get("ratios", 0) == 3  # row-wise: once per row
        columns = {"amount": [c["amount"] for c in contexts], "lat": [c["lat"] for c in contexts]}
        vectors = store.get_service_batch("fraud_v2", keys, output="list", context=columns)
        assert [v.values for v in vectors] == [[w[t][f] for t, _, f in (n.partition(".") for n in NAMES)] for w in want]
        stacked = store.get_service_batch("fraud_v2", keys, output="numpy", context=columns)
        assert stacked.values.shape == (3, len(NAMES)) and stacked.names == NAMES


def test_the_async_store_answers_the_same(registry: Registry, dsn: str) -> None:
    async def run() -> tuple[Any, Any]:
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
            one = await store.get_service("fraud_v2", {"user": 43, "merchant": "m-1"}, context={"amount": 8, "lat": 0})
            many = await store.get_service_batch(
                "fraud_v2", [{"user": 42, "merchant": "m-1"}], context=[{"amount": 1.0, "lat": 50.0}]
            )
            return one, many

    one, many = asyncio.run(run())
    assert one == expected(43, "m-1", 8.0, 0.0)
    assert many == [expected(42, "m-1", 1.0, 50.0)]


@pytest.mark.parametrize(
    "context, message",
    [
        ({"amount": 1.0}, "missing context value(s) lat; valid: amount, lat"),
        ({"amount": 1.0, "lat": 2.0, "speed": 3}, "unknown context value(s) speed; valid: amount, lat"),
        ({"amount": "12.5", "lat": 2.0}, "context 'amount' (double precision): '12.5' is not a number"),
        ({"amount": None, "lat": 2.0}, "context 'amount' is null"),
        (None, "missing context value(s) amount, lat"),
        ([1, 2], "context must be an object"),
    ],
)
def test_a_bad_context_is_refused_naming_the_value(registry: Registry, dsn: str, context: Any, message: str) -> None:
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        with pytest.raises(ContextError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
            store.get_service("fraud_v2", {"user": 42, "merchant": "m-1"}, context=context)
        assert "fraud_v2" in str(raised.value)


def test_batch_contexts_are_checked_per_row(registry: Registry, dsn: str) -> None:
    keys = [{"user": 42, "merchant": "m-1"}, {"user": 43, "merchant": "m-1"}]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        with pytest.raises(ContextError, match=r"1 contexts for 2 keys"):
            store.get_service_batch("fraud_v2", keys, context=[{"amount": 1.0, "lat": 1.0}])
        with pytest.raises(ContextError, match=r"context\[1\]: .*'lat'.*not a number"):
            store.get_service_batch("fraud_v2", keys, context=[{"amount": 1, "lat": 1}, {"amount": 1, "lat": "x"}])
        with pytest.raises(ContextError, match=r"context 'lat' has 1 values for 2 keys"):
            store.get_service_batch("fraud_v2", keys, context={"amount": [1.0, 2.0], "lat": [1.0]})
        with pytest.raises(ContextError, match=r"service 'plain' takes no context"):
            store.get_service("plain", 42, context={"amount": 1.0})
        with pytest.raises(ContextError, match=r"subset of its features"):
            store.get_service("fraud_v2", {"user": 42}, ["user_stats.clicks_7d"], context={"amount": 1, "lat": 1})
        # a subset without a context is a read of stored features: no transform runs
        assert store.get_service("fraud_v2", {"user": 42}, ["user_stats.clicks_7d"]) == {"user_stats": {"clicks_7d": 3}}


def one_transform(schema: str, tmp_path: Path, function: str, outputs: str, extra: str = "") -> Registry:
    toml = f"""
schema = "{schema}"
[entities.user]
key = "bigint"
[tables.user_stats]
entity = "user"
features = {{ amount_avg = "double precision", clicks_7d = "integer" }}
[services.s]
features = ["user_stats.*"]
context = {{ amount = "double" }}
[[services.s.transforms]]
function = "{function}"
outputs = {outputs}
{extra}
"""
    path = tmp_path / "one.toml"
    path.write_text(toml)
    return Registry.from_toml(path)


@pytest.mark.parametrize(
    "function, outputs, extra, message, output",
    [
        ("support.transforms:raises", "{ x = 'double' }", "", r"transform 'raises' .* raised ZeroDivisionError", None),
        (
            "support.transforms:wrong_type",
            "{ amount_ratio = 'double' }",
            "",
            r"transform 'wrong_type' .*output 'amount_ratio' \(double precision\): 'not a number' is not a number",
            "amount_ratio",
        ),
        (
            "support.transforms:misses_output",
            "{ amount_ratio = 'double' }",
            "",
            r"missed output\(s\) amount_ratio",
            "amount_ratio",
        ),
        ("support.transforms:not_a_mapping", "{ x = 'double' }", "", r"returned float, not a mapping", None),
        (
            "support.transforms:short_column",
            "{ amount_ratio = 'double' }",
            "batch = true",
            r"returned of length 1 for output 'amount_ratio': a batch transform returns a sequence of 2",
            "amount_ratio",
        ),
    ],
)
def test_a_failing_transform_is_named_with_its_inputs(
    schema: str, tmp_path: Path, dsn: str, function: str, outputs: str, extra: str, message: str, output: str | None
) -> None:
    reg = one_transform(schema, tmp_path, function, outputs, extra)
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, reg)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features(42, "user_stats", {"amount_avg": 0.0, "clicks_7d": 1})
        with pytest.raises(TransformError, match=message) as raised:
            store.get_service_batch("s", [42, 43], context=[{"amount": 3.5}, {"amount": 1.0}])
        assert raised.value.service == "s" and raised.value.output == output
        assert "inputs: context" in str(raised.value) and "user_stats.amount_avg" in str(raised.value)
        if function.endswith(":raises"):
            assert isinstance(raised.value.__cause__, ZeroDivisionError)  # kept for the server's log


@pytest.mark.parametrize(
    "function, message",
    [
        (
            "support.transforms:not_callable",
            r"transform 'not_callable': function 'support.transforms:not_callable' is not callable",
        ),
        ("support.nowhere:f", r"no module named 'support.nowhere'"),
        ("support.transforms:absent", r"support.transforms has no attribute 'absent'"),
        ("no_colon", r"must be written 'module:callable'"),
    ],
)
def test_a_function_that_cannot_be_resolved_fails_at_open(
    schema: str, tmp_path: Path, dsn: str, function: str, message: str
) -> None:
    reg = one_transform(schema, tmp_path, function, "{ x = 'double' }")
    with pytest.raises(DefinitionError, match=message):
        FeatureStore(reg, dsn, pool_size=1, write_pool_size=0)


def test_definition_errors_name_the_transform(schema: str, tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"transform 'user_stats' has the name of a feature table"):
        one_transform(schema, tmp_path, "m:f", "{ x = 'double' }", "name = 'user_stats'")
    with pytest.raises(DefinitionError, match=r"input 'nope.x' is not a feature of the service"):
        one_transform(schema, tmp_path, "m:f", "{ x = 'double' }", "inputs = ['nope.x']")
    with pytest.raises(DefinitionError, match=r"output 'x': unknown type 'complex'"):
        one_transform(schema, tmp_path, "m:f", "{ x = 'complex' }")
    with pytest.raises(DefinitionError, match=r"unknown key\(s\) speed"):
        one_transform(schema, tmp_path, "m:f", "{ x = 'double' }", "speed = 1")
    with pytest.raises(DefinitionError, match=r"transform name\(s\) f used twice"):
        FeatureService("s", ("t.*",), transforms=(Transform("m:f", {"x": "real"}), Transform("n:f", {"y": "real"})))


def test_python_definitions_take_the_callable_itself(schema: str, tmp_path: Path, dsn: str) -> None:
    reg = one_transform(schema, tmp_path, "m:f", "{ x = 'double' }")
    service = FeatureService(
        "s",
        ("user_stats.*",),
        context={"amount": "double"},
        transforms=(Transform(lambda c, f: {"twice": c["amount"] * 2}, {"twice": "double"}, name="twice"),),
    )
    reg = Registry.of(reg.tables.values(), schema, services=[service])
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, reg)
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.get_service("s", 42, context={"amount": 2.5})["twice"] == {"twice": 5.0}


def test_a_materialized_service_runs_its_transforms_after_the_one_lookup(schema: str, tmp_path: Path, dsn: str) -> None:
    reg = registry_of(schema, tmp_path, materialized=True)
    fill(reg, dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        materialize(conn, reg, "fraud_v2")
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.readers.service_reader("fraud_v2", None, "single").materialized
        keys = {"user": 42, "merchant": "m-1"}
        assert store.get_service("fraud_v2", keys, context={"amount": 125.0, "lat": 52.5}) == expected(
            42, "m-1", 125.0, 52.5
        )
        vector = store.get_service("fraud_v2", keys, output="list", context={"amount": 125.0, "lat": 52.5})
        assert vector.names == NAMES
        many = store.get_service_batch(
            "fraud_v2", [keys, {"user": 5, "merchant": "m-1"}], context={"amount": [1.0, 2.0], "lat": [0.0, 90.0]}
        )
        assert many == [expected(42, "m-1", 1.0, 0.0), expected(5, "m-1", 2.0, 90.0)]


def test_offload_runs_the_function_off_the_event_loop(schema: str, tmp_path: Path, dsn: str) -> None:
    reg = registry_of(
        schema,
        tmp_path,
        toml=TOML.replace(
            'inputs = ["user_stats.amount_avg", "merchant_risk.*"]',
            'inputs = ["user_stats.amount_avg", "merchant_risk.*"]\noffload = true',
        ),
    )
    fill(reg, dsn)

    async def run(offload_expected: bool, registry: Registry) -> None:
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
            loop_thread = threading.get_ident()
            fns.THREADS.clear()
            await store.get_service("fraud_v2", {"user": 42, "merchant": "m-1"}, context={"amount": 1.0, "lat": 0.0})
            assert (fns.THREADS[-1] != loop_thread) is offload_expected

    asyncio.run(run(True, reg))
    asyncio.run(run(False, registry_of(schema, tmp_path)))  # inline by default: on the loop's thread


# -- HTTP and the CLI ----------------------------------------------------------------------------


@pytest.fixture()
def http(schema: str, tmp_path: Path, dsn: str) -> Any:
    reg = registry_of(schema, tmp_path)
    fill(reg, dsn)
    config = ServerConfig(
        dsn=dsn, definitions=str(tmp_path / "features.toml"), prewarm=False, pool_size=2, batch_chunk_keys=2
    )
    with running_app(config) as client:
        yield client


def test_http_answers_outputs_as_dict_vector_and_raw(http: httpx.Client) -> None:
    keys = {"user": 42, "merchant": "m-1"}
    context = {"amount": 125, "lat": 52.5}  # a JSON integer is a double's value too
    r = http.post("/v1/services/fraud_v2", json={"key": keys, "context": context})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "key": keys,
        "features": expected(42, "m-1", 125.0, 52.5),
        "status": {"user_stats": "present", "merchant_risk": "present"},
        "missing": [],
    }
    want = expected(42, "m-1", 125.0, 52.5)
    values = [want[t][f] for t, _, f in (n.partition(".") for n in NAMES)]
    r = http.post("/v1/services/fraud_v2", json={"key": keys, "context": context, "output": "vector"})
    assert r.json() == {"key": keys, "values": values, "status": {"user_stats": "present", "merchant_risk": "present"}}
    raw = http.post(
        "/v1/services/fraud_v2", json={"key": keys, "context": context}, headers={"Accept": "application/octet-stream"}
    )
    assert raw.headers["x-pgfeatures-columns"] == str(len(NAMES)) and raw.headers["x-pgfeatures-dtype"] == "float64"
    assert np.frombuffer(raw.content, "<f8", count=len(NAMES)).tolist() == [float(v) for v in values]
    described = http.get("/v1/services/fraud_v2").json()
    assert described["names"] == list(NAMES) and described["columns"] == len(NAMES)
    assert described["context"] == {"amount": "double precision", "lat": "double precision"}
    assert [t["name"] for t in described["transforms"]] == ["ratios", "cols"]
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Context.fraud_v2"]["required"] == ["amount", "lat"]
    assert "context" in schemas["BatchRequest.fraud_v2"]["properties"]


def test_http_batch_runs_a_batch_transform_once_per_chunk(http: httpx.Client) -> None:
    keys = [{"user": 42, "merchant": "m-1"}, {"user": 43, "merchant": "m-1"}, {"user": 7, "merchant": "m-2"}]
    contexts = [{"amount": 125.0, "lat": 52.5}, {"amount": 8.0, "lat": 40.0}, {"amount": 1.0, "lat": 46.0}]
    before = fns.CALLS["ratios_columns"]
    r = http.post("/v1/services/fraud_v2/batch", json={"keys": keys, "context": contexts})  # chunks of 2: streamed
    assert r.status_code == 200, r.text
    got = [x["features"] for x in r.json()["results"]]
    assert got == [expected(k["user"], k["merchant"], c["amount"], c["lat"]) for k, c in zip(keys, contexts)]
    assert fns.CALLS["ratios_columns"] - before == 2  # once per chunk of 2 keys, not once per key
    columns = {"amount": [c["amount"] for c in contexts], "lat": [c["lat"] for c in contexts]}
    vectors = http.post("/v1/services/fraud_v2/batch", json={"keys": keys, "context": columns, "output": "vector"})
    assert [v["values"][-1] for v in vectors.json()["results"]] == [True, False, True]  # cols.far
    metrics = http.get("/metrics").text
    assert metric(metrics, "pgfeatures_transform_duration_seconds_count", service="fraud_v2", transform="cols") >= 4
    assert metric(metrics, "pgfeatures_transform_duration_seconds_count", service="fraud_v2", transform="ratios") >= 4


def test_http_errors_name_the_value_and_the_transform(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    keys = {"user": 42, "merchant": "m-1"}
    r = http.post("/v1/services/fraud_v2", json={"key": keys, "context": {"amount": 1.0}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_context"
    assert "missing context value(s) lat" in r.json()["error"]["message"]
    r = http.post("/v1/services/fraud_v2", json={"key": keys, "context": {"amount": True, "lat": 1.0}})
    assert r.status_code == 400 and "context 'amount'" in r.json()["error"]["message"]
    r = http.post("/v1/services/fraud_v2/batch", json={"keys": [keys], "context": {"amount": [1.0], "lat": []}})
    assert r.status_code == 400 and "context 'lat' has 0 values for 1 keys" in r.json()["error"]["message"]
    with caplog.at_level(logging.ERROR, logger="pgfeatures.server"):
        r = http.post("/v1/services/broken", json={"key": 42})
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["type"] == "transform_error" and error["retryable"] is False
    assert "transform 'raises'" in error["message"] and "ZeroDivisionError" in error["message"]
    assert "Traceback" not in r.text
    # the function's own message and the request's values go to the log, not to every caller
    assert "division by zero" not in r.text and "user_stats.amount_avg" in error["message"]
    logged = [rec for rec in caplog.records if rec.exc_info and "transform 'raises'" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is ZeroDivisionError


def test_cli_get_takes_a_context(schema: str, tmp_path: Path, dsn: str) -> None:
    from cli_run import cli

    reg = registry_of(schema, tmp_path)
    fill(reg, dsn)
    path = str(tmp_path / "features.toml")
    done = cli(
        "get",
        "-d",
        path,
        "--dsn",
        dsn,
        "--service",
        "fraud_v2",
        "user=42",
        "merchant=m-1",
        "-c",
        "amount=125",
        "--context",
        "lat=52.5",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["features"] == expected(42, "m-1", 125.0, 52.5)
    vector = cli(
        "get",
        "-d",
        path,
        "--dsn",
        dsn,
        "--service",
        "fraud_v2",
        "-o",
        "vector",
        "--key",
        "user=42,merchant=m-1",
        "--key",
        "user=7,merchant=m-1",
        "-c",
        "amount=1",
        "-c",
        "lat=50",
    )
    assert vector.returncode == 0, vector.stderr
    rows = json.loads(vector.stdout)["results"]
    assert rows[0]["names"] == list(NAMES) and rows[1]["values"][-2:] == [0.1, True]
    bad = cli(
        "get",
        "-d",
        path,
        "--dsn",
        dsn,
        "--service",
        "fraud_v2",
        "user=42",
        "merchant=m-1",
        "-c",
        "amount=x",
        "-c",
        "lat=1",
    )
    assert bad.returncode == 2 and "context 'amount'" in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli("get", "-d", path, "--dsn", dsn, "--service", "fraud_v2", "user=42", "merchant=m-1", "-c", "speed=1")
    assert unknown.returncode == 2 and "unknown context value(s) speed; valid: amount, lat" in unknown.stderr
