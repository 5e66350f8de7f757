"""Every read strategy returns exactly the rows written, for any subset of tables and features."""

from __future__ import annotations

import asyncio
import random

import pytest

from groundtruth import GroundTruth, build
from pgfeatures import AsyncFeatureStore, FeatureStore, Strategy

STRATEGIES = [s.value for s in Strategy]


@pytest.fixture()
def truth(conn, schema) -> GroundTruth:
    return build(conn, schema)


@pytest.fixture()
def store(truth, dsn):
    with FeatureStore(truth.registry, dsn, pool_size=2, write_pool_size=1) as s:
        yield s


def random_selection(rng: random.Random, truth: GroundTruth) -> dict[str, list[str]]:
    names = list(truth.registry.tables)
    chosen = rng.sample(names, rng.randint(1, len(names)))
    selection = {}
    for name in chosen:
        readable = list(truth.registry.tables[name].readable_names)
        selection[name] = rng.sample(readable, rng.randint(1, len(readable)))
    return selection


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_tables_all_features_every_key(store, truth, strategy):
    selection = {name: list(t.feature_names) for name, t in truth.registry.tables.items()}
    for key in truth.keys + [truth.absent]:
        assert store.get_features(key, strategy=strategy) == truth.expected(key, selection)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_subsets_match_ground_truth(store, truth, strategy):
    rng = random.Random(f"subsets-{strategy}")
    for _ in range(60):
        selection = random_selection(rng, truth)
        key = rng.choice(truth.keys + [truth.absent])
        got = store.get_features(key, list(selection), selection, strategy=strategy)
        assert got == truth.expected(key, selection)
        assert list(got) == list(selection)  # tables come back in the order asked
        for table, features in selection.items():
            if got[table] is not None:
                assert list(got[table]) == features  # features too


def test_values_keep_their_python_types(store, truth):
    for key in truth.keys[:40]:
        got = store.get_features(key)
        for name, table in truth.registry.tables.items():
            if got[name] is None:
                continue
            for f in table.features:
                value = got[name][f.name]
                if value is not None:
                    assert type(value) is f.type.python, (name, f.name, value)


def test_nulls_are_returned_as_none(store, truth):
    nulls = [
        (t, k, f) for t, rows in truth.rows.items() for k, row in rows.items() for f, v in row.items() if v is None
    ]
    assert nulls, "ground truth should contain NULLs"
    for table, key, feature in nulls[:30]:
        for strategy in ("single", "pipeline", "join"):
            got = store.get_features(key, [table], {table: [feature]}, strategy=strategy)
            assert got == {table: {feature: None}}


def test_missing_key_marks_each_table_none(store, truth):
    for strategy in STRATEGIES:
        got = store.get_features(truth.absent, strategy=strategy)
        assert got == dict.fromkeys(truth.registry.tables)


def test_hex_and_bytes_keys_agree(store, truth):
    key = truth.keys[3]
    assert store.get_features(key.hex()) == store.get_features(key)
    assert store.get_features(key.hex().upper()) == store.get_features(bytearray(key))


def test_batch_order_duplicates_and_misses(store, truth):
    rng = random.Random(5)
    keys = [rng.choice(truth.keys) for _ in range(50)] + [truth.absent, truth.keys[0], truth.keys[0]]
    rng.shuffle(keys)
    selection = random_selection(rng, truth)
    got = store.get_features_batch(keys, list(selection), selection)
    assert len(got) == len(keys)
    for key, result in zip(keys, got):
        assert result == truth.expected(key, selection)


def test_batch_all_tables(store, truth):
    full = {name: list(t.feature_names) for name, t in truth.registry.tables.items()}
    got = store.get_features_batch(truth.keys)
    assert got == [truth.expected(k, full) for k in truth.keys]
    assert store.get_features_batch([]) == []


def test_compiled_reader_is_reused(store, truth):
    r1 = store.reader(["tbl_1", "tbl_2"])
    assert store.reader(["tbl_1", "tbl_2"]) is r1
    assert store.reader(("tbl_1", "tbl_2")) is r1  # a tuple is the same request shape as the list
    assert store.reader(["tbl_1", "tbl_2"], strategy="single") is r1  # the store's default, named
    assert store.reader(["tbl_2", "tbl_1"]) is not r1  # another order is another result: compiled apart
    assert store.reader(["tbl_1", "tbl_2"], strategy="pipeline") is not r1
    # a read of that shape uses the cached reader: nothing is compiled or cached anew
    cached = len(store.readers)
    key = truth.keys[0]
    assert store.get_features(key, ("tbl_1", "tbl_2")) == store.read(r1, key)
    assert store.reader(["tbl_1", "tbl_2"]) is r1 and len(store.readers) == cached


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_async_store_matches_ground_truth(truth, dsn, strategy):
    rng = random.Random(f"async-{strategy}")

    async def run():
        async with AsyncFeatureStore(truth.registry, dsn, pool_size=2, write_pool_size=1) as store:
            assert store.ready
            for _ in range(25):
                selection = random_selection(rng, truth)
                key = rng.choice(truth.keys + [truth.absent])
                got = await store.get_features(key, list(selection), selection, strategy=strategy)
                assert got == truth.expected(key, selection)
            keys = [rng.choice(truth.keys) for _ in range(20)] + [truth.absent]
            full = {name: list(t.feature_names) for name, t in truth.registry.tables.items()}
            assert await store.get_features_batch(keys) == [truth.expected(k, full) for k in keys]
            # concurrent requests share the pool and still get their own rows
            results = await asyncio.gather(*(store.get_features(k) for k in truth.keys[:30]))
            assert results == [truth.expected(k, full) for k in truth.keys[:30]]

    asyncio.run(run())


def test_union_strategy_on_float_tables(conn, schema, dsn):
    truth = build(conn, schema, float_only=True)
    full = {name: list(t.feature_names) for name, t in truth.registry.tables.items()}
    with FeatureStore(truth.registry, dsn, pool_size=1, strategy="union") as store:
        for key in truth.keys[:40] + [truth.absent]:
            assert store.get_features(key) == truth.expected(key, full)
