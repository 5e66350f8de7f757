"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand from the registry and settings.

Hand-written because the API is small and its contract is exact: table and
feature names are enumerated from the registry, the key pattern and the
batch limit come from the settings, and every error response has the same
``{"error": {"type", "message"}}`` body. The fuzz test
(``tests/test_server_fuzz.py``) holds the server to this document.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..definitions import Registry
from .config import ServerConfig

KEY_PATTERN = "^[0-9a-fA-F]{64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _schemas(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    tables = list(registry.tables.values())
    value = {"type": ["number", "integer", "boolean", "null"]}
    return {
        "Key": {"type": "string", "pattern": KEY_PATTERN, "description": "entity key: 32 bytes as 64 hex characters"},
        "Tables": {
            "type": ["array", "null"], "minItems": 1,
            "items": {"type": "string", "enum": [t.name for t in tables]},
            "description": "feature tables to read, in this order (null or absent: all, or the tables named in features)",
        },
        "Features": {
            "description": "features to read: {table: [feature, ...]} or [\"table.feature\", ...]; "
                           "tables not named read all their features (null or absent: all)",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {
                        t.name: {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(t.readable_names)}}
                        for t in tables
                    },
                    "additionalProperties": False,
                    "minProperties": 1,
                },
                {
                    "type": "array", "minItems": 1,
                    "items": {"type": "string", "enum": [f"{t.name}.{f}" for t in tables for f in t.readable_names]},
                },
            ],
        },
        "FeaturesRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": _ref("Key"), "tables": _ref("Tables"), "features": _ref("Features")},
            "additionalProperties": False,
        },
        "BatchRequest": {
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {"type": "array", "items": _ref("Key"), "maxItems": config.max_batch_keys},
                "tables": _ref("Tables"),
                "features": _ref("Features"),
            },
            "additionalProperties": False,
        },
        "FeaturesResult": {
            "type": "object",
            "required": ["key", "features", "missing"],
            "properties": {
                "key": {"type": "string", "description": "the key as sent"},
                "features": {
                    "type": "object",
                    "description": "{table: {feature: value}}; null where the key has no row in the table",
                    "additionalProperties": {"type": ["object", "null"], "additionalProperties": value},
                },
                "missing": {"type": "array", "items": {"type": "string"}, "description": "tables without a row for the key"},
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": _ref("FeaturesResult"), "description": "in input order"}},
        },
        "TableList": {
            "type": "object",
            "required": ["schema", "tables"],
            "properties": {
                "schema": {"type": "string"},
                "tables": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "features"],
                        "properties": {
                            "name": {"type": "string"},
                            "covering_index": {"type": "boolean"},
                            "features": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "type"],
                                    "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "description": "alive, ready, degraded (some tables cannot be served) or not_ready"},
                "reason": {"type": "string"},
                "read_targets": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "up": {"type": "boolean"}, "reason": {"type": "string"},
                    "lag": {"type": ["number", "null"]}}}},
                "broken_tables": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                                  "description": "tables that cannot be served, with why"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "message", "retryable"],
                    "properties": {
                        "type": {"type": "string", "description": "see docs/http.md: invalid_json, invalid_request, "
                                 "invalid_key, unknown_table, unknown_feature, invalid_selection, too_many_keys, "
                                 "payload_too_large, unauthorized, not_found, method_not_allowed, database_unavailable, "
                                 "database_auth_failed, pool_exhausted, query_timeout, shutting_down, not_ready, "
                                 "read_only, schema_drift, database_error, internal"},
                        "message": {"type": "string", "description": "what was wrong and what is valid"},
                        "retryable": {"type": "boolean", "description": "the same request may succeed later "
                                      "(after Retry-After seconds)"},
                        "sqlstate": {"type": "string", "description": "PostgreSQL's error code (database_error)"},
                    },
                }
            },
        },
    }


def openapi_document(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    """The OpenAPI document for this registry and these settings."""
    error = _ref("Error")
    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds before retrying"}}
    unavailable = _json(error, "database unavailable, credentials refused, pool exhausted (after a bounded wait), "
                               "still warming up or shutting down: retry after Retry-After", retry)
    timeout = _json(error, "the database did not answer within request_timeout: retry after Retry-After", retry)
    failed = _json(error, "the database disagrees with the definitions (schema_drift) or rejected the statement "
                          "(database_error, with its sqlstate): retrying will not help")
    bad = _json(error, "malformed JSON, unknown field, table or feature, bad key format, too many keys")
    guarded: dict[str, Any] = {}
    if config.bearer_token:
        guarded = {"security": [{"bearer": []}], "responses": {"401": _json(error, "missing or wrong bearer token")}}

    def op(summary: str, responses: dict[str, Any], body: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": summary, "responses": dict(responses)}
        if body:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        if guarded:
            out["security"] = guarded["security"]
            out["responses"].update(guarded["responses"])
        return out

    read_responses = {"400": bad, "413": _json(error, "request body too large: the message names the setting"),
                      "500": failed, "503": unavailable, "504": timeout}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "pgfeatures",
            "version": __version__,
            "description": f"Online features from PostgreSQL schema {registry.schema!r}: "
                           f"{len(registry.tables)} tables, one database round-trip per request.",
        },
        "paths": {
            "/v1/features": {"post": op(
                "features of one key",
                {"200": _json(_ref("FeaturesResult"), "the key's features"), **read_responses},
                "FeaturesRequest",
            )},
            "/v1/features/batch": {"post": op(
                f"features of up to {config.max_batch_keys} keys in one database round-trip",
                {"200": _json(_ref("BatchResult"), "one result per key, in input order"), **read_responses},
                "BatchRequest",
            )},
            "/v1/tables": {"get": op("the feature tables and their features", {"200": _json(_ref("TableList"), "tables")})},
            "/healthz": {"get": {"summary": "process alive", "responses": {"200": _json(_ref("Status"), "alive")}}},
            "/readyz": {"get": {"summary": "warmed up and the database answers", "responses": {
                "200": _json(_ref("Status"), "ready, or degraded: serving, but some tables cannot be (named)"),
                "503": _json(_ref("Status"), "not ready (warming up or database unreachable)", retry),
            }}},
            "/metrics": {"get": op("Prometheus metrics", {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            })},
            "/openapi.json": {"get": op("this document", {"200": _json({"type": "object"}, "OpenAPI document")})},
        },
        "components": {"schemas": _schemas(registry, config)},
    }
    if config.bearer_token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
