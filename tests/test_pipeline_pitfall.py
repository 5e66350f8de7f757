"""The widely copied pipeline pattern is wrong; ours is right. Keep this test so nobody reintroduces it.

Executing several statements on ONE cursor inside ``conn.pipeline()`` and then
calling ``fetchone()`` once per statement does not return one row per
statement: the cursor keeps only the last statement's result, so the caller
gets the last table's row once and then None, with no error.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.schema import apply_schema

KEY = bytes(range(32))


@pytest.fixture()
def five_tables(conn, schema):
    registry = Registry.of([FeatureTable.of(f"p{i}", {"v": "integer"}) for i in range(5)], schema=schema)
    apply_schema(conn, registry)
    for i in range(5):
        conn.execute(
            sql.SQL("INSERT INTO {} (hashkey, v) VALUES (%s, %s)").format(sql.Identifier(schema, f"p{i}")), [KEY, i]
        )
    return registry


def test_single_cursor_pipeline_silently_loses_rows(five_tables, dsn, schema):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        with conn.pipeline():
            for i in range(5):
                cur.execute(
                    sql.SQL("SELECT v FROM {} WHERE hashkey = %s").format(sql.Identifier(schema, f"p{i}")), [KEY]
                )
        fetched = [cur.fetchone() for _ in range(5)]
    # the last table's row once, then None: four tables silently lost
    assert fetched == [(4,), None, None, None, None]


def test_cursor_per_statement_pipeline_returns_every_row(five_tables, dsn, schema):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursors = [conn.cursor() for _ in range(5)]
        with conn.pipeline():
            for i, cur in enumerate(cursors):
                cur.execute(
                    sql.SQL("SELECT v FROM {} WHERE hashkey = %s").format(sql.Identifier(schema, f"p{i}")), [KEY]
                )
        assert [cur.fetchone() for cur in cursors] == [(i,) for i in range(5)]


def test_store_pipeline_strategy_returns_every_table(five_tables, dsn):
    with FeatureStore(five_tables, dsn, pool_size=1, strategy="pipeline") as store:
        assert store.get_features(KEY) == {f"p{i}": {"v": i} for i in range(5)}
