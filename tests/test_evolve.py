"""Definitions that change under running readers: no reader ever decodes a layout it was not compiled for.

Every value the tests write encodes where it belongs (``key * 1000 + table * 100 + feature``), so a
value decoded from another feature's position is caught whatever the interleaving.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgfeatures import FeatureStore
from pgfeatures.definitions import Entity, FeatureService, FeatureTable, Registry
from pgfeatures.materialize.build import materialize
from pgfeatures.schema import apply_schema

USER = Entity("user", "bigint")


def value(key: int, table: int, feature: int) -> int:
    return key * 1000 + table * 100 + feature


def registry_of(schema: str, features: dict[str, list[str]], services: dict[str, list[str]]) -> Registry:
    tables = [FeatureTable.of(name, {f: "integer" for f in names}, entity=USER) for name, names in features.items()]
    return Registry.of(tables, schema, services=[FeatureService(n, tuple(refs), materialize=True)
                                                 for n, refs in services.items()])


def fill(conn: psycopg.Connection, schema: str, table: str, table_no: int, columns: list[str], keys: range) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in ["user_id", *columns])
    for k in keys:
        conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (user_id) DO UPDATE SET {}").format(
            sql.Identifier(schema, table), cols, sql.SQL(", ").join(sql.Literal(v) for v in
                                                                    [k, *(value(k, table_no, int(c[1:])) for c in columns)]),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns)))


def check_answer(result, key: int, tables: dict[str, int]) -> None:
    """Every present value is the one the tables hold for this key, table and feature."""
    for table, values in result.items():
        if result.status[table] != "present":
            continue
        for name, v in values.items():
            assert v is None or v == value(key, tables[table], int(name[1:])), (table, name, v, key)


def test_a_reader_of_the_old_definition_never_decodes_the_new_layout(conn, schema, dsn):
    """The issue's first report: add a feature to a table of a materialized service, ALTER, rebuild:
    a store opened before the rebuild must not decode the new serving rows with the old positions."""
    old = registry_of(schema, {"t": ["f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
    apply_schema(conn, old)
    fill(conn, schema, "t", 1, ["f1", "f2"], range(1, 20))
    fill(conn, schema, "u", 2, ["f1"], range(1, 20))
    materialize(conn, old, "s")
    tables = {"t": 1, "u": 2}
    with FeatureStore(old, dsn, pool_size=1, write_pool_size=0) as reader:
        assert reader.readers.service_reader("s", None, "single").materialized
        check_answer(reader.get_service("s", 5), 5, tables)
        new = registry_of(schema, {"t": ["f0", "f1", "f2"], "u": ["f1"]}, {"s": ["t.*", "u.*"]})
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN f0 integer").format(sql.Identifier(schema, "t")))
        fill(conn, schema, "t", 1, ["f0", "f1", "f2"], range(1, 20))
        materialize(conn, new, "s")
        for key in range(1, 20):
            check_answer(reader.get_service("s", key), key, tables)
            vector = reader.get_service("s", key, output="list")
            assert vector.values == [value(key, 1, 1), value(key, 1, 2), value(key, 2, 1)]
