"""init is idempotent and reports drift instead of ignoring it."""

from __future__ import annotations

import pytest
from psycopg import sql

from pgfeatures.cli import main
from pgfeatures.definitions import FeatureTable, Registry
from pgfeatures.errors import SchemaDriftError
from pgfeatures.schema import apply_schema, drift


def registry(schema: str) -> Registry:
    return Registry.of(
        [
            FeatureTable.of("a", {"x": "real", "n": "integer"}, covering_index=True),
            FeatureTable.of("b", {"y": "bigint"}),
        ],
        schema=schema,
    )


def catalog_snapshot(conn, schema):
    return conn.execute(
        "SELECT c.relname, c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s ORDER BY 1",
        [schema],
    ).fetchall()


def test_init_twice_changes_nothing(conn, schema):
    reg = registry(schema)
    first = apply_schema(conn, reg)
    assert first.created == ["a", "b"] and first.ok
    before = catalog_snapshot(conn, schema)
    assert {r[0] for r in before} >= {"a", "b", "a_pkey", "b_pkey", "a_covering"}
    second = apply_schema(conn, reg)
    assert second.created == [] and second.existing == ["a", "b"]
    assert catalog_snapshot(conn, schema) == before


def test_key_length_is_enforced_by_the_table(conn, schema):
    apply_schema(conn, registry(schema))
    with pytest.raises(Exception, match="check constraint"):
        conn.execute(
            sql.SQL("INSERT INTO {} (hashkey, y) VALUES (%s, 1)").format(sql.Identifier(schema, "b")), [b"short"]
        )


def test_drift_is_reported(conn, schema):
    reg = registry(schema)
    apply_schema(conn, reg)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra text").format(sql.Identifier(schema, "a")))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN y TYPE integer").format(sql.Identifier(schema, "b")))
    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "a_covering")))
    problems = drift(conn, schema, reg.table("a"))
    assert "column extra (text) is not in the definition" in problems
    assert "covering index a_covering is missing" in problems
    assert drift(conn, schema, reg.table("b")) == ["column y is integer, definition says bigint"]
    with pytest.raises(SchemaDriftError, match="DRIFT b: column y is integer"):
        apply_schema(conn, reg)


def test_cli_init_reports_drift_with_exit_code(conn, schema, dsn, tmp_path, capsys):
    defs = tmp_path / "defs.toml"
    defs.write_text(f'schema = "{schema}"\n[tables.a.features]\nx = "real"\n')
    assert main(["init", "--dsn", dsn, "-d", str(defs)]) == 0
    assert "created: a" in capsys.readouterr().out
    assert main(["init", "--dsn", dsn, "-d", str(defs)]) == 0
    assert "unchanged: a" in capsys.readouterr().out
    defs.write_text(f'schema = "{schema}"\n[tables.a.features]\nx = "double"\n')
    assert main(["init", "--dsn", dsn, "-d", str(defs)]) == 2
    out = capsys.readouterr().out
    assert "column x is real, definition says double precision" in out and "schema drift" in out
