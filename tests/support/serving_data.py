"""Shared by the HTTP tests of the serving model: entities of every key type, tables with ttls and
defaults, feature services (one materialized), their rows written through the store relative to
the database's clock, and the ground truth.

Values are exact through JSON: reals print as the shortest decimal of their float32 (``0.1``), and
every other value is an integer, a boolean or a double written as such.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

DEFINITIONS = """
schema = "{schema}"

[entities.user]
key = "bigint"

[entities.merchant]
hash = "sha256"
column = "merchant_key"

[entities.device]
key = "text"
max_length = 16

[entities.session]
key = "uuid"

[tables.user_stats]
entity = "user"
ttl = "1h"
[tables.user_stats.features]
clicks_7d = {{ type = "integer", default = 0 }}
ctr_7d = "real"
is_new = {{ type = "boolean", default = true }}

[tables.user_emb]
entity = "user"
features = {{ e0 = "real", e1 = "real", e2 = "real" }}

[tables.merchant_risk]
entity = "merchant"
[tables.merchant_risk.features]
chargeback_rate = {{ type = "real", default = 0.5 }}
txn_count_30d = "bigint"

[tables.device_seen]
entity = "device"
features = {{ first_seen = "integer", risky = "boolean" }}

[tables.session_f]
entity = "session"
features = {{ dwell = "double precision" }}

[tables.legacy]
features = {{ f0 = "real", f1 = "real" }}

[services.fraud_v1]
features = ["user_stats.*", "merchant_risk.chargeback_rate", "device_seen.first_seen"]
version = "1"
description = "fraud model v1"

[services.user_vec]
features = ["user_emb.*", "user_stats.ctr_7d"]
materialize = true

[services.fresh_merchant]
features = ["merchant_risk.*"]
ttl = "10m"
"""

SESSION = uuid.UUID("12345678-1234-5678-1234-567812345678")
LEGACY = bytes(range(32)).hex()
SESSION_AGE = 5000  # seconds: the session table's only row is this old

# table -> key -> (seconds old, values as written)
ROWS: dict[str, dict[Any, tuple[int, dict[str, Any]]]] = {
    "user_stats": {
        42: (60, {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False}),
        43: (60, {"clicks_7d": None, "ctr_7d": 0.5, "is_new": None}),  # NULLs: the defaults are served
        44: (7200, {"clicks_7d": 9, "ctr_7d": 0.75, "is_new": False}),  # older than the 1h ttl: expired
    },
    "user_emb": {
        42: (60, {"e0": 0.1, "e1": 0.2, "e2": 0.3}),
        43: (60, {"e0": 1.5, "e1": -2.0, "e2": None}),
        44: (60, {"e0": 3.25, "e1": 0.0, "e2": 1e-3}),
    },
    "merchant_risk": {
        "m-1": (1200, {"chargeback_rate": 0.125, "txn_count_30d": 2**53 + 1}),  # 20 minutes old
        7: (30, {"chargeback_rate": None, "txn_count_30d": 7}),  # natural id 7: hashed as "7"
    },
    "device_seen": {"dev-a": (0, {"first_seen": 1_700_000_000, "risky": True})},
    "session_f": {SESSION: (SESSION_AGE, {"dwell": 12.5})},
    "legacy": {LEGACY: (10, {"f0": 1.5, "f1": 0.75})},
}
TTL = {"user_stats": 3600}
SERVICE_TTL = {"fresh_merchant": 600}


def server_now(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT floor(extract(epoch FROM now()))::int8").fetchone()[0])


def create(dsn: str, schema: str, folder: Path) -> tuple[Path, Registry]:
    """Create the tables in ``schema``, build the materialized service, write the rows through the
    store, and write the definitions TOML; returns its path and the registry."""
    path = folder / "serving.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    registry = Registry.from_toml(path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, registry)
        materialize(conn, registry, "user_vec")  # built empty: the writes below reach it through its triggers
        now = server_now(conn)
        with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
            for table, rows in ROWS.items():
                store.update_features_batch(
                    table, [(k, {**v, "updated_at": now - age}) for k, (age, v) in rows.items()]
                )
    return path, registry


def drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _normal(registry: Registry, table: str, key: Any) -> Any:
    """A key as ROWS holds it for ``table``."""
    entity = registry.tables[table].entity
    if entity.key_type == "bigint":
        return int(key)
    if entity.key_type == "uuid":
        return uuid.UUID(key)
    if entity.hash:  # a natural id: an integer is hashed as its decimal text
        return int(key) if str(key).isdigit() else key
    return key if isinstance(key, str) else str(key)


def status(registry: Registry, table: str, key: Any, ttl: int | None = None) -> str:
    row = ROWS[table].get(_normal(registry, table, key))
    if row is None:
        return "missing"
    limit = ttl if ttl is not None else TTL.get(table)
    return "expired" if limit is not None and row[0] > limit else "present"


def features(
    registry: Registry, table: str, key: Any, names: list[str] | None = None, ttl: int | None = None
) -> dict[str, Any] | None:
    """What a read of ``table`` answers for ``key``: values (NULL -> default) when present, else the
    defaults (None when the table has none)."""
    t = registry.tables[table]
    asked = [t.feature(n) for n in names] if names else list(t.features)
    present = status(registry, table, key, ttl) == "present"
    if not present and all(f.default is None for f in asked):
        return None
    values = ROWS[table][_normal(registry, table, key)][1] if present else {}
    return {f.name: f.default if values.get(f.name) is None else values[f.name] for f in asked}


def service_vector(registry: Registry, service: str, keys: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    """The vector and status of ``service`` for one request's entity keys."""
    svc = registry.service(service)
    ttl = SERVICE_TTL.get(service)
    values, state = [], {}
    for name in svc.order(registry):
        table, _, feature = name.partition(".")
        key = keys[registry.tables[table].entity.name]
        got = features(registry, table, key, [feature], ttl)
        state[table] = status(registry, table, key, ttl)
        values.append(None if got is None else got[feature])
    return values, state
