"""``feast apply`` / ``feast teardown`` and ``precompute_online=True`` feature services on the pgfeatures store.

``feast apply`` builds each such service as a pgfeatures materialized service (serving rows kept in step by
pgfeatures' triggers), in the transaction that creates the views' tables, before anything is written or
read; a service that stops being precomputed, or is deleted, loses its serving rows; a view that gains a
feature is altered online and the services applied with it rebuilt; ``teardown`` drops tables and serving
rows; a service pgfeatures cannot materialize fails ``feast apply`` and nothing is created.

Real Feast, real PostgreSQL (the tests' database), no mocks. Skipped only where the ``feast`` extra is not
installed. The answers themselves are checked against Feast's sqlite store in test_feast.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest

feast = pytest.importorskip("feast", reason="the feast extra is not installed (pip install 'pgfeatures[feast]')")

from pgfeatures.errors import DefinitionError  # noqa: E402
from support import feast_repo  # noqa: E402
from support.feast_repo import DAY, DRIVER_VECTOR, NOW, PLAIN, PRECOMPUTED, entity_rows  # noqa: E402

STORE = "pgfeatures.feast.PgfeaturesOnlineStore"


def objects_in(dsn: str, schema: str) -> dict[str, set[str]]:
    """The schema's tables, views, triggers and functions, by kind (pgfeatures' own bookkeeping tables left out)."""
    with psycopg.connect(dsn) as conn:
        relations = conn.execute(
            "SELECT c.relkind::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'v') AND c.relname NOT IN ('_pgf_definitions', "
            "'_pgf_full_passes')",
            [schema],
        ).fetchall()
        triggers = conn.execute(
            "SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
            [schema],
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            [schema],
        ).fetchall()
    out: dict[str, set[str]] = {"tables": set(), "views": set(), "triggers": set(), "functions": set()}
    for kind, name in relations:
        out["tables" if kind == "r" else "views"].add(name)
    out["triggers"] = {name for (name,) in triggers}
    out["functions"] = {name for (name,) in functions}
    return out


def serving_tables(dsn: str, schema: str, service: str) -> set[str]:
    return {name for name in objects_in(dsn, schema)["tables"] if name.startswith(f"_pgf_svc_{service}__")}


def states(root: Path, dsn: str) -> dict[str, str]:
    """pgfeatures' own view of the materialized services of the repository's (committed) definitions."""
    from pgfeatures.feast.importer import import_repo
    from pgfeatures.materialize.build import status

    with psycopg.connect(dsn, autocommit=True) as conn:
        return status(conn, import_repo(root).registry)


def same_answers(store: Any, precomputed: str, plain: str) -> None:
    rows = entity_rows()
    ours = store.get_online_features(store.get_feature_service(precomputed), rows)
    assert ours.proto == store.get_online_features(store.get_feature_service(plain), rows).proto


@pytest.fixture
def repo(tmp_path: Path, dsn: str, schema: str) -> Any:
    """(FeatureStore, its objects) of a fresh repository on pgfeatures, nothing applied yet."""
    feast_repo.write_data(tmp_path)
    feast_repo.write_config(tmp_path, "life", {"type": STORE, "dsn": dsn, "db_schema": schema})
    store = feast.FeatureStore(repo_path=str(tmp_path))
    yield store, feast_repo.definitions(tmp_path)
    asyncio.run(store._get_provider().online_store.close())


def test_apply_builds_precomputed_services_and_teardown_drops_them(repo: Any, dsn: str, schema: str) -> None:
    from feast import FeatureService, FeatureView, Field
    from feast.types import Float32

    store, objects = repo
    root = Path(store.repo_path)
    store.apply(list(objects.values()))
    # Built by feast apply itself: before any write, before any read.
    assert states(root, dsn) == {PRECOMPUTED: "built", DRIVER_VECTOR: "built"}
    assert len(serving_tables(dsn, schema, PRECOMPUTED)) == 3  # driver_id, customer_id, the composite key
    store.materialize(NOW - 60 * DAY, NOW + dt.timedelta(seconds=1))  # written through pgfeatures' triggers
    same_answers(store, PRECOMPUTED, PLAIN)

    # precompute_online turned off (a partial apply of the service alone): its serving rows go, the other stays.
    off = FeatureService(name=PRECOMPUTED, features=[objects[n] for n in feast_repo.EVERYTHING])
    store.apply([off])
    assert serving_tables(dsn, schema, PRECOMPUTED) == set()
    assert states(root, dsn) == {DRIVER_VECTOR: "built"}
    same_answers(store, PRECOMPUTED, PLAIN)

    # Back on, with a view that gains a feature: the column is added online (no drift error), the services
    # applied with it rebuilt in the same transaction; the views not in this apply are looked up in Feast's registry.
    old = objects["driver_stats"]
    grown = FeatureView(
        name="driver_stats",
        entities=[objects["driver"]],
        ttl=old.ttl,
        source=old.batch_source,
        schema=[*old.entity_columns, *old.features, Field(name="rating", dtype=Float32)],
    )
    views = [grown, *(objects[n] for n in feast_repo.EVERYTHING[1:])]
    fresh = feast.FeatureStore(repo_path=str(root))  # another process's store: it has seen no view
    try:
        fresh.apply([grown, FeatureService(name=PRECOMPUTED, features=views, precompute_online=True)])
    finally:
        asyncio.run(fresh._get_provider().online_store.close())
    store.refresh_registry()
    store.apply([FeatureService(name=PLAIN, features=views)])
    assert states(root, dsn) == {PRECOMPUTED: "built", DRIVER_VECTOR: "built"}
    same_answers(store, PRECOMPUTED, PLAIN)
    got = store.get_online_features(store.get_feature_service(PRECOMPUTED), [{"driver_id": 1001, "customer_id": "c-1"}])
    assert got.to_dict()["rating"] == [None] and got.to_dict()["conv"] == [0.5]  # present, the new feature null

    # Deleted (feast apply of a repository without it: partial=False): its serving rows go.
    kept = [o for name, o in objects.items() if name not in (DRIVER_VECTOR, PRECOMPUTED, PLAIN, "driver_stats")]
    store.apply(
        [*kept, grown, store.get_feature_service(PRECOMPUTED), store.get_feature_service(PLAIN)],
        objects_to_delete=[store.get_feature_service(DRIVER_VECTOR)],
        partial=False,
    )
    assert serving_tables(dsn, schema, DRIVER_VECTOR) == set()
    assert states(root, dsn) == {PRECOMPUTED: "built"}

    store.teardown()
    assert objects_in(dsn, schema) == {"tables": set(), "views": set(), "triggers": set(), "functions": set()}


def test_a_precomputed_service_pgfeatures_cannot_build_fails_apply_and_creates_nothing(
    repo: Any, dsn: str, schema: str
) -> None:
    from feast import FeatureService

    store, objects = repo
    base = [objects["driver"], objects["driver_stats"], objects["driver_live"], objects["driver_push"]]
    cases = [
        (
            FeatureService(name="Driver-Vector", features=[objects["driver_stats"]], precompute_online=True),
            r"feature service 'Driver-Vector': invalid service name",
        ),
        (
            FeatureService(
                name="two_drivers",
                features=[
                    objects["driver_stats"],
                    objects["driver_live"].with_join_key_map({"driver_id": "other_driver_id"}),
                ],
                precompute_online=True,
            ),
            r"feature service 'two_drivers': .*driver_id.* other_driver_id",
        ),
    ]
    for service, message in cases:
        with pytest.raises(DefinitionError, match=message):
            store.apply([*base, service])
        assert objects_in(dsn, schema) == {"tables": set(), "views": set(), "triggers": set(), "functions": set()}


def test_a_destructive_view_change_is_refused_naming_it_and_changes_nothing(repo: Any, dsn: str, schema: str) -> None:
    from feast import FeatureService, FeatureView, Field
    from feast.types import Float64

    from pgfeatures.errors import SchemaDriftError

    store, objects = repo
    store.apply(list(objects.values()))
    before = objects_in(dsn, schema)
    old = objects["driver_stats"]
    retyped = FeatureView(
        name="driver_stats",
        entities=[objects["driver"]],
        ttl=old.ttl,
        source=old.batch_source,
        schema=[*old.entity_columns, Field(name="conv", dtype=Float64), *(f for f in old.features if f.name != "conv")],
    )
    service = FeatureService(name=DRIVER_VECTOR, features=[retyped[["conv", "trips"]]], precompute_online=True)
    with pytest.raises(SchemaDriftError, match=r"column driver_stats\.conv is real, the definition says double"):
        store.apply([retyped, service])
    assert objects_in(dsn, schema) == before
    with psycopg.connect(dsn) as conn:
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'conv'",
            [f"{schema}.driver_stats"],
        ).fetchone()
    assert kind == ("real",)
    assert states(Path(store.repo_path), dsn) == {PRECOMPUTED: "built", DRIVER_VECTOR: "built"}
