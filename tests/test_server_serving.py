"""The serving model over HTTP: keys per entity, status beside features, feature services (dict,
vector as JSON and as raw numbers, batches streamed), the service catalogue, metrics per service.

The app runs in-process twice over one schema (support/serving_data.py): coalescing off with
batches read two keys per statement (so every batch of three or more is streamed), and
coalescing on. Every answer is compared with the ground truth the test wrote, never with the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pgfeatures.definitions import Registry
from pgfeatures.server import ServerConfig
from support import serving_data as data
from support.inprocess import running_app
from support.server_data import metric

SESSION = str(data.SESSION)
FRAUD_KEYS = {"user": 42, "merchant": "m-1", "device": "dev-a"}


@pytest.fixture(scope="module")
def defs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    schema = f"test_srv2_{uuid.uuid4().hex[:10]}"
    yield data.create(dsn, schema, tmp_path_factory.mktemp("serving"))
    data.drop(dsn, schema)


@pytest.fixture(scope="module")
def registry(defs: tuple[Path, Registry]) -> Registry:
    return defs[1]


@pytest.fixture(scope="module", params=["plain", "coalesced"])
def client(request: pytest.FixtureRequest, dsn: str, defs: tuple[Path, Registry]) -> Iterator[httpx.Client]:
    settings: dict[str, Any] = {"batch_chunk_keys": 2} if request.param == "plain" else {"coalesce": True}
    config = ServerConfig(dsn=dsn, definitions=str(defs[0]), prewarm=False, pool_size=2, **settings)
    with running_app(config) as c:
        yield c


def features_answer(
    registry: Registry, key: Any, tables: list[str], by_entity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The expected answer of /v1/features for ``key`` (the key of each table's entity in ``by_entity``)."""
    keys = {t: (by_entity or {})[registry.tables[t].entity.name] if by_entity else key for t in tables}
    status = {t: data.status(registry, t, keys[t]) for t in tables}
    return {
        "key": key,
        "features": {t: data.features(registry, t, keys[t]) for t in tables},
        "status": status,
        "missing": [t for t, s in status.items() if s != "present"],
    }


# -- keys per entity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, key",
    [
        ("user_stats", 42),
        ("user_stats", "42"),
        ("user_stats", 43),
        ("user_stats", 44),
        ("user_stats", 99),
        ("merchant_risk", "m-1"),
        ("merchant_risk", 7),
        ("merchant_risk", "7"),
        ("merchant_risk", "zz"),
        ("device_seen", "dev-a"),
        ("device_seen", 5),
        ("session_f", SESSION),
        ("session_f", data.SESSION.hex),
        ("legacy", data.LEGACY),
        ("legacy", "ab" * 32),
    ],
)
def test_a_bare_key_of_each_key_type(client: httpx.Client, registry: Registry, table: str, key: Any) -> None:
    r = client.post("/v1/features", json={"key": key, "tables": [table]})
    assert r.status_code == 200, r.text
    assert r.json() == features_answer(registry, key, [table])


def test_entity_keys_of_several_entities_in_one_request(client: httpx.Client, registry: Registry) -> None:
    tables = ["user_stats", "merchant_risk", "device_seen", "legacy"]
    keys = {**FRAUD_KEYS, "entity": data.LEGACY}
    r = client.post("/v1/features", json={"key": keys, "tables": tables})
    assert r.status_code == 200, r.text
    assert r.json() == features_answer(registry, keys, tables, keys)
    assert r.json()["features"]["merchant_risk"]["txn_count_30d"] == 2**53 + 1  # beyond 2^53: exact
    # a key object with one entity works for a one-entity read too
    one = client.post("/v1/features", json={"key": {"user": 43}, "tables": ["user_stats"]}).json()
    assert one == features_answer(registry, {"user": 43}, ["user_stats"], {"user": 43})


def test_status_says_expired_and_missing_beside_the_defaults(client: httpx.Client) -> None:
    got = client.post("/v1/features/batch", json={"keys": [42, 43, 44, 99], "tables": ["user_stats"]}).json()["results"]
    assert [r["status"] for r in got] == [{"user_stats": s} for s in ("present", "present", "expired", "missing")]
    assert [r["missing"] for r in got] == [[], [], ["user_stats"], ["user_stats"]]
    assert got[1]["features"]["user_stats"] == {"clicks_7d": 0, "ctr_7d": 0.5, "is_new": True}  # NULLs: defaults
    assert got[2]["features"]["user_stats"] == {"clicks_7d": 0, "ctr_7d": None, "is_new": True}  # expired: defaults


def test_batch_of_entity_keys_in_input_order(client: httpx.Client, registry: Registry) -> None:
    tables = ["user_stats", "merchant_risk"]
    rows = [
        {"user": 42, "merchant": "m-1"},
        {"user": "7", "merchant": 7},
        {"user": 42, "merchant": "m-1"},
        {"user": 44, "merchant": "nobody"},
        {"merchant": "m-1", "user": 43},
    ]
    r = client.post("/v1/features/batch", json={"keys": rows, "tables": tables})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [features_answer(registry, k, tables, k) for k in rows]}
    # bare keys and objects may mix when the request reads one entity
    mixed = [42, {"user": 43}, "44"]
    got = client.post("/v1/features/batch", json={"keys": mixed, "tables": ["user_emb"]}).json()["results"]
    assert got == [features_answer(registry, k, ["user_emb"], k if isinstance(k, dict) else {"user": k}) for k in mixed]


def test_an_integral_number_with_a_fraction_is_the_integer(client: httpx.Client, registry: Registry) -> None:
    """JSON (and OpenAPI's ``integer``) does not tell 42.0 from 42: a key written so is the integer, bare, in an
    object of entity keys and in a batch; the answer shows the key as sent. Before: 400 'got float'."""
    for table, key, value in [("user_stats", 42.0, 42), ("merchant_risk", 7.0, 7), ("device_seen", 5.0, 5)]:
        r = client.post("/v1/features", json={"key": key, "tables": [table]})
        assert r.status_code == 200, r.text
        assert r.json() == {**features_answer(registry, value, [table]), "key": key}
    keys = {"user": 42.0, "merchant": "m-1", "device": "dev-a"}
    r = client.post("/v1/services/fraud_v1", json={"key": keys})
    assert r.status_code == 200 and r.json()["key"] == keys and r.json()["status"]["user_stats"] == "present", r.text
    got = client.post("/v1/features/batch", json={"keys": [42.0, 43], "tables": ["user_stats"]}).json()["results"]
    assert [x["key"] for x in got] == [42.0, 43] and got[0]["features"] == features_answer(
        registry, 42, ["user_stats"]
    )["features"]


@pytest.mark.parametrize("key", [2.0**53, -(2.0**53), 1e18])
def test_an_integral_number_with_a_fraction_beyond_2_to_the_53_is_refused(client: httpx.Client, key: float) -> None:
    """From 2**53 on, a float is not every integer (2**53 + 1 reads as 2**53): not the key the client wrote, perhaps."""
    r = client.post("/v1/features", json={"key": key, "tables": ["user_stats"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_key", r.text
    assert "send the key as an integer literal" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path, body, kind, says",
    [
        (
            "/v1/features",
            {"key": "abc", "tables": ["user_stats"]},
            "invalid_key",
            "key: user key must be an integer (a signed 64-bit bigint), or its decimal text, got 'abc'",
        ),
        ("/v1/features", {"key": 2**63, "tables": ["user_stats"]}, "invalid_key", "out of range for bigint"),
        ("/v1/features", {"key": True, "tables": ["user_stats"]}, "invalid_key", "user key must be an integer"),
        (
            "/v1/features",
            {"key": 1.5, "tables": ["merchant_risk"]},
            "invalid_key",
            "a natural id must be a string, an integer",
        ),
        ("/v1/features", {"key": "", "tables": ["merchant_risk"]}, "invalid_key", "must not be empty"),
        ("/v1/features", {"key": "x" * 17, "tables": ["device_seen"]}, "invalid_key", "1 to 16 characters, got 17"),
        ("/v1/features", {"key": "not-a-uuid", "tables": ["session_f"]}, "invalid_key", "session key must be a UUID"),
        ("/v1/features", {"key": "ab" * 31, "tables": ["legacy"]}, "invalid_key", "64 hex characters, got 62"),
        (
            "/v1/features",
            {"key": 42, "tables": ["user_stats", "merchant_risk"]},
            "invalid_key",
            "this request reads entities user, merchant: pass one key per entity",
        ),
        (
            "/v1/features",
            {"key": {"user": 42}, "tables": ["user_stats", "merchant_risk"]},
            "invalid_key",
            "no key for entity 'merchant', which table(s) merchant_risk need",
        ),
        (
            "/v1/features",
            {"key": {"user": 42, "usr": 1}, "tables": ["user_stats"]},
            "unknown_entity",
            "unknown entity: usr; valid entities: device, entity, merchant, session, user",
        ),
        (
            "/v1/features",
            {"key": {"user": 42, "device": "x" * 20}, "tables": ["user_stats"]},
            "invalid_key",
            "device key must be a string of 1 to 16 characters",
        ),  # an entity the request does not read is checked too
        ("/v1/features", {"key": {}, "tables": ["user_stats"]}, "invalid_key", "must name at least one entity"),
        ("/v1/features/batch", {"keys": [42, 43, "x"], "tables": ["user_stats"]}, "invalid_key", "keys[2]: user key"),
        (
            "/v1/features/batch",
            {"keys": [{"user": 1, "merchant": "a"}, {"user": 2}], "tables": ["user_stats", "merchant_risk"]},
            "invalid_key",
            "keys[1]: no key for entity 'merchant'",
        ),
        (
            "/v1/features/batch",
            {"keys": [data.LEGACY, 5], "tables": ["legacy"]},
            "invalid_key",
            "keys[1]: a key must be a string of 64 hex characters, got a number",
        ),
    ],
)
def test_bad_keys_name_the_entity_and_what_it_takes(
    client: httpx.Client, path: str, body: dict[str, Any], kind: str, says: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == kind
    assert says in r.json()["error"]["message"]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every key an entity parses (``Entity.parse``) and every natural id hashed (``hash_key``), in this
    process: the app runs in it (support/inprocess.py)."""
    from pgfeatures.definitions import Entity, entities

    seen: dict[str, list[Any]] = {"parse": [], "hash": []}
    parse, hash_key = Entity.parse, entities.hash_key

    def counted_parse(self: Entity, key: Any) -> Any:
        seen["parse"].append((self.name, key))
        return parse(self, key)

    def counted_hash(key: Any) -> bytes:
        seen["hash"].append(key)
        return hash_key(key)

    monkeypatch.setattr(Entity, "parse", counted_parse)
    monkeypatch.setattr(entities, "hash_key", counted_hash)
    return seen


@pytest.mark.parametrize(
    "path, body, parsed",
    [
        ("/v1/features", {"key": "m-1", "tables": ["merchant_risk"]}, [("merchant", "m-1")]),
        (
            "/v1/features",
            {"key": {"user": 42, "merchant": 7}, "tables": ["user_stats", "merchant_risk"]},
            [("user", 42), ("merchant", 7)],
        ),
        (  # an entity the request does not read is checked (once) too
            "/v1/features",
            {"key": {"user": 42, "merchant": "m-1"}, "tables": ["user_stats"]},
            [("user", 42), ("merchant", "m-1")],
        ),
        (
            "/v1/features/batch",
            {"keys": ["m-1", 7], "tables": ["merchant_risk"]},
            [("merchant", "m-1"), ("merchant", 7)],
        ),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS},
            [("user", 42), ("merchant", "m-1"), ("device", "dev-a")],
        ),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS, "output": "vector"},
            [("user", 42), ("merchant", "m-1"), ("device", "dev-a")],
        ),
        (
            "/v1/services/fraud_v1/batch",
            {"keys": [FRAUD_KEYS, {**FRAUD_KEYS, "merchant": 7}]},
            [
                ("user", 42),
                ("merchant", "m-1"),
                ("device", "dev-a"),
                ("user", 42),
                ("merchant", 7),
                ("device", "dev-a"),
            ],
        ),
    ],
)
def test_a_key_is_parsed_and_hashed_once_per_request(
    client: httpx.Client, parses: dict[str, list[Any]], path: str, body: dict[str, Any], parsed: list[Any]
) -> None:
    # one binding step per request (parsing.bind_key), handed to the store as parameters (read_bound),
    # coalesced or not: a hashed id costs one SHA-256, not one per layer
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert parses["parse"] == parsed
    assert parses["hash"] == [key for entity, key in parsed if entity == "merchant"]


# -- feature services ---------------------------------------------------------------------------


def test_service_dict_output(client: httpx.Client, registry: Registry) -> None:
    r = client.post("/v1/services/fraud_v1", json={"key": FRAUD_KEYS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["features"]) == ["user_stats", "merchant_risk", "device_seen"]  # the service's order
    assert body["features"] == {
        "user_stats": {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False},
        "merchant_risk": {"chargeback_rate": 0.125},
        "device_seen": {"first_seen": 1_700_000_000},
    }
    assert body["status"] == {"user_stats": "present", "merchant_risk": "present", "device_seen": "present"}
    # the service's own ttl (10 minutes) over the table's: the 20-minute-old row is expired, its default served
    fresh = client.post("/v1/services/fresh_merchant", json={"key": "m-1"}).json()
    assert fresh["status"] == {"merchant_risk": "expired"} and fresh["missing"] == ["merchant_risk"]
    assert fresh["features"] == {"merchant_risk": {"chargeback_rate": 0.5, "txn_count_30d": None}}
    subset = client.post(
        "/v1/services/fraud_v1", json={"key": FRAUD_KEYS, "features": ["device_seen.first_seen"]}
    ).json()
    assert subset["features"] == {"device_seen": {"first_seen": 1_700_000_000}}


@pytest.mark.parametrize(
    "service, keys",
    [
        ("fraud_v1", FRAUD_KEYS),
        ("fraud_v1", {"user": 44, "merchant": 7, "device": "nope"}),
        ("user_vec", {"user": 42}),
        ("user_vec", {"user": 43}),
        ("user_vec", {"user": 44}),
        ("user_vec", {"user": 1}),
        ("fresh_merchant", {"merchant": 7}),
    ],
)
def test_service_vector_as_json(client: httpx.Client, registry: Registry, service: str, keys: dict[str, Any]) -> None:
    values, status = data.service_vector(registry, service, keys)
    key: Any = keys if len(keys) > 1 else next(iter(keys.values()))  # one entity: a bare key
    r = client.post(f"/v1/services/{service}", json={"key": key, "output": "vector"})
    assert r.status_code == 200, r.text
    assert r.json() == {"key": key, "values": values, "status": status}
    batch = client.post(f"/v1/services/{service}/batch", json={"keys": [key, key, key], "output": "vector"})
    assert batch.status_code == 200, batch.text
    assert batch.json() == {"results": [{"key": key, "values": values, "status": status}] * 3}


def test_real_values_print_as_float32(client: httpx.Client) -> None:
    raw = client.post("/v1/services/user_vec", json={"key": 42, "output": "vector"}).content
    assert b'"values":[0.1,0.2,0.3,0.25]' in raw  # not 0.10000000149011612
    mixed = client.post("/v1/services/fraud_v1", json={"key": FRAUD_KEYS, "output": "vector"}).content
    assert b'"values":[3,0.25,false,0.125,1700000000]' in mixed


def _raw(response: httpx.Response) -> tuple[np.ndarray, np.ndarray, list[str]]:
    h = response.headers
    assert h["content-type"] == "application/octet-stream"
    rows, cols = int(h["x-pgfeatures-rows"]), int(h["x-pgfeatures-columns"])
    dtype = {"float32": "<f4", "float64": "<f8"}[h["x-pgfeatures-dtype"]]
    values = np.frombuffer(response.content, dtype, count=rows * cols).reshape(rows, cols)
    tables = h["x-pgfeatures-tables"].split(",")
    status = np.frombuffer(response.content, np.uint8, offset=values.nbytes).reshape(rows, len(tables))
    return values, status, tables


CODES = {"present": 0, "missing": 1, "expired": 2}


def _expected_raw(
    registry: Registry, service: str, keys: list[dict[str, Any]], dtype: Any
) -> tuple[np.ndarray, list[list[int]]]:
    vectors = [data.service_vector(registry, service, k) for k in keys]
    values = np.array([[np.nan if v is None else float(v) for v in vals] for vals, _ in vectors], dtype=dtype)
    return values, [[CODES[s] for s in status.values()] for _, status in vectors]


@pytest.mark.parametrize("service, dtype", [("user_vec", np.float32), ("fraud_v1", np.float64)])
def test_service_vector_as_raw_numbers(client: httpx.Client, registry: Registry, service: str, dtype: Any) -> None:
    users = [42, 43, 44, 1, 42]
    keys = [{"user": u, "merchant": m, "device": "dev-a"} for u, m in zip(users, ["m-1", 7, "zz", "m-1", 7])]
    if service == "user_vec":
        keys = [{"user": u} for u in users]
    want, want_status = _expected_raw(registry, service, keys, dtype)
    octets = {"Accept": "application/octet-stream"}
    one = client.post(f"/v1/services/{service}", json={"key": keys[0]}, headers=octets)
    assert one.status_code == 200, one.text
    values, status, tables = _raw(one)
    assert tables == [t.name for t, _ in registry.service(service).resolve(registry)]
    assert values.dtype == dtype and values.shape == (1, want.shape[1])
    np.testing.assert_array_equal(values, want[:1])  # NaN where missing: equal to NaN here
    assert status.tolist() == want_status[:1]
    batch = client.post(f"/v1/services/{service}/batch", json={"keys": keys, "output": "vector"}, headers=octets)
    assert batch.status_code == 200, batch.text
    values, status, _ = _raw(batch)
    np.testing.assert_array_equal(values, want)
    assert status.tolist() == want_status
    assert len(batch.content) == want.nbytes + len(tables) * len(keys)  # nothing more
    empty = client.post(f"/v1/services/{service}/batch", json={"keys": []}, headers=octets)
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["x-pgfeatures-rows"] == "0"


def test_service_batch_dict_output_streams_in_input_order(client: httpx.Client, registry: Registry) -> None:
    keys = [
        FRAUD_KEYS,
        {"user": 43, "merchant": 7, "device": "x"},
        FRAUD_KEYS,
        {"user": 1, "merchant": "a", "device": "b"},
    ]
    r = client.post("/v1/services/fraud_v1/batch", json={"keys": keys})
    assert r.status_code == 200, r.text
    for key, got in zip(keys, r.json()["results"]):
        values, status = data.service_vector(registry, "fraud_v1", key)
        assert got["key"] == key and got["status"] == status
        flat = [
            got["features"][t][f] if got["features"][t] is not None else None
            for t, _, f in (n.partition(".") for n in registry.service("fraud_v1").order(registry))
        ]
        assert flat == values


@pytest.mark.parametrize(
    "path, body, headers, status, kind, says",
    [
        (
            "/v1/services/fraud_v2",
            {"key": FRAUD_KEYS},
            {},
            404,
            "unknown_service",
            "valid services: fraud_v1, fresh_merchant, user_vec",
        ),
        ("/v1/services/fraud_v2/batch", {"keys": []}, {}, 404, "unknown_service", "valid services: fraud_v1"),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS, "features": ["merchant_risk.txn_count_30d"]},
            {},
            400,
            "invalid_selection",
            "does not serve merchant_risk.txn_count_30d",
        ),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS, "output": "numpy"},
            {},
            400,
            "invalid_request",
            "output must be one of dict, vector",
        ),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS, "tables": ["legacy"]},
            {},
            400,
            "invalid_request",
            "valid fields: key, features, output",
        ),
        (
            "/v1/services/fraud_v1",
            {"key": FRAUD_KEYS, "output": "dict"},
            {"Accept": "application/octet-stream"},
            406,
            "not_acceptable",
            "carries the vector only",
        ),
        ("/v1/services/fraud_v1", {"key": 42}, {}, 400, "invalid_key", "reads entities user, merchant, device"),
        ("/v1/services/user_vec/batch", {"keys": [42, "x"]}, {}, 400, "invalid_key", "keys[1]: user key"),
    ],
)
def test_service_errors(
    client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str], status: int, kind: str, says: str
) -> None:
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind
    assert says in r.json()["error"]["message"]


def test_accept_header_negotiation(client: httpx.Client) -> None:
    for accept, raw in [
        ("application/octet-stream", True),
        ("application/json", False),
        ("*/*", False),
        ("application/json;q=0.5, application/octet-stream", True),
        ("application/octet-stream;q=0.1, application/json", False),
        ("", False),
    ]:
        r = client.post("/v1/services/user_vec", json={"key": 42}, headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        assert (r.headers["content-type"] == "application/octet-stream") is raw, accept


def test_services_catalogue(client: httpx.Client, registry: Registry) -> None:
    listed = client.get("/v1/services").json()["services"]
    assert [s["name"] for s in listed] == ["fraud_v1", "user_vec", "fresh_merchant"]
    fraud = listed[0]
    assert fraud["version"] == "1" and fraud["description"] == "fraud model v1"
    assert [e["name"] for e in fraud["entities"]] == ["user", "merchant", "device"]
    assert fraud["entities"][1]["hash"] == "sha256" and "natural id" in fraud["entities"][1]["accepts"]
    assert fraud["tables"] == ["user_stats", "merchant_risk", "device_seen"]
    assert (fraud["materialize"], fraud["state"], fraud["serving"]) == (False, None, "tables")
    assert (fraud["columns"], fraud["dtype"]) == (5, "float64") and "names" not in fraud
    one = client.get("/v1/services/user_vec").json()
    assert (one["materialize"], one["state"], one["serving"]) == (True, "built", "materialized")
    assert one["names"] == list(registry.service("user_vec").order(registry))
    assert one["types"] == ["real"] * 4 and one["dtype"] == "float32"
    assert listed[2]["ttl"] == 600
    r = client.get("/v1/services/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "unknown_service"


def test_metrics_per_service(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.post("/v1/services/user_vec", json={"key": 42, "output": "vector"}).status_code == 200
    assert client.post("/v1/services/user_vec/batch", json={"keys": [42, 43]}).status_code == 200
    assert client.post("/v1/services/user_vec", json={"key": "x"}).status_code == 400
    assert client.post("/v1/services/nope", json={"key": 1}).status_code == 404
    after = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    one = {"service": "user_vec", "endpoint": "/v1/services/{name}"}
    assert delta("pgfeatures_service_requests_total", **one, status="200") == 3
    assert delta("pgfeatures_service_requests_total", **one, status="400") == 1
    assert (
        delta(
            "pgfeatures_service_requests_total", service="user_vec", endpoint="/v1/services/{name}/batch", status="200"
        )
        == 1
    )
    assert delta("pgfeatures_service_request_duration_seconds_count", **one) == 4
    assert delta("pgfeatures_service_db_duration_seconds_count", service="user_vec") >= 1  # coalesced: batches of them
    assert 'service="nope"' not in after  # labels only for the definitions' services
    assert delta("pgfeatures_http_requests_total", endpoint="/v1/services/{name}", status="404") == 1
    assert delta("pgfeatures_table_expired_total", table="user_stats") == 0
    client.post("/v1/features", json={"key": 44, "tables": ["user_stats"]})
    assert (
        metric(client.get("/metrics").text, "pgfeatures_table_expired_total", table="user_stats")
        - metric(after, "pgfeatures_table_expired_total", table="user_stats")
        == 1
    )
