"""The serving model: entities and key types, several entities in one request (one statement, one
round-trip), feature services, TTL decided on the server, defaults with status."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from pgfeatures import AsyncFeatureStore, FeatureStore, hash_key
from pgfeatures.definitions import Registry
from pgfeatures.errors import DefinitionError, KeyFormatError, UnknownServiceError
from pgfeatures.reader import Strategy
from pgfeatures.schema import apply_schema

TOML = """
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

[tables.merchant_risk]
entity = "merchant"
[tables.merchant_risk.features]
chargeback_rate = {{ type = "real", default = 0.5 }}
txn_count_30d = "bigint"

[tables.device_seen]
entity = "device"
ttl = "1d"
features = {{ first_seen = "integer", risky = "boolean" }}

[tables.session_f]
entity = "session"
features = {{ dwell = "double precision" }}

[tables.legacy]
features = {{ f0 = "real" }}

[services.fraud_v1]
features = ["user_stats.*", "merchant_risk.chargeback_rate", "device_seen.first_seen"]
version = "1"

[services.fresh_only]
features = ["merchant_risk.chargeback_rate", "device_seen.*"]
ttl = "10m"
"""

# What the client sends to run a prepared statement: no Parse, one Execute, one Sync (one round-trip).
PREPARED_EXECUTION = [("F", "Bind"), ("F", "Describe"), ("F", "Execute"), ("F", "Sync")]
SESSION = uuid.UUID("12345678-1234-5678-1234-567812345678")
LEGACY_KEY = bytes(range(32))


@pytest.fixture()
def registry(schema, tmp_path) -> Registry:
    path = tmp_path / "features.toml"
    path.write_text(TOML.format(schema=schema))
    return Registry.from_toml(path)


def server_now(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT floor(extract(epoch FROM now()))::int8").fetchone()[0])


@pytest.fixture()
def store(registry, conn, dsn):
    apply_schema(conn, registry)
    now = server_now(conn)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as s:
        s.update_features_batch(
            "user_stats",
            [
                (42, {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False, "updated_at": now - 60}),
                (43, {"clicks_7d": None, "ctr_7d": 0.5, "is_new": None, "updated_at": now - 60}),  # NULLs take defaults
                (44, {"clicks_7d": 9, "ctr_7d": 0.75, "is_new": False, "updated_at": now - 7200}),  # older than 1h
            ],
        )
        s.update_features_batch(
            "merchant_risk",
            [
                ("m-1", {"chargeback_rate": 0.125, "txn_count_30d": 2**53 + 1, "updated_at": now - 1200}),  # 20 min old
            ],
        )
        s.update_features("dev-a", "device_seen", {"first_seen": 1_700_000_000, "risky": True, "updated_at": now})
        s.update_features(SESSION, "session_f", {"dwell": 12.5})
        s.update_features(LEGACY_KEY, "legacy", {"f0": 1.5})
        yield s


def test_each_key_type_reads_back_by_its_natural_key(store):
    assert store.get_features(42, ["user_stats"]) == {"user_stats": {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False}}
    assert store.get_features("42", ["user_stats"])["user_stats"]["clicks_7d"] == 3  # decimal text, e.g. from the CLI
    m = store.get_features("m-1", ["merchant_risk"])
    assert m == {"merchant_risk": {"chargeback_rate": 0.125, "txn_count_30d": 2**53 + 1}}
    # a hex string is a natural id too (hashed again), so it finds nothing
    assert store.get_features(hash_key("m-1").hex(), ["merchant_risk"]).status == {"merchant_risk": "missing"}
    assert store.get_features("dev-a", ["device_seen"]) == {"device_seen": {"first_seen": 1_700_000_000, "risky": True}}
    for session in (SESSION, str(SESSION), SESSION.hex, SESSION.bytes):
        assert store.get_features(session, ["session_f"]) == {"session_f": {"dwell": 12.5}}
    assert store.get_features(LEGACY_KEY.hex(), ["legacy"]) == {"legacy": {"f0": 1.5}}


@pytest.mark.parametrize(
    "table, key, message",
    [
        ("user_stats", "abc", "user key must be an integer"),
        ("user_stats", 2**63, "out of range for bigint"),
        ("user_stats", True, "user key must be an integer"),
        ("device_seen", "x" * 17, "1 to 16 characters, got 17"),
        ("device_seen", b"dev", "device key must be a string"),
        ("session_f", "not-a-uuid", "session key must be a UUID"),
        ("merchant_risk", "", "must not be empty"),
        ("merchant_risk", 1.5, "natural id must be a string, an integer or bytes"),
        ("legacy", "ab" * 31, "64 hex characters, got 62"),
    ],
)
def test_bad_keys_say_what_their_entity_takes(store, table, key, message):
    with pytest.raises(KeyFormatError, match=message):
        store.get_features(key, [table])


def test_three_entities_in_one_statement_and_one_round_trip(store):
    keys = {"user": 42, "merchant": "m-1", "device": "dev-a"}
    tables = ["user_stats", "merchant_risk", "device_seen"]
    reader = store.reader(tables)
    assert len(reader.statements) == 1 and [e.name for e in reader.selection.entities] == ["user", "merchant", "device"]
    store.read(reader, keys)  # a request shape not warmed at open is prepared at its first use
    with wire_trace(store) as trace:
        got = store.read(reader, keys)
    assert trace == PREPARED_EXECUTION  # one prepared statement, one round-trip
    with wire_trace(store) as trace:
        store.get_service("fraud_v1", keys)  # a service is prepared at open: its first read is one round-trip too
    assert trace == PREPARED_EXECUTION
    assert got == {
        "user_stats": {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False},
        "merchant_risk": {"chargeback_rate": 0.125, "txn_count_30d": 2**53 + 1},
        "device_seen": {"first_seen": 1_700_000_000, "risky": True},
    }
    assert got.status == {"user_stats": "present", "merchant_risk": "present", "device_seen": "present"}
    for strategy in Strategy:
        assert store.get_features(keys, tables, strategy=strategy) == got, strategy
    with pytest.raises(KeyFormatError, match="no key for entity 'merchant', which table.s. merchant_risk need"):
        store.get_features({"user": 42, "device": "dev-a"}, tables)
    with pytest.raises(KeyFormatError, match="unknown entity 'usr'"):
        store.get_features({"usr": 42, "merchant": "m-1", "device": "dev-a"}, tables)
    with pytest.raises(KeyFormatError, match="pass one key per entity"):
        store.get_features(42, tables)
    # keys for entities a request does not read are ignored
    assert store.get_features(keys, ["user_stats"]) == {"user_stats": got["user_stats"]}


def test_batch_of_entity_rows_in_input_order(store):
    tables = ["user_stats", "merchant_risk"]
    rows = [{"user": 42, "merchant": "m-1"}, {"user": 7, "merchant": "m-1"}, {"user": 42, "merchant": "zz"}]
    got = store.get_features_batch(rows, tables)
    assert [r.status for r in got] == [
        {"user_stats": "present", "merchant_risk": "present"},
        {"user_stats": "missing", "merchant_risk": "present"},
        {"user_stats": "present", "merchant_risk": "missing"},
    ]
    assert got[1]["user_stats"] == {"clicks_7d": 0, "ctr_7d": None, "is_new": True}  # missing: the defaults
    assert got[2]["merchant_risk"] == {"chargeback_rate": 0.5, "txn_count_30d": None}
    by_entity = store.get_features_batch({"user": [42, 7, 42], "merchant": ["m-1", "m-1", "zz"]}, tables)
    assert by_entity == got and [r.status for r in by_entity] == [r.status for r in got]
    singles = [store.get_features(r, tables) for r in rows]
    assert singles == got and [s.status for s in singles] == [r.status for r in got]
    with pytest.raises(KeyFormatError, match=r"keys\[1\]: no key for entity 'merchant'"):
        store.get_features_batch([{"user": 1, "merchant": "a"}, {"user": 2}], tables)
    with pytest.raises(KeyFormatError, match="same number of keys"):
        store.get_features_batch({"user": [1, 2], "merchant": ["a"]}, tables)


def test_ttl_is_decided_by_the_server_with_status_expired(store, conn, schema):
    got = store.get_features_batch([42, 44, 99], ["user_stats"])
    assert [r.status["user_stats"] for r in got] == ["present", "expired", "missing"]
    assert got[1]["user_stats"] == {"clicks_7d": 0, "ctr_7d": None, "is_new": True}  # expired: the defaults
    # at the boundary: age == ttl is served, one second older is not (server clock, whole seconds)
    now = server_now(conn)
    store.update_features_batch(
        "user_stats",
        [(50, {"ctr_7d": 1.0, "updated_at": now - 3600 + 3}), (51, {"ctr_7d": 1.0, "updated_at": now - 3600 - 1})],
    )
    for strategy in Strategy:
        r50 = store.get_features(50, ["user_stats"], strategy=strategy)
        r51 = store.get_features(51, ["user_stats"], strategy=strategy)
        assert (r50.status, r51.status) == ({"user_stats": "present"}, {"user_stats": "expired"}), strategy
        assert r50["user_stats"]["ctr_7d"] == 1.0 and r51["user_stats"] == {
            "clicks_7d": 0,
            "ctr_7d": None,
            "is_new": True,
        }
    batch = store.get_features_batch([50, 51], ["user_stats"])
    assert [b.status["user_stats"] for b in batch] == ["present", "expired"]


def test_ttl_without_defaults_expired_is_none_with_its_status(store, conn):
    store.update_features(
        "dev-old", "device_seen", {"first_seen": 1, "risky": False, "updated_at": server_now(conn) - 90000}
    )
    for strategy in Strategy:
        got = store.get_features("dev-old", ["device_seen"], strategy=strategy)
        assert got == {"device_seen": None} and got.status == {"device_seen": "expired"}, strategy
    batch = store.get_features_batch(["dev-a", "dev-old", "dev-none"], ["device_seen"])
    assert [b["device_seen"] is None for b in batch] == [False, True, True]
    assert [b.status["device_seen"] for b in batch] == ["present", "expired", "missing"]


def test_defaults_replace_nulls_of_a_present_row(store):
    got = store.get_features(43, ["user_stats"])
    assert got == {"user_stats": {"clicks_7d": 0, "ctr_7d": 0.5, "is_new": True}}
    assert got.status == {"user_stats": "present"}


def test_services_by_name(store):
    keys = {"user": 42, "merchant": "m-1", "device": "dev-a"}
    got = store.get_service("fraud_v1", keys)
    assert list(got) == ["user_stats", "merchant_risk", "device_seen"]
    assert got == {
        "user_stats": {"clicks_7d": 3, "ctr_7d": 0.25, "is_new": False},
        "merchant_risk": {"chargeback_rate": 0.125},
        "device_seen": {"first_seen": 1_700_000_000},
    }
    # the service's own ttl (10 minutes) applies over the tables': the 20-minute-old merchant row is expired
    fresh = store.get_service("fresh_only", keys)
    assert fresh.status == {"merchant_risk": "expired", "device_seen": "present"}
    assert fresh["merchant_risk"] == {"chargeback_rate": 0.5}
    batch = store.get_service_batch("fraud_v1", [keys, {"user": 1, "merchant": "none", "device": "d"}])
    assert batch[0] == got and batch[1].status == {
        "user_stats": "missing",
        "merchant_risk": "missing",
        "device_seen": "missing",
    }
    subset = store.get_service("fraud_v1", keys, features=["user_stats.ctr_7d"])
    assert subset == {"user_stats": {"ctr_7d": 0.25}}
    with pytest.raises(UnknownServiceError, match="valid services: fraud_v1, fresh_only"):
        store.get_service("fraud_v2", keys)
    with pytest.raises(DefinitionError, match="does not serve merchant_risk.txn_count_30d"):
        store.get_service("fraud_v1", keys, features=["merchant_risk.txn_count_30d"])


def test_services_are_prepared_on_every_read_connection(store):
    expected = {s for r in store.warm_readers for s in (r.statements if hasattr(r, "statements") else (r.statement,))}
    service = store.readers.service_reader("fraud_v1", None, store.strategy)
    assert service.statements[0] in expected
    with store.connection() as conn:
        prepared = {row[0] for row in conn.execute("SELECT statement FROM pg_prepared_statements", prepare=False)}
    assert service.statements[0].decode() in prepared


def test_async_store_reads_entities_and_services(store, registry, dsn):
    keys = {"user": 42, "merchant": "m-1", "device": "dev-a"}

    async def run():
        async with AsyncFeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as s:
            one = await s.get_service("fraud_v1", keys)
            many = await s.get_service_batch("fraud_v1", [keys])
            mixed = await s.get_features(keys, ["user_stats", "device_seen"])
            return one, many, mixed

    one, many, mixed = asyncio.run(run())
    assert one == store.get_service("fraud_v1", keys) and many == [one]
    assert mixed == store.get_features(keys, ["user_stats", "device_seen"])


def test_hash_key_is_the_loaders_rule():
    import hashlib

    assert hash_key("u1") == hashlib.sha256(b"u1").digest()
    assert hash_key(42) == hashlib.sha256(b"42").digest()
    assert hash_key(b"\x00\x01") == hashlib.sha256(b"\x00\x01").digest()


@pytest.mark.parametrize(
    "snippet, message",
    [
        ('[entities.u]\nkey = "int"\n[tables.t]\nentity = "u"\nfeatures = { f = "real" }', "unknown key type 'int'"),
        (
            '[entities.u]\nkey = "bigint"\nhash = "sha256"\n[tables.t]\nentity = "u"\nfeatures = { f = "real" }',
            "stores 32-byte keys",
        ),
        ('[tables.t]\nentity = "nobody"\nfeatures = { f = "real" }', "unknown entity 'nobody'"),
        ('[tables.t]\nttl = "7 days"\nfeatures = { f = "real" }', "expected a duration"),
        ('[tables.t]\nfeatures = { f = { type = "integer", default = 1.5 } }', "is not an integer"),
        (
            '[tables.t]\nfeatures = { f = "real" }\n[services.s]\nfeatures = ["t.g"]',
            "unknown feature.*valid features: f",
        ),
        (
            '[tables.t]\nfeatures = { f = "real" }\n[services.s]\nfeatures = ["u.*"]',
            "unknown feature table.*valid tables: t",
        ),
        ('[tables.t]\nfeatures = { f = "real" }\n[services.s]\nfeatures = ["t.f", "t.*"]', "listed twice"),
    ],
)
def test_definition_errors_name_what_is_valid(tmp_path, snippet, message):
    path = tmp_path / "bad.toml"
    path.write_text(snippet)
    with pytest.raises(DefinitionError, match=message):
        Registry.from_toml(path)


def test_entities_round_trip_through_to_dict(registry):
    assert Registry.from_dict(registry.to_dict()) == registry


# -- wire trace: what the client sent ----------------------------------------------------------


class _Trace(list):
    def count(self, message: str) -> int:  # type: ignore[override]
        return sum(1 for line in self if line[1] == message)


@contextlib.contextmanager
def wire_trace(store: FeatureStore):
    """The messages the client sends on the store's one read connection (libpq's trace)."""
    trace = _Trace()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "trace", "w+") as fh:
        with store.connection() as conn:
            conn.pgconn.trace(fh.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
        try:
            yield trace
        finally:
            with store.connection() as conn:
                conn.pgconn.untrace()
            fh.seek(0)
            for line in fh:
                parts = line.split("\t")
                if len(parts) > 2 and parts[0] == "F":
                    trace.append((parts[0], parts[2].strip()))
