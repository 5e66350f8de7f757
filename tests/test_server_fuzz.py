"""Fuzz the HTTP API against its own OpenAPI document (schemathesis): no 5xx, responses as documented.

Schemathesis generates valid and invalid requests for every operation of
``/openapi.json`` served by a real ``pgfeatures serve`` process (on the
serving test schema: entities of every key type, feature services, one of
them materialized; see support/serving_data.py) and checks: no server error,
documented status codes, content types, headers and response bodies. Feature
services and pushes are documented per service and per table, so each has
its own operations (pushes write into the fuzz server's own schema). The
example count is bounded so the whole file stays within about a minute.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support import serving_data as data
from support.serve import ServeProcess

# Per operation and generation mode; raise it for a longer hunt (600 runs clean in ~40 s).
EXAMPLES = int(os.environ.get("PGFEATURES_FUZZ_EXAMPLES", "100"))
# The per-service and per-table operations share most of their code: fewer examples each.
EACH = int(os.environ.get("PGFEATURES_FUZZ_EXAMPLES_EACH", "30"))
_DEFINITIONS = tomllib.loads(data.DEFINITIONS.format(schema="s"))
SERVICES, TABLES = list(_DEFINITIONS["services"]), list(_DEFINITIONS["tables"])


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    schema = f"test_fuzz_{uuid.uuid4().hex[:10]}"
    path, _ = data.create(dsn, schema, tmp_path_factory.mktemp("fuzz"))
    try:
        with ServeProcess("--dsn", dsn, "--definitions", str(path), "--max-batch-keys", "20", "--coalesce",
                          "--no-prewarm") as proc:
            yield proc
    finally:
        data.drop(dsn, schema)


OPERATIONS = [
    ("POST", "/v1/features"),
    ("POST", "/v1/features/batch"),
    ("GET", "/v1/services"),
    *[op for name in SERVICES for op in (("GET", f"/v1/services/{name}"), ("POST", f"/v1/services/{name}"),
                                         ("POST", f"/v1/services/{name}/batch"))],
    *[("POST", f"/v1/push/{name}") for name in TABLES],
    ("GET", "/v1/tables"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]  # schemathesis leaves out the document's own path, /openapi.json
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api(server: ServeProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


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


# Operations are driven one by one with Hypothesis (schemathesis' lazy pytest loader does not run on pytest 9).
@pytest.mark.parametrize("method, path, mode", CASES)
def test_api_conforms_to_its_openapi_document(
    api: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api[path][method]
    each = path.startswith(("/v1/services/", "/v1/push/"))

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EACH if each else EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=10)

    fuzz()

