"""One load as a plan: ``Job.plan()`` is a generator that yields the statements and COPY streams
to run and gets their results back, so the same plan drives a sync and an async connection
(driver.py, driver_async.py) and holds every decision: catalog check, staging, duplicates,
the choice of upsert, rebuild or replace, the swap, maintenance after COMMIT, and which error a
failure becomes. No database I/O happens here.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from ..connections.translate import CONFLICT_STATES
from ..definitions import UPDATED_AT, Registry, parse_event_time, to_micros
from ..definitions.layout import EntityLayout
from ..errors import (
    ExtensionMissingError,
    FeatureValueError,
    LoadError,
    LoadInputError,
    LoadInterruptedError,
    SchemaDriftError,
)
from ..materialize import sql as m
from ..schema import LEGACY_EVENT_TIME, check_vector, ddl_lock, qualified, table_ddl
from .columns import Columns, plan_columns
from .copy import COPY_HEADER, COPY_TRAILER
from .dedupe import find_duplicates
from .eventtime import EventClock
from .keys import Keys, comparable
from .options import (
    MAX_EXAMPLES,
    REBUILD_FRACTION,
    REBUILD_MIN_ROWS,
    VACUUM_FRACTION,
    ApplyStrategy,
    LoadOptions,
    LoadProgress,
    LoadSummary,
    Mode,
    OnDuplicate,
    ProgressCallback,
    VacuumPolicy,
)
from .rich import element_of
from .sources import CsvSource, Source, open_sources
from .statements import (
    CATALOG,
    SERVING_OF,
    SWAP_STATE,
    Catalog,
    Query,
    SwapState,
    fill_sql,
    ident,
    kept_sql,
    new_indexes_sql,
    new_table_sql,
    serving_of_params,
    setting,
    stage_ddl,
    stage_table,
    swap_sql,
    upsert_sql,
)
from .validate import stage_batch

# Per-transaction settings: the rebuild's anti-join hashes the staged keys, index builds sort them.
TRANSACTION_SETTINGS = {"work_mem": "256MB", "maintenance_work_mem": "512MB", "max_parallel_maintenance_workers": "0"}


@dataclass(frozen=True)
class Op:
    """One statement for a driver to run; ``fetch``: send back the rows, else the rowcount."""

    query: Query
    params: tuple[Any, ...] = ()
    fetch: bool = False


@dataclass(frozen=True)
class Copy:
    """A COPY FROM STDIN fed by ``chunks`` (CPU work: drivers may run ``next()`` off the event loop)."""

    query: Query
    chunks: Iterator[bytes | memoryview]


Plan = Generator["Op | Copy", Any, LoadSummary]


class Job:
    """One load: its sources, options and running state. ``plan()`` does no database I/O: it yields
    statements and COPY streams for a driver (sync or async) to run, and returns the summary."""

    def __init__(
        self, registry: Registry, table: str, data: Any, options: LoadOptions, progress: ProgressCallback | None
    ):
        self.registry, self.table, self.options, self.progress = registry, registry.table(table), options, progress
        self.started = time.perf_counter()
        self.stamp = None  # the event time of rows without one, when the caller gives it (else the server's now())
        self.clock = EventClock(0, 0, None)  # set from the server's clock when the load starts
        self.summary = LoadSummary(qualified(registry, self.table).as_string(None), Mode(options.mode).value)
        self.phase, self.row = "opening", 0
        self.source: str | None = None
        self.keys: list[Keys] = []
        self.seqs: list[np.ndarray] = []
        self.stamps: list[np.ndarray] = []
        self.starts: list[tuple[int, str]] = []  # (first ordinal, source name)
        self.token = secrets.token_hex(4)
        self.maintenance_started: float | None = None
        self.table_rows = 0.0  # rows in the live table before the load (estimate)
        self.serving_layouts: list[
            EntityLayout
        ] = []  # layouts of the registry's materialized services reading the table
        self.newest_wins = not options.overwrite_newer  # applies when the source carries updated_at
        try:
            if options.updated_at is not None:
                try:
                    self.stamp = parse_event_time("updated_at=", options.updated_at)
                except FeatureValueError as exc:
                    raise LoadInputError(str(exc)) from None
            self.sources = open_sources(data, options.format)
            self.columns = self._check_sources()
        except LoadError as exc:
            exc.unchanged_table = self.summary.table
            raise
        self.summary.sources = [s.name for s in self.sources]
        for source, cols in zip(self.sources, self.columns):
            why = source.unverifiable(cols.source_columns) if options.require_checksums else None
            if why is not None:
                error = LoadInputError(
                    f"{source.name}: require_checksums (--require-checksums): {why}, so damage "
                    "that still decodes could not be detected; refusing to load it",
                    source=source.name,
                )
                error.unchanged_table = self.summary.table
                raise error
            check = source.integrity(cols.source_columns)
            if check is not None:
                self.summary.integrity[source.name] = check.describe()
                note = check.note()
                if note:
                    self.summary.notes.append(note)
        # Whether the same data could be loaded again from the start (see LoadInterruptedError).
        self.rereadable = all(s.rereadable for s in self.sources)
        self.total = None if any(s.rows is None for s in self.sources) else sum(s.rows or 0 for s in self.sources)

    def _check_sources(self) -> list[Columns]:
        """Every source's columns, before any database work. All sources must feed the same columns."""
        columns = [plan_columns(s, self.table, self.options) for s in self.sources]
        first = columns[0]
        for source, cols in zip(self.sources[1:], columns[1:]):
            if (cols.features, cols.updated_at) != (first.features, first.updated_at):
                raise LoadInputError(
                    f"{source.name} has columns {', '.join(cols.source_columns[1:])} but "
                    f"{self.sources[0].name} has {', '.join(first.source_columns[1:])}: one load takes "
                    "one set of columns",
                    source=source.name,
                )
        for source in self.sources:
            if source.rows == 0:
                raise LoadInputError(self._no_rows(source.name), source=source.name)
        return columns

    def _no_rows(self, name: str) -> str:
        return f"{name}: no rows; refusing to load an empty source" + (
            " (mode='replace' would empty the table)" if self.options.mode is Mode.REPLACE else ""
        )

    def _report(self, phase: str) -> None:
        self.phase = phase
        if self.progress:
            self.progress(LoadProgress(phase, self.summary.rows_read, self.total, self.source))

    def _where(self, seq: int) -> str:
        starts = [s for s, _ in self.starts]
        i = int(np.searchsorted(starts, seq, side="right")) - 1
        return f"{self.starts[i][1]} row {seq - self.starts[i][0] + 1}"

    # -- reading

    def _batches(self, source: Source, columns: Columns) -> Iterator[pa.RecordBatch]:
        stream = source.batches(columns.source_columns, columns.csv_types, self.options.batch_rows)
        while True:
            try:
                batch = next(stream)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                if isinstance(source, CsvSource) and "conversion error" in str(exc):
                    located = source.diagnose(columns.source_columns, columns.csv_types)
                    if located is not None:
                        raise located from None
                raise LoadInputError(
                    f"{source.name}: cannot read the rows after row {self.row:,}: {exc}",
                    source=source.name,
                    row=self.row + 1,
                ) from None
            yield batch

    def _chunks(self) -> Iterator[bytes | memoryview]:
        """The COPY payload, batch by batch; collects the staged keys for the duplicate check."""
        yield COPY_HEADER
        seq = 0
        summary = self.summary
        for source, columns in zip(self.sources, self.columns):
            self.source, self.row = source.name, 0
            self.starts.append((seq, source.name))
            for batch in self._batches(source, columns):
                try:
                    staged = stage_batch(batch, columns, self.options, self.clock, source.name, self.row + 1, seq)
                except LoadInputError:
                    # An invalid value in a damaged file is damage, not bad input: say which.
                    damage = source.suspect(columns.source_columns)
                    if damage is not None:
                        raise damage from None
                    raise
                self.row += batch.num_rows
                seq += batch.num_rows
                summary.rows_read += batch.num_rows
                summary.rejected += staged.rejected
                summary.examples += staged.examples[: MAX_EXAMPLES - len(summary.examples)]
                if len(staged.seqs):
                    self.keys.append(staged.keys)
                    self.seqs.append(staged.seqs)
                    if staged.stamps is not None:
                        self.stamps.append(staged.stamps)
                    yield staged.payload
                self._report("reading")
            if self.row == 0:
                raise LoadInputError(self._no_rows(source.name), source=source.name)
        yield COPY_TRAILER

    # -- applying

    def plan(self) -> Plan:
        schema, table, options, summary = self.registry.schema, self.table, self.options, self.summary
        live = qualified(schema, table)
        self.phase = "checking the table"
        for name, value in TRANSACTION_SETTINGS.items():
            yield Op(*setting(name, value))
        yield from self._read_clock()
        rows = yield Op(CATALOG, (live.as_string(None),), fetch=True)
        if not rows:  # the first load creates the table, in the same transaction
            # Under schema.py's DDL locks, so a concurrent `pgfeatures init` (or another first load)
            # waits for this COMMIT instead of failing on the uncommitted catalog rows, and vice versa.
            self.phase = "creating the table"
            found = yield Op(
                sql.SQL("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)"), (schema,), fetch=True
            )
            if not found[0][0]:
                yield Op(*ddl_lock(schema))
                yield Op(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident(schema)))
            yield Op(*ddl_lock(schema, table.name))
            has_vector = False
            if any(f.type.kind == "embedding" for f in table.features):
                # pgvector where it is installed (`pgfeatures init` creates it where it can), else an
                # embedding is a real[]; a load creates no extension.
                found = yield Op(
                    sql.SQL("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'vector')"), fetch=True
                )
                has_vector = bool(found[0][0])
                try:
                    check_vector(table, has_vector)
                except ExtensionMissingError as exc:
                    raise LoadError(f"cannot create {summary.table}: {exc} (or run `pgfeatures init` first)") from None
            for statement in table_ddl(schema, table, has_vector):
                yield Op(statement)
            rows = yield Op(CATALOG, (live.as_string(None),), fetch=True)
        catalog = Catalog.from_row(rows[0])
        self.table_rows = max(catalog.reltuples, 0.0)  # estimate; counted below when never analyzed
        if catalog.serving_triggers:
            from ..materialize.build import materialized_layouts

            self.serving_layouts = m.layouts_reading(materialized_layouts(self.registry), table.name)
        drift = catalog.drift(table)
        if drift:
            where = f" -d {self.registry.source}" if self.registry.source else ""
            fix = f"`pgfeatures plan{where}` shows the change, `pgfeatures apply{where}` makes it"
            if catalog.columns.get(UPDATED_AT) == LEGACY_EVENT_TIME:
                fix += " (it migrates the legacy event time to timestamptz)"
            raise SchemaDriftError(
                f"table {summary.table} differs from its definition: {'; '.join(drift)} ({fix}); nothing was loaded",
                problems={table.name: drift},
            )
        embeddings = {f.name: catalog.columns[f.name] for f in table.features if f.type.kind == "embedding"}
        self.columns = [dataclasses.replace(c, embedding_types=embeddings) for c in self.columns]
        columns = self.columns[0]
        texts = [
            f.name
            for f in columns.features
            if f.type.kind == "string" or (f.type.kind == "list" and element_of(f.type) == "string")
        ]
        if columns.entity.key_type == "text":
            texts.insert(0, f"text keys ({columns.key_column})")
        if texts and catalog.server_encoding.upper() not in ("UTF8", "UTF-8"):
            raise LoadError(
                f"cannot load {', '.join(texts)} into {summary.table}: the database's encoding is "
                f"{catalog.server_encoding}, and binary COPY sends text as UTF-8"
            )
        stage = stage_table(self.token)
        yield Op(stage_ddl(stage, columns))
        self._report("reading")
        yield Copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(stage), self._chunks())
        self.source = None
        unique = summary.rows_read - summary.rejected
        if unique == 0:
            raise LoadInputError(f"every row was rejected ({summary.rejected:,}); first: {summary.examples[0]}")
        self._report("deduplicating")
        newest = options.on_duplicate is OnDuplicate.NEWEST and columns.updated_at
        duplicates = find_duplicates(
            comparable(columns.entity.key_type, self.keys),
            np.concatenate(self.seqs),
            np.concatenate(self.stamps) if newest else None,
        )
        self.keys, self.seqs, self.stamps = [], [], []
        if duplicates is not None:
            if options.on_duplicate is OnDuplicate.REJECT:
                where = ", ".join(self._where(int(s)) for s in duplicates.first[:3])
                raise LoadInputError(
                    f"duplicate keys: {duplicates.keys:,} key(s) appear more than once, the first at {where} "
                    "(on_duplicate='newest' / --on-duplicate newest keeps the row with the newest "
                    "updated_at, 'last' / --on-duplicate last the last row)",
                    source=self.starts[0][1] if len(self.starts) == 1 else None,
                    column=columns.key,
                )
            # ::bigint[]: psycopg sends small ints as integer[], and seq = ANY(integer[]) (a cross-type
            # operator) compares every row with every element: 172 s for 200,000 duplicates among
            # 400,000 rows. Against bigint[] PostgreSQL hashes the array: 1.7 s for the whole load.
            yield Op(
                sql.SQL("DELETE FROM {} WHERE seq = ANY(%s::bigint[])").format(stage), (duplicates.superseded.tolist(),)
            )
            summary.superseded = len(duplicates.superseded)
            unique -= summary.superseded
        summary.strategy = yield from self._choose(catalog, unique)
        if summary.strategy == "upsert":
            self._report("merging")
            if catalog.serving_triggers:
                # A merge writes many keys, and its statement fires both the INSERT and the UPDATE triggers:
                # two passes over the serving rows, each in key order, which live writers of the service's
                # other tables could meet in the opposite order. So the table, then its serving tables are
                # locked first (against writers; readers go on): the order every writer takes, the table it
                # writes before the serving rows.
                yield Op(*setting("lock_timeout", f"{int(options.lock_timeout * 1000)}ms"))
                yield Op(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live))
                serving = [
                    row[0] for row in (yield Op(SERVING_OF, serving_of_params(live.as_string(None)), fetch=True))
                ]
                if serving:
                    yield Op(
                        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                            sql.SQL(", ").join(ident(schema, name) for name in serving)
                        )
                    )
            stamp = self.stamp is not None and not columns.updated_at
            rows = yield Op(
                upsert_sql(live, stage, columns, self.newest_wins, stamp), (self.stamp,) if stamp else (), fetch=True
            )
            summary.inserted, summary.updated = rows[0]
            summary.skipped_newer = unique - summary.inserted - summary.updated
        else:
            yield from self._swap(catalog, stage, unique)
        yield Op(sql.SQL("DROP TABLE {}").format(stage))
        self._report("committing")
        return summary

    def _read_clock(self) -> Generator[Op, Any, None]:
        """The server's clock at the load's start (its transaction's ``now()``, which every statement of
        the load sees): event times are filled and checked against it, never against this machine's."""
        options = self.options
        rows = yield Op(sql.SQL("SELECT now()"), fetch=True)
        now = to_micros(rows[0][0])
        skew = options.max_future_skew
        limit = None if skew is None else now + int(skew * 1_000_000)
        default = now if self.stamp is None else to_micros(self.stamp)
        self.clock = EventClock(now, default, limit, options.event_time_unit, options.event_time_zone, skew)
        if self.stamp is not None and limit is not None and default > limit:
            raise LoadInputError(f"updated_at={options.updated_at!r}: {self.clock.future(default)}")

    def _choose(self, catalog: Catalog, unique: int) -> Generator[Op, Any, str]:
        options, table = self.options, self.table
        blockers = catalog.swap_blockers(table)
        if options.mode is Mode.REPLACE or options.strategy is ApplyStrategy.REBUILD:
            if blockers:
                raise LoadError(
                    f"cannot swap in a new {self.summary.table}: it has {', '.join(blockers)}, which a new "
                    "table would not carry over; use mode='merge' with strategy='upsert'"
                )
            return "replace" if options.mode is Mode.REPLACE else "rebuild"
        if options.strategy is ApplyStrategy.UPSERT or options.partial:
            return "upsert"
        rows = catalog.reltuples
        if (
            rows < 0
        ):  # never analyzed: ANALYZE samples it (a count(*) would be a sequential scan, which the doctor flags)
            live = qualified(self.registry, table)
            yield Op(sql.SQL("ANALYZE {}").format(live))
            rows = (
                yield Op(
                    sql.SQL("SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = %s::regclass"),
                    (live.as_string(None),),
                    fetch=True,
                )
            )[0][0]
            self.table_rows = rows
        if unique < max(REBUILD_MIN_ROWS, REBUILD_FRACTION * rows):
            return "upsert"
        if blockers:
            self.summary.notes.append(f"upsert instead of rebuild: the table has {', '.join(blockers)}")
            return "upsert"
        return "rebuild"

    def _swap(self, catalog: Catalog, stage: sql.Identifier, unique: int) -> Generator[Op, Any, None]:
        schema, table, summary, options = self.registry.schema, self.table, self.summary, self.options
        live = qualified(schema, table)
        new_name = f"_pgf_new_{self.token}"
        new = ident(schema, new_name)
        columns = self.columns[0]
        if summary.strategy == "rebuild":
            # Live writers wait from here to COMMIT: their changes would not reach the new table.
            # SHARE ROW EXCLUSIVE lets readers in but conflicts with itself, so two rebuilds of one
            # table queue up instead of deadlocking at the swap.
            yield Op(*setting("lock_timeout", f"{int(options.lock_timeout * 1000)}ms"))
            yield Op(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live))
        summary.rows_before = (yield Op(sql.SQL("SELECT count(*) FROM {}").format(live), fetch=True))[0][0]
        for stmt in new_table_sql(schema, table, new_name, catalog):
            yield Op(stmt)
        self._report("filling the new table")
        stamp = self.stamp is not None and not columns.updated_at
        newest_wins = self.newest_wins and summary.strategy == "rebuild"  # replace: exactly the loaded rows
        written = yield Op(fill_sql(new, live, stage, columns, newest_wins, stamp), (self.stamp,) if stamp else ())
        summary.skipped_newer = unique - written
        kept = 0
        if summary.strategy == "rebuild":
            self._report("copying untouched rows")
            kept = yield Op(kept_sql(new, live, stage, table, columns, newest_wins))
            # kept: the untouched rows and the live rows newer than their staged row; the others were replaced
            summary.updated = summary.rows_before - kept
        summary.inserted = written - summary.updated
        summary.rows_after = written + kept
        self._report("indexing")
        for stmt in new_indexes_sql(schema, table, new_name, catalog):
            yield Op(stmt)
        self._report("analyzing")
        yield Op(sql.SQL("ANALYZE {}").format(new))  # statistics exist from the moment of the swap
        self._report("swapping")
        yield Op(*ddl_lock(schema, table.name))  # the DROP and RENAMEs: not while `init` looks at the table
        # Locks in one order: the live table against writers (a rebuild holds it already), then what the
        # swap carries over is read (a `pgfeatures materialize` needs a SHARE lock on the table, so it has
        # committed before this point or waits for this load: read at the load's start, its triggers and
        # guard view would be swapped away and the serving rows silently stop following the table), then
        # the serving tables its triggers write, against their other writers (a swap of another table of
        # the service waits here rather than locking this table's guard view in the other order), then the
        # live table's exclusive lock for the DROP and RENAMEs.
        yield Op(*setting("lock_timeout", f"{int(options.lock_timeout * 1000)}ms"))
        yield Op(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live))
        serving = [row[0] for row in (yield Op(SERVING_OF, serving_of_params(live.as_string(None)), fetch=True))]
        if serving:
            yield Op(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(ident(schema, name) for name in serving)
                )
            )
        path = (yield Op(sql.SQL("SELECT current_setting('search_path')"), fetch=True))[0][0]
        yield Op(*setting("search_path", ""))
        state = SwapState.from_row(((yield Op(SWAP_STATE, (live.as_string(None),), fetch=True)) or [None])[0])
        yield Op(*setting("search_path", path))
        # The exclusive locks, in the order readers take theirs: readers of serving rows lock the serving
        # table, then its guard view, then the tables the view reads. So the guard views go first (they
        # depend on the live table: re-created on the new one below), then the live table itself; the swap
        # never holds the table while it waits for a view a reader holds while waiting for the table.
        for name, _, _ in state.guards:
            yield Op(sql.SQL("DROP VIEW {}").format(ident(schema, name)))
        yield Op(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(live))
        # A merge changes only the staged keys: the serving rows of layouts this registry built are
        # recomputed for those keys (O(load)); any other layout's (another definition file's, or a
        # replace) through its refresh function, the table's whole slice (O(table)).
        refreshes: list[Query] = []
        staged = whole = 0
        for function in state.functions_of_triggers():
            layout = self._built_layout(function, state) if summary.strategy == "rebuild" else None
            if layout is not None:
                refreshes += self._staged_refresh(layout, stage)
                staged += 1
            elif (refresh := m.refresh_of_trigger(function)) in state.functions:
                refreshes.append(sql.SQL("SELECT {}()").format(ident(schema, refresh)))
                whole += 1
        legacy = (m.LEGACY_REFRESH_PREFIX + table.name)[:63]
        if legacy in state.functions:  # serving rows of a version before LAYOUT_VERSION 2
            refreshes.append(sql.SQL("SELECT {}()").format(ident(schema, legacy)))
            whole += 1
        if staged:
            # The refresh joins the staged keys: without statistics the planner takes the stage for
            # 200 rows and looks each serving row up by index (1,000,000 lookups, 6 s of a 1M-row
            # merge, measured); with them, it hashes (bench-load --part write-cost).
            yield Op(sql.SQL("ANALYZE {}").format(stage))
        for stmt, params in swap_sql(schema, table, new_name, catalog, state, refreshes):
            yield Op(stmt, params)
        if staged or whole:
            summary.notes.append(
                "materialized services: serving rows recomputed for the staged keys"
                if not whole
                else "materialized services: the table's slice of every serving row recomputed"
            )

    def _built_layout(self, function: str, state: SwapState) -> EntityLayout | None:
        """The registry's layout that trigger function ``function`` keeps in step, if its triggers are all
        on the table (then its rows are in step with the live table and only the staged keys change)."""
        for layout in self.serving_layouts:
            if m.trigger_name(layout, self.table) == function:
                expected = {f"{function}_{event.lower()}" for event in m.EVENTS}
                return layout if expected <= state.trigger_names else None
        return None

    def _staged_refresh(self, layout: EntityLayout, stage: sql.Identifier) -> list[Query]:
        """The statements recomputing ``layout``'s serving rows of the staged keys, the serving table locked
        against other writers first (the order every writer takes: no deadlock, see materialize/sql.py)."""
        schema, table = self.registry.schema, self.table
        changed = m.changed_by_stage(schema, table, stage)
        new_keys = self.summary.inserted > 0  # keys new to this table may be new to the entity
        return [m.lock_table_sql(schema, layout), *m.maintain_sql(schema, layout, table, changed, new_keys)]

    # -- after COMMIT

    def finish(self) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        self.phase = "committed"

    def maintenance(self) -> Query | None:
        """The statement to run after COMMIT (None: nothing pays); its effect goes into the summary.

        VACUUM pays when the table has a covering index (only VACUUM sets the visibility map that
        index-only scans need) or after an upsert that updated many rows (dead row versions), and
        for the serving tables of materialized services after any load that wrote many rows (their
        rows were rewritten in place, whatever the strategy). A rebuilt or replaced table was
        analyzed before the swap and has no dead rows.
        """
        summary, options, table = self.summary, self.options, self.table
        live = qualified(self.registry, table)
        if options.vacuum is VacuumPolicy.NEVER:
            summary.maintenance = "none (vacuum='never'); autovacuum will get to the table"
            return None
        many_updates = summary.strategy == "upsert" and summary.updated >= VACUUM_FRACTION * max(self.table_rows, 1)
        # Every key the load wrote rewrote its serving rows in place (rebuilds too): many dead row
        # versions there, which the next large write would otherwise prune page by page, in its own
        # transaction (a full-page image per page: 600 MB of WAL in a 1M-row merge, measured).
        names = [layout.table_name for layout in self.serving_layouts]
        serving = (
            [ident(self.registry.schema, name) for name in names]
            if (summary.updated + summary.inserted >= VACUUM_FRACTION * max(self.table_rows, 1))
            else []
        )
        self.maintenance_started = time.perf_counter()
        if options.vacuum is VacuumPolicy.ALWAYS or table.covering_index or many_updates or serving:
            why = ["visibility map set, so the covering index serves index-only scans"] if table.covering_index else []
            why += ["dead row versions of the updated rows reclaimed"] if many_updates else []
            why += [f"dead serving-row versions reclaimed in {', '.join(names)}"] if serving else []
            summary.maintenance = "VACUUM (ANALYZE)" + (f": {'; '.join(why)}" if why else "")
            self._report("vacuuming")
            return sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join([live, *serving]))
        if summary.strategy != "upsert":
            summary.maintenance = "ANALYZE before the swap: a fresh table has no dead rows to vacuum"
            return None
        summary.maintenance = "ANALYZE: planner statistics refreshed"
        self._report("analyzing")
        return sql.SQL("ANALYZE {}").format(live)

    def maintenance_failed(self, exc: BaseException) -> None:
        self.summary.maintenance = (
            f"{self.summary.maintenance.split(':')[0]} failed ({exc}); the load itself is committed"
        )

    def finish_maintenance(self) -> LoadSummary:
        if self.maintenance_started is not None:
            self.summary.maintenance_seconds = time.perf_counter() - self.maintenance_started
        self._report("done")
        return self.summary

    def failure(self, exc: BaseException) -> BaseException:
        """The error to raise for ``exc`` (raised inside the load's transaction, so rolled back).

        A LoadInterruptedError says whether a retry is safe: ``committed`` (False, or None when
        the connection died during COMMIT) and ``source_rereadable`` (the data can be read again).
        """
        where = self.phase + (f" {self.source} near row {self.row:,}" if self.source else "")
        if isinstance(exc, LoadError):
            error = exc
        elif isinstance(exc, psycopg.errors.LockNotAvailable):
            error = LoadError(
                f"could not lock {self.summary.table} within {self.options.lock_timeout:g}s ({where}): a "
                "long transaction holds it (see pg_stat_activity)"
            )
        elif isinstance(exc, psycopg.Error) and exc.sqlstate in CONFLICT_STATES:
            # A deadlock or serialization failure: PostgreSQL rolled the whole load back, so running it
            # again is safe (the store does, once, when the source can be read again).
            error = LoadInterruptedError(
                f"the load was rolled back, conflicting with a concurrent write ({where}): {exc}"
            )
        elif isinstance(exc, psycopg.errors.QueryCanceled):
            error = LoadInterruptedError(f"load cancelled ({where}): {exc}")
        elif isinstance(exc, psycopg.OperationalError) and (exc.sqlstate or "08").startswith(("08", "57P")):
            # No SQLSTATE (the socket died), connection exceptions, or the server shutting the session down.
            if self.phase == "commit":
                error = LoadInterruptedError(
                    f"connection lost during COMMIT of the load into {self.summary.table}: it may "
                    f"or may not have been applied; check the table ({exc})"
                )
                error.committed = None
                error.source_rereadable = self.rereadable
                return error  # not "unchanged": the COMMIT may have gone through
            error = LoadInterruptedError(f"database connection lost ({where}): {exc}")
        elif isinstance(exc, psycopg.Error):
            error = LoadError(f"database error ({where}): {exc}")
        else:
            return exc
        if isinstance(error, LoadInterruptedError):
            error.committed = False
            error.source_rereadable = self.rereadable
        error.unchanged_table = self.summary.table
        return error


def check_idle(status: Any) -> None:
    """A load runs its own transaction: refuse a connection that is inside one."""
    if status != psycopg.pq.TransactionStatus.IDLE:
        raise LoadError("a load runs in its own transaction: pass a connection that is not inside one")


def step(plan: Plan, result: Any) -> Op | Copy | None:
    """The plan's next operation, None when it is done. (StopIteration must not cross a thread boundary:
    asyncio cannot carry it through a Future.)"""
    try:
        return plan.send(result)
    except StopIteration:
        return None
