"""Materialized services: serving rows equal the flexible read after every kind of write, built online,
kept in step by triggers (writes around pgfeatures too), stale definitions detected."""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg import sql

from conftest import wait_for_lock_wait
from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.materialize.build import materialize, status
from pgfeatures.schema import apply_schema

TYPES = ["real", "double precision", "smallint", "integer", "bigint", "boolean"]


def _value(rng: random.Random, type_name: str):
    if rng.random() < 0.15:
        return None
    return {
        "real": lambda: float(__import__("numpy").float32(rng.uniform(-1e3, 1e3))),
        "double precision": lambda: rng.uniform(-1e9, 1e9),
        "smallint": lambda: rng.randint(-32768, 32767),
        "integer": lambda: rng.randint(-(2**31), 2**31 - 1),
        "bigint": lambda: rng.choice([2**53 + 1, -(2**62), rng.randint(-(2**63), 2**63 - 1)]),
        "boolean": lambda: rng.random() < 0.5,
    }[type_name]()


def random_registry(schema: str, seed: int) -> Registry:
    rng = random.Random(seed)
    user = Entity("user", "bigint")
    dev = Entity("device", "text", max_length=20)
    tables = []
    for i in range(6):
        entity = user if i % 3 else dev
        features = {
            f"c{j}": {"type": rng.choice(TYPES), **({"default": 0} if rng.random() < 0.2 else {})}
            for j in range(rng.randint(1, 5))
        }
        for f in features.values():
            if "default" in f and f["type"] == "boolean":
                f["default"] = False
        tables.append(FeatureTable.of(f"tb{i}", features, entity=entity, ttl=3600 if i == 2 else None))
    refs = [f"tb{i}.*" for i in (1, 0, 2, 4, 5)] + ["tb3.c0"]
    return Registry.of(
        tables,
        schema,
        services=[FeatureService("svc", tuple(refs), materialize=True), FeatureService("flex", tuple(refs))],
    )


def write_random(
    store: FeatureStore, registry: Registry, rng: random.Random, keys: dict[str, list], n: int, now: int
) -> None:
    for table in registry.tables.values():
        rows = []
        for k in rng.sample(keys[table.entity.name], n):
            values = {f.name: _value(rng, f.type.name) for f in table.features if rng.random() < 0.8}
            values["updated_at"] = now - rng.choice([10, 100, 7200])
            rows.append((k, values))
        store.update_features_batch(table.name, rows, overwrite_newer=True)


def assert_same(store: FeatureStore, keys: list[dict]) -> None:
    for k in keys:
        mat, flex = store.get_service("svc", k), store.get_service("flex", k)
        assert mat == flex and mat.status == flex.status, k
    mats, flexes = store.get_service_batch("svc", keys), store.get_service_batch("flex", keys)
    assert mats == flexes and [m.status for m in mats] == [f.status for f in flexes]


@pytest.fixture()
def setup(conn, schema, dsn):
    registry = random_registry(schema, seed=3)
    apply_schema(conn, registry)
    rng = random.Random(5)
    keys = {"user": list(range(1, 60)), "device": [f"d{i}" for i in range(60)]}
    now = int(conn.execute("SELECT floor(extract(epoch FROM now()))").fetchone()[0])
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        write_random(store, registry, rng, keys, 30, now)
    summary = materialize(conn, registry, "svc")
    assert summary.rows and all(n > 0 for n in summary.rows.values())
    requests = [
        {"user": rng.choice(keys["user"] + [999]), "device": rng.choice(keys["device"] + ["none"])} for _ in range(25)
    ]
    return registry, rng, keys, now, requests


def test_materialized_reads_equal_the_flexible_read_after_every_kind_of_write(setup, conn, dsn, schema):
    registry, rng, keys, now, requests = setup
    assert status(conn, registry) == {"svc": "built"}
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.readers.service_reader("svc", None, "single").materialized
        assert_same(store, requests)
        # live updates, partial updates, newest-wins skips
        write_random(store, registry, rng, keys, 20, now + 5)
        store.update_features_batch("tb1", [(keys["user"][0], {"updated_at": 1})])  # older: skipped
        assert_same(store, requests)
        # writes around pgfeatures: caught by the triggers
        conn.execute(sql.SQL("DELETE FROM {} WHERE user_id < 20").format(sql.Identifier(schema, "tb1")))
        conn.execute(sql.SQL("UPDATE {} SET c0 = NULL").format(sql.Identifier(schema, "tb0")))
        assert_same(store, requests)
        # an UPDATE that moves keys: the old keys' slices are cleared, the new keys get serving rows
        tb1 = sql.Identifier(schema, "tb1")
        old = [k for (k,) in conn.execute(sql.SQL("SELECT user_id FROM {} ORDER BY user_id LIMIT 2").format(tb1))]
        conn.execute(sql.SQL("UPDATE {} SET user_id = user_id + 1000 WHERE user_id = ANY(%s)").format(tb1), (old,))
        moved = [{"user": k + d, "device": "d1"} for d in (0, 1000) for k in old]
        assert [store.get_service("svc", k).status["tb1"] for k in moved] == ["missing"] * 2 + ["present"] * 2
        assert_same(store, requests + moved)
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "tb4")))
        assert_same(store, requests)
        # a failed write leaves both untouched
        before = store.get_service_batch("svc", requests)
        with pytest.raises(psycopg.Error), conn.transaction():
            conn.execute(sql.SQL("UPDATE {} SET c0 = NULL").format(sql.Identifier(schema, "tb5")))
            conn.execute("SELECT 1/0")
        assert store.get_service_batch("svc", requests) == before
        assert_same(store, requests)


def test_a_subset_of_a_materialized_service_is_served_from_its_rows(setup, dsn):
    registry, rng, keys, now, requests = setup
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        subset = ["tb0.c0", "tb2.c0"]
        reader = store.readers.service_reader("svc", subset, "single")
        assert reader.materialized and len(reader.statements) == 1
        for k in requests[:10]:
            assert store.get_service("svc", k, features=subset) == store.get_service("flex", k, features=subset)


def test_a_changed_definition_is_stale_until_rebuilt(setup, conn, dsn, schema):
    registry, rng, keys, now, requests = setup
    changed = Registry.of(
        registry.tables.values(),
        schema,
        services=[
            FeatureService("svc", ("tb1.*", "tb0.*"), materialize=True),
            FeatureService("flex", ("tb1.*", "tb0.*")),
        ],
    )
    assert status(conn, changed) == {"svc": "stale"}
    with FeatureStore(changed, dsn, pool_size=1, write_pool_size=0) as store:
        assert not store.readers.service_reader("svc", None, "single").materialized  # served table by table meanwhile
        assert_same(store, requests)
    materialize(conn, changed, "svc")
    assert status(conn, changed) == {"svc": "built"}
    with FeatureStore(changed, dsn, pool_size=1, write_pool_size=1) as store:
        assert store.readers.service_reader("svc", None, "single").materialized
        write_random(store, changed, rng, keys, 10, now + 9)
        assert_same(store, requests)


def test_vector_output_in_the_service_order(setup, dsn):
    import numpy as np

    registry, rng, keys, now, requests = setup
    order = registry.service("svc").order(registry)
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        for k in requests[:8]:
            for service in ("svc", "flex"):
                d = store.get_service(service, k)
                v = store.get_service(service, k, output="list")
                assert v.names == order and v.status == d.status
                assert v.values == [
                    None if d[n.split(".")[0]] is None else d[n.split(".")[0]][n.split(".")[1]] for n in order
                ]
                a = store.get_service(service, k, output="numpy")
                assert a.values.dtype == np.float64 and a.values.shape == (len(order),)
                assert np.array_equal(a.values, np.array(v.values, dtype=np.float64), equal_nan=True)
        batch = store.get_service_batch("svc", requests, output="numpy")
        assert batch.values.shape == (len(requests), len(order))
        flex = store.get_service_batch("flex", requests, output="numpy")
        assert np.array_equal(batch.values, flex.values, equal_nan=True) and batch.status == flex.status


def test_all_real_materialized_vector_is_the_serving_row(conn, schema, dsn):
    tables = [
        FeatureTable.of(f"r{i}", {f"f{j}": "real" for j in range(3)}, ttl=3600 if i == 1 else None) for i in range(3)
    ]
    registry = Registry.of(
        tables,
        schema,
        services=[
            FeatureService("v", ("r0.*", "r1.*", "r2.*"), materialize=True),
            FeatureService("vf", ("r0.*", "r1.*", "r2.*")),
        ],
    )
    apply_schema(conn, registry)
    k1, k2 = bytes([1]) * 32, bytes([2]) * 32
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        store.update_features(k1, "r0", {"f0": 0.5, "f1": 1.5, "f2": 2.5})
        store.update_features(k1, "r1", {"f0": 3.5, "updated_at": 1})  # expired
        store.update_features(k2, "r2", {"f1": 0.25})
    materialize(conn, registry, "v")
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        for k in (k1, k2, bytes(32)):
            v, f = store.get_service("v", k, output="list"), store.get_service("vf", k, output="list")
            assert v.values == f.values and v.status == f.status
            n = store.get_service("v", k, output="numpy")
            assert n.values.dtype.name == "float32"
        assert store.get_service("v", k1, output="list").values == [0.5, 1.5, 2.5, None, None, None, None, None, None]


@pytest.mark.parametrize("mode, strategy", [("merge", "upsert"), ("merge", "rebuild"), ("replace", "auto")])
def test_bulk_loads_keep_the_serving_rows_in_step(conn, dsn, schema, mode, strategy):
    import hashlib

    import pyarrow as pa

    from pgfeatures.load import load

    rng = random.Random(11)
    tables = [FeatureTable.of(f"h{i}", {f"c{j}": rng.choice(TYPES) for j in range(3)}) for i in range(3)]
    registry = Registry.of(
        tables,
        schema,
        services=[
            FeatureService("svc", ("h0.*", "h1.*", "h2.c0"), materialize=True),
            FeatureService("flex", ("h0.*", "h1.*", "h2.c0")),
        ],
    )
    apply_schema(conn, registry)
    keys = [hashlib.sha256(b"%d" % i).digest() for i in range(80)]
    arrow_types = {
        "real": pa.float32(),
        "double precision": pa.float64(),
        "smallint": pa.int16(),
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "boolean": pa.bool_(),
    }

    def data(table: FeatureTable, chosen: list[bytes]) -> pa.Table:
        cols = {"hashkey": pa.array(chosen, pa.binary(32))}
        for f in table.features:
            cols[f.name] = pa.array([_value(rng, f.type.name) for _ in chosen], arrow_types[f.type.name])
        return pa.table(cols)

    for table in tables:
        load(conn, registry, table.name, data(table, rng.sample(keys, 50)))
    materialize(conn, registry, "svc")
    summary = load(conn, registry, "h1", data(tables[1], keys[::3] + [bytes(32)]), mode=mode, strategy=strategy)
    assert summary.strategy == ("replace" if mode == "replace" else strategy)
    # the load rewrote many serving rows in place: their dead versions are reclaimed after COMMIT too
    serving = registry.layouts("svc")[0].table_name
    assert f"dead serving-row versions reclaimed in {serving}" in summary.maintenance, summary.maintenance
    vacuumed = conn.execute(
        "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
        [schema, serving],
    ).fetchone()
    assert vacuumed is not None and vacuumed[1] >= 1, vacuumed
    requests = keys[:40] + [bytes(32)]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        assert store.readers.service_reader("svc", None, "single").materialized
        for k in requests:
            mat, flex = store.get_service("svc", k), store.get_service("flex", k)
            assert mat == flex and mat.status == flex.status, k.hex()


def test_two_writers_creating_the_same_new_key_in_two_tables_both_commit(setup, conn, dsn, schema):
    """Both triggers insert the new key's serving row: the second waits for the first and sets its
    slice in that row (ON CONFLICT), instead of failing with a unique violation."""
    registry, rng, keys, now, requests = setup
    first, second = psycopg.connect(dsn), psycopg.connect(dsn)
    try:
        first.execute(sql.SQL("INSERT INTO {} (user_id, c0) VALUES (5000, NULL)").format(sql.Identifier(schema, "tb1")))
        done = []
        import threading

        def write_second() -> None:
            second.execute(sql.SQL("INSERT INTO {} (user_id) VALUES (5000)").format(sql.Identifier(schema, "tb2")))
            second.commit()
            done.append(True)

        thread = threading.Thread(target=write_second)
        thread.start()
        wait_for_lock_wait(dsn, pid=second.info.backend_pid)  # waiting for the first writer's serving row
        assert not done
        first.commit()
        thread.join(10)
        assert done == [True]
    finally:
        first.close()
        second.close()
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        new = {"user": 5000, "device": "d1"}
        got = store.get_service("svc", new)
        assert got.status["tb1"] == "present" and got.status["tb2"] in ("present", "expired")
        assert_same(store, [new])
