"""DDL for feature tables and drift detection against the live catalog.

``apply_schema`` is idempotent: it creates what is missing and changes
nothing that exists. A live table that disagrees with its definition (a
missing, extra or retyped column, no primary key, a missing covering index)
is reported as drift, never silently altered or ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .definitions import EVENT_TIME, KEY_LENGTH, UPDATED_AT, Feature, FeatureTable, Registry
from .definitions.names import derived
from .errors import ExtensionMissingError, SchemaDriftError

LEGACY_EVENT_TIME = "integer"  # updated_at as older versions made it: epoch seconds, up to 2038


def qualified(registry_or_schema: Registry | str, table: FeatureTable | str) -> sql.Identifier:
    schema = registry_or_schema.schema if isinstance(registry_or_schema, Registry) else registry_or_schema
    name = table.name if isinstance(table, FeatureTable) else table
    return sql.Identifier(schema, name)


def covering_index_name(table: FeatureTable | str) -> str:
    """The covering index of a table (or of a table of that name: a swap's new table)."""
    return derived(table if isinstance(table, str) else table.name, "_covering")


def freshness_index_name(table: FeatureTable | str) -> str:
    """``<table>_updated_at``; a name that would pass 63 bytes is shortened with a hash (never truncated
    into the table's own name)."""
    return derived(table.name if isinstance(table, FeatureTable) else table, "_updated_at")


def freshness_index_sql(schema: str, table: FeatureTable | str, concurrently: bool = False) -> sql.Composed:
    """The index on ``updated_at`` every table pgfeatures creates has: the age of the newest row
    (``pgfeatures tables``, ``GET /v1/tables``, every ``/metrics`` scrape) is one probe of its end,
    never a scan of the table, and ``pgfeatures expire`` deletes the oldest rows in its order. It
    costs writers: an update that changes ``updated_at`` cannot be HOT (docs/doctor.md has the
    figures). ``concurrently``: for a live table (outside a transaction)."""
    return sql.SQL("CREATE INDEX {}IF NOT EXISTS {} ON {} ({})").format(
        sql.SQL("CONCURRENTLY " if concurrently else ""),
        sql.Identifier(freshness_index_name(table)),
        qualified(schema, table),
        sql.Identifier(UPDATED_AT),
    )


_OPCLASS = {"cosine": "cosine", "l2": "l2", "ip": "ip"}
PGVECTOR_HELP = (
    "install pgvector on the server (Debian/Ubuntu: apt install postgresql-<version>-pgvector; managed "
    'services: enable the `vector` extension), or declare the embedding with storage = "array" and no '
    "index (a real[], searched exactly)"
)


def vector_index_name(table: FeatureTable | str, feature: Feature | str, metric: str | None = None) -> str:
    """The nearest-neighbour index of an embedding feature: ``<table>_<feature>_hnsw_<metric>`` (hashed past 63
    bytes). The metric is in the name because it is in the index (its operator class): a changed metric is
    a missing index, which ``plan`` shows and ``apply`` builds, never an index of another metric taken as it."""
    if isinstance(feature, Feature):
        name, metric = feature.name, feature.type.metric or "l2"
    else:
        name, metric = feature, metric or "l2"
    return derived(table.name if isinstance(table, FeatureTable) else table, f"_{name}_hnsw_{metric}")


def vector_index_sql(schema: str, table: FeatureTable, feature: Feature, name: str | None = None) -> sql.Composed:
    """The HNSW index of an embedding feature declared with ``index = "hnsw"`` (its metric's operator class)."""
    kind = "halfvec" if feature.type.storage == "halfvec" else "vector"
    opclass = f"{kind}_{_OPCLASS[feature.type.metric or 'l2']}_ops"
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw ({} {})").format(
        sql.Identifier(vector_index_name(name or table.name, feature)),
        qualified(schema, name or table.name),
        sql.Identifier(feature.name),
        sql.SQL(opclass),
    )


def needs_vector(table: FeatureTable) -> list[str]:
    """The features of ``table`` whose column or index needs pgvector."""
    return [f.name for f in table.features if f.type.needs_vector]


def vector_available(conn: psycopg.Connection) -> bool:
    """Whether pgvector can be used in this database: installed, or installable here (then created,
    ``CREATE EXTENSION IF NOT EXISTS vector``; a role that may not create it leaves it uninstalled)."""
    row = conn.execute(
        "SELECT (SELECT true FROM pg_extension WHERE extname = 'vector'), "
        "(SELECT true FROM pg_available_extensions WHERE name = 'vector')"
    ).fetchone()
    if row and row[0]:
        return True
    if not row or not row[1]:
        return False
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error:
        return False
    return True


def check_vector(table: FeatureTable, has_vector: bool) -> None:
    """Raises ExtensionMissingError when ``table`` needs pgvector and the server has none."""
    wanting = needs_vector(table)
    if wanting and not has_vector:
        raise ExtensionMissingError(
            f"table {table.name!r}: {', '.join(wanting)} need(s) the pgvector extension, which this server "
            f"does not have: {PGVECTOR_HELP}"
        )


def table_ddl(schema: str, table: FeatureTable, has_vector: bool = True) -> list[sql.Composed]:
    """Every statement creating ``table`` as pgfeatures makes it: the table, its covering index (when
    asked for) and its index on ``updated_at``."""
    out = [create_table_sql(schema, table, has_vector)]
    if table.covering_index:
        out.append(covering_index_sql(schema, table))
    out.append(freshness_index_sql(schema, table))
    out.extend(vector_index_sql(schema, table, f) for f in table.features if f.type.index is not None)
    return out


def key_column_sql(table: FeatureTable) -> sql.Composed:
    """The key column's definition: its entity's type, primary key, and the bound its keys must keep."""
    entity, key = table.entity, sql.Identifier(table.key_column)
    check: sql.Composable
    if entity.key_type == "bytea32":
        check = sql.SQL(" CHECK (octet_length({}) = {})").format(key, sql.Literal(KEY_LENGTH))
    elif entity.key_type == "text":
        check = sql.SQL(" CHECK (char_length({}) BETWEEN 1 AND {})").format(key, sql.Literal(entity.max_length))
    else:
        check = sql.SQL("")
    return sql.SQL("{} {} PRIMARY KEY{}").format(key, sql.SQL(entity.column_type), check)


def column_definitions(table: FeatureTable, has_vector: bool = True) -> dict[str, sql.Composed]:
    """Each column of the table as ``CREATE TABLE`` declares it (name, type, constraints, default),
    by column name: the key, the features, ``updated_at``. ``has_vector``: an ``auto`` embedding is a
    pgvector ``vector``, else a ``real[]``."""
    return {
        table.key_column: key_column_sql(table),
        **{
            f.name: sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(f.type.storage_name(has_vector)))
            for f in table.features
        },
        UPDATED_AT: sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(sql.Identifier(UPDATED_AT)),
    }


def event_time_micros_sql(expr: sql.Composable) -> sql.Composed:
    """``expr`` (a timestamptz) as int8 epoch microseconds: how event time travels to readers and
    into the ``ts`` entries of serving rows. Exact (``extract`` is numeric); a row's ``updated_at``
    of ``infinity`` has no such number and fails the statement (pgfeatures never writes one)."""
    return sql.SQL("(extract(epoch FROM {}) * 1000000)::int8").format(expr)


def migrate_event_time_sql(schema: str, table: FeatureTable | str) -> list[sql.Composed]:
    """The statements that turn a legacy ``updated_at integer`` (epoch seconds, as versions before
    event time made it) into ``timestamptz``, values kept (``to_timestamp``), default ``now()``.

    One ``ALTER TABLE``: it rewrites the table (and rebuilds its indexes) under an ACCESS EXCLUSIVE
    lock, so readers and writers of the table wait for it; then the index on ``updated_at`` tables
    made now have (``freshness_index_sql``), built in the same transaction. Maintenance triggers of materialized
    services made before it still compute ``ts`` in seconds: rebuild those services afterwards
    (``pgfeatures materialize``; their layouts are stale anyway, see ``layout.LAYOUT_VERSION``)."""
    col = sql.Identifier(UPDATED_AT)
    return [
        sql.SQL(
            "ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT, ALTER COLUMN {} TYPE timestamptz USING "
            "to_timestamp({}), ALTER COLUMN {} SET DEFAULT now()"
        ).format(qualified(schema, table), col, col, col, col),
        freshness_index_sql(schema, table),
    ]


def create_table_sql(schema: str, table: FeatureTable, has_vector: bool = True) -> sql.Composed:
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        qualified(schema, table), sql.SQL(", ").join(column_definitions(table, has_vector).values())
    )


def covering_index_sql(schema: str, table: FeatureTable, name: str | None = None) -> sql.Composed:
    """A unique index on the key that INCLUDEs every column: lookups become index-only scans
    (once VACUUM has set the visibility map). ``name``: the table's name if not its definition's."""
    included = [sql.Identifier(f.name) for f in table.features] + [sql.Identifier(UPDATED_AT)]
    return sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({}) INCLUDE ({})").format(
        sql.Identifier(covering_index_name(name or table.name)),
        qualified(schema, name or table.name),
        sql.Identifier(table.key_column),
        sql.SQL(", ").join(included),
    )


# Advisory lock space of pgfeatures' DDL ("pgfd"); the second key is a hash of the schema or table.
DDL_LOCK_SPACE = 0x70676664


def ddl_lock(schema: str, table: str | None = None) -> tuple[sql.Composed, tuple[int]]:
    """The statement (and its parameters) taking pgfeatures' transaction-level advisory lock for
    creating ``schema`` (``table`` None) or one table of it.

    Concurrent ``CREATE SCHEMA/TABLE IF NOT EXISTS`` race in PostgreSQL: the second creator
    waits on the first one's uncommitted catalog row, then fails with a unique violation
    (``pg_namespace_nspname_index``, ``pg_type_typname_nsp_index``) instead of finding the object.
    Everything in pgfeatures that creates (or swaps) a feature table or its schema takes these
    locks first, in the order schema then table, and holds them to COMMIT: the second creator
    then waits for the first one's COMMIT and finds the object. A hash collision only makes two
    unrelated creators wait for each other.
    """
    digest = hashlib.sha256(f"{schema}\0{'' if table is None else table}".encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    return sql.SQL("SELECT pg_advisory_xact_lock({}::integer, %s::integer)").format(sql.Literal(DDL_LOCK_SPACE)), (key,)


def ddl(registry: Registry) -> list[sql.Composed]:
    """Every statement ``apply_schema`` may run, in order."""
    statements = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(registry.schema))]
    for table in registry.tables.values():
        statements += table_ddl(registry.schema, table)
    return statements


@dataclass
class SchemaReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.drift

    def describe(self) -> str:
        lines = []
        if self.created:
            lines.append(f"created: {', '.join(self.created)}")
        if self.existing:
            lines.append(f"unchanged: {', '.join(self.existing)}")
        for table, problems in self.drift.items():
            lines.extend(f"DRIFT {table}: {p}" for p in problems)
        return "\n".join(lines)


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY = """
SELECT array_agg(a.attname::text)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
"""

_INDEXES = """
SELECT array_agg(ic.relname::text)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
"""


def table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    name = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def expected_columns(table: FeatureTable) -> dict[str, str]:
    """Column name -> type (as ``format_type`` spells it) of the table ``create_table_sql`` makes."""
    return {
        table.key_column: table.entity.live_type,
        **{f.name: f.type.name for f in table.features},
        UPDATED_AT: EVENT_TIME.name,
    }


def compare(
    table: FeatureTable, columns: Mapping[str, str], primary_key: Sequence[str] | None, indexes: Collection[str]
) -> tuple[list[str], list[str]]:
    """How a live table differs from its definition, from what the catalog says about it (pure):
    (what breaks reads: a missing column, another type; what only costs: an extra column, no
    primary key, no covering index)."""
    expected = expected_columns(table)
    accepted = {f.name: f.type.sql_names() for f in table.features}
    breaking, other = [], []
    for col, typ in expected.items():
        if col not in columns:
            breaking.append(f"column {col} ({typ}) is missing")
        elif col == UPDATED_AT and columns[col] == LEGACY_EVENT_TIME:
            breaking.append(
                f"legacy event time: column {col} is {LEGACY_EVENT_TIME} epoch seconds (as versions before "
                f"timestamptz event time made it), definition says {typ}"
            )
        elif columns[col] not in accepted.get(col, (typ,)):
            breaking.append(f"column {col} is {columns[col]}, definition says {typ}")
    other += [f"column {col} ({typ}) is not in the definition" for col, typ in columns.items() if col not in expected]
    if list(primary_key or []) != [table.key_column]:
        other.append(
            f"primary key is {list(primary_key) if primary_key else 'missing'}, definition says ({table.key_column})"
        )
    if table.covering_index and covering_index_name(table) not in indexes:
        other.append(f"covering index {covering_index_name(table)} is missing")
    for f in table.features:
        if f.type.index is not None and vector_index_name(table, f) not in indexes:
            other.append(f"{f.type.index} index {vector_index_name(table, f)} of {f.name} is missing")
    return breaking, other


def drift_problems(
    table: FeatureTable, columns: Mapping[str, str], primary_key: Sequence[str] | None, indexes: Collection[str]
) -> list[str]:
    """How a live table differs from its definition (pure): every problem ``compare`` finds.

    ``columns``: name -> ``format_type`` in column order; ``primary_key``: its columns (None or
    empty: no primary key); ``indexes``: names of the table's other indexes. The one comparison
    behind ``drift``, the loader's check before a load and the stores' check at open.
    """
    breaking, other = compare(table, columns, primary_key, indexes)
    return breaking + other


def drift(conn: psycopg.Connection, schema: str, table: FeatureTable) -> list[str]:
    """How the live table differs from its definition (empty when it matches)."""
    name = qualified(schema, table).as_string(conn)
    live: dict[str, str] = dict(conn.execute(_COLUMNS, [name]).fetchall())
    pk_row, index_row = conn.execute(_PRIMARY_KEY, [name]).fetchone(), conn.execute(_INDEXES, [name]).fetchone()
    pk = pk_row[0] if pk_row else None
    indexes = (index_row[0] if index_row else None) or []
    return drift_problems(table, live, pk, indexes)


def apply_schema(conn: psycopg.Connection, registry: Registry, *, raise_on_drift: bool = True) -> SchemaReport:
    """Create the schema and any missing tables in one transaction; report drift of existing ones.

    Raises SchemaDriftError (after committing what was created) when an existing
    table disagrees with its definition and ``raise_on_drift`` is true. Safe to run concurrently
    with another ``apply_schema`` or a first load (see ``ddl_lock``): it waits for them.
    """
    report = SchemaReport()
    has_vector = any(f.type.kind == "embedding" for t in registry.tables.values() for f in t.features) and (
        vector_available(conn)
    )
    with conn.transaction():
        conn.execute(*ddl_lock(registry.schema))  # held to COMMIT: see ddl_lock
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(registry.schema)))
        for table in registry.tables.values():
            conn.execute(*ddl_lock(registry.schema, table.name))  # a first load may be creating it
            if table_exists(conn, registry.schema, table.name):
                problems = drift(conn, registry.schema, table)
                if problems:
                    report.drift[table.name] = problems
                else:
                    report.existing.append(table.name)
                continue
            check_vector(table, has_vector)
            for statement in table_ddl(registry.schema, table, has_vector):
                conn.execute(statement)
            report.created.append(table.name)
    if report.drift and raise_on_drift:
        raise SchemaDriftError(report.describe())
    return report


def drop_tables(conn: psycopg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Drop feature tables of ``schema`` that exist (and what depends on them), each under its DDL lock
    (see ``ddl_lock``). Runs in the caller's transaction, if any."""
    for name in tables:
        conn.execute(*ddl_lock(schema, name))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(qualified(schema, name)))


def drop_schema(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- the live catalog, read in one statement, compared in pure code (the stores' open and re-checks) --

CATALOG_QUERY = b"""
SELECT t.name, c.oid IS NOT NULL,
  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
    AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary),
  (SELECT array_agg(ic.relname::text) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND NOT i.indisprimary)
FROM unnest($2::text[]) AS t(name)
LEFT JOIN pg_class c ON c.relname = t.name AND c.relkind IN ('r', 'p')
  AND c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = $1)
"""
"""Parameters: the schema and the table names. One row per name: (name, exists, column names,
column types, primary-key columns, other index names)."""


@dataclass(frozen=True)
class TableCheck:
    """How one live table compares with its definition.

    ``breaking``: what makes reads of the table fail or lie (the table or a column is missing, a
    column has another type); ``warnings``: what only costs speed or space (no primary key, an
    extra column).
    """

    table: str
    breaking: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    migrations: tuple[str, ...] = ()  # statements migrating what older versions made (legacy event time)


def check_catalog_row(schema: str, table: FeatureTable, row: tuple[Any, ...]) -> TableCheck:
    """Compare one row of ``CATALOG_QUERY`` with the table's definition (pure)."""
    _, exists, names, types, primary_key, indexes = row
    if not exists:
        return TableCheck(table.name, (f"table {schema}.{table.name} does not exist",))
    live = dict(zip(names or (), types or ()))
    breaking, other = compare(table, live, primary_key, indexes or ())
    migrations = (
        tuple(s.as_string(None) for s in migrate_event_time_sql(schema, table))
        if live.get(UPDATED_AT) == LEGACY_EVENT_TIME
        else ()
    )
    return TableCheck(table.name, tuple(breaking), tuple(other), migrations)


def check_catalog(registry: Registry, rows: list[tuple[Any, ...]]) -> dict[str, TableCheck]:
    """Compare the rows of ``CATALOG_QUERY`` with the definitions: {table: TableCheck}."""
    return {row[0]: check_catalog_row(registry.schema, registry.tables[row[0]], row) for row in rows}


def drift_error(registry: Registry, checks: dict[str, TableCheck], source: str | None = None) -> SchemaDriftError:
    """The SchemaDriftError for the breaking problems in ``checks``, with the commands that fix what they can
    (``pgfeatures plan`` shows the change, ``pgfeatures apply`` makes it online)."""
    problems = {name: list(c.breaking) for name, c in checks.items() if c.breaking}
    listed = "; ".join(f"{name}: {', '.join(p)}" for name, p in problems.items())
    where = f" -d {source}" if source else " -d <definitions>"
    hints = [
        f"`pgfeatures plan{where}` shows the change and `pgfeatures apply{where}` makes it, online (missing tables "
        "created, missing columns added)"
    ]
    if any(c.migrations for c in checks.values() if c.breaking):
        hints.append(
            "a legacy event time (integer updated_at) is migrated to timestamptz by the same apply (a rewrite "
            "of the table under an exclusive lock; the materialized services reading it are rebuilt)"
        )
    keyless = [
        n
        for n, p in problems.items()
        if any(x.startswith(f"column {registry.tables[n].key_column} (") and x.endswith(" is missing") for x in p)
    ]
    if keyless:
        hints.append(
            f"{', '.join(keyless)} lack(s) the entity's key column: point the entity's key_column at the "
            "table's key, or recreate the table"
        )
    if any(", definition says " in p and not p.startswith("legacy event time") for ps in problems.values() for p in ps):
        hints.append(
            "a column of another type is altered by `pgfeatures apply --allow-destructive` (a rewrite of the "
            "table), or correct the definition"
        )
    return SchemaDriftError(
        f"the database does not match the definitions (schema {registry.schema!r}): {listed}. Fix: {'; '.join(hints)}",
        problems,
    )
