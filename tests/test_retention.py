"""Retention: ``pgfeatures expire`` (``pgfeatures.retention.expire``) deletes rows older than their table's
TTL plus a grace period, in small batches that never wait on a writer, keeps materialized services in
step, and ``serve --expire-every`` runs it in the background."""

from __future__ import annotations

import datetime as dt
import json
import time

import psycopg
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

USER = Entity("user", "bigint", "uid")
HOUR = 3600


def make_registry(schema: str) -> Registry:
    tables = [
        FeatureTable.of("hourly", {"a": "real"}, entity=USER, ttl=HOUR),
        FeatureTable.of("kept", {"b": "real"}, entity=USER),
    ]  # no ttl: never expires
    services = [FeatureService("both", ("hourly.a", "kept.b"), materialize=True)]
    return Registry.of(tables, schema=schema, services=services)


def ages(conn: psycopg.Connection, registry: Registry, minutes: dict[int, float], table: str = "hourly") -> None:
    """Write key -> a row that many minutes old (by the server's clock) into ``table``."""
    now = conn.execute("SELECT now()").fetchone()[0]
    column = registry.table(table).features[0].name
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (uid, {}, updated_at) VALUES (%s, 1.0, %s) ON CONFLICT (uid) DO UPDATE "
                "SET updated_at = EXCLUDED.updated_at"
            ).format(sql.Identifier(registry.schema, table), sql.Identifier(column)),
            [(k, now - dt.timedelta(minutes=m)) for k, m in minutes.items()],
        )


def keys(conn: psycopg.Connection, registry: Registry, table: str = "hourly") -> set[int]:
    return {r[0] for r in conn.execute(sql.SQL("SELECT uid FROM {}").format(sql.Identifier(registry.schema, table)))}


@pytest.fixture()
def reg(conn, schema) -> Registry:
    registry = make_registry(schema)
    apply_schema(conn, registry)
    return registry


def test_expire_deletes_rows_older_than_the_ttl_plus_grace_in_batches_and_keeps_services_in_step(conn, reg, dsn):
    from pgfeatures.retention import expire

    ages(conn, reg, {1: 10, 2: 70, 3: 85, 4: 200, 5: 300, 6: 400, 7: 500})  # ttl 60 min, grace 30: 4..7 go
    ages(conn, reg, {1: 10, 4: 5000}, table="kept")
    materialize(conn, reg, "both")
    results = {r.table: r for r in expire(conn, reg, grace=30 * 60, batch_rows=2)}
    assert results["hourly"].deleted == 4 and results["hourly"].batches >= 2
    assert results["hourly"].age == 90 * 60 and results["hourly"].cutoff is not None
    assert results["kept"].deleted == 0 and results["kept"].age is None and "no ttl" in results["kept"].note
    assert keys(conn, reg) == {1, 2, 3} and keys(conn, reg, "kept") == {1, 4}
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        assert "both" in store.readers.materialized
        for k in range(1, 8):
            assert store.get_service("both", {"user": k}) == store.get_features({"user": k}, ["hourly", "kept"]), k
        assert store.get_service("both", {"user": 4}).status == {"hourly": "missing", "kept": "present"}
    assert sum(r.deleted for r in expire(conn, reg, grace=30 * 60)) == 0  # nothing left to do


def test_older_than_replaces_the_ttl_and_a_service_with_ttl_override_keeps_what_it_serves(conn, schema):
    from pgfeatures.retention import expire

    registry = Registry.of(
        make_registry(schema).tables.values(),
        schema=schema,
        services=[FeatureService("long", ("hourly.a",), ttl=3 * HOUR, ttl_override=True)],
    )
    apply_schema(conn, registry)
    ages(conn, registry, {1: 30, 2: 120, 3: 170})
    ages(conn, registry, {1: 30, 2: 120, 3: 170}, table="kept")
    # the service serves rows of hourly up to 3 h old: retention keeps them that long (plus grace)
    results = {r.table: r for r in expire(conn, registry, grace=0)}
    assert results["hourly"].age == 3 * HOUR and keys(conn, registry) == {1, 2, 3}
    ages(conn, registry, {3: 200})
    results = {r.table: r for r in expire(conn, registry, older_than=100 * 60, tables=["kept"])}
    assert set(results) == {"kept"} and results["kept"].deleted == 2 and keys(conn, registry, "kept") == {1}


def test_expire_never_waits_for_a_writer_holding_a_row(conn, reg, dsn):
    from pgfeatures.retention import expire

    ages(conn, reg, {1: 300, 2: 300, 3: 300})
    with psycopg.connect(dsn) as writer:  # a transaction holding row 2, as a live update would
        writer.execute(
            sql.SQL("SELECT * FROM {} WHERE uid = 2 FOR UPDATE").format(sql.Identifier(reg.schema, "hourly"))
        )
        started = time.monotonic()
        (hourly, _) = expire(conn, reg, grace=0)
        assert time.monotonic() - started < 5 and hourly.deleted == 2 and keys(conn, reg) == {2}
        writer.rollback()
    (hourly, _) = expire(conn, reg, grace=0)
    assert hourly.deleted == 1 and keys(conn, reg) == set()


def test_cli_expire_reports_what_it_deleted(conn, reg, dsn, tmp_path, capsys):
    from pgfeatures.cli import main as cli_main

    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{reg.schema}"\n[entities.user]\nkey = "bigint"\ncolumn = "uid"\n'
        '[tables.hourly]\nentity = "user"\nttl = "1h"\nfeatures = { a = "real" }\n'
        '[tables.kept]\nentity = "user"\nfeatures = { b = "real" }\n'
    )
    ages(conn, reg, {1: 10, 2: 200, 3: 300})
    assert cli_main(["expire", "--dsn", dsn, "-d", str(defs), "--grace", "30m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t["table"]: t["deleted"] for t in out["tables"]} == {"hourly": 2, "kept": 0} and out["deleted"] == 2
    ages(conn, reg, {4: 200})
    assert cli_main(["expire", "--dsn", dsn, "-d", str(defs), "-t", "hourly", "--older-than", "2h"]) == 0
    assert "hourly: 1 row(s) deleted" in capsys.readouterr().out and keys(conn, reg) == {1}


def test_serve_expires_in_the_background(conn, reg, dsn, tmp_path):
    from pgfeatures.server import ServerConfig
    from support.inprocess import running_app

    defs = tmp_path / "defs.toml"
    defs.write_text(
        f'schema = "{reg.schema}"\n[entities.user]\nkey = "bigint"\ncolumn = "uid"\n'
        '[tables.hourly]\nentity = "user"\nttl = "1h"\nfeatures = { a = "real" }\n'
        '[tables.kept]\nentity = "user"\nfeatures = { b = "real" }\n'
    )
    ages(conn, reg, {1: 10, 2: 200})
    config = ServerConfig(dsn=dsn, definitions=str(defs), prewarm=False, pool_size=1, expire_every=0.2, expire_grace=60)
    counted = 'pgfeatures_expired_rows_total{table="hourly"} 1.0'
    with running_app(config) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (keys(conn, reg) == {1} and counted in client.get("/metrics").text):
            time.sleep(0.1)
        assert keys(conn, reg) == {1} and counted in client.get("/metrics").text
