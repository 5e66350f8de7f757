"""Newest wins under concurrency, and materialized services in step: writers of the same keys (two
loads, or a load and live updates) racing for many rounds end with the newest row whatever order they
commit in, the serving rows equal the flexible read after every round, and a load killed mid-COPY
(``pg_terminate_backend`` of its backend) leaves both the table and the serving rows untouched."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.errors import LoadInterruptedError
from pgfeatures.load import LoadProgress, load
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

USER = Entity("user", "bigint", "uid")
KEYS = list(range(300))


@pytest.fixture()
def reg(conn, schema) -> Registry:
    tables = [
        FeatureTable.of("t1", {"a": "real", "w": "integer"}, entity=USER),
        FeatureTable.of("t2", {"b": "double precision"}, entity=USER),
    ]
    registry = Registry.of(
        tables,
        schema,
        services=[FeatureService("svc", ("t1.*", "t2.b"), materialize=True), FeatureService("flex", ("t1.*", "t2.b"))],
    )
    apply_schema(conn, registry)
    load(conn, registry, "t1", rows(KEYS, [10] * len(KEYS), writer=0))
    load(conn, registry, "t2", pa.table({"uid": KEYS[::2], "b": [0.25] * len(KEYS[::2])}))
    materialize(conn, registry, "svc")
    return registry


def rows(keys: list[int], stamps: list[int], writer: int) -> pa.Table:
    return pa.table(
        {
            "uid": pa.array(keys, pa.int64()),
            "a": pa.array([float(s) for s in stamps], pa.float32()),
            "w": pa.array([writer] * len(keys), pa.int32()),
            "updated_at": pa.array(stamps, pa.int64()),
        }
    )


def stored(conn: psycopg.Connection, schema: str) -> dict[int, tuple[Any, ...]]:
    query = sql.SQL("SELECT uid, a, w, extract(epoch FROM updated_at)::int8 FROM {}").format(
        sql.Identifier(schema, "t1")
    )
    return {r[0]: tuple(r[1:]) for r in conn.execute(query).fetchall()}


def assert_served_as_flexible(store: FeatureStore, keys: list[int]) -> None:
    mats, flexes = store.get_service_batch("svc", keys), store.get_service_batch("flex", keys)
    assert mats == flexes and [m.status for m in mats] == [f.status for f in flexes]


def test_racing_writers_end_with_the_newest_row(conn, reg, dsn, schema):
    rng = random.Random(1)
    expected = {k: (10.0, 0, 10) for k in KEYS}
    with (
        FeatureStore(reg, dsn, pool_size=1, write_pool_size=1) as store,
        psycopg.connect(dsn, autocommit=True) as c1,
        psycopg.connect(dsn, autocommit=True) as c2,
    ):
        for round_ in range(24):
            keys = sorted(rng.sample(KEYS, 200) + [10_000 + 30 * round_ + i for i in range(30)])  # new keys race too
            base = 100 + 1000 * round_
            stamps = {
                1: [base + 2 * rng.randrange(400) for _ in keys],
                2: [base + 2 * rng.randrange(400) + 1 for _ in keys],
            }
            kind = ("load", "live", "rebuild")[
                round_ % 3
            ]  # the second writer: a load, live updates, or the first rebuilds
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def first() -> None:
                barrier.wait()
                time.sleep(rng.random() * 0.01)
                load(
                    c1,
                    reg,
                    "t1",
                    rows(keys, stamps[1], 1),
                    strategy="rebuild" if kind == "rebuild" else "upsert",
                    vacuum="never",
                )

            def second() -> None:
                barrier.wait()
                time.sleep(rng.random() * 0.01)
                if kind == "live":
                    for lo in range(0, len(keys), 50):  # several transactions, each in key order
                        store.update_features_batch(
                            "t1",
                            [
                                (k, {"a": float(s), "w": 2, "updated_at": s})
                                for k, s in zip(keys[lo : lo + 50], stamps[2][lo : lo + 50])
                            ],
                        )
                else:
                    load(c2, reg, "t1", rows(keys, stamps[2], 2), strategy="upsert", vacuum="never")

            def run(target: Any) -> None:
                try:
                    target()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(f,)) for f in (first, second)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            for k, s1, s2 in zip(keys, stamps[1], stamps[2]):
                old = expected.get(k, (None, None, -1))[2]
                winner, stamp = (1, s1) if s1 > s2 else (2, s2)
                if stamp >= old:
                    expected[k] = (float(stamp), winner, stamp)
            assert stored(conn, schema) == expected, f"round {round_} ({kind})"
            assert_served_as_flexible(store, sorted(expected) + [-1])


def test_a_load_killed_mid_copy_leaves_table_and_serving_rows_untouched(conn, reg, dsn, schema):
    def table_rows(name: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, name))).fetchall()

    serving = reg.layouts("svc")[0].table_name
    before = {name: table_rows(name) for name in ("t1", serving)}
    assert len(before[serving]) == len(KEYS)

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(400):
            keys = list(range(i * 1000, (i + 1) * 1000))
            yield from rows(keys, [5_000_000] * len(keys), writer=9).to_batches()

    with psycopg.connect(dsn, autocommit=True) as loader:
        pid = loader.info.backend_pid
        killed: list[int] = []

        def progress(p: LoadProgress) -> None:
            if p.phase == "reading" and p.rows >= 20_000 and not killed:
                killed.append(p.rows)
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])

        with pytest.raises(LoadInterruptedError) as caught:
            load(loader, reg, "t1", batches(), progress=progress, strategy="upsert")
    assert killed and caught.value.committed is False
    assert {name: table_rows(name) for name in before} == before
    with FeatureStore(reg, dsn, pool_size=1, write_pool_size=0) as store:
        assert_served_as_flexible(store, KEYS + [399_999])


KEYED = {
    "bigint": (Entity("user", "bigint", "uid"), lambda i: i * 31 - 500),
    "text": (Entity("device", "text", max_length=12), lambda i: f"dev-{i}"),
    "uuid": (Entity("session", "uuid"), lambda i: str(__import__("uuid").UUID(int=i + 1))),
    "hashed": (Entity("merchant", hash="sha256"), lambda i: f"m-{i}"),
}


@pytest.mark.parametrize("strategy", ["upsert", "rebuild", "replace"])
@pytest.mark.parametrize("key_type", list(KEYED))
def test_loads_of_every_key_type_keep_materialized_services_in_step(conn, schema, dsn, key_type, strategy):
    entity, make = KEYED[key_type]
    tables = [
        FeatureTable.of("m1", {"a": "real", "w": "integer"}, entity=entity),
        FeatureTable.of("m2", {"b": "real"}, entity=entity),
    ]
    registry = Registry.of(
        tables,
        schema,
        services=[FeatureService("svc", ("m1.*", "m2.b"), materialize=True), FeatureService("flex", ("m1.*", "m2.b"))],
    )
    apply_schema(conn, registry)

    def data(ids: list[int], stamp: int, with_b: bool = False) -> pa.Table:
        cols: dict[str, Any] = {entity.column: [make(i) for i in ids]}
        if with_b:
            cols["b"] = pa.array([i / 4 for i in ids], pa.float32())
        else:
            cols.update(a=pa.array([i + stamp / 8 for i in ids], pa.float32()), w=pa.array(ids, pa.int32()))
        return pa.table({**cols, "updated_at": pa.array([stamp] * len(ids), pa.int64())})

    load(conn, registry, "m1", data(list(range(0, 200)), 100))
    load(conn, registry, "m2", data(list(range(100, 300)), 100, with_b=True))
    materialize(conn, registry, "svc")
    mode = "replace" if strategy == "replace" else "merge"
    summary = load(
        conn,
        registry,
        "m1",
        data(list(range(150, 400)), 200),
        mode=mode,
        strategy="rebuild" if strategy == "replace" else strategy,
    )
    assert (summary.strategy, summary.inserted, summary.updated) == (
        (strategy, 200, 50) if mode == "merge" else (strategy, 250, 0)
    )
    if strategy == "rebuild":
        assert "materialized services: serving rows recomputed for the staged keys" in summary.notes
    elif strategy == "replace":
        assert "materialized services: the table's slice of every serving row recomputed" in summary.notes
    requests = [make(i) for i in range(0, 420, 7)]
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=0) as store:
        mats, flexes = store.get_service_batch("svc", requests), store.get_service_batch("flex", requests)
        assert mats == flexes and [m.status for m in mats] == [f.status for f in flexes]
        present = [m.status["m1"] for m in mats]
        assert present.count("present") == len(
            [i for i in range(0, 420, 7) if (i < 400 if mode == "merge" else 150 <= i < 400)]
        )
