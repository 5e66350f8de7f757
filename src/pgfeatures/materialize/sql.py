"""SQL of materialized services (pure): serving tables, their build, their maintenance after a write.

Serving rows (see ``definitions/layout.py``) are kept in step with the feature tables *by the
database*, in the writing statement's own transaction: every feature table a materialized service
reads carries statement-level triggers (``AFTER INSERT / UPDATE / DELETE`` with transition tables,
``AFTER TRUNCATE``) that copy the written rows' *slice* (the table's positions in the arrays and its
``ts`` entry) into the serving rows of the keys written::

    UPDATE svc s SET r[41:48] = ARRAY[c.f0, ...]::real[], ts[6] = <c.updated_at in epoch microseconds>
    FROM new_rows c WHERE s.key = c.key;
    INSERT INTO svc (key, r, ts) SELECT c.key, <the slice padded with NULLs>, ... FROM new_rows c
    WHERE NOT EXISTS (SELECT FROM svc s WHERE s.key = c.key);

So no reader ever sees a serving row that disagrees with the tables, a failed or killed write
leaves both untouched, and writes that go around pgfeatures (an application's own SQL) are caught
too. Measured on 100,000 updated rows of one table of a 30-table service: the trigger costs about
what the same statements issued by the writer cost (73,000 vs 70,000 rows/s through
``INSERT ... ON CONFLICT``); ``UPDATE ... FROM`` joins in bulk (2-3x faster than ``ON CONFLICT``),
and with the serving table's fillfactor of 50 the serving rows are updated in place (HOT).

The loader's table swap (a rebuild or replace load) moves the ``_pgf_`` triggers to the new table
and then calls ``_pgf_refresh__<table>()``, which recomputes the table's slice in every serving
row (and clears it where the key is gone). A full build reads every table of the entity once,
joined on the union of their keys. ``pgfeatures doctor`` still compares a sample of serving rows
with the tables (triggers can be disabled, ``session_replication_role = replica`` skips them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from ..definitions import EVENT_TIME, UPDATED_AT, FeatureTable
from ..definitions.layout import TS, EntityLayout, Slot
from ..schema import event_time_micros_sql

FILLFACTOR = 50  # room on each page for the updated row version: updates stay HOT (no index insert)
COMMENT_PREFIX = "pgfeatures serving rows, layout "


def _ident(layout: EntityLayout, schema: str) -> sql.Identifier:
    return sql.Identifier(schema, layout.table_name)


def _element(layout: EntityLayout, group: str) -> sql.SQL:
    return sql.SQL(layout.element_type(group))


def create_table_sql(schema: str, layout: EntityLayout, name: str | None = None, primary_key: bool = True) -> list[sql.Composed]:
    """CREATE TABLE of an entity's serving rows (``name``: another name, for a build to swap in;
    ``primary_key=False``: the key index is built after the rows are in, which is faster)."""
    ident = sql.Identifier(schema, name or layout.table_name)
    entity = layout.entity
    pk = sql.SQL(" PRIMARY KEY") if primary_key else sql.SQL(" NOT NULL")
    cols = [sql.SQL("{} {}{}").format(sql.Identifier(entity.column), sql.SQL(entity.column_type), pk)]
    cols += [sql.SQL("{} {}[] NOT NULL").format(sql.Identifier(g), _element(layout, g)) for g in layout.groups]
    cols.append(sql.SQL("{} bigint[] NOT NULL").format(sql.Identifier(TS)))
    out: list[sql.Composed] = [sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}) WITH (fillfactor = {})").format(
        ident, sql.SQL(", ").join(cols), sql.Literal(FILLFACTOR))]
    # Keep the arrays in the row (no TOAST pointer to follow on a read); a 240-feature row is ~1.1 kB.
    out.append(sql.SQL("ALTER TABLE {} {}").format(ident, sql.SQL(", ").join(
        sql.SQL("ALTER COLUMN {} SET STORAGE MAIN").format(sql.Identifier(c)) for c in (*layout.groups, TS))))
    out.append(comment_sql(schema, layout, name))
    return out


def comment_sql(schema: str, layout: EntityLayout, name: str | None = None) -> sql.Composed:
    return sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(schema, name or layout.table_name), sql.Literal(COMMENT_PREFIX + layout.fingerprint))


def _stamp(alias: str) -> sql.Composable:
    """A row's ``ts`` entry: its updated_at in epoch microseconds (what the readers decode)."""
    return event_time_micros_sql(sql.Identifier(alias, UPDATED_AT))


def _value(alias: str, slot: Slot) -> sql.Composable:
    col: sql.Composable = sql.Identifier(alias, slot.feature.name)
    if slot.feature.type is EVENT_TIME:
        return event_time_micros_sql(col)
    if slot.group == "d":
        if slot.feature.type.name == "boolean":
            col = sql.SQL("{}::int").format(col)
        col = sql.SQL("{}::float8").format(col)
    return col


def _arrays(layout: EntityLayout, aliases: Mapping[str, str | None]) -> list[sql.Composable]:
    """Each array of the serving row, built from the tables whose alias is given (NULL for the others)."""
    out: list[sql.Composable] = []
    for group in layout.groups:
        values = [_value(a, s) if (a := aliases.get(s.table)) else sql.SQL("NULL")
                  for s in layout.slots if s.group == group]
        out.append(sql.SQL("ARRAY[{}]::{}[]").format(sql.SQL(", ").join(values), _element(layout, group)))
    stamps = [_stamp(a) if (a := aliases.get(t.name)) else sql.SQL("NULL") for t in layout.tables]
    out.append(sql.SQL("ARRAY[{}]::int8[]").format(sql.SQL(", ").join(stamps)))
    return out


def build_sql(schema: str, layout: EntityLayout, target: str) -> sql.Composed:
    """Fill serving table ``target`` from every table of the entity: one row per key found in any of them."""
    key = sql.Identifier(layout.entity.column)
    keys = sql.SQL(" UNION ").join(
        sql.SQL("SELECT {} FROM {}").format(key, sql.Identifier(schema, t.name)) for t in layout.tables)
    aliases = {t.name: f"t{i}" for i, t in enumerate(layout.tables)}
    joins = sql.SQL(" ").join(
        sql.SQL("LEFT JOIN {} {} ON {}.{} = k.{}").format(
            sql.Identifier(schema, t.name), sql.Identifier(aliases[t.name]), sql.Identifier(aliases[t.name]), key, key)
        for t in layout.tables)
    cols = [key, *(sql.Identifier(g) for g in layout.groups), sql.Identifier(TS)]
    return sql.SQL("INSERT INTO {} ({}) SELECT k.{}, {} FROM ({}) k {}").format(
        sql.Identifier(schema, target), sql.SQL(", ").join(cols), key, sql.SQL(", ").join(_arrays(layout, aliases)),
        keys, joins)


def _slices(layout: EntityLayout, table: FeatureTable) -> list[tuple[str, int, int, list[Slot]]]:
    """``(array, first, last, slots)`` per array holding ``table``'s features (1-based bounds: a
    table's slots are contiguous within each array)."""
    slots = layout.table_slots(table.name)
    out = []
    for group in layout.groups:
        mine = [s for s in slots if s.group == group]
        if mine:
            out.append((group, mine[0].index + 1, mine[-1].index + 1, mine))
    return out


def _slice_sets(layout: EntityLayout, table: FeatureTable, alias: str | None) -> list[sql.Composable]:
    """``r[a:b] = ARRAY[...]`` for each array holding ``table``'s features, and ``ts[j] = ...``."""
    sets: list[sql.Composable] = []
    for group, a, b, mine in _slices(layout, table):
        values = [_value(alias, s) if alias else sql.SQL("NULL") for s in mine]
        sets.append(sql.SQL("{}[{}:{}] = ARRAY[{}]::{}[]").format(
            sql.Identifier(group), sql.Literal(a), sql.Literal(b), sql.SQL(", ").join(values), _element(layout, group)))
    j = layout.ts_index(table.name) + 1
    stamp = _stamp(alias) if alias else sql.SQL("NULL::int8")
    sets.append(sql.SQL("{}[{}] = {}").format(sql.Identifier(TS), sql.Literal(j), stamp))
    return sets


def maintain_sql(schema: str, layout: EntityLayout, table: FeatureTable, changed: sql.Composable,
                 new_keys: bool = True) -> list[sql.Composed]:
    """After a write to ``table``: copy the rows of ``changed`` (a relation with the table's columns,
    e.g. ``(SELECT t.* FROM s.t t WHERE t.key = ANY($1))``) into their serving rows, creating the
    serving rows of new keys (``new_keys=False``: the writer knows there are none, and the statement
    that looks for them is left out). One or two statements; all in the write's transaction."""
    key = sql.Identifier(layout.entity.column)
    svc = _ident(layout, schema)
    update = sql.SQL("UPDATE {} s SET {} FROM {} c WHERE s.{} = c.{}").format(
        svc, sql.SQL(", ").join(_slice_sets(layout, table, "c")), changed, key, key)
    cols = [key, *(sql.Identifier(g) for g in layout.groups), sql.Identifier(TS)]
    # ON CONFLICT: two writers of different tables of the entity may both create a new key's serving
    # row; the second to commit then sets its slice in the first one's row instead of failing.
    insert = sql.SQL("INSERT INTO {} AS s ({}) SELECT c.{}, {} FROM {} c WHERE NOT EXISTS (SELECT FROM {} s WHERE s.{} = c.{}) "
                     "ON CONFLICT ({}) DO UPDATE SET {}").format(
        svc, sql.SQL(", ").join(cols), key, sql.SQL(", ").join(_arrays(layout, {table.name: "c"})),
        changed, svc, key, key, key, sql.SQL(", ").join(_slice_sets_from_excluded(layout, table)))
    return [update, insert] if new_keys else [update]


def _slice_sets_from_excluded(layout: EntityLayout, table: FeatureTable) -> list[sql.Composable]:
    """``r[a:b] = EXCLUDED.r[a:b]`` and ``ts[j] = EXCLUDED.ts[j]``: ``table``'s slice of a conflicting insert."""
    sets: list[sql.Composable] = [
        sql.SQL("{g}[{a}:{b}] = EXCLUDED.{g}[{a}:{b}]").format(g=sql.Identifier(group), a=sql.Literal(a), b=sql.Literal(b))
        for group, a, b, _ in _slices(layout, table)]
    j = sql.Literal(layout.ts_index(table.name) + 1)
    sets.append(sql.SQL("{g}[{j}] = EXCLUDED.{g}[{j}]").format(g=sql.Identifier(TS), j=j))
    return sets


def clear_missing_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> sql.Composed:
    """After ``table`` was replaced: clear its slice in the serving rows of keys it no longer has."""
    key = sql.Identifier(layout.entity.column)
    j = layout.ts_index(table.name) + 1
    return sql.SQL("UPDATE {} s SET {} WHERE s.{}[{}] IS NOT NULL AND NOT EXISTS (SELECT FROM {} t WHERE t.{} = s.{})").format(
        _ident(layout, schema), sql.SQL(", ").join(_slice_sets(layout, table, None)), sql.Identifier(TS), sql.Literal(j),
        sql.Identifier(schema, table.name), key, key)


TRIGGER_PREFIX = "_pgf_m_"
REFRESH_PREFIX = "_pgf_refresh__"
EVENTS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _short(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def trigger_name(layout: EntityLayout, table: FeatureTable) -> str:
    return f"{TRIGGER_PREFIX}{_short(layout.table_name, table.name)}"


def refresh_name(table: FeatureTable) -> str:
    return (REFRESH_PREFIX + table.name)[:63]


def _statements(statements: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("").join(sql.SQL("{};\n").format(st) for st in statements)


def trigger_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> list[sql.Composed]:
    """The trigger function keeping ``layout``'s serving rows in step with ``table``, and its triggers."""
    key = sql.Identifier(layout.entity.column)
    svc = _ident(layout, schema)
    name = trigger_name(layout, table)
    fn = sql.Identifier(schema, name)
    upsert = maintain_sql(schema, layout, table, sql.Identifier("new_rows"))
    clear_old = sql.SQL("UPDATE {} s SET {} FROM old_rows o WHERE s.{} = o.{} AND NOT EXISTS "
                        "(SELECT FROM {} t WHERE t.{} = o.{})").format(
        svc, sql.SQL(", ").join(_slice_sets(layout, table, None)), key, key, sql.Identifier(schema, table.name), key, key)
    clear_all = sql.SQL("UPDATE {} s SET {}").format(svc, sql.SQL(", ").join(_slice_sets(layout, table, None)))
    # An UPDATE that changed no key (every merge, every live update) only rewrites the keys' slices:
    # their serving rows exist and no key left the table, so the anti-joins that look for keys gone
    # and keys new are skipped (a third of the trigger's time on a 300,000-row merge). An UPDATE has
    # as many new rows as old ones, so "every old key is among the new" means "the same keys".
    # EXCEPT, not NOT EXISTS: the transition tables have no index, and an anti-join the planner makes
    # a nested loop is quadratic (545 s for a 100,000-row UPDATE at the default work_mem, measured).
    keys_moved = sql.SQL("EXISTS (SELECT {} FROM old_rows EXCEPT SELECT {} FROM new_rows)").format(key, key)
    body = sql.SQL(
        "BEGIN\nIF TG_OP = 'INSERT' THEN\n{}ELSIF TG_OP = 'UPDATE' THEN\nIF {} THEN\n{}{}ELSE\n{}END IF;\n"
        "ELSIF TG_OP = 'DELETE' THEN\n{}ELSE\n{}END IF;\nRETURN NULL;\nEND"
    ).format(_statements(upsert), keys_moved, _statements([clear_old]), _statements(upsert), _statements(upsert[:1]),
             _statements([clear_old]), _statements([clear_all]))
    out = [sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        fn, sql.Literal(body.as_string(None)))]
    target = sql.Identifier(schema, table.name)
    for event, referencing in (("INSERT", "REFERENCING NEW TABLE AS new_rows "),
                               ("UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "),
                               ("DELETE", "REFERENCING OLD TABLE AS old_rows "), ("TRUNCATE", "")):
        out.append(sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER {} ON {} {}FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
            sql.Identifier(f"{name}_{event.lower()}"), sql.SQL(event), target, sql.SQL(referencing), fn))
    return out


def refresh_sql(schema: str, layouts: Sequence[EntityLayout], table: FeatureTable) -> sql.Composed:
    """``_pgf_refresh__<table>()``: recompute the table's slice in every serving row of ``layouts``
    (after the loader swapped a new table in); a no-op function when no layout reads the table."""
    statements: list[sql.Composable] = []
    for layout in layouts_reading(layouts, table.name):
        statements += maintain_sql(schema, layout, table, whole_table(schema, table))
        statements.append(clear_missing_sql(schema, layout, table))
    body = sql.SQL("BEGIN\n{}END").format(_statements(statements))
    return sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS void LANGUAGE plpgsql AS {}").format(
        sql.Identifier(schema, refresh_name(table)), sql.Literal(body.as_string(None)))


def changed_by_keys(schema: str, table: FeatureTable, param: str = "$1") -> sql.Composed:
    """The table's rows whose keys are in the array parameter ``param`` (a live update's keys)."""
    return sql.SQL("(SELECT t.* FROM {} t WHERE t.{} = ANY({}::{}[]))").format(
        sql.Identifier(schema, table.name), sql.Identifier(table.key_column), sql.SQL(param), sql.SQL(table.entity.cast))


def changed_by_stage(schema: str, table: FeatureTable, stage: sql.Composable) -> sql.Composed:
    """The table's rows whose keys are in a load's staging table."""
    key = sql.Identifier(table.key_column)
    return sql.SQL("(SELECT t.* FROM {} t WHERE EXISTS (SELECT FROM {} x WHERE x.{} = t.{}))").format(
        sql.Identifier(schema, table.name), stage, key, key)


def whole_table(schema: str, table: FeatureTable) -> sql.Composed:
    return sql.SQL("(SELECT t.* FROM {} t)").format(sql.Identifier(schema, table.name))


def layouts_reading(layouts: Sequence[EntityLayout], table: str) -> list[EntityLayout]:
    return [layout for layout in layouts if any(t.name == table for t in layout.tables)]


SERVING_TABLES = b"""
SELECT c.relname::text, obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind = 'r'
"""
"""Parameters: the schema and serving-table names. Those that exist, with their comments (fingerprints)."""


def fingerprint_of(comment: str | None) -> str | None:
    if comment and comment.startswith(COMMENT_PREFIX):
        return comment[len(COMMENT_PREFIX):].strip()
    return None
