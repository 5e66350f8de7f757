"""The SQL a load runs: the one catalog query that tells a load about the live table, the staging
table, the merge, and the rebuild-and-swap statements. Identifiers are quoted with psycopg.sql;
no user input is formatted into SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from ..definitions import UPDATED_AT, FeatureTable
from ..schema import (
    covering_index_name,
    covering_index_sql,
    drift_problems,
    freshness_index_name,
    freshness_index_sql,
    qualified,
)
from .columns import Columns

CATALOG = sql.SQL("""
SELECT c.reltuples::float8, c.relpersistence::text, pg_get_userbyid(c.relowner)::text, current_user::text,
  c.reloptions::text[],
  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT conname::text FROM pg_constraint WHERE conrelid = c.oid AND contype = 'p'),
  (SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
    AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary),
  (SELECT array_agg(ic.relname::text) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND NOT i.indisprimary),
  (SELECT array_agg(g.grantee || ',' || g.privilege_type || ',' || g.is_grantable::text)
    FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END AS grantee,
                 a.privilege_type, a.is_grantable
          FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) g),
  ARRAY(
    SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal
      AND NOT starts_with(tgname, '_pgf_')
    UNION SELECT 'view ' || r.ev_class::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = c.oid AND r.ev_class <> c.oid
        AND NOT starts_with((SELECT v.relname FROM pg_class v WHERE v.oid = r.ev_class), '_pgf_guard_')
    UNION SELECT 'foreign key ' || conname || ' of ' || conrelid::regclass::text FROM pg_constraint
      WHERE confrelid = c.oid AND contype = 'f'
    UNION SELECT 'publication ' || p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
      WHERE pr.prrelid = c.oid
    UNION SELECT 'row-level security policy ' || polname FROM pg_policy WHERE polrelid = c.oid
    UNION SELECT 'inheritance' FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid),
  ARRAY(SELECT t.tgname::text FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
    AND starts_with(t.tgname, '_pgf_') ORDER BY t.tgname),
  current_setting('server_encoding'),
  (SELECT spcname::text FROM pg_tablespace WHERE oid = coalesce(nullif(c.reltablespace, 0), db.dattablespace)),
  (SELECT array_agg(ARRAY[ic.relname::text, t.spcname::text]) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_tablespace t ON t.oid = coalesce(nullif(ic.reltablespace, 0), db.dattablespace) WHERE i.indrelid = c.oid)
FROM pg_class c, pg_database db WHERE c.oid = to_regclass(%s) AND db.datname = current_database()
""")

_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})


@dataclass(frozen=True)
class Catalog:
    """What a load needs to know about the live table, read in one query."""

    reltuples: float  # -1: never analyzed
    persistence: str
    owner: str
    current_user: str
    reloptions: tuple[str, ...]
    columns: dict[str, str]
    primary_key: str | None  # the constraint's name
    primary_key_columns: tuple[str, ...]
    indexes: tuple[str, ...]  # besides the primary key
    grants: tuple[tuple[str, str, bool], ...]
    dependents: tuple[str, ...]
    # The names of the triggers that keep materialized services' serving rows in step, when the load
    # began (materialize/sql.py); the swap reads them again under its lock (``SwapState``).
    serving_triggers: tuple[str, ...] = ()
    server_encoding: str = "UTF8"  # binary COPY sends text keys in it: a load of text keys needs UTF8
    # Where the table and each of its indexes (by name) are stored: a swap builds the new ones there
    # too. Always a name, the database's default tablespace included (an explicit TABLESPACE clause
    # is not moved by a session's default_tablespace; the database's default needs no privilege).
    tablespace: str | None = None
    index_tablespaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Catalog:
        grants = tuple((g, p, s == "true") for g, p, s in (item.rsplit(",", 2) for item in row[10] or ()))
        return cls(
            row[0],
            row[1],
            row[2],
            row[3],
            tuple(row[4] or ()),
            dict(zip(row[5] or (), row[6] or ())),
            row[7],
            tuple(row[8] or ()),
            tuple(row[9] or ()),
            grants,
            tuple(row[11] or ()),
            tuple(row[12] or ()),
            row[13],
            row[14],
            {name: spc for name, spc in row[15] or ()},
        )

    def drift(self, table: FeatureTable) -> list[str]:
        """How the live table differs from the definition: schema.py's comparison, on this catalog row."""
        return drift_problems(table, self.columns, self.primary_key_columns, self.indexes)

    def swap_blockers(self, table: FeatureTable) -> list[str]:
        """What a swap would lose or break: the new table only gets what schema.py creates, grants and owner."""
        own = {covering_index_name(table)} if table.covering_index else set()
        own.add(freshness_index_name(table))
        return [*self.dependents, *(f"index {i}" for i in self.indexes if i not in own)]


Query = sql.SQL | sql.Composed  # what a load runs (psycopg's execute and copy take these)


def ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def setting(name: str, value: str) -> tuple[Query, tuple[Any, ...]]:
    return sql.SQL("SELECT set_config(%s, %s, true)"), (name, value)


def stage_table(token: str) -> sql.Identifier:
    """The load's staging table: a TEMP table, in the session's own temporary schema."""
    return ident("pg_temp", f"_pgf_stage_{token}")


def stage_ddl(stage: sql.Identifier, columns: Columns) -> sql.Composed:
    cols: list[sql.Composable] = [
        sql.SQL("{} {}").format(ident(columns.key_column), sql.SQL(columns.entity.column_type))
    ]
    # An embedding's stage column is the live column's type (vector, halfvec or real[]: rich.py encodes each)
    cols += [
        sql.SQL("{} {}").format(ident(f.name), sql.SQL(columns.embedding_types.get(f.name, f.type.name)))
        for f in columns.features
    ]
    if columns.updated_at:
        cols.append(sql.SQL("{} timestamptz").format(ident(UPDATED_AT)))
    cols.append(sql.SQL("seq bigint"))
    # TEMP: no WAL for rows that live only for this transaction, and nothing for crash recovery
    # to replay: PostgreSQL removes temporary files when it starts. (An UNLOGGED stage made the
    # first start after a kill -9 of the postmaster fail, "could not create file ...: File
    # exists", while recovery reset the half-created unlogged relation.) Created inside the load's
    # transaction and dropped at its end, it vanishes with a rollback or a dead connection.
    return sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(stage, sql.SQL(", ").join(cols))


def table_columns(columns: Columns) -> list[sql.Identifier]:
    return [ident(columns.key_column), *(ident(f.name) for f in columns.features), ident(UPDATED_AT)]


def staged_values(columns: Columns, alias: str | None = None, stamp: bool = False) -> sql.Composed:
    """The stage's columns in table order. Without updated_at in the source, each row's event time is
    the load's stamp: ``%s`` (``stamp``: given by the caller) or the transaction's ``now()`` on the
    server (never the client's clock)."""

    def col(name: str) -> sql.Identifier:
        return ident(alias, name) if alias else ident(name)

    cols: list[sql.Composable] = [col(columns.key_column), *(col(f.name) for f in columns.features)]
    cols.append(col(UPDATED_AT) if columns.updated_at else sql.SQL("%s::timestamptz" if stamp else "now()"))
    return sql.SQL(", ").join(cols)


def _newer_stored(columns: Columns, newest_wins: bool) -> sql.Composable:
    """The upsert's condition: newest wins (write.py's rule: equal timestamps overwrite)."""
    if not (newest_wins and columns.updated_at):
        return sql.SQL("")
    return sql.SQL(" WHERE t.{0} <= EXCLUDED.{0}").format(ident(UPDATED_AT))


def upsert_sql(
    live: sql.Identifier, stage: sql.Identifier, columns: Columns, newest_wins: bool = False, stamp: bool = False
) -> sql.Composed:
    """Merge the stage into the live table; returns one row: (inserted, updated). With ``newest_wins``
    (and updated_at in the source) a stored row with a larger updated_at is left alone: PostgreSQL
    evaluates the condition on the latest committed row version under the row lock, so concurrent
    writers of a key end with the newest row whatever order they commit in."""
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in table_columns(columns)[1:]]
    return sql.SQL(
        "WITH merged AS (INSERT INTO {live} AS t ({cols}) SELECT {values} FROM {stage} ORDER BY {key} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets}{where} RETURNING (t.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"
    ).format(
        live=live,
        cols=sql.SQL(", ").join(table_columns(columns)),
        values=staged_values(columns, None, stamp),
        stage=stage,
        key=ident(columns.key_column),
        sets=sql.SQL(", ").join(sets),
        where=_newer_stored(columns, newest_wins),
    )


def fill_sql(
    new: sql.Identifier,
    live: sql.Identifier,
    stage: sql.Identifier,
    columns: Columns,
    newest_wins: bool,
    stamp: bool = False,
) -> sql.Composed:
    """A rebuild's first step: the staged rows into the new table, but (newest wins) not those whose
    live row has a larger updated_at: the live row is copied instead (``kept_sql``)."""
    query = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} s").format(
        new, sql.SQL(", ").join(table_columns(columns)), staged_values(columns, "s", stamp), stage
    )
    if newest_wins and columns.updated_at:
        query = sql.SQL("{} WHERE NOT EXISTS (SELECT FROM {} l WHERE l.{} = s.{} AND l.{} > s.{})").format(
            query, live, ident(columns.key_column), ident(columns.key_column), ident(UPDATED_AT), ident(UPDATED_AT)
        )
    return query


def kept_sql(
    new: sql.Identifier,
    live: sql.Identifier,
    stage: sql.Identifier,
    table: FeatureTable,
    columns: Columns,
    newest_wins: bool,
) -> sql.Composed:
    """A rebuild's second step: the live rows the load does not replace (untouched, or newer than the staged row)."""
    key = ident(table.key_column)
    cols = sql.SQL(", ").join([key, *(ident(f.name) for f in table.features), ident(UPDATED_AT)])
    newer = (
        sql.SQL(" AND s.{0} >= l.{0}").format(ident(UPDATED_AT)) if newest_wins and columns.updated_at else sql.SQL("")
    )
    return sql.SQL(
        "INSERT INTO {new} ({cols}) SELECT {cols} FROM {live} l WHERE NOT EXISTS "
        "(SELECT FROM {stage} s WHERE s.{key} = l.{key}{newer})"
    ).format(new=new, cols=cols, live=live, stage=stage, key=key, newer=newer)


# What a swap must carry over to the new table, read under the swap's ACCESS EXCLUSIVE lock (so a
# `pgfeatures materialize` that committed while the load ran is seen): the serving-row triggers, the
# guard views of materialized services that read the table (re-created from their definitions), and
# which refresh functions exist. Read with search_path = '' so every definition is schema-qualified.
SWAP_STATE = sql.SQL("""
SELECT
  ARRAY(SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
    AND starts_with(t.tgname, '_pgf_') ORDER BY t.tgname),
  ARRAY(SELECT ARRAY[v.relname::text, pg_get_viewdef(v.oid), coalesce(obj_description(v.oid, 'pg_class'), '')]
    FROM pg_class v WHERE v.relkind = 'v' AND starts_with(v.relname, '_pgf_guard_') AND v.oid IN (
      SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = c.oid) ORDER BY v.relname),
  ARRAY(SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = c.relnamespace AND p.pronargs = 0
    AND (starts_with(p.proname, '_pgf_r_') OR p.proname = left('_pgf_refresh__' || c.relname, 63)))
FROM pg_class c WHERE c.oid = to_regclass(%s)
""")

# The serving tables that read the live table (by their records, materialize/sql.py): a swap locks them
# before it reads the rest of SWAP_STATE, so two swaps of tables of one service never hold each other's
# guard views (reading a view's definition locks it).
SERVING_OF = sql.SQL("""
SELECT s.relname::text FROM pg_class s, pg_class c WHERE c.oid = to_regclass(%s) AND s.relnamespace = c.relnamespace
  AND s.relkind = 'r' AND starts_with(s.relname, '_pgf_svc_') AND starts_with(obj_description(s.oid, 'pg_class'), %s)
  AND (substr(obj_description(s.oid, 'pg_class'), %s)::jsonb -> 'tables') ? c.relname::text
ORDER BY s.relname
""")


def serving_of_params(live: str) -> tuple[str, str, int]:
    """SERVING_OF's parameters for the live table (its qualified name)."""
    from ..materialize.sql import COMMENT_PREFIX

    return live, COMMENT_PREFIX + "{", len(COMMENT_PREFIX) + 1


@dataclass(frozen=True)
class SwapState:
    """The live table's serving-row triggers (definitions), guard views (name, definition, comment)
    and the refresh functions of its schema, read under the swap's lock (``SWAP_STATE``)."""

    triggers: tuple[str, ...] = ()
    guards: tuple[tuple[str, str, str], ...] = ()
    functions: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row: Sequence[Any] | None) -> SwapState:
        if row is None:
            return cls()
        return cls(tuple(row[0] or ()), tuple(tuple(g) for g in row[1] or ()), frozenset(row[2] or ()))

    @property
    def trigger_names(self) -> set[str]:
        """The triggers' names (``CREATE TRIGGER <name> AFTER ...``)."""
        return {definition.split()[2] for definition in self.triggers}

    def functions_of_triggers(self) -> list[str]:
        """The trigger functions (``_pgf_m_<h>``) behind the triggers, each once."""
        return sorted({name.rsplit("_", 1)[0] for name in self.trigger_names})


def swap_sql(
    schema: str, table: FeatureTable, new_name: str, catalog: Catalog, state: SwapState, refreshes: Sequence[Query]
) -> list[tuple[Query, tuple[Any, ...]]]:
    """Give the new table the live one's owner and grants, then drop the live table and rename the new one
    (and its primary key and covering index) into place; move the serving-row triggers and the guard views
    of materialized services to it, and run ``refreshes`` (which recompute its slice of their rows). Run
    with the live table ACCESS EXCLUSIVE-locked, ``state`` read under its locks, and its guard views dropped."""
    new = ident(schema, new_name)
    ops: list[tuple[Query, tuple[Any, ...]]] = []
    if catalog.owner != catalog.current_user:
        ops.append((sql.SQL("ALTER TABLE {} OWNER TO {}").format(new, ident(catalog.owner)), ()))
    for grantee, privilege, grantable in catalog.grants:
        if privilege in _PRIVILEGES:
            to = sql.SQL("PUBLIC") if grantee == "PUBLIC" else ident(grantee)
            ops.append(
                (
                    sql.SQL("GRANT {} ON {} TO {}{}").format(
                        sql.SQL(privilege), new, to, sql.SQL(" WITH GRANT OPTION" if grantable else "")
                    ),
                    (),
                )
            )
    ops.append((sql.SQL("DROP TABLE {}").format(qualified(schema, table)), ()))
    ops.append((sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, ident(table.name)), ()))
    ops.append(
        (
            sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                qualified(schema, table), ident(f"{new_name}_pkey"), ident(catalog.primary_key or f"{table.name}_pkey")
            ),
            (),
        )
    )
    if table.covering_index:
        ops.append(
            (
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    ident(schema, covering_index_name(new_name)), ident(covering_index_name(table))
                ),
                (),
            )
        )
    if freshness_index_name(table) in catalog.indexes:
        ops.append(
            (
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    ident(schema, freshness_index_name(new_name)), ident(freshness_index_name(table))
                ),
                (),
            )
        )
    # The definitions name the table, which now is the new one.
    ops += [(sql.SQL(definition), ()) for definition in state.triggers]
    for name, definition, comment in state.guards:
        view = ident(schema, name)
        ops.append((sql.SQL("CREATE VIEW {} AS {}").format(view, sql.SQL(definition.rstrip().rstrip(";"))), ()))
        ops.append((sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(comment)), ()))
    ops += [(query, ()) for query in refreshes]
    return ops


def _tablespace(name: str | None) -> sql.Composable:
    return sql.SQL(" TABLESPACE {}").format(ident(name)) if name else sql.SQL("")


def new_table_sql(schema: str, table: FeatureTable, new_name: str, catalog: Catalog) -> list[Query]:
    """The new table, shaped like the live one: columns, defaults, NOT NULL and CHECK constraints,
    storage, persistence, storage parameters and tablespace. Its primary key is added after the rows are in."""
    unlogged = sql.SQL("UNLOGGED ") if catalog.persistence == "u" else sql.SQL("")
    stmts: list[Query] = [
        sql.SQL(
            "CREATE {}TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS){}"
        ).format(unlogged, ident(schema, new_name), qualified(schema, table), _tablespace(catalog.tablespace))
    ]
    if catalog.reloptions:
        opts = [
            sql.SQL("{} = {}").format(ident(*k.split(".")), sql.Literal(v))  # e.g. toast.autovacuum_enabled
            for k, v in (o.split("=", 1) for o in catalog.reloptions)
        ]
        stmts.append(sql.SQL("ALTER TABLE {} SET ({})").format(ident(schema, new_name), sql.SQL(", ").join(opts)))
    return stmts


def new_indexes_sql(schema: str, table: FeatureTable, new_name: str, catalog: Catalog) -> list[Query]:
    """The new table's primary key, (if defined) covering index and (if the live table has it) index on
    updated_at, each in the tablespace of the live one it replaces (named after the new table until the
    swap renames them)."""
    pkey_tablespace = catalog.index_tablespaces.get(catalog.primary_key or f"{table.name}_pkey")
    stmts: list[Query] = [
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({}){}").format(
            ident(schema, new_name),
            ident(f"{new_name}_pkey"),
            ident(table.key_column),
            sql.SQL(" USING INDEX") + _tablespace(pkey_tablespace) if pkey_tablespace else sql.SQL(""),
        )
    ]
    if table.covering_index:
        spc = catalog.index_tablespaces.get(covering_index_name(table))
        stmts.append(covering_index_sql(schema, table, new_name) + _tablespace(spc))
    if freshness_index_name(table) in catalog.indexes:  # the new table is shaped like the live one
        spc = catalog.index_tablespaces.get(freshness_index_name(table))
        stmts.append(freshness_index_sql(schema, new_name) + _tablespace(spc))
    return stmts
