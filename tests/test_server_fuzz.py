"""Fuzz the HTTP API against its own OpenAPI document (schemathesis), strict both ways: what the
document allows is served, what it does not is refused.

Schemathesis generates valid (positive) and invalid (negative) requests for every operation of
``/openapi.json`` and sends them to the app in this process (ASGI: no socket, no server process;
the app's lifespan runs as under ``serve``), on the serving test schema: entities of every key
type, feature services, one of them materialized (support/serving_data.py). Checks:

- a schema-valid request is never refused: a 2xx (no token is configured, and every name in a
  path is enumerated by the document, so neither a 401 nor a 404 is expected);
- a schema-invalid request is refused with a 4xx;
- never a 5xx; status codes, content types, headers and response bodies as documented.

Before the document described exactly what the server accepts, 14 kinds of schema-valid request
were refused (a bare key for a two-entity service, ``5.0`` for an integer key, a UUID key of any
text, an ``updated_at`` past int4, among others).

``/v1/features`` (and its batch) ties its key to its ``tables`` and ``features`` with ``if``/``then``
clauses (``openapi._key_rules``) that schemathesis' generator cannot model at this size: their
requests are drawn from the document without those clauses (a superset), their keys then often
replaced by ones fitting (or just missing) what the request reads, so that both sides of the
clauses are reached, and each request is checked against the whole document: accepted exactly
when it is valid. Feature services and
pushes are documented per service and per table, so each has its own operations (pushes write
into the fuzz schema). Example counts are bounded; raise them for a longer hunt.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import os
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from pgfeatures.definitions import Registry
from pgfeatures.server import ServerConfig, create_app
from support import serving_data as data

pytestmark = pytest.mark.slow

# Per operation and generation mode; raise it for a longer hunt.
EXAMPLES = int(os.environ.get("PGFEATURES_FUZZ_EXAMPLES", "100"))
# The per-service and per-table operations share most of their code: fewer examples each.
EACH = int(os.environ.get("PGFEATURES_FUZZ_EXAMPLES_EACH", "30"))
_DEFINITIONS = tomllib.loads(data.DEFINITIONS.format(schema="s"))
SERVICES, TABLES = list(_DEFINITIONS["services"]), list(_DEFINITIONS["tables"])
SETTINGS: dict[str, Any] = {"max_batch_keys": 20, "coalesce": True, "prewarm": False}
# Request schemas whose key rules are checked against the document rather than generated from it
CROSS_FIELD = {"/v1/features": "FeaturesRequest", "/v1/features/batch": "BatchRequest"}


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_fuzz_{uuid.uuid4().hex[:10]}"
    path, _ = data.create(dsn, schema, tmp_path_factory.mktemp("fuzz"))
    try:
        yield path
    finally:
        data.drop(dsn, schema)


def strict() -> SchemathesisConfig:
    """Strict both ways: a valid request gets a 2xx, an invalid one a 4xx (never a 5xx). Keys are
    shown in failures (schemathesis masks fields named like secrets, and "key" is one)."""
    return SchemathesisConfig.from_dict(
        {
            "output": {"sanitization": {"enabled": False}},
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ["2xx"]},
                "negative_data_rejection": {"expected-statuses": ["4xx"]},
            },
        }
    )


@pytest.fixture(scope="module")
def document(dsn: str, definitions: Path) -> dict[str, Any]:
    """The document the app serves at /openapi.json (read without starting the app: it is static)."""

    async def fetch() -> dict[str, Any]:
        app = create_app(ServerConfig(dsn=dsn, definitions=str(definitions), **SETTINGS))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return (await client.get("/openapi.json")).json()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def api(document: dict[str, Any]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(document, config=strict())


@pytest.fixture(scope="module")
def relaxed(document: dict[str, Any]) -> schemathesis.BaseSchema:
    """The document without the key rules of ``CROSS_FIELD``'s schemas: what their requests are drawn from."""
    loose = copy.deepcopy(document)
    for name in CROSS_FIELD.values():
        del loose["components"]["schemas"][name]["allOf"]
    return schemathesis.openapi.from_dict(loose, config=strict())


@pytest.fixture()
def app(
    api: schemathesis.BaseSchema, relaxed: schemathesis.BaseSchema, dsn: str, definitions: Path
) -> Iterator[Starlette]:
    """A fresh app per test, reached over ASGI. Its lifespan (the store) is started by schemathesis'
    client, and ended by schemathesis' pytest plugin when the test ends (an app is not started twice)."""
    app = create_app(ServerConfig(dsn=dsn, definitions=str(definitions), **SETTINGS), warmup=())
    api.app = relaxed.app = app  # ASGI is the transport
    with asgi.get_client(app) as client:  # the store opens in the background: fuzz once ready
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready within 30 s"
            time.sleep(0.01)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()  # (already done by the plugin when it is active)


OPERATIONS = [
    ("POST", "/v1/features"),
    ("POST", "/v1/features/batch"),
    ("GET", "/v1/services"),
    *[
        op
        for name in SERVICES
        for op in (
            ("GET", f"/v1/services/{name}"),
            ("POST", f"/v1/services/{name}"),
            ("POST", f"/v1/services/{name}/batch"),
        )
    ],
    *[("POST", f"/v1/push/{name}") for name in TABLES],
    ("GET", "/v1/tables"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [*CONFORMANCE, positive_data_acceptance, negative_data_rejection]


def test_every_operation_is_fuzzed(api: schemathesis.BaseSchema) -> None:
    assert SERVICES == ["fraud_v1", "user_vec", "fresh_merchant"] and len(TABLES) == 6
    assert sorted((op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()) == sorted(OPERATIONS)


# Negative cases only where there is input to make invalid (the request bodies).
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or method == "POST"
]


# Keys of every entity, in some of the forms each takes (the forms themselves are fuzzed through the services and pushes)
KEYS = {
    "user": [42, "43", " -7 "],
    "merchant": ["m-1", 7],
    "device": ["dev-a", 12],
    "session": [str(data.SESSION), "{" + data.SESSION.hex + "}"],
    "entity": [data.LEGACY],
}


def entities_read(registry: Registry, body: Any) -> list[str]:
    """The entities a /v1/features request reads (tables, else the tables its features name, else all)."""
    if not isinstance(body, dict):
        return []
    tables, features = body.get("tables"), body.get("features")
    named = (
        list(features)
        if isinstance(features, dict)
        else [f.partition(".")[0] for f in features or [] if isinstance(f, str)]
    )
    read = tables if isinstance(tables, list) and tables else named or list(registry.tables)
    return list(dict.fromkeys(registry.tables[t].entity.name for t in read if t in registry.tables))


def refit_key(draw: st.DrawFn, registry: Registry, body: Any) -> Any:
    """A key for ``body``: as generated, or one naming what it reads, all entities, a bare key, or one entity short."""
    read = entities_read(registry, body)
    choice = draw(st.sampled_from(["as generated", "read", "all", "bare", "one short"]))
    if choice == "as generated" or not read:
        return body["key"]
    named = list(registry.entities) if choice == "all" else read[:-1] if choice == "one short" else read
    if choice == "bare":
        return draw(st.sampled_from(KEYS[read[0]]))
    return {name: draw(st.sampled_from(KEYS[name])) for name in named}


def future_event_time(body: Any) -> bool:
    """Some row of a push body has an updated_at more than max_future_skew (300 s, the default) ahead of now."""
    from pgfeatures.definitions import parse_event_time

    rows = body.get("rows") if isinstance(body, dict) and "rows" in body else [body]
    limit = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=300)
    for row in rows:
        stamp = row.get("features", {}).get("updated_at") if isinstance(row, dict) else None
        if stamp is not None and parse_event_time("updated_at", stamp) > limit:
            return True
    return False


def exact_validator(document: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    """Validates a request body against the document's schema ``name`` (its rules included)."""
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


# Operations are driven one by one with Hypothesis (schemathesis' lazy pytest loader does not run on pytest 9).
@pytest.mark.parametrize("method, path, mode", CASES)
def test_api_conforms_to_its_openapi_document(
    api: schemathesis.BaseSchema,
    relaxed: schemathesis.BaseSchema,
    document: dict[str, Any],
    app: Starlette,
    definitions: Path,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    cross_field = CROSS_FIELD.get(path)
    operation = (relaxed if cross_field else api)[path][method]
    each = path.startswith(("/v1/services/", "/v1/push/"))
    exact = exact_validator(document, cross_field) if cross_field else None
    verdicts: list[bool] = []

    registry = Registry.from_toml(definitions)

    @given(case=operation.as_strategy(generation_mode=mode), draw=st.data())
    @settings(
        max_examples=EACH if each else EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def fuzz(case: schemathesis.Case, draw: st.DataObject) -> None:
        if path.startswith("/v1/push/") and mode is GenerationMode.POSITIVE:
            response = case.call(app=app)
            if response.status_code == 400 and response.json()["error"]["type"] == "event_time_in_future":
                # Refused for its time, which no static schema can say (the document says it in words): only
                # when some updated_at really is past max_future_skew ahead of the server's clock.
                assert future_event_time(case.body), (response.text, case.body)
                case.validate_response(response, checks=CONFORMANCE)
            else:
                case.validate_response(response, checks=CHECKS)
            return
        if exact is None or mode is GenerationMode.NEGATIVE:  # negative: invalid for the superset, so for the document
            case.call_and_validate(checks=CHECKS, app=app)
            return
        body = dict(case.body)
        if "key" in body:
            body["key"] = refit_key(draw.draw, registry, {**body, "key": body["key"]})
        else:
            body["keys"] = [refit_key(draw.draw, registry, {**body, "key": k}) for k in body["keys"]]
        case.body = body
        response = case.call(app=app)
        case.validate_response(response, checks=CONFORMANCE)
        valid = exact.is_valid(case.body)
        verdicts.append(valid)
        accepted = 200 <= response.status_code < 300
        assert accepted == valid, (
            f"{'valid' if valid else 'invalid'} by the document, but answered {response.status_code}: "
            f"{response.text[:300]}\nbody: {case.body!r}"
            + ("" if valid else f"\nthe document says: {next(exact.iter_errors(case.body)).message[:300]}")
        )

    fuzz()
    if verdicts:  # the superset's requests fall on both sides of the rules, so both sides are checked
        assert verdicts.count(True) >= len(verdicts) // 10 and verdicts.count(False) >= len(verdicts) // 10, (
            f"{verdicts.count(True)} valid, {verdicts.count(False)} invalid"
        )


U = str(data.SESSION)
FRAUD = {"user": 42, "merchant": "m-1", "device": "dev-a"}
# (path, body, valid by the document and served): the rules the review found the document looser than the server on
SAID = [
    ("/v1/services/fraud_v1", {"key": 42}, False),  # a bare key for a service of three entities
    ("/v1/services/fraud_v1", {"key": FRAUD}, True),
    ("/v1/services/fraud_v1", {"key": {"user": 42}}, False),
    ("/v1/services/fraud_v1", {"key": 42, "features": ["user_stats.ctr_7d"]}, True),  # the subset reads one entity
    (
        "/v1/services/fraud_v1",
        {"key": {"user": 42}, "features": {"user_stats": ["ctr_7d"], "merchant_risk": ["chargeback_rate"]}},
        False,
    ),
    (
        "/v1/services/fraud_v1",
        {
            "key": {"user": 42, "merchant": 7},
            "features": {"user_stats": ["ctr_7d"], "merchant_risk": ["chargeback_rate"]},
        },
        True,
    ),
    ("/v1/services/fraud_v1/batch", {"keys": [FRAUD, 42]}, False),
    ("/v1/services/user_vec", {"key": 5.0}, True),  # an integer, as far as JSON goes
    (
        "/v1/features",
        {"key": 42, "tables": ["user_stats"], "features": {"user_emb": ["e0"]}},
        False,
    ),  # not a table asked for
    ("/v1/features", {"key": 42, "tables": ["user_stats", "user_emb"], "features": {"user_emb": ["e0"]}}, True),
    ("/v1/features", {"key": 42}, False),  # every table: five entities
    ("/v1/features", {"key": 42, "features": ["user_emb.e0", "user_stats.ctr_7d"]}, True),
    ("/v1/features", {"key": "5-", "tables": ["user_stats"]}, False),
    ("/v1/features", {"key": " -5\t", "tables": ["user_stats"]}, True),
    ("/v1/features", {"key": "9223372036854775808", "tables": ["user_stats"]}, False),
    ("/v1/features", {"key": "009223372036854775807", "tables": ["user_stats"]}, True),
    ("/v1/features", {"key": "x" * 16, "tables": ["device_seen"]}, True),
    ("/v1/features", {"key": 10**16, "tables": ["device_seen"]}, False),  # 17 digits for a key of 16 characters
    ("/v1/features", {"key": "urn:uuid:{" + U + "}", "tables": ["session_f"]}, True),
    ("/v1/features", {"key": "config file", "tables": ["session_f"]}, False),
    (
        "/v1/features/batch",
        {"keys": [{"user": 1}, {"user": 2, "merchant": 3}], "tables": ["user_stats", "merchant_risk"]},
        False,
    ),
    ("/v1/push/legacy", {"key": data.LEGACY, "features": {"updated_at": 253402300800}}, False),  # past year 9999
    ("/v1/push/legacy", {"key": data.LEGACY, "features": {"updated_at": 1_700_000_000.5}}, True),  # epoch seconds, past
    ("/v1/push/user_stats", {"key": 900, "features": {"ctr_7d": 1e-46}}, False),  # rounds to a real 0
    ("/v1/push/user_stats", {"key": 900, "features": {"ctr_7d": 0, "clicks_7d": 2**31 - 1}}, True),
    ("/v1/push/user_stats", {"key": 900, "features": {"clicks_7d": 2**31}}, False),
]


@pytest.mark.parametrize("path, body, valid", SAID, ids=[f"{p} {b}" for p, b, _ in SAID])
def test_the_document_says_what_the_server_does(
    document: dict[str, Any], app: Starlette, path: str, body: dict[str, Any], valid: bool
) -> None:
    """Requests on both sides of each rule: valid by the document exactly when the server serves them."""
    name = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit(
        "/", 1
    )[1]
    assert (
        jsonschema_rs.validator_for(
            {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        ).is_valid(body)
        is valid
    )
    with asgi.get_client(app) as client:
        response = client.post(path, json=body)
    assert (200 <= response.status_code < 300) is valid and response.status_code < 500, response.text
