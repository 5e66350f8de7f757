"""Randomized: definition changes, applies (rebuilds), loads, live updates, dropped and re-created tables and
reloads, interleaved at random, with two long-lived stores reading the service under whatever definitions
they were last given. Every answer is compared with the tables read directly at that moment: a value is
the stored one (or missing), or the read fails with a typed error; never another feature's value.

A second phase runs readers concurrently with the changes; there the tables move under the readers, so
each value is checked by what it encodes (``key * 1000 + table * 100 + feature`` plus a version in the
millions): the right key, table and feature, whatever the version.
"""

from __future__ import annotations

import random
import threading

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.errors import PgFeaturesError, SchemaDriftError
from pgfeatures.evolve.apply import apply
from pgfeatures.load import load

USER = Entity("user", "bigint")
TABLES = ("t0", "t1", "t2")
FEATURES = ("f0", "f1", "f2", "f3")
KEYS = list(range(1, 41))


def encoded(version: int, key: int, table: int, feature: int) -> int:
    return version * 1_000_000 + key * 1000 + table * 100 + feature


def decodes_to(value: int, key: int, table: int, feature: int) -> bool:
    return value % 1_000_000 == key * 1000 + table * 100 + feature


def random_registry(schema: str, rng: random.Random) -> Registry:
    """Each table keeps f1 (so tables always have a feature) plus a random subset of the others, in a
    random order; the service reads a random subset of tables and features, materialized or not."""
    tables = []
    for name in TABLES:
        features = ["f1", *[f for f in FEATURES if f != "f1" and rng.random() < 0.5]]
        rng.shuffle(features)
        tables.append(FeatureTable.of(name, {f: "integer" for f in features}, entity=USER))
    chosen = rng.sample(tables, rng.randint(1, len(tables)))
    refs = []
    for t in chosen:
        if rng.random() < 0.5:
            refs.append(f"{t.name}.*")
        else:
            refs += [f"{t.name}.{f.name}" for f in rng.sample(list(t.features), rng.randint(1, len(t.features)))]
    return Registry.of(tables, schema, services=[FeatureService("s", tuple(refs), materialize=rng.random() < 0.6)])


def truth(
    conn: psycopg.Connection, schema: str, registry: Registry, key: int
) -> dict[str, dict[str, int | None] | None] | None:
    """What the tables hold for the service of ``registry`` (None: some table or column it reads is gone)."""
    out: dict[str, dict[str, int | None] | None] = {}
    for table, features in registry.service("s").resolve(registry):
        try:
            with conn.transaction():
                row = conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE user_id = %s").format(
                        sql.SQL(", ").join(sql.Identifier(f.name) for f in features), sql.Identifier(schema, table.name)
                    ),
                    [key],
                ).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            return None
        out[table.name] = None if row is None else dict(zip((f.name for f in features), row))
    return out


def check(store: FeatureStore, conn: psycopg.Connection, schema: str, key: int) -> str:
    registry = store.registry
    expected = truth(conn, schema, registry, key)
    try:
        got = store.get_service("s", key)
    except SchemaDriftError:  # a typed error is a right answer (a table re-created is re-checked within a second)
        return "drift"
    assert expected is not None, f"read {dict(got)} where a table or column of its definition is gone"
    assert dict(got) == expected, (dict(got), expected, registry.fingerprint)
    assert got.status == {t: "missing" if v is None else "present" for t, v in expected.items()}
    return "materialized" if store.readers.service_reader("s", None, "single").materialized else "tables"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_interleavings_never_give_a_wrong_value(conn, schema, dsn, seed):
    rng = random.Random(seed)
    version = 0
    current = random_registry(schema, rng)
    apply(conn, current, allow_destructive=True)
    seen: dict[str, int] = {}
    with (
        FeatureStore(current, dsn, pool_size=1, write_pool_size=1, on_drift="isolate") as a,
        FeatureStore(current, dsn, pool_size=1, write_pool_size=0, on_drift="isolate") as b,
    ):
        history = [current]
        for _ in range(40):
            op = rng.choice(["define", "define", "load", "load", "update", "drop", "reload", "reload", "rebuild"])
            if op == "define":  # a new definition applied (destructive at times: columns dropped)
                current = random_registry(schema, rng)
                history.append(current)
                try:
                    apply(conn, current, allow_destructive=rng.random() < 0.3)
                except PgFeaturesError:
                    current = history[-2]  # refused (a column another layout reads): nothing changed
            elif op == "load":
                version += 1
                table = rng.choice(list(current.tables.values()))
                no = TABLES.index(table.name)
                keys = rng.sample(KEYS, 15)
                data = {"user_id": pa.array(keys, pa.int64())}
                for f in table.features:
                    data[f.name] = pa.array([encoded(version, k, no, FEATURES.index(f.name)) for k in keys], pa.int32())
                try:
                    load(
                        conn,
                        current,
                        table.name,
                        pa.table(data),
                        mode=rng.choice(["merge", "replace"]),
                        strategy=rng.choice(["auto", "upsert", "rebuild"]),
                    )
                except PgFeaturesError:
                    pass  # the live table drifted from ``current`` (a column gone): refused, nothing loaded
            elif op == "update":
                version += 1
                table = rng.choice(list(current.tables.values()))
                no = TABLES.index(table.name)
                rows = [
                    (k, {f.name: encoded(version, k, no, FEATURES.index(f.name)) for f in table.features})
                    for k in rng.sample(KEYS, 5)
                ]
                try:
                    a.reload(current)
                    a.update_features_batch(table.name, rows)
                except PgFeaturesError:
                    pass
            elif op == "drop":  # a table dropped by hand (CASCADE takes guard views), re-created by the next apply
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(schema, rng.choice(TABLES)))
                )
                if rng.random() < 0.7:
                    apply(conn, current)
            elif op == "rebuild":
                apply(conn, current, allow_destructive=True)
            else:
                store = rng.choice([a, b])
                try:
                    store.reload(rng.choice(history[-3:]))
                except PgFeaturesError:
                    pass  # a definition that no longer matches: the store keeps the one it had
            for store in (a, b):
                for key in rng.sample(KEYS, 4):
                    way = check(store, conn, schema, key)
                    seen[way] = seen.get(way, 0) + 1
    assert seen.get("materialized", 0) > 10 and seen.get("tables", 0) > 10 and sum(seen.values()) == 320, seen


@pytest.mark.slow
def test_readers_running_through_random_changes_only_see_values_that_belong(conn, schema, dsn):
    rng = random.Random(7)
    current = random_registry(schema, rng)
    apply(conn, current, allow_destructive=True)
    stop = threading.Event()
    wrong: list[str] = []
    reads = {"ok": 0, "error": 0}

    def reader(registry: Registry) -> None:
        with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0, on_drift="isolate") as store:
            local = random.Random(id(store))
            while not stop.is_set():
                key = local.choice(KEYS)
                try:
                    got = store.get_service("s", key)
                except PgFeaturesError:
                    reads["error"] += 1
                    continue
                reads["ok"] += 1
                for table, values in got.items():
                    for feature, value in (values or {}).items():
                        if value is not None and not decodes_to(
                            value, key, TABLES.index(table), FEATURES.index(feature)
                        ):
                            wrong.append(f"{table}.{feature} of {key}: {value}")
                if local.random() < 0.05:
                    try:
                        store.reload(current)
                    except PgFeaturesError:
                        pass

    threads = [threading.Thread(target=reader, args=(current,)) for _ in range(2)]
    for t in threads:
        t.start()
    version = 0
    try:
        for _ in range(25):
            version += 1
            current = random_registry(schema, rng)
            try:
                apply(conn, current, allow_destructive=True)
            except PgFeaturesError:
                continue
            for table in current.tables.values():
                no = TABLES.index(table.name)
                keys = rng.sample(KEYS, 20)
                data = {"user_id": pa.array(keys, pa.int64())}
                for f in table.features:
                    data[f.name] = pa.array([encoded(version, k, no, FEATURES.index(f.name)) for k in keys], pa.int32())
                load(conn, current, table.name, pa.table(data), strategy=rng.choice(["upsert", "rebuild"]))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not wrong, wrong[:5]
    assert reads["ok"] > 50, reads
