"""The effective TTL of each table a feature service reads: the stricter of the service's and the
table's, unless the service says ``ttl_override = true``; shown by ``GET /v1/services/{name}`` and
``pgfeatures tables``, and the same for the flexible and the materialized read."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

import pytest

from pgfeatures import FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.errors import DefinitionError
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

DEFINITIONS = """
schema = "{schema}"

[entities.user]
key = "bigint"

[tables.half_day]
entity = "user"
ttl = "12h"
features = {{ a = "real" }}

[tables.week]
entity = "user"
ttl = "7d"
features = {{ b = "real" }}

[tables.forever]
entity = "user"
features = {{ c = "real" }}

[services.day]
features = ["half_day.a", "week.b", "forever.c"]
ttl = "1d"

[services.day_mat]
features = ["half_day.a", "week.b", "forever.c"]
ttl = "1d"
materialize = true

[services.day_override]
features = ["half_day.a", "week.b", "forever.c"]
ttl = "1d"
ttl_override = true

[services.plain]
features = ["half_day.a", "week.b", "forever.c"]
"""


@pytest.fixture()
def defs(conn, schema, dsn, tmp_path) -> tuple[Path, Registry]:
    path = tmp_path / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    registry = Registry.from_toml(path)
    apply_schema(conn, registry)
    now = conn.execute("SELECT now()").fetchone()[0]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        for table, value in (("half_day", {"a": 1.0}), ("week", {"b": 2.0}), ("forever", {"c": 3.0})):
            store.update_features_batch(
                table,
                [
                    (1, {**value, "updated_at": now - dt.timedelta(hours=18)}),  # past 12h, within 1d
                    (2, {**value, "updated_at": now - dt.timedelta(days=3)}),  # past 1d, within 7d
                ],
            )
    materialize(conn, registry, "day_mat")
    return path, registry


def test_the_stricter_ttl_wins_unless_the_service_overrides(defs, dsn):
    _, registry = defs
    assert registry.service("day").table_ttls(registry) == {"half_day": 12 * 3600, "week": 86400, "forever": 86400}
    assert registry.service("day_override").table_ttls(registry) == {"half_day": 86400, "week": 86400, "forever": 86400}
    assert registry.service("plain").table_ttls(registry) == {"half_day": 12 * 3600, "week": 7 * 86400, "forever": None}
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        for service in ("day", "day_mat"):
            # an 18 h old row of a 12 h table is not served by a 1 d service...
            assert store.get_service(service, {"user": 1}).status == {
                "half_day": "expired",
                "week": "present",
                "forever": "present",
            }, service
            # ...and a 3 d old row of a 7 d table is (the service's 1 d is stricter)
            assert store.get_service(service, {"user": 2}).status == {
                "half_day": "expired",
                "week": "expired",
                "forever": "expired",
            }, service
        assert store.get_service("day_override", {"user": 1}).status == {
            "half_day": "present",
            "week": "present",
            "forever": "present",
        }
        assert store.get_service("plain", {"user": 2}).status == {
            "half_day": "expired",
            "week": "present",
            "forever": "present",
        }
        vector = store.get_service("day_mat", {"user": 1}, output="list")
        assert vector.values == [None, 2.0, 3.0]


def test_ttl_override_needs_a_ttl(schema):
    with pytest.raises(DefinitionError, match="ttl_override = true needs a ttl"):
        Registry.from_dict(
            tomllib.loads(
                DEFINITIONS.format(schema=schema) + '\n[services.bad]\nfeatures = ["week.b"]\nttl_override = true\n'
            )
        )


def test_get_service_and_pgfeatures_tables_show_the_effective_ttl_of_every_table(defs, dsn, capsys, monkeypatch):
    from pgfeatures.cli import main as cli_main
    from pgfeatures.server import ServerConfig
    from support.inprocess import running_app

    path, _ = defs
    with running_app(ServerConfig(dsn=dsn, definitions=str(path), prewarm=False, pool_size=1)) as client:
        doc = client.get("/v1/services/day").json()
        assert doc["ttl"] == 86400 and doc["ttl_override"] is False
        assert doc["table_ttls"] == {"half_day": 43200, "week": 86400, "forever": 86400}
        listed = {s["name"]: s for s in client.get("/v1/services").json()["services"]}
        assert listed["day_override"]["table_ttls"] == {"half_day": 86400, "week": 86400, "forever": 86400}
    assert cli_main(["tables", "--dsn", dsn, "-d", str(path), "--json", "--no-newest"]) == 0
    services = {s["name"]: s for s in json.loads(capsys.readouterr().out)["services"]}
    assert services["day"]["table_ttls"] == {"half_day": 43200, "week": 86400, "forever": 86400}
    assert services["plain"]["table_ttls"] == {"half_day": 43200, "week": 604800, "forever": None}
    monkeypatch.setenv("COLUMNS", "400")  # one line per row in rich's table
    assert cli_main(["tables", "--dsn", dsn, "-d", str(path), "--no-newest"]) == 0
    text = capsys.readouterr().out
    assert "half_day 12h, week 1d, forever 1d" in text and "half_day 1d, week 1d, forever 1d (override)" in text
