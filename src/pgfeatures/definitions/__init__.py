"""Definitions (floor 1): entities, feature tables, feature services, types; built in Python or read from TOML.

- ``types``: feature types, value checks, identifiers, durations;
- ``eventtime``: event time (``updated_at``): what callers may give, how it travels and prints;
- ``entities``: entities and their keys (bytea32, bigint, text, uuid; hashed natural ids);
- ``tables``: features (with defaults) and feature tables (entity, ttl);
- ``services``: named, versioned feature services;
- ``transforms``: their request-time transforms and request context, as declared;
- ``callables``: callables named by import path (credential providers, transforms);
- ``registry``: the whole, and its TOML form.
"""

from .entities import (
    DEFAULT_ENTITY,
    DEFAULT_ENTITY_NAME,
    KEY_COLUMN,
    KEY_LENGTH,
    KEY_TYPES,
    Entity,
    hash_key,
    parse_hash_key,
)
from .eventtime import DEFAULT_MAX_FUTURE_SKEW, from_micros, parse_event_time, rfc3339, to_micros
from .registry import DEFAULT_SCHEMA, Registry, demo_registry, read_toml
from .services import FeatureService
from .tables import UPDATED_AT, UPDATED_AT_FEATURE, Feature, FeatureTable
from .transforms import Transform
from .types import (
    ALIASES,
    EVENT_TIME,
    FLOAT32_MAX,
    FLOAT32_OVERFLOW,
    INF_POLICIES,
    INT_RANGE,
    NAN_POLICIES,
    NONFINITE_JSON,
    TYPES,
    WIDE_TYPES,
    FeatureType,
    check_identifier,
    check_value,
    feature_type,
    format_duration,
    nonfinite_json,
    parse_duration,
)

RESERVED = frozenset({KEY_COLUMN, UPDATED_AT})

__all__ = [
    "ALIASES",
    "DEFAULT_ENTITY",
    "DEFAULT_ENTITY_NAME",
    "DEFAULT_MAX_FUTURE_SKEW",
    "DEFAULT_SCHEMA",
    "EVENT_TIME",
    "Entity",
    "FLOAT32_MAX",
    "FLOAT32_OVERFLOW",
    "Feature",
    "FeatureService",
    "FeatureTable",
    "FeatureType",
    "Transform",
    "INF_POLICIES",
    "INT_RANGE",
    "KEY_COLUMN",
    "KEY_LENGTH",
    "KEY_TYPES",
    "NAN_POLICIES",
    "NONFINITE_JSON",
    "RESERVED",
    "Registry",
    "TYPES",
    "UPDATED_AT",
    "UPDATED_AT_FEATURE",
    "WIDE_TYPES",
    "check_identifier",
    "check_value",
    "demo_registry",
    "feature_type",
    "format_duration",
    "from_micros",
    "hash_key",
    "nonfinite_json",
    "parse_duration",
    "parse_event_time",
    "parse_hash_key",
    "read_toml",
    "rfc3339",
    "to_micros",
]
