"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand from the registry and settings.

Hand-written because the API is small and its contract is exact: table, feature, entity and
service names are enumerated from the registry, the key forms come from the entities' key types,
the batch limit from the settings, and every error response has the same ``{"error": {"type",
"message"}}`` body. Feature services and pushes are documented per service and per table
(``/v1/services/fraud_v1``, ``/v1/push/user_stats``), each with its own keys and features, so a
client generated from the document has one call per service and the fuzz test
(``tests/test_server_fuzz.py``) reaches the read and write paths of each.

Request schemas say exactly what the server accepts, no more and no less (the fuzz test checks
both ways: schema-valid requests are served, schema-invalid ones refused with a 4xx). That takes
more than types: a key's forms are bounded as the server bounds them (a bigint's decimal text up
to the int8 range, a text key's length, a UUID's spellings), and which entities a request's key
must carry depends on what it reads: a bare key only when it reads one entity, an object of
entity keys naming every entity it reads. Those rules are ``if``/``then`` clauses over the
request (``_key_rules``). Left out: an integral number written with a fraction or exponent
(``5.0``) counts as the integer only within ±2**53, where it is exact (JSON Schema cannot tell
``5.0`` from ``5``).
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..definitions import (
    FLOAT32_OVERFLOW,
    INT_RANGE,
    NONFINITE_JSON,
    UPDATED_AT,
    Entity,
    Feature,
    FeatureService,
    Registry,
)
from ..definitions.entities import INT8_RANGE, UUID_TEXT
from ..definitions.eventtime import MAX_MICROS, MIN_MICROS
from ..definitions.types import FLOAT32_ZERO, FeatureType, feature_type
from .config import ServerConfig

KEY_PATTERN = "^[0-9a-fA-F]{64}$"

STATUS = {"type": "string", "enum": ["present", "missing", "expired"]}
# A value: a number, a boolean, null (missing or NULL), or a stored non-finite real / double precision
# value as a string (JSON has no number for it).
VALUE = {
    "anyOf": [
        {"type": ["number", "integer", "boolean", "null"]},
        {
            "type": "string",
            "enum": list(NONFINITE_JSON),
            "description": "a stored non-finite real or double precision value (writes refuse them by default)",
        },
        {"type": "string", "format": "date-time", "description": "an event time or a timestamp feature, RFC 3339"},
        {"type": "string", "description": "a string feature"},
        {"type": "array", "description": "a list or an embedding feature (real elements printed as float32)"},
    ]
}
# Epoch seconds a pushed updated_at may be (years 1 to 9999, as parse_event_time checks; how far ahead of
# the database's clock it may be, max_future_skew, depends on that clock: no schema can say it).
EPOCH_RANGE = {"minimum": MIN_MICROS / 1_000_000, "maximum": MAX_MICROS // 1_000_000}
DOUBLE_MAX = (
    1.7976931348623157e308  # the largest finite double: JSON numbers beyond it are not numbers the server reads
)


def value_schema(type_: FeatureType | str, nullable: bool = True) -> dict[str, Any]:
    """What a pushed value of a feature of this type may be, as the write path checks it: integers
    within the column's range, reals within float32's (and not so small they would round to 0),
    doubles finite, booleans, strings up to max_length, RFC 3339 times, lists and embeddings of those;
    and null (NULL) when ``nullable``. (Non-finite values, which JSON has no number for, are refused by
    pushes: the strings answers carry them as are not values to write.)"""
    if isinstance(type_, str):
        type_ = feature_type(type_)
    type_name = type_.name
    schema: dict[str, Any]
    if type_.kind == "string":
        schema = {"type": "string", "maxLength": type_.max_length}
    elif type_.kind == "timestamp":
        schema = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number", **EPOCH_RANGE}]}
    elif type_.kind == "embedding":
        schema = {"type": "array", "items": value_schema("real", False), "minItems": type_.dim, "maxItems": type_.dim}
    elif type_.kind == "list" and type_.element is not None:
        schema = {"type": "array", "items": value_schema(type_.element, False)}
        if type_.max_length is not None:
            schema["maxItems"] = type_.max_length
    elif type_name == "boolean":
        schema = {"type": "boolean"}
    elif type_name in INT_RANGE:
        lo, hi = INT_RANGE[type_name]
        schema = {"type": "integer", "minimum": lo, "maximum": hi}
    elif type_name == "real":  # what rounds to a finite float32 and not to 0 (PostgreSQL's overflow and underflow)
        schema = {
            "type": "number",
            "anyOf": [
                {"const": 0},
                {"exclusiveMinimum": FLOAT32_ZERO, "exclusiveMaximum": FLOAT32_OVERFLOW},
                {"exclusiveMinimum": -FLOAT32_OVERFLOW, "exclusiveMaximum": -FLOAT32_ZERO},
            ],
        }
    else:
        schema = {"type": "number", "minimum": -DOUBLE_MAX, "maximum": DOUBLE_MAX}
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


# -- keys -----------------------------------------------------------------------------------------

INT8_MIN, INT8_MAX = INT8_RANGE
JSON_INT_MAX = 2**64 - 1  # the largest integer the server's JSON parser keeps exact (beyond: a float, refused)
# C-locale whitespace around a bigint's decimal text, as PostgreSQL's int8in (and entities.BIGINT_TEXT) takes it
_SPACE = "[\\t\\n\\u000b\\f\\r ]*"
# A UUID as its key parser spells it (PostgreSQL's uuid_in, and the URN prefix)
UUID_PATTERN = f"^(?:{UUID_TEXT.pattern})$"


def decimal_at_most(bound: int) -> str:
    """A regex (no anchors) of the decimal digit strings, leading zeros allowed, whose value is at most ``bound``."""
    digits = str(bound)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}|" if len(digits) > 1 else ""
    exact = [f"{digits[:i]}[0-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}" for i, d in enumerate(digits) if d != "0"]
    return f"0*(?:{shorter}{'|'.join([*exact, digits])})"


BIGINT_TEXT_PATTERN = f"^{_SPACE}(?:\\+?{decimal_at_most(INT8_MAX)}|-{decimal_at_most(-INT8_MIN)}){_SPACE}$"


def bare_key(entity: Entity) -> list[dict[str, Any]]:
    """What a bare key of ``entity`` may be in JSON (the alternatives of an anyOf), bounded as its parser bounds it."""
    name = entity.name
    if entity.hash:
        return [
            {"type": "string", "minLength": 1, "description": f"{name}: a natural id, hashed with SHA-256"},
            {
                "type": "integer",
                "minimum": INT8_MIN,
                "maximum": JSON_INT_MAX,
                "description": f"{name}: a natural id (its decimal text is hashed)",
            },
        ]
    if entity.key_type == "bytea32":
        return [{"type": "string", "pattern": KEY_PATTERN, "description": f"{name}: 32 bytes as 64 hex characters"}]
    if entity.key_type == "bigint":
        return [
            {"type": "integer", "minimum": INT8_MIN, "maximum": INT8_MAX, "description": f"{name}: a bigint"},
            {
                "type": "string",
                "pattern": BIGINT_TEXT_PATTERN,
                "description": f"{name}: a bigint's decimal text (a sign, digits, surrounding whitespace)",
            },
        ]
    if entity.key_type == "text":
        longest = entity.max_length
        return [
            {
                "type": "string",
                "minLength": 1,
                "maxLength": longest,
                "pattern": "^[^\\u0000]*$",
                "description": f"{name}: text without NUL characters",
            },
            {
                "type": "integer",
                "minimum": max(INT8_MIN, -(10 ** (longest - 1) - 1)),
                "maximum": min(JSON_INT_MAX, 10**longest - 1),
                "description": f"{name}: an integer, taken as its decimal text",
            },
        ]
    return [
        {
            "type": "string",
            "pattern": UUID_PATTERN,
            "description": f"{name}: a UUID (32 hex digits, hyphens between groups of four, braces, urn:uuid:)",
        }
    ]


def entity_keys(registry: Registry, required: list[str]) -> dict[str, Any]:
    """``{entity: key}``: any of the registry's entities (each one named is checked), ``required`` ones."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"anyOf": bare_key(e)} for name, e in registry.entities.items()},
        "additionalProperties": False,
        "minProperties": 1,
        "description": "one key per entity: " + "; ".join(f"{e.name}: {e.accepts}" for e in registry.entities.values()),
    }
    if required:
        out["required"] = required
    return out


def key_of(registry: Registry, entities: list[Entity]) -> dict[str, Any]:
    """A key for a request that may read ``entities``: a bare key of any of them or ``{entity: key}``
    (which of them a request must name: ``_key_rules``)."""
    bare: list[dict[str, Any]] = []
    for entity in entities:
        bare += [form for form in bare_key(entity) if form not in bare]
    return {
        "anyOf": [*bare, entity_keys(registry, [entities[0].name] if len(entities) == 1 else [])],
        "description": "a bare key when the request reads one entity, else {entity: key} naming each entity it reads",
    }


def any_key(registry: Registry) -> dict[str, Any]:
    """``/v1/features``' key: the request's tables decide its entities, so any entity's bare form."""
    return key_of(registry, list(registry.entities.values()))


def _key_rules(
    registry: Registry, offered: dict[str, list[str]], batch: bool, tables_field: bool
) -> list[dict[str, Any]]:
    """The clauses (of an allOf) that tie a request's key to what it reads, as the server does: for
    each entity the request reads, its key is ``{entity: key}`` naming that entity, or a bare key of
    it when the request reads no other entity.

    ``offered``: {table: [feature selectors]} the request may name (in ``features``, and in
    ``tables`` with ``tables_field``: ``/v1/features``, where no ``tables`` means every table, or
    those ``features`` names). A request without ``features`` (and ``tables``) reads every table
    offered. ``batch``: the keys are the items of ``keys``. Also, for ``/v1/features``, features may
    only be given for tables in ``tables`` when both are given.
    """
    no_tables = {"properties": {"tables": {"type": "null"}}}  # absent or null
    no_features = {"properties": {"features": {"type": "null"}}}

    def features_ref(tables: list[str]) -> dict[str, Any]:
        """``features`` names one of ``tables``."""
        refs = [f"{t}.{f}" for t in tables for f in offered[t]]
        return {
            "required": ["features"],
            "properties": {
                "features": {
                    "anyOf": [
                        {"type": "object", "anyOf": [{"required": [t]} for t in tables]},
                        {"type": "array", "contains": {"enum": refs}},
                    ]
                }
            },
        }

    def features_within(tables: list[str]) -> dict[str, Any]:
        """``features`` names only ``tables``."""
        refs = [f"{t}.{f}" for t in tables for f in offered[t]]
        return {
            "required": ["features"],
            "properties": {
                "features": {
                    "anyOf": [
                        {"type": "object", "propertyNames": {"enum": tables}},
                        {"type": "array", "items": {"enum": refs}},
                    ]
                }
            },
        }

    def reads(tables: list[str]) -> dict[str, Any]:
        """The request reads one of ``tables``."""
        everything = {"allOf": [no_tables, no_features]} if tables_field else no_features
        named = {"allOf": [no_tables, features_ref(tables)]} if tables_field else features_ref(tables)
        alternatives = [everything, named]
        if tables_field:
            alternatives.insert(
                0, {"required": ["tables"], "properties": {"tables": {"type": "array", "contains": {"enum": tables}}}}
            )
        return {"anyOf": alternatives}

    def reads_only(tables: list[str]) -> dict[str, Any]:
        """The request reads no table but ``tables``."""
        alternatives: list[dict[str, Any]] = []
        if set(tables) == set(offered):
            alternatives.append({"allOf": [no_tables, no_features]} if tables_field else no_features)
        if tables_field:
            alternatives.append(
                {"required": ["tables"], "properties": {"tables": {"type": "array", "items": {"enum": tables}}}}
            )
            alternatives.append({"allOf": [no_tables, features_within(tables)]})
        else:
            alternatives.append(features_within(tables))
        return {"anyOf": alternatives}

    def keys_are(schema: dict[str, Any]) -> dict[str, Any]:
        field = "keys" if batch else "key"
        return {"required": [field], "properties": {field: {"items": schema} if batch else schema}}

    by_entity: dict[str, list[str]] = {}
    for table in offered:
        by_entity.setdefault(registry.tables[table].entity.name, []).append(table)
    rules = []
    for name, tables in by_entity.items():
        named = {"type": "object", "required": [name]}
        bare = {"anyOf": bare_key(registry.entities[name])}
        rules.append(
            {
                "if": reads(tables),
                "then": {
                    "anyOf": [keys_are(named), {"allOf": [keys_are({"anyOf": [named, bare]}), reads_only(tables)]}]
                },
            }
        )
    if tables_field:  # features only for tables asked for, when tables are given
        for table in offered:
            rules.append(
                {
                    "if": {
                        "allOf": [
                            {"required": ["tables"], "properties": {"tables": {"type": "array"}}},
                            features_ref([table]),
                        ]
                    },
                    "then": {"properties": {"tables": {"contains": {"const": table}}}},
                }
            )
    return rules


# -- schemas --------------------------------------------------------------------------------------


def _selection(tables: dict[str, list[str]], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "oneOf": [
            {"type": "null"},
            {
                "type": "object",
                "properties": {
                    t: {"type": "array", "minItems": 1, "items": {"type": "string", "enum": fs}}
                    for t, fs in tables.items()
                },
                "additionalProperties": False,
                "minProperties": 1,
            },
            {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": [f"{t}.{f}" for t, fs in tables.items() for f in fs]},
            },
        ],
    }


def _service_schemas(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    output = {
        "type": ["string", "null"],
        "enum": ["dict", "vector", None],
        "description": "dict (default): features by table; vector: the values in the service's order "
        "(also with Accept: application/octet-stream, as raw little-endian numbers)",
    }
    for name, svc in registry.services.items():
        items = svc.resolve(registry)
        entities = list(dict.fromkeys(t.entity for t, _ in items))
        offered = {t.name: [f.name for f in fs] for t, fs in items}
        out[f"Key.{name}"] = key_of(registry, entities)
        out[f"Features.{name}"] = _selection(offered, f"a subset of {name}'s features (null or absent: all)")
        context: dict[str, Any] = {}
        if svc.context or svc.transforms:  # the values its transforms take: required with the whole service
            context = {"context": _ref(f"Context.{name}")}
            out[f"Context.{name}"] = _context(svc)
            out[f"Contexts.{name}"] = {
                "description": f"{name}'s context for a batch: one object per key, or {{name: [value per key]}}",
                "oneOf": [
                    {"type": "array", "items": _ref(f"Context.{name}"), "maxItems": config.max_batch_keys},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [n for n, _ in svc.context],
                        "properties": {
                            n: {"type": "array", "items": value_schema(t.name, nullable=False)} for n, t in svc.context
                        },
                    },
                ],
            }
        out[f"Request.{name}"] = {
            "type": "object",
            "required": ["key"],
            "additionalProperties": False,
            "properties": {
                "key": _ref(f"Key.{name}"),
                "features": _ref(f"Features.{name}"),
                "output": output,
                **context,
            },
            "allOf": _key_rules(registry, offered, batch=False, tables_field=False),
        }
        out[f"BatchRequest.{name}"] = {
            "type": "object",
            "required": ["keys"],
            "additionalProperties": False,
            "properties": {
                "keys": {"type": "array", "items": _ref(f"Key.{name}"), "maxItems": config.max_batch_keys},
                "features": _ref(f"Features.{name}"),
                "output": output,
                **({"context": _ref(f"Contexts.{name}")} if context else {}),
            },
            "allOf": _key_rules(registry, offered, batch=True, tables_field=False),
        }
    return out


def _context(svc: FeatureService) -> dict[str, Any]:
    """A service's request context: every declared value, of its type (400 invalid_context otherwise);
    and what its transforms compute from it, said in the description."""
    computed = "; ".join(
        f"{t.name} ({t.to_dict()['function']}): " + ", ".join(f"{n} {k.name}" for n, k in t.outputs)
        for t in svc.transforms
    )
    return {
        "type": "object",
        "description": f"the values {svc.name}'s request-time transforms take (required with the whole service; "
        "not with a subset of its features, which runs no transform)"
        + (f". Its transforms answer, after the stored features: {computed}" if computed else ""),
        "additionalProperties": False,
        "required": [n for n, _ in svc.context],
        "properties": {n: value_schema(t.name, nullable=False) for n, t in svc.context},
    }


def _push_schemas(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, table in registry.tables.items():
        values: dict[str, Any] = {f.name: value_schema(f.type) for f in table.features}
        values[UPDATED_AT] = {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number", **EPOCH_RANGE}],
            "description": "event time the values were true at: RFC 3339 with a zone "
            "(2026-05-01T12:00:00Z) or epoch seconds; a row older than the stored one is skipped "
            "(newest wins) unless overwrite_newer; one more than the service's max_future_skew ahead "
            "of the database's clock fails the push (400 invalid_value)",
        }
        out[f"PushKey.{name}"] = key_of(registry, [table.entity])
        out[f"PushFeatures.{name}"] = {
            "type": "object",
            "properties": values,
            "additionalProperties": False,
            "minProperties": 1,
            "description": "features to set (others are kept)",
        }
        row = {"key": _ref(f"PushKey.{name}"), "features": _ref(f"PushFeatures.{name}")}
        overwrite = {"type": "boolean", "description": "write rows older than the stored ones too (default false)"}
        out[f"Push.{name}"] = {
            "anyOf": [
                {
                    "type": "object",
                    "required": ["rows"],
                    "additionalProperties": False,
                    "properties": {
                        "rows": {
                            "type": "array",
                            "maxItems": config.max_batch_keys,
                            "items": {
                                "type": "object",
                                "required": ["key", "features"],
                                "additionalProperties": False,
                                "properties": row,
                            },
                        },
                        "overwrite_newer": overwrite,
                    },
                },
                {
                    "type": "object",
                    "required": ["key", "features"],
                    "additionalProperties": False,
                    "properties": {**row, "overwrite_newer": overwrite},
                },
            ]
        }
    return out


def _filter_value(feature: Feature) -> dict[str, Any]:
    """What a ``where`` value of ``feature`` may be (one value, as the store checks it)."""
    kind = feature.type.kind
    if kind == "string":
        return {"type": "string", "maxLength": feature.type.max_length}
    if kind == "timestamp":
        return {"type": "string", "format": "date-time", "description": "RFC 3339 with a zone"}
    return value_schema(feature.type.name, nullable=False)


def _nearest_schemas(registry: Registry) -> dict[str, Any]:
    """A nearest-neighbour request per table with an embedding feature, and the answer."""
    out: dict[str, Any] = {}
    for name, table in registry.tables.items():
        embeddings = [f for f in table.features if f.type.kind == "embedding"]
        if not embeddings:
            continue
        dims = {f.type.dim or 0 for f in embeddings}
        element = value_schema("real", nullable=False)
        query: dict[str, Any] = {"type": "array", "items": element, "minItems": 1, "maxItems": max(dims)}
        if len(dims) == 1:
            query["minItems"] = query["maxItems"] = dims.pop()
        comparable = [f for f in table.features if f.type.kind not in ("list", "embedding")]
        where = {
            f.name: {
                "anyOf": [
                    _filter_value(f),
                    {"type": "array", "items": _filter_value(f), "minItems": 1},
                    {"type": "null"},
                ]
            }
            for f in comparable
        }
        out[f"Nearest.{name}"] = {
            "type": "object",
            "required": ["feature", "query"],
            "additionalProperties": False,
            "properties": {
                "feature": {"type": "string", "enum": [f.name for f in embeddings]},
                "query": {
                    **query,
                    "description": "the query vector: as many finite numbers as the feature's dim "
                    + ", ".join(f"({f.name}: {f.type.dim})" for f in embeddings)
                    + "; for cosine, not all zeros",
                },
                "k": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "neighbours (default 10)"},
                "features": {
                    "anyOf": [
                        {"type": "array", "items": {"type": "string", "enum": list(table.readable_names)}},
                        {"const": "*"},
                        {"type": "null"},
                    ],
                    "description": 'features of each neighbour\'s row to return ("*": all; absent: none)',
                },
                "where": {
                    "type": ["object", "null"],
                    "properties": where,
                    "additionalProperties": False,
                    "description": "equality filters, ANDed: a value, a list (any of), or null (IS NULL)",
                },
                "ef_search": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 1000,
                    "description": "HNSW candidates for this request, at least k (absent: the server's, at least k)",
                },
                "exact": {"type": "boolean", "description": "search exactly even where an HNSW index exists"},
            },
        }
    if out:
        out["NearestResult"] = {
            "type": "object",
            "required": ["table", "feature", "metric", "search", "ef_search", "neighbours"],
            "properties": {
                "table": {"type": "string"},
                "feature": {"type": "string"},
                "metric": {"type": "string", "enum": ["l2", "cosine", "ip"]},
                "search": {"type": "string", "enum": ["hnsw", "exact"]},
                "ef_search": {"type": ["integer", "null"], "description": "in effect for an HNSW search"},
                "neighbours": {
                    "type": "array",
                    "description": "nearest first; rows past the table's ttl are not neighbours",
                    "items": {
                        "type": "object",
                        "required": ["key", "distance", "features"],
                        "properties": {
                            "key": {"description": "the neighbour's key as requests write keys (32 bytes: hex)"},
                            "distance": {
                                "type": "number",
                                "description": "smaller is nearer: l2 Euclidean, cosine 1 - similarity, "
                                "ip the negative inner product",
                            },
                            "features": {"type": "object", "additionalProperties": VALUE},
                        },
                    },
                },
            },
        }
    return out


def _schemas(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    tables = list(registry.tables.values())
    readable = {t.name: list(t.readable_names) for t in tables}
    nullable_str = {"type": ["string", "null"]}
    return {
        "Key": any_key(registry),
        "Tables": {
            "type": ["array", "null"],
            "minItems": 1,
            "items": {"type": "string", "enum": [t.name for t in tables]},
            "description": "feature tables to read, in this order (null or absent: all, or the tables named in features)",
        },
        "Features": _selection(
            readable,
            'features to read: {table: [feature, ...]} or ["table.feature", ...]; tables not '
            "named read all their features (null or absent: all)",
        ),
        "FeaturesRequest": {
            "type": "object",
            "required": ["key"],
            "properties": {"key": _ref("Key"), "tables": _ref("Tables"), "features": _ref("Features")},
            "additionalProperties": False,
            "allOf": _key_rules(registry, readable, batch=False, tables_field=True),
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
            "allOf": _key_rules(registry, readable, batch=True, tables_field=True),
        },
        "FeaturesResult": {
            "type": "object",
            "required": ["key", "features", "status", "missing"],
            "properties": {
                "key": {"description": "the key as sent"},
                "features": {
                    "type": "object",
                    "description": "{table: {feature: value}}; null where the table is not present, or its "
                    "features' defaults when it has some",
                    "additionalProperties": {"type": ["object", "null"], "additionalProperties": VALUE},
                },
                "status": {
                    "type": "object",
                    "additionalProperties": STATUS,
                    "description": "per table: present, missing (no row) or expired (older than the ttl)",
                },
                "missing": {"type": "array", "items": {"type": "string"}, "description": "tables not present"},
            },
        },
        "VectorResult": {
            "type": "object",
            "required": ["key", "values", "status"],
            "properties": {
                "key": {"description": "the key as sent"},
                "values": {
                    "type": "array",
                    "items": VALUE,
                    "description": "in the service's order (GET /v1/services/{name}: names); null where missing",
                },
                "status": {"type": "object", "additionalProperties": STATUS},
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {"type": "array", "items": _ref("FeaturesResult"), "description": "in input order"}
            },
        },
        "ServiceResult": {"oneOf": [_ref("FeaturesResult"), _ref("VectorResult")]},
        "ServiceBatchResult": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {"type": "array", "items": _ref("ServiceResult"), "description": "in input order"}
            },
        },
        "PushResult": {
            "type": "object",
            "required": ["written", "skipped"],
            "properties": {
                "written": {"type": "integer", "description": "distinct keys written"},
                "skipped": {"type": "integer", "description": "keys whose stored row was newer (kept)"},
            },
        },
        "Service": {
            "type": "object",
            "required": ["name", "entities", "tables", "columns", "dtype", "materialize", "serving"],
            "properties": {
                "name": {"type": "string"},
                "version": nullable_str,
                "description": nullable_str,
                "entities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "key_type"],
                        "properties": {
                            "name": {"type": "string"},
                            "key_type": {"type": "string"},
                            "hash": {"type": "string"},
                            "accepts": {"type": "string"},
                        },
                    },
                },
                "tables": {"type": "array", "items": {"type": "string"}},
                "ttl": {"type": ["integer", "null"], "description": "seconds (null: the tables' own)"},
                "ttl_override": {
                    "type": "boolean",
                    "description": "the service's ttl replaces the tables' (else the stricter of the two applies)",
                },
                "table_ttls": {
                    "type": "object",
                    "additionalProperties": {"type": ["integer", "null"]},
                    "description": "the TTL (seconds) this service applies to each table it reads",
                },
                "materialize": {"type": "boolean"},
                "state": {
                    "type": ["string", "null"],
                    "enum": ["built", "stale", "missing", None],
                    "description": "the serving rows of a materialized service, as last found",
                },
                "serving": {
                    "type": "string",
                    "enum": ["materialized", "tables"],
                    "description": "what this worker reads: the serving rows, or the tables",
                },
                "columns": {"type": "integer"},
                "dtype": {
                    "type": "string",
                    "enum": ["float32", "float64"],
                    "description": "of the raw (application/octet-stream) vector",
                },
                "names": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the vector's columns, in order",
                },
                "types": {"type": "array", "items": {"type": "string"}},
                "context": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "the request context its transforms take: {name: type}",
                },
                "transforms": {
                    "type": "array",
                    "description": "its request-time transforms, in order: their outputs come after the stored "
                    "features in names (pseudo-table = the transform's name)",
                    "items": {
                        "type": "object",
                        "required": ["name", "function", "outputs"],
                        "properties": {
                            "name": {"type": "string"},
                            "function": {"type": "string"},
                            "outputs": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "ServiceList": {
            "type": "object",
            "required": ["services"],
            "properties": {"services": {"type": "array", "items": _ref("Service")}},
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
                        "required": ["name", "entity", "features", "newest_age"],
                        "properties": {
                            "name": {"type": "string"},
                            "entity": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "key_type": {"type": "string"},
                                    "key_column": {"type": "string"},
                                },
                            },
                            "covering_index": {"type": "boolean"},
                            "features": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "type"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "type": {"type": "string"},
                                        "default": VALUE,
                                    },
                                },
                            },
                            "ttl": {"type": ["integer", "null"]},
                            "rows": {"type": ["integer", "null"], "description": "an estimate"},
                            "newest_updated_at": {"type": ["string", "null"], "format": "date-time"},
                            "newest_age": {
                                "type": ["number", "null"],
                                "description": "seconds since the newest row's updated_at (server clock), "
                                "an upper bound; null: unknown",
                            },
                            "newest_note": nullable_str,
                        },
                    },
                },
                "inventory": {
                    "type": "object",
                    "properties": {
                        "age": {"type": ["number", "null"], "description": "seconds since the last refresh"},
                        "interval": {"type": "number"},
                        "error": nullable_str,
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {
                    "type": "string",
                    "description": "alive, ready, degraded (some tables cannot be served) or not_ready",
                },
                "reason": {
                    "type": "string",
                    "description": "not_ready: why, as a class (warming_up, shutting_down, "
                    "database_unavailable, database_auth_failed, query_timeout, ...)",
                },
                "message": {
                    "type": "string",
                    "description": "not_ready: what failed, in words (with the token, or "
                    "probe_details; as are read_targets and broken_tables)",
                },
                "read_targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "up": {"type": "boolean"},
                            "reason": {"type": "string"},
                            "lag": {"type": ["number", "null"]},
                        },
                    },
                },
                "broken_tables": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "tables that cannot be served, with why",
                },
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
                        "type": {
                            "type": "string",
                            "description": "see docs/http.md: invalid_json, invalid_request, "
                            "invalid_key, unknown_entity, unknown_table, unknown_feature, unknown_service, "
                            "invalid_selection, invalid_value, invalid_context, too_many_keys, too_many_rows, payload_too_large, "
                            "not_acceptable, unauthorized, not_found, method_not_allowed, database_unavailable, "
                            "database_auth_failed, credentials_timeout, write_outcome_unknown, pool_exhausted, query_timeout, shutting_down, not_ready, "
                            "read_only, schema_drift, database_error, transform_error, internal",
                        },
                        "message": {"type": "string", "description": "what was wrong and what is valid"},
                        "retryable": {
                            "type": "boolean",
                            "description": "the same request may succeed later (after Retry-After seconds)",
                        },
                        "sqlstate": {"type": "string", "description": "PostgreSQL's error code (database_error)"},
                    },
                }
            },
        },
        **_service_schemas(registry, config),
        **_push_schemas(registry, config),
        **_nearest_schemas(registry),
    }


RAW_HEADERS = {
    "X-Pgfeatures-Rows": {"schema": {"type": "integer"}, "description": "application/octet-stream: rows of values"},
    "X-Pgfeatures-Columns": {"schema": {"type": "integer"}, "description": "application/octet-stream: values per row"},
    "X-Pgfeatures-Dtype": {
        "schema": {"type": "string", "enum": ["float32", "float64"]},
        "description": "application/octet-stream: little-endian float32 or float64",
    },
    "X-Pgfeatures-Tables": {
        "schema": {"type": "string"},
        "description": "application/octet-stream: the tables of "
        "the status trailer (one byte per row and table: 0 present, 1 missing, 2 expired)",
    },
}


def openapi_document(registry: Registry, config: ServerConfig) -> dict[str, Any]:
    """The OpenAPI document for this registry and these settings."""
    error = _ref("Error")
    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds before retrying"}}
    unavailable = _json(
        error,
        "database unavailable, credentials refused, pool exhausted (after a bounded wait), "
        "still warming up or shutting down: retry after Retry-After",
        retry,
    )
    timeout = _json(error, "the database did not answer within request_timeout: retry after Retry-After", retry)
    failed = _json(
        error,
        "the database disagrees with the definitions (schema_drift) or rejected the statement "
        "(database_error, with its sqlstate): retrying will not help",
    )
    bad = _json(error, "malformed JSON, unknown field, entity, table or feature, bad key, too many keys")
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

    read_responses = {
        "400": bad,
        "413": _json(error, "request body too large: the message names the setting"),
        "500": failed,
        "503": unavailable,
        "504": timeout,
    }
    service_responses = {
        **read_responses,
        "406": _json(error, 'Accept: application/octet-stream with "output": "dict"'),
        "500": _json(
            error,
            "schema_drift, database_error, ...; transform_error: a request-time transform raised, returned "
            "something else than its declared outputs, or a value of the wrong type (the message names the "
            "transform and the output; the traceback is in the server log)",
        ),
    }

    def vector(schema: str, description: str) -> dict[str, Any]:
        return {
            "description": description,
            "headers": RAW_HEADERS,
            "content": {
                "application/json": {"schema": _ref(schema)},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "the values, then the status trailer",
                    }
                },
            },
        }

    paths: dict[str, Any] = {
        "/v1/features": {
            "post": op(
                "features of one key",
                {"200": _json(_ref("FeaturesResult"), "the key's features and each table's status"), **read_responses},
                "FeaturesRequest",
            )
        },
        "/v1/features/batch": {
            "post": op(
                f"features of up to {config.max_batch_keys} keys in one database round-trip",
                {"200": _json(_ref("BatchResult"), "one result per key, in input order"), **read_responses},
                "BatchRequest",
            )
        },
        "/v1/services": {"get": op("the feature services", {"200": _json(_ref("ServiceList"), "services")})},
    }
    for name, svc in registry.services.items():
        about = f"feature service {name}" + (f" ({svc.description})" if svc.description else "")
        paths[f"/v1/services/{name}"] = {
            "get": op(f"{about}: entities, tables, vector columns", {"200": _json(_ref("Service"), "the service")}),
            "post": op(
                f"{about}: one request's features, or its vector",
                {"200": vector("ServiceResult", "features by table, or the vector"), **service_responses},
                f"Request.{name}",
            ),
        }
        paths[f"/v1/services/{name}/batch"] = {
            "post": op(
                f"{about}: up to {config.max_batch_keys} requests",
                {
                    "200": vector(
                        "ServiceBatchResult", "one result per key, in input order; raw: the rows concatenated"
                    ),
                    **service_responses,
                },
                f"BatchRequest.{name}",
            )
        }
    write_responses = {**read_responses, "403": _json(error, "a read-only service (write_pool_size = 0): read_only")}
    for name in registry.tables:
        paths[f"/v1/push/{name}"] = {
            "post": op(
                f"upsert rows of {name} (newest wins when rows carry updated_at)",
                {"200": _json(_ref("PushResult"), "keys written and skipped"), **write_responses},
                f"Push.{name}",
            )
        }
    for name, table in registry.tables.items():
        if any(f.type.kind == "embedding" for f in table.features):
            paths[f"/v1/tables/{name}/nearest"] = {
                "post": op(
                    f"the k rows of {name} nearest a query vector, with their distances and features (one round-trip; "
                    "400 exact_search_refused: an exact search past the store's exact_limit)",
                    {"200": _json(_ref("NearestResult"), "the neighbours, nearest first"), **read_responses},
                    f"Nearest.{name}",
                )
            }
    paths.update(
        {
            "/v1/tables": {
                "get": op(
                    "the feature tables: entity, features, ttl, rows, age of the newest row",
                    {"200": _json(_ref("TableList"), "tables")},
                )
            },
            "/healthz": {"get": {"summary": "process alive", "responses": {"200": _json(_ref("Status"), "alive")}}},
            "/readyz": {
                "get": {
                    "summary": "warmed up and the database answers",
                    "responses": {
                        "200": _json(_ref("Status"), "ready, or degraded: serving, but some tables cannot be (named)"),
                        "503": _json(_ref("Status"), "not ready (warming up or database unreachable)", retry),
                    },
                }
            },
            "/metrics": {
                "get": op(
                    "Prometheus metrics",
                    {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                    },
                )
            },
            "/openapi.json": {"get": op("this document", {"200": _json({"type": "object"}, "OpenAPI document")})},
        }
    )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "pgfeatures",
            "version": __version__,
            "description": f"Online features from PostgreSQL schema {registry.schema!r}: "
            f"{len(registry.tables)} tables, {len(registry.services)} feature services, "
            "one database round-trip per request.",
        },
        "paths": paths,
        "components": {"schemas": _schemas(registry, config)},
    }
    if config.bearer_token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
