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

Every object here belongs to one layout (one serving table, named by its fingerprint): its
trigger function and triggers on each table it reads (``_pgf_m_<h>``), a refresh function per
table (``_pgf_r_<h>``, the same ``h``), and a guard view (``_pgf_guard_<fingerprint>``) that
selects every column the layout reads from every table it reads, ``WHERE false``. Building one
service never touches another's objects, so definition files that share a schema coexist.

- **The guard view** makes the tables' shape a dependency of the serving rows: ``DROP TABLE`` of a
  table a materialized service reads, or ``DROP``/``ALTER ... TYPE`` of a column it reads, fails
  ("other objects depend on it") unless CASCADE drops the guard too; and every read of the serving
  rows names the guard (``WHERE NOT EXISTS (SELECT FROM guard)``, folded to a constant by the
  planner, no cost measured), so once the guard is gone no reader uses those rows: its statement
  fails and the store reads the service table by table until it is rebuilt.
- **Locks in one order.** Writers of different tables of a service meet in its serving rows. Each
  maintenance pass takes the serving rows' locks in key order (an ordered ``FOR NO KEY UPDATE``
  pass, or one upsert ordered by key), and whole-table refreshes lock the serving table first, so
  concurrent writers queue instead of deadlocking.
- The loader's table swap (a rebuild or replace load) takes the live table's lock, then reads the
  serving triggers on it, moves them to the new table, re-creates the guard views and recomputes
  the table's slice through each layout's refresh function, in the load's transaction.

``pgfeatures doctor`` still compares serving rows with the tables (triggers can be disabled,
``session_replication_role = replica`` skips them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from psycopg import sql

from ..definitions import EVENT_TIME, UPDATED_AT, FeatureTable
from ..definitions.layout import COLUMNS, LAYOUT_VERSION, TS, EntityLayout, Slot, column_type
from ..schema import event_time_micros_sql

FILLFACTOR = 50  # room on each page for the updated row version: updates stay HOT (no index insert)
COMMENT_PREFIX = "pgfeatures serving rows "
LEGACY_COMMENT_PREFIX = "pgfeatures serving rows, layout "  # LAYOUT_VERSION 1

TRIGGER_PREFIX = "_pgf_m_"
REFRESH_PREFIX = "_pgf_r_"
GUARD_PREFIX = "_pgf_guard_"
LEGACY_REFRESH_PREFIX = "_pgf_refresh__"
EVENTS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


# -- names: every object belongs to one layout ---------------------------------------------------


def _short(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def trigger_name_for(serving_table: str, table: str) -> str:
    """The trigger function keeping ``serving_table`` in step with ``table`` (its triggers add
    ``_<event>``); the same rule named them before LAYOUT_VERSION 2."""
    return f"{TRIGGER_PREFIX}{_short(serving_table, table)}"


def trigger_name(layout: EntityLayout, table: FeatureTable | str) -> str:
    return trigger_name_for(layout.table_name, table if isinstance(table, str) else table.name)


def refresh_name_for(serving_table: str, table: str) -> str:
    """The refresh function that goes with ``trigger_name_for(serving_table, table)``."""
    return f"{REFRESH_PREFIX}{_short(serving_table, table)}"


def refresh_name(layout: EntityLayout, table: FeatureTable | str) -> str:
    return refresh_name_for(layout.table_name, table if isinstance(table, str) else table.name)


def refresh_of_trigger(trigger: str) -> str:
    """The refresh function of a trigger (``_pgf_m_<h>_<event>`` or ``_pgf_m_<h>``)."""
    return REFRESH_PREFIX + trigger[len(TRIGGER_PREFIX) : len(TRIGGER_PREFIX) + 20]


def guard_name(layout: EntityLayout) -> str:
    return guard_name_for(layout.fingerprint)


def guard_name_for(fingerprint: str) -> str:
    return GUARD_PREFIX + fingerprint


def _ident(layout: EntityLayout, schema: str) -> sql.Identifier:
    return sql.Identifier(schema, layout.table_name)


def _element(layout: EntityLayout, group: str) -> sql.SQL:
    return sql.SQL(layout.element_type(group))


# -- the serving table and what it records about itself ------------------------------------------


def describe(layout: EntityLayout) -> dict[str, Any]:
    """What the serving table's comment records: whose rows these are (read back by ``parse_comment``)."""
    return {
        "service": layout.service,
        "entity": layout.entity.name,
        "fingerprint": layout.fingerprint,
        "tables": [t.name for t in layout.tables],
        "version": LAYOUT_VERSION,
    }


def parse_comment(comment: str | None) -> dict[str, Any] | None:
    """A serving table's record (``describe``); ``{"legacy": fingerprint}`` for tables built by a
    version before LAYOUT_VERSION 2; None for a table pgfeatures did not build."""
    if not comment:
        return None
    if comment.startswith(LEGACY_COMMENT_PREFIX):
        return {"legacy": comment[len(LEGACY_COMMENT_PREFIX) :].strip()}
    if comment.startswith(COMMENT_PREFIX):
        try:
            record = json.loads(comment[len(COMMENT_PREFIX) :])
        except ValueError:
            return None
        return record if isinstance(record, dict) and "fingerprint" in record else None
    return None


def create_table_sql(
    schema: str, layout: EntityLayout, name: str | None = None, primary_key: bool = True
) -> list[sql.Composed]:
    """CREATE TABLE of an entity's serving rows (``name``: another name, for a build to swap in;
    ``primary_key=False``: the key index is built after the rows are in, which is faster). Not
    ``IF NOT EXISTS``: a table of that name that is not this build's is an error, never reused."""
    ident = sql.Identifier(schema, name or layout.table_name)
    entity = layout.entity
    pk = sql.SQL(" PRIMARY KEY") if primary_key else sql.SQL(" NOT NULL")
    cols = [sql.SQL("{} {}{}").format(sql.Identifier(entity.column), sql.SQL(entity.column_type), pk)]
    cols += [
        sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t), sql.SQL("" if c.startswith(COLUMNS) else " NOT NULL"))
        for c, t in layout.columns()
    ]
    cols.append(sql.SQL("{} bigint[] NOT NULL").format(sql.Identifier(TS)))
    out: list[sql.Composed] = [
        sql.SQL("CREATE TABLE {} ({}) WITH (fillfactor = {})").format(
            ident, sql.SQL(", ").join(cols), sql.Literal(FILLFACTOR)
        )
    ]
    # Keep the arrays in the row (no TOAST pointer to follow on a read); a 240-feature row is ~1.1 kB.
    out.append(
        sql.SQL("ALTER TABLE {} {}").format(
            ident,
            sql.SQL(", ").join(
                sql.SQL("ALTER COLUMN {} SET STORAGE MAIN").format(sql.Identifier(c))
                for c in (*(c for c, _ in layout.columns()), TS)
            ),
        )
    )
    out.append(comment_sql(schema, layout, name))
    return out


def comment_sql(schema: str, layout: EntityLayout, name: str | None = None) -> sql.Composed:
    return sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(schema, name or layout.table_name),
        sql.Literal(COMMENT_PREFIX + json.dumps(describe(layout), sort_keys=True)),
    )


# -- values of a serving row ---------------------------------------------------------------------


def stamp_sql(alias: str) -> sql.Composable:
    """A row's ``ts`` entry: its updated_at in epoch microseconds (what the readers decode)."""
    return event_time_micros_sql(sql.Identifier(alias, UPDATED_AT))


def _value(alias: str, slot: Slot, absent: Collection[tuple[str, str]] = ()) -> sql.Composable:
    if (slot.table, slot.feature.name) in absent:  # a column `apply` adds in the same transaction: NULL in every row
        return sql.SQL("NULL")
    col: sql.Composable = sql.Identifier(alias, slot.feature.name)
    if slot.feature.type is EVENT_TIME:
        return event_time_micros_sql(col)
    if slot.group == COLUMNS:  # a list or an embedding: its own column, as the array it is read as
        return sql.SQL("{}::{}").format(col, sql.SQL(column_type(slot.feature)))
    if slot.group == "d":
        if slot.feature.type.name == "boolean":
            col = sql.SQL("{}::int").format(col)
        col = sql.SQL("{}::float8").format(col)
    return col


def _arrays(
    layout: EntityLayout, aliases: Mapping[str, str | None], absent: Collection[tuple[str, str]] = ()
) -> list[sql.Composable]:
    """Each array of the serving row, built from the tables whose alias is given (NULL for the others)."""
    out: list[sql.Composable] = []
    for group in layout.groups:
        values = [
            _value(a, s, absent) if (a := aliases.get(s.table)) else sql.SQL("NULL")
            for s in layout.slots
            if s.group == group
        ]
        if group == COLUMNS:  # one column each
            out.extend(values)
            continue
        out.append(sql.SQL("ARRAY[{}]::{}[]").format(sql.SQL(", ").join(values), _element(layout, group)))
    stamps = [stamp_sql(a) if (a := aliases.get(t.name)) else sql.SQL("NULL") for t in layout.tables]
    out.append(sql.SQL("ARRAY[{}]::int8[]").format(sql.SQL(", ").join(stamps)))
    return out


def build_sql(schema: str, layout: EntityLayout, target: str, absent: Collection[tuple[str, str]] = ()) -> sql.Composed:
    """Fill serving table ``target`` from every table of the entity: one row per key found in any of
    them. ``absent``: ``(table, feature)`` columns that do not exist yet (NULL everywhere)."""
    key = sql.Identifier(layout.entity.column)
    keys = sql.SQL(" UNION ").join(
        sql.SQL("SELECT {} FROM {}").format(key, sql.Identifier(schema, t.name)) for t in layout.tables
    )
    aliases = {t.name: f"t{i}" for i, t in enumerate(layout.tables)}
    joins = sql.SQL(" ").join(
        sql.SQL("LEFT JOIN {} {} ON {}.{} = k.{}").format(
            sql.Identifier(schema, t.name), sql.Identifier(aliases[t.name]), sql.Identifier(aliases[t.name]), key, key
        )
        for t in layout.tables
    )
    cols = [key, *(sql.Identifier(c) for c, _ in layout.columns()), sql.Identifier(TS)]
    return sql.SQL("INSERT INTO {} ({}) SELECT k.{}, {} FROM ({}) k {}").format(
        sql.Identifier(schema, target),
        sql.SQL(", ").join(cols),
        key,
        sql.SQL(", ").join(_arrays(layout, aliases, absent)),
        keys,
        joins,
    )


def guard_sql(schema: str, layout: EntityLayout) -> list[sql.Composed]:
    """The layout's guard view: every column it reads (keys, features, updated_at) of every table it
    reads, ``WHERE false``. See the module docstring."""
    cols: list[sql.Composable] = []
    for i, table in enumerate(layout.tables):
        alias = f"t{i}"
        names = list(
            dict.fromkeys([layout.entity.column, *(s.feature.name for s in layout.table_slots(table.name)), UPDATED_AT])
        )  # a service may list updated_at as a feature
        cols += [sql.SQL("{} AS {}").format(sql.Identifier(alias, n), sql.Identifier(f"{alias}_{n}")) for n in names]
    sources = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(schema, t.name), sql.Identifier(f"t{i}"))
        for i, t in enumerate(layout.tables)
    )
    view = sql.Identifier(schema, guard_name(layout))
    return [
        sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {} WHERE false").format(
            view, sql.SQL(", ").join(cols), sources
        ),
        sql.SQL("COMMENT ON VIEW {} IS {}").format(
            view,
            sql.Literal(
                f"pgfeatures: materialized service {layout.service} reads these columns (serving rows "
                f"{layout.table_name}); dropping one marks the service stale until `pgfeatures materialize` rebuilds it"
            ),
        ),
    ]


def guarded(schema: str, layout: EntityLayout) -> sql.Composed:
    """The condition a read of the serving rows carries: true while the guard view exists."""
    return sql.SQL("NOT EXISTS (SELECT FROM {})").format(sql.Identifier(schema, guard_name(layout)))


# -- keeping the rows in step --------------------------------------------------------------------


def _slices(layout: EntityLayout, table: FeatureTable) -> list[tuple[str, int, int, list[Slot]]]:
    """``(array, first, last, slots)`` per array holding ``table``'s features (1-based bounds: a
    table's slots are contiguous within each array); a list's or an embedding's own column is
    ``(column, 0, 0, [its slot])``."""
    slots = layout.table_slots(table.name)
    out: list[tuple[str, int, int, list[Slot]]] = []
    for group in layout.groups:
        mine = [s for s in slots if s.group == group]
        if group == COLUMNS:  # a column per slot: a "slice" of one, named by its column (x<slot>)
            out.extend((f"{COLUMNS}{s.index}", 0, 0, [s]) for s in mine)
        elif mine:
            out.append((group, mine[0].index + 1, mine[-1].index + 1, mine))
    return out


def slice_pairs(
    layout: EntityLayout, table: FeatureTable, alias: str, serving: str = "s"
) -> list[tuple[sql.Composable, sql.Composable]]:
    """``(the serving row's slice, the same values from the table's row)`` per slice of ``table`` (and its ``ts``
    entry): what the doctor compares, with the value expressions the build and the triggers write."""
    out: list[tuple[sql.Composable, sql.Composable]] = []
    for group, a, b, mine in _slices(layout, table):
        if not a:  # a column of its own
            out.append((sql.Identifier(serving, group), _value(alias, mine[0])))
            continue
        out.append(
            (
                sql.SQL("{}.{}[{}:{}]").format(
                    sql.Identifier(serving), sql.Identifier(group), sql.Literal(a), sql.Literal(b)
                ),
                sql.SQL("ARRAY[{}]::{}[]").format(
                    sql.SQL(", ").join(_value(alias, slot) for slot in mine), _element(layout, group)
                ),
            )
        )
    stamp = sql.SQL("{}.{}[{}]").format(
        sql.Identifier(serving), sql.Identifier(TS), sql.Literal(layout.ts_index(table.name) + 1)
    )
    out.append((stamp, stamp_sql(alias)))
    return out


def _slice_sets(layout: EntityLayout, table: FeatureTable, alias: str | None) -> list[sql.Composable]:
    """``r[a:b] = ARRAY[...]`` for each array holding ``table``'s features, and ``ts[j] = ...``."""
    sets: list[sql.Composable] = []
    for group, a, b, mine in _slices(layout, table):
        values = [_value(alias, s) if alias else sql.SQL("NULL") for s in mine]
        if not a:  # a column of its own
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(group), values[0]))
            continue
        sets.append(
            sql.SQL("{}[{}:{}] = ARRAY[{}]::{}[]").format(
                sql.Identifier(group),
                sql.Literal(a),
                sql.Literal(b),
                sql.SQL(", ").join(values),
                _element(layout, group),
            )
        )
    j = layout.ts_index(table.name) + 1
    stamp = stamp_sql(alias) if alias else sql.SQL("NULL::int8")
    sets.append(sql.SQL("{}[{}] = {}").format(sql.Identifier(TS), sql.Literal(j), stamp))
    return sets


def _slice_sets_from_excluded(layout: EntityLayout, table: FeatureTable) -> list[sql.Composable]:
    """``r[a:b] = EXCLUDED.r[a:b]`` and ``ts[j] = EXCLUDED.ts[j]``: ``table``'s slice of a conflicting insert."""
    sets: list[sql.Composable] = [
        sql.SQL("{g}[{a}:{b}] = EXCLUDED.{g}[{a}:{b}]").format(
            g=sql.Identifier(group), a=sql.Literal(a), b=sql.Literal(b)
        )
        if a
        else sql.SQL("{g} = EXCLUDED.{g}").format(g=sql.Identifier(group))
        for group, a, b, _ in _slices(layout, table)
    ]
    j = sql.Literal(layout.ts_index(table.name) + 1)
    sets.append(sql.SQL("{g}[{j}] = EXCLUDED.{g}[{j}]").format(g=sql.Identifier(TS), j=j))
    return sets


def lock_rows_sql(schema: str, layout: EntityLayout, keys: Sequence[sql.Composable]) -> list[sql.Composed]:
    """Lock the serving rows of the keys of the relations ``keys`` in key order (plpgsql): the order
    every writer takes them in, so writers of different tables queue, never deadlock. The table's
    ROW EXCLUSIVE lock first, as the UPDATE that follows would take it: a row lock alone takes only
    ROW SHARE, which a whole-table refresh (``lock_table_sql``) does not wait for, and a refresh that
    went ahead would then wait for these rows while this writer waited for the table."""
    key = sql.Identifier(layout.entity.column)
    union = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {} FROM {}").format(key, rel) for rel in keys)
    return [
        sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(_ident(layout, schema)),
        sql.SQL("PERFORM FROM {} s WHERE s.{} IN ({}) ORDER BY s.{} FOR NO KEY UPDATE").format(
            _ident(layout, schema), key, union, key
        ),
    ]


def lock_table_sql(schema: str, layout: EntityLayout) -> sql.Composed:
    """A whole-table rewrite of the serving rows (a refresh, a large load) locks the table first, against
    other writers of the service (readers go on), rather than taking a million row locks in some order."""
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_ident(layout, schema))


def update_sql(schema: str, layout: EntityLayout, table: FeatureTable, changed: sql.Composable) -> sql.Composed:
    """Copy the rows of ``changed`` (a relation with the table's columns) into their serving rows,
    which exist (``upsert_sql`` when some may not)."""
    key = sql.Identifier(layout.entity.column)
    return sql.SQL("UPDATE {} s SET {} FROM {} c WHERE s.{} = c.{}").format(
        _ident(layout, schema), sql.SQL(", ").join(_slice_sets(layout, table, "c")), changed, key, key
    )


def upsert_sql(schema: str, layout: EntityLayout, table: FeatureTable, changed: sql.Composable) -> sql.Composed:
    """Copy the rows of ``changed`` into their serving rows, creating those of new keys: one pass in
    key order (so it locks in the order every writer does). ON CONFLICT: two writers of different
    tables may both create a new key's serving row; the second sets its slice in the first one's."""
    key = sql.Identifier(layout.entity.column)
    cols = [key, *(sql.Identifier(c) for c, _ in layout.columns()), sql.Identifier(TS)]
    return sql.SQL(
        "INSERT INTO {} AS s ({}) SELECT c.{}, {} FROM {} c ORDER BY c.{} ON CONFLICT ({}) DO UPDATE SET {}"
    ).format(
        _ident(layout, schema),
        sql.SQL(", ").join(cols),
        key,
        sql.SQL(", ").join(_arrays(layout, {table.name: "c"})),
        changed,
        key,
        key,
        sql.SQL(", ").join(_slice_sets_from_excluded(layout, table)),
    )


def maintain_sql(
    schema: str, layout: EntityLayout, table: FeatureTable, changed: sql.Composable, new_keys: bool = True
) -> list[sql.Composed]:
    """After a write to ``table`` by a writer that holds the serving table's lock (``lock_table_sql``):
    copy the rows of ``changed`` (e.g. ``(SELECT t.* FROM s.t t WHERE ...)``) into their serving rows,
    creating those of new keys (``new_keys=False``: the writer knows there are none)."""
    return [upsert_sql(schema, layout, table, changed) if new_keys else update_sql(schema, layout, table, changed)]


def clear_missing_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> sql.Composed:
    """After ``table`` was replaced: clear its slice in the serving rows of keys it no longer has."""
    key = sql.Identifier(layout.entity.column)
    j = layout.ts_index(table.name) + 1
    return sql.SQL(
        "UPDATE {} s SET {} WHERE s.{}[{}] IS NOT NULL AND NOT EXISTS (SELECT FROM {} t WHERE t.{} = s.{})"
    ).format(
        _ident(layout, schema),
        sql.SQL(", ").join(_slice_sets(layout, table, None)),
        sql.Identifier(TS),
        sql.Literal(j),
        sql.Identifier(schema, table.name),
        key,
        key,
    )


def _statements(statements: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("").join(sql.SQL("{};\n").format(st) for st in statements)


def trigger_function_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> sql.Composed:
    """The trigger function keeping ``layout``'s serving rows in step with ``table`` (its triggers:
    ``triggers_sql``)."""
    key = sql.Identifier(layout.entity.column)
    svc = _ident(layout, schema)
    name = trigger_name(layout, table)
    fn = sql.Identifier(schema, name)
    new, old = sql.Identifier("new_rows"), sql.Identifier("old_rows")
    clear_old = sql.SQL(
        "UPDATE {} s SET {} FROM old_rows o WHERE s.{} = o.{} AND NOT EXISTS (SELECT FROM {} t WHERE t.{} = o.{})"
    ).format(
        svc,
        sql.SQL(", ").join(_slice_sets(layout, table, None)),
        key,
        key,
        sql.Identifier(schema, table.name),
        key,
        key,
    )
    clear_all = sql.SQL("UPDATE {} s SET {}").format(svc, sql.SQL(", ").join(_slice_sets(layout, table, None)))
    # An UPDATE that changed no key (every merge, every live update) only rewrites the keys' slices:
    # their serving rows exist and no key left the table, so the anti-joins that look for keys gone
    # and keys new are skipped (a third of the trigger's time on a 300,000-row merge). An UPDATE has
    # as many new rows as old ones, so "every old key is among the new" means "the same keys".
    # EXCEPT, not NOT EXISTS: the transition tables have no index, and an anti-join the planner makes
    # a nested loop is quadratic (545 s for a 100,000-row UPDATE at the default work_mem, measured).
    keys_moved = sql.SQL("EXISTS (SELECT {} FROM old_rows EXCEPT SELECT {} FROM new_rows)").format(key, key)
    body = sql.SQL(
        "BEGIN\nIF TG_OP = 'INSERT' THEN\n{insert}ELSIF TG_OP = 'UPDATE' THEN\nIF {moved} THEN\n{moved_keys}ELSE\n{same}"
        "END IF;\nELSIF TG_OP = 'DELETE' THEN\n{delete}ELSE\n{truncate}END IF;\nRETURN NULL;\nEND"
    ).format(
        insert=_statements([upsert_sql(schema, layout, table, new)]),
        moved=keys_moved,
        moved_keys=_statements(
            [*lock_rows_sql(schema, layout, [old, new]), clear_old, upsert_sql(schema, layout, table, new)]
        ),
        same=_statements([*lock_rows_sql(schema, layout, [new]), update_sql(schema, layout, table, new)]),
        delete=_statements([*lock_rows_sql(schema, layout, [old]), clear_old]),
        truncate=_statements([lock_table_sql(schema, layout), clear_all]),
    )
    return sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        fn, sql.Literal(body.as_string(None))
    )


def triggers_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> list[sql.Composed]:
    """The statement triggers on ``table`` that run ``trigger_function_sql``'s function."""
    name = trigger_name(layout, table)
    fn = sql.Identifier(schema, name)
    target = sql.Identifier(schema, table.name)
    out = []
    for event, referencing in (
        ("INSERT", "REFERENCING NEW TABLE AS new_rows "),
        ("UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "),
        ("DELETE", "REFERENCING OLD TABLE AS old_rows "),
        ("TRUNCATE", ""),
    ):
        out.append(
            sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER {} ON {} {}FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                sql.Identifier(f"{name}_{event.lower()}"), sql.SQL(event), target, sql.SQL(referencing), fn
            )
        )
    return out


def refresh_sql(schema: str, layout: EntityLayout, table: FeatureTable) -> sql.Composed:
    """``_pgf_r_<h>()``: recompute ``table``'s slice in every serving row of ``layout`` (after the
    loader swapped a new table in), the serving table locked against other writers first."""
    statements: list[sql.Composable] = [
        lock_table_sql(schema, layout),
        *maintain_sql(schema, layout, table, whole_table(schema, table)),
        clear_missing_sql(schema, layout, table),
    ]
    body = sql.SQL("BEGIN\n{}END").format(_statements(statements))
    return sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS void LANGUAGE plpgsql AS {}").format(
        sql.Identifier(schema, refresh_name(layout, table)), sql.Literal(body.as_string(None))
    )


def changed_by_stage(schema: str, table: FeatureTable, stage: sql.Composable) -> sql.Composed:
    """The table's rows whose keys are in a load's staging table."""
    key = sql.Identifier(table.key_column)
    return sql.SQL("(SELECT t.* FROM {} t WHERE EXISTS (SELECT FROM {} x WHERE x.{} = t.{}))").format(
        sql.Identifier(schema, table.name), stage, key, key
    )


def whole_table(schema: str, table: FeatureTable) -> sql.Composed:
    return sql.SQL("(SELECT t.* FROM {} t)").format(sql.Identifier(schema, table.name))


def layouts_reading(layouts: Sequence[EntityLayout], table: str) -> list[EntityLayout]:
    return [layout for layout in layouts if any(t.name == table for t in layout.tables)]


# -- exclusive locks, taken without making readers wait ------------------------------------------

TRY_LOCK = "20ms"  # one try at a switch's exclusive locks: well under deadlock_timeout (1 s by default)


def lock_exclusively_sql(relations: Sequence[sql.Composable], timeout: float) -> sql.Composed:
    """ACCESS EXCLUSIVE locks on the tables ``relations`` (qualified identifiers; never a view: LOCK on a
    view locks every table it reads), all at once or none, within ``timeout`` seconds (then SQLSTATE
    55P03, lock_not_available).

    Each try waits at most TRY_LOCK, in a subtransaction that gives back whatever it got when it
    fails, then the next comes 5 ms later. So a switch never holds one table's exclusive lock for long
    while it waits for another's: a reader that locks the same tables in another order (a flexible
    read names its tables in any order) waits a few milliseconds instead of deadlocking with it (the
    try ends long before PostgreSQL's deadlock check), and once the switch has them all readers wait
    only until its COMMIT. (NOWAIT would not do: writers queued behind the SHARE lock a build holds
    make every NOWAIT try fail; a waiting request goes ahead of them.)"""
    body = sql.SQL(
        "DECLARE deadline timestamptz := clock_timestamp() + {} * interval '1 second';\n"
        "before text := current_setting('lock_timeout');\n"
        "BEGIN\nLOOP\nBEGIN\nPERFORM set_config('lock_timeout', {}, true);\n"
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;\nPERFORM set_config('lock_timeout', before, true);\nRETURN;\n"
        "EXCEPTION WHEN lock_not_available THEN\nIF clock_timestamp() >= deadline THEN RAISE; END IF;\n"
        "PERFORM pg_sleep(0.005);\nEND;\nEND LOOP;\nEND"
    ).format(sql.Literal(timeout), sql.Literal(TRY_LOCK), sql.SQL(", ").join(relations))
    return sql.SQL("DO {}").format(sql.Literal(body.as_string(None)))


# -- pgfeatures' own full passes over feature tables -----------------------------------------------

FULL_PASSES = "_pgf_full_passes"  # table -> when pgfeatures last read it whole, and why (for the doctor)


def record_full_passes_sql(schema: str, tables: Sequence[str], what: str) -> list[sql.Composed]:
    """Record that ``what`` (e.g. ``materialize fraud_v1``) just read ``tables`` whole: a build's sequential
    scans are pgfeatures' own, and ``pgfeatures doctor``'s scans check says so instead of failing."""
    table = sql.Identifier(schema, FULL_PASSES)
    rows = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(t), sql.Literal(what)) for t in tables)
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, at timestamptz NOT NULL, what text NOT NULL)"
        ).format(table),
        sql.SQL(
            "INSERT INTO {} AS p (table_name, what, at) SELECT v.t, v.w, clock_timestamp() FROM (VALUES {}) v(t, w) "
            "ON CONFLICT (table_name) DO UPDATE SET at = EXCLUDED.at, what = EXCLUDED.what"
        ).format(table, rows),
    ]


# -- what the catalog says -----------------------------------------------------------------------

SERVING_STATE = b"""
SELECT
  (SELECT coalesce(array_agg(c.relname::text || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')), '{}')
     FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'r' AND starts_with(c.relname, '_pgf_svc_')),
  (SELECT coalesce(array_agg(c.relname::text), '{}')
     FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'v' AND starts_with(c.relname, '_pgf_guard_')),
  (SELECT coalesce(array_agg(c.relname::text || ' ' || tg.tgname::text || ' ' || tg.tgenabled::text), '{}')
     FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
    WHERE c.relnamespace = n.oid AND starts_with(tg.tgname, '_pgf_m_') AND NOT tg.tgisinternal)
FROM pg_namespace n WHERE n.nspname = $1
"""
"""Parameter: the schema. One row (none if the schema does not exist): its serving tables as
``name comment``, its guard views, its maintenance triggers as ``table trigger enabled``."""
