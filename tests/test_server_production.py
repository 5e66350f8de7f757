"""The service with a broken table, after a restart, read-only with the primary down (production issue
items 2, 4 and 6; house issue item 1)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgfeatures.definitions import demo_registry
from pgfeatures.schema import apply_schema
from pgfeatures.server import ServerConfig
from pgfeatures_bench.harness.clusters import Cluster
from support.inprocess import running_app

KEY = "ab" * 32


def _defs(tmp_path: Path, schema: str, tables: int, extra_feature: bool = False) -> str:
    lines = [f'schema = "{schema}"']
    for i in range(tables):
        lines.append(f"[tables.t{i:02d}.features]")
        lines.append('f0 = "real"')
        if extra_feature and i == 1:
            lines.append('f9 = "real"')
    path = tmp_path / "features.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_renamed_table_breaks_only_its_requests_and_readiness_names_it(conn, schema, dsn, tmp_path):
    apply_schema(conn, demo_registry(n_tables=3, n_features=1, schema=schema))
    config = ServerConfig(dsn=dsn, definitions=_defs(tmp_path, schema, 3), pool_size=2, prewarm=False)
    with running_app(config) as client:
        assert client.post("/v1/features", json={"key": KEY}).status_code == 200
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO t02_x").format(sql.Identifier(schema, "t02")))
        broken = client.post("/v1/features", json={"key": KEY})
        assert broken.status_code == 500 and broken.json()["error"]["type"] == "schema_drift"
        assert f"{schema}.t02 does not exist" in broken.json()["error"]["message"]
        ok = client.post("/v1/features", json={"key": KEY, "tables": ["t00", "t01"]})
        assert ok.status_code == 200 and ok.json()["features"] == {"t00": None, "t01": None}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "t02" in ready.json()["broken_tables"]
        # every read connection replaced: new connections still warm up and serve the other tables
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgfeatures-read'"
            " AND datname = current_database()"
        )
        assert client.post("/v1/features", json={"key": KEY, "tables": ["t00"]}).status_code == 200
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO t02").format(sql.Identifier(schema, "t02_x")))
        deadline = time.monotonic() + 10  # served again at the next re-check (every second)
        while (r := client.post("/v1/features", json={"key": KEY})).status_code != 200:
            assert r.json()["error"]["type"] == "schema_drift" and time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert client.get("/readyz").json()["status"] == "ready"


def test_a_defined_but_uncreated_table_is_named_not_warming_up_forever(conn, schema, dsn, tmp_path):
    apply_schema(conn, demo_registry(n_tables=2, n_features=1, schema=schema))
    config = ServerConfig(
        dsn=dsn, definitions=_defs(tmp_path, schema, 3, extra_feature=True), pool_size=2, prewarm=False
    )
    with running_app(config, ready_within=10) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "degraded"
        assert set(ready["broken_tables"]) == {"t01", "t02"}
        assert "column f9 (real) is missing" in ready["broken_tables"]["t01"][0]
        assert client.post("/v1/features", json={"key": KEY, "tables": ["t00"]}).status_code == 200
        drifted = client.post("/v1/features", json={"key": KEY, "tables": ["t01"]})
        assert drifted.status_code == 500 and "pgfeatures apply" in drifted.json()["error"]["message"]


@pytest.mark.cluster
@pytest.mark.timing  # ready within 2.5 s of a restart
@pytest.mark.parametrize("pool_size", [4, 16])
def test_readiness_follows_a_restart_within_one_probe(tmp_path, pool_size):
    with Cluster(name="ready-restart") as cluster:
        cluster.create_role("app", "pw")
        with psycopg.connect(cluster.admin_dsn(), autocommit=True) as admin:
            apply_schema(admin, demo_registry(n_tables=2, n_features=1, schema="r"))
            admin.execute("GRANT USAGE ON SCHEMA r TO app; GRANT SELECT ON ALL TABLES IN SCHEMA r TO app")
        config = ServerConfig(
            dsn=cluster.dsn("app"),
            definitions=_defs(tmp_path, "r", 2),
            pool_size=pool_size,
            prewarm=False,
            acquire_timeout=2,
        )
        with running_app(config) as client:
            cluster.restart()
            back = time.monotonic()
            while client.get("/readyz").status_code != 200:  # an idle service: nothing but probes
                assert time.monotonic() - back < 2.5, f"/readyz not ready 2.5 s after the restart (pool of {pool_size})"
                time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_read_only_service_is_ready_with_the_primary_down(tmp_path):
    with Cluster(replication=True, name="ro-primary") as primary:
        primary.create_role("app", "pw")
        with psycopg.connect(primary.admin_dsn(), autocommit=True) as admin:
            apply_schema(admin, demo_registry(n_tables=2, n_features=1, schema="r"))
            admin.execute("GRANT USAGE ON SCHEMA r TO app; GRANT SELECT ON ALL TABLES IN SCHEMA r TO app")
        replica = primary.replica(name="ro-replica")
        primary.stop()
        config = ServerConfig(
            dsn=primary.dsn("app"),
            read_dsn=replica.dsn("app"),
            definitions=_defs(tmp_path, "r", 2),
            pool_size=2,
            prewarm=False,
            connect_timeout=2,
        )
        with running_app(config, ready_within=15) as client:
            assert client.post("/v1/features", json={"key": KEY}).json()["features"] == {"t00": None, "t01": None}
            targets = client.get("/readyz").json()["read_targets"]
            assert targets[0]["up"] and targets[0]["name"].startswith("replica")
        primary.start()
