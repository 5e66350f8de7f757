"""The doctor's checks: pure functions from ``Facts`` to ``Finding`` verdicts, in order.

``schema``      the live table matches its definition (drift fails every other check's premise)
``prepared``    a serving connection of a FeatureStore has its statements prepared after warm-up
``cache``       lookups at random places hit shared_buffers for every table and index (target > 99 %)
``scans``       no sequential scan read rows of a feature table (pg_stat_user_tables)
``index_only``  lookups use the key index (plans probed with sequential scans disabled, as on a big
                table); covered lookups are index-only for real: heap fetches, visibility-map coverage
``row_width``   bytes per row, and column types that widen rows, with the narrower type to use
``working_set`` what lookups read (tables, indexes) against shared_buffers and effective_cache_size
``vacuum``      dead rows (counted afresh when the lazy statistics counters claim many), autovacuum
                switched on (server and table), statistics present
``materialized`` every materialized service is built for its definition, its maintenance triggers are in
                place and enabled, and its serving rows equal a fresh table-by-table read on a sample of keys
                (``full``: every serving row equals the tables as stored)

Each check claims only what it measured: a verdict from numbers that may be stale says so and is
at most a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from psycopg import sql

from ..definitions import EVENT_TIME, UPDATED_AT, WIDE_TYPES
from ..definitions.types import RICH_ADVICE
from ..schema import table_ddl
from ..warmup import Blocks
from .facts import Facts, ServerFacts, TableFacts
from .report import SERVER, Finding, Report, Status

# Thresholds. Each is explained in docs/doctor.md.
HIT_PASS, HIT_WARN = 0.99, 0.90  # probe hit ratio per relation
HIT_MIN_BLOCKS = 10  # a relation the probe read fewer blocks of (an empty index's metapage) is not judged
HEAP_FETCH_WARN, HEAP_FETCH_FAIL = 0.01, 0.10  # heap fetches per row returned by an index-only scan
VM_WARN = 0.90  # all-visible pages / pages, for tables read index-only
DEAD_WARN, DEAD_FAIL = 0.05, 0.20  # dead rows / (live + dead)
WORKING_SET_SHARE = 0.75  # of shared_buffers the feature tables may fill and still "fit"
SMALL_TABLE_PAGES = 8  # below this, a sequential scan is the planner's right choice
LONG_XACT_SECONDS = 300  # an open transaction older than this holds VACUUM back for too long
STALE_SECONDS = 600  # statistics counters this soon after a VACUUM may still hold counts flushed after it


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _vacuum(t: TableFacts) -> str:
    return f"VACUUM (ANALYZE) {t.ident}"


def _regclass(schema: str, name: str) -> str:
    """A relation name as a quoted SQL literal, for functions that take a regclass."""
    return sql.Literal(sql.Identifier(schema, name).as_string(None)).as_string(None)


def check_schema(f: Facts) -> list[Finding]:
    out = []
    for t in f.tables.values():
        if not t.exists:
            ddl = [
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(f.registry.schema)).as_string(None),
                *(statement.as_string(None) for statement in table_ddl(f.registry.schema, t.table)),
            ]
            out.append(
                Finding(
                    "schema",
                    t.subject,
                    Status.FAIL,
                    "table is missing",
                    "create it: pgfeatures init (with the same --definitions)",
                    tuple(ddl),
                )
            )
        elif t.drift:
            out.append(
                Finding(
                    "schema",
                    t.subject,
                    Status.FAIL,
                    "; ".join(t.drift),
                    "the live table differs from its definition: `pgfeatures plan` (same --definitions) "
                    "shows the change, `pgfeatures apply` makes it online",
                    measured={"drift": list(t.drift)},
                )
            )
        else:
            out.append(Finding("schema", t.subject, Status.PASS, "matches its definition"))
    return out


def check_prepared(f: Facts) -> list[Finding]:
    p = f.prepared
    advice = (
        "serving connections must be made with prepare_threshold=0 (pgfeatures pools are) and reach "
        "PostgreSQL directly or through a pooler that keeps prepared statements (session pooling, "
        "or PgBouncer >= 1.21 with max_prepared_statements > 0); without them every request is planned again"
    )
    if p is None or p.error:
        reason = p.error if p else "not checked"
        return [Finding("prepared", SERVER, Status.FAIL, f"could not inspect a serving connection: {reason}", advice)]
    missing = [s for s in p.expected if s not in p.prepared]
    n, k = len(p.expected), len(p.expected) - len(missing)
    measured = {
        "expected": n,
        "prepared": k,
        "pid": p.pid,
        "application_name": p.application_name,
        "statements": [
            {
                "statement": s,
                "prepared": s in p.prepared,
                "generic_plans": p.plans.get(s, (None, None))[0],
                "custom_plans": p.plans.get(s, (None, None))[1],
                "pg_stat_statements": p.served.get(s),
            }
            for s in p.expected
        ],
    }
    value = f"{k}/{n} serving statements prepared on connection {p.application_name!r} (pid {p.pid})"
    if p.served:
        calls = sum(v["calls"] for v in p.served.values())
        value += f"; pg_stat_statements: {calls:,} calls of them"
    if not missing:
        return [Finding("prepared", SERVER, Status.PASS, value, measured=measured)]
    status = Status.FAIL if k == 0 else Status.WARN
    return [Finding("prepared", SERVER, status, value, advice, measured=measured)]


def _read_by_lookups(f: Facts, t: TableFacts) -> set[str]:
    """The relations lookups of ``t`` read: the indexes their plans use (else those the probe read
    enough of to tell), and the heap unless lookups are index-only without heap fetches."""
    tp = f.probe.tables.get(t.table.name)
    scans = tp.scans if tp else ()
    indexes = {s.index for s in scans if s.index} or {
        i.name for i in t.indexes if f.probe.blocks.get(i.name, Blocks(0, 0)).fetched >= HIT_MIN_BLOCKS
    }
    reads_heap = not scans or any(s.node != "Index Only Scan" or (s.heap_fetches or 0) > 0 for s in scans)
    return indexes | ({t.table.name} if reads_heap else set())


def _blocks_ratio(row: Mapping[str, Any], prefix: str) -> float | None:
    hit, read = int(row.get(f"{prefix}_blks_hit") or 0), int(row.get(f"{prefix}_blks_read") or 0)
    return hit / (hit + read) if hit + read else None


def _cumulative(t: TableFacts) -> dict[str, float | None]:
    """pg_statio hit ratios since the last statistics reset: the heap, then each index."""
    return {
        t.table.name: _blocks_ratio(t.statio, "heap"),
        **{i.name: _blocks_ratio(i.statio, "idx") for i in t.indexes},
    }


def check_cache(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        tp = f.probe.tables.get(t.table.name)
        cumulative = _cumulative(t)
        if tp is not None and tp.error:
            out.append(
                Finding(
                    "cache",
                    t.subject,
                    Status.WARN,
                    f"probe failed: {tp.error}",
                    "see the schema check",
                    measured={"cumulative_hit_ratio": cumulative},
                )
            )
            continue
        names = [t.table.name, *(i.name for i in t.indexes)]
        ratios = {n: f.probe.blocks[n].ratio for n in names if n in f.probe.blocks and f.probe.blocks[n].fetched}
        # Judge what lookups read, of which the probe read enough blocks to tell (not an empty index's metapage).
        read = _read_by_lookups(f, t)
        judged = {n: r for n, r in ratios.items() if n in read and f.probe.blocks[n].fetched >= HIT_MIN_BLOCKS}
        worst = min((r for r in judged.values() if r is not None), default=1.0)
        status = Status.PASS if worst >= HIT_PASS else Status.WARN if worst >= HIT_WARN else Status.FAIL
        parts = ", ".join(f"{n} {_pct(r)}" + ("" if n in judged else " (not judged)") for n, r in ratios.items())
        since_reset = ", ".join(f"{n} {_pct(r)}" for n, r in cumulative.items())
        value = f"{f.probe.places}: hit {_pct(f.probe.total(judged).ratio)} ({parts}); since stats reset: {since_reset}"
        measured = {"probe_hit_ratio": ratios, "judged": sorted(judged), "cumulative_hit_ratio": cumulative}
        if status is Status.PASS:
            out.append(Finding("cache", t.subject, status, value, measured=measured))
            continue
        fix = (
            "CREATE EXTENSION IF NOT EXISTS pg_prewarm",
            *(f"SELECT pg_prewarm({_regclass(f.registry.schema, n)})" for n in names),
        )
        out.append(
            Finding(
                "cache",
                t.subject,
                status,
                value,
                "lookups read blocks from outside shared_buffers: warm the cache with 'pgfeatures warmup' "
                "(pg_prewarm loads the table and its indexes) after every restart; if the ratio falls again "
                "under load, the working set does not fit (see working_set)",
                fix,
                measured,
            )
        )
    return out


def check_scans(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        seq, idx = int(t.stat.get("seq_scan") or 0), int(t.stat.get("idx_scan") or 0)
        seq_rows = int(t.stat.get("seq_tup_read") or 0)
        last = t.stat.get("last_seq_scan")
        measured = {"seq_scan": seq, "seq_tup_read": seq_rows, "idx_scan": idx, "last_seq_scan": last}
        value = f"{idx:,} index scans; {seq:,} sequential scans read {seq_rows:,} rows"
        if last and seq_rows:
            value += f" (last {last})"
        if seq_rows == 0:
            out.append(Finding("scans", t.subject, Status.PASS, value, measured=measured))
        elif t.last_scan_was_ours and t.full_pass is not None:
            at, what = t.full_pass
            out.append(
                Finding(
                    "scans",
                    t.subject,
                    Status.PASS,
                    value,
                    f"the last sequential scan was pgfeatures' own full pass ({what}, {at}); readers did none since. "
                    "(Scans before it are not told apart: reset the counters after a build to watch from a clean slate.)",
                    measured={**measured, "own_full_pass": f"{what} at {at}"},
                )
            )
        elif t.pages < SMALL_TABLE_PAGES:
            out.append(
                Finding(
                    "scans",
                    t.subject,
                    Status.PASS,
                    value,
                    f"a table of {t.pages} pages is scanned sequentially by choice: that is right",
                    measured=measured,
                )
            )
        else:
            name = t.ident
            out.append(
                Finding(
                    "scans",
                    t.subject,
                    Status.FAIL,
                    value,
                    f"a statement reads {t.subject} without its key index: find it in pg_stat_statements (queries "
                    f"naming the table, by shared_blks_read); lookups must filter on {t.table.key_column} = <key>; check the "
                    "primary key (schema check) and that no session turns enable_indexscan off. One-off scans (an index "
                    "build, a count(*)) are harmless; once explained, reset the counters: SELECT "
                    f"pg_stat_reset_single_table_counters({_regclass(f.registry.schema, t.table.name)}::regclass); ANALYZE {name} "
                    "(ANALYZE restores the dead-row counts the reset zeroes)",
                    measured=measured,
                )
            )
    return out


def check_index_only(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        tp = f.probe.tables.get(t.table.name)
        scans = tp.scans if tp else ()
        kinds = sorted({s.node for s in scans})
        vm = t.vm_coverage
        vm_text = f"visibility map covers {_pct(vm)} of {t.pages:,} pages"
        measured: dict[str, Any] = {
            "nodes": kinds,
            "vm_coverage": vm,
            "pages": t.pages,
            "vm_source": "pg_visibility" if t.all_visible is not None else "pg_class.relallvisible",
        }
        if tp and tp.error:
            out.append(
                Finding(
                    "index_only",
                    t.subject,
                    Status.WARN,
                    f"probe failed: {tp.error}",
                    "see the schema check",
                    measured=measured,
                )
            )
            continue
        if any(s.node == "Seq Scan" for s in scans):
            # The probe disables sequential and bitmap scans: a Seq Scan here means no index can serve
            # the lookup at all, not that the planner preferred scanning a small table.
            out.append(
                Finding(
                    "index_only",
                    t.subject,
                    Status.FAIL,
                    f"lookups run as {', '.join(kinds)} even with sequential scans disabled",
                    f"the key lookup can use no index: {t.subject} needs its primary key on {t.table.key_column} "
                    "(see the schema check)",
                    measured=measured,
                )
            )
            continue
        ios = [s for s in scans if s.node == "Index Only Scan"]
        if not t.table.covering_index:
            used = (
                ", ".join(sorted({f"{s.node} using {s.index}" for s in scans})) or "no keys to explain (never analyzed)"
            )
            out.append(
                Finding(
                    "index_only",
                    t.subject,
                    Status.PASS,
                    f"{used}: each found key also reads a heap page",
                    "covering_index = true would make lookups index-only (measured effect: docs/doctor.md)",
                    measured=measured,
                )
            )
            continue
        vacuum = (_vacuum(t),)
        why = (
            "index-only scans read the heap for every row on a page not marked all-visible; VACUUM marks "
            "them, except rows newer than the oldest open transaction (see the vacuum check). Keep autovacuum "
            "frequent on tables updated in place: ALTER TABLE "
            f"{t.ident} SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02)"
        )
        if scans and not ios:
            used = ", ".join(sorted({f"{s.node} using {s.index}" for s in scans}))
            out.append(
                Finding(
                    "index_only",
                    t.subject,
                    Status.FAIL,
                    f"{used}, not index-only; {vm_text}",
                    "the planner skips the covering index while the visibility map is unset: " + why,
                    vacuum,
                    measured,
                )
            )
            continue
        rows = sum(s.rows for s in ios)
        fetches = sum(s.heap_fetches or 0 for s in ios)
        ratio = fetches / rows if rows else 0.0
        measured.update(heap_fetches=fetches, rows=rows, heap_fetch_ratio=ratio)
        if ios:
            value = (
                f"Index Only Scan using {ios[0].index}: {fetches:,.0f} heap fetches for {rows:,} rows "
                f"({_pct(ratio)}); {vm_text}"
            )
        else:
            value = f"no keys to explain (never analyzed); {vm_text}"
        if ratio > HEAP_FETCH_FAIL or (not ios and vm < VM_WARN):
            status = Status.FAIL
        elif ratio > HEAP_FETCH_WARN or vm < VM_WARN:
            status = Status.WARN
        else:
            out.append(Finding("index_only", t.subject, Status.PASS, value, measured=measured))
            continue
        out.append(Finding("index_only", t.subject, status, value, why, vacuum, measured))
    return out


_TYPE_MODIFIERS = re.compile(r"\(.*\)")
BIGINT_ADVICE = "8 bytes where the values ANALYZE sampled fit in integer (4 bytes, up to ±2^31); use integer"


def _base_type(type_name: str) -> str:
    return _TYPE_MODIFIERS.sub("", type_name).strip()


def check_row_width(f: Facts) -> list[Finding]:
    out = []
    for t in f.existing:
        variable: list[str] = []
        fixed: list[str] = []
        declared: list[str] = []  # rich features the definition asks for: what they cost, not a fault
        kinds = {feature.name: feature.type for feature in t.table.features}
        for c in t.columns:
            if c.name == t.table.key_column:  # its type is the entity's key type, not a feature's
                continue
            base = _base_type(c.type)
            if c.name == UPDATED_AT and base == EVENT_TIME.name:  # pgfeatures' own event time, 8 bytes by design
                continue
            declared_type = kinds.get(c.name)
            if declared_type is not None and declared_type.kind in RICH_ADVICE and c.type in declared_type.sql_names():
                width = f", {c.avg_width} B on average" if c.avg_width is not None else ""
                declared.append(f"{c.name} {declared_type.spec}{width}: {RICH_ADVICE[declared_type.kind]}")
                continue
            if base in WIDE_TYPES:
                (variable if c.varlena else fixed).append(f"{c.name} {c.type}: {WIDE_TYPES[base]}")
            elif base == "bigint" and c.fits_integer:
                fixed.append(f"{c.name} bigint: {BIGINT_ADVICE}")
        per_row = (t.heap_bytes + t.toast_bytes) / max(t.rows, 1)
        widths = [c.avg_width for c in t.columns]
        data = sum(w for w in widths if w is not None) if None not in widths else None
        value = f"{per_row:,.0f} B/row on disk" + (f" ({data} B of column data)" if data is not None else "")
        if t.toast_bytes:
            value += f", {_size(t.toast_bytes)} in TOAST"
        measured = {
            "bytes_per_row": per_row,
            "column_bytes": data,
            "heap_bytes": t.heap_bytes,
            "toast_bytes": t.toast_bytes,
            "wide_columns": [*variable, *fixed],
            "rich_columns": declared,
        }
        if declared:
            value += "; declared rich features: " + "; ".join(declared)
        if variable:
            status = Status.FAIL
        elif fixed:
            status = Status.WARN
        else:
            out.append(
                Finding("row_width", t.subject, Status.PASS, value + "; narrow fixed-width types", measured=measured)
            )
            continue
        advice = (
            "; ".join([*variable, *fixed]) + ". Changing a type rewrites the table under an exclusive lock "
            "(ALTER TABLE ... ALTER COLUMN ... TYPE ... USING ...) and changes what readers get: plan it"
        )
        out.append(Finding("row_width", t.subject, status, value, advice, measured=measured))
    return out


def _lookup_bytes(f: Facts, t: TableFacts) -> int:
    """Bytes of the relations lookups of ``t`` read: what must stay cached. Everything when the probe failed."""
    tp = f.probe.tables.get(t.table.name)
    if tp is None or tp.error:
        return t.total_bytes
    read = _read_by_lookups(f, t)
    return sum(i.bytes for i in t.indexes if i.name in read) + (
        t.heap_bytes + t.toast_bytes if t.table.name in read else 0
    )


def check_working_set(f: Facts) -> list[Finding]:
    s = f.server
    total = sum(_lookup_bytes(f, t) for t in f.existing)
    stored = sum(t.total_bytes for t in f.existing)
    value = (
        f"lookups read {_size(total)} of tables and indexes ({_size(stored)} stored); shared_buffers "
        f"{_size(s.shared_buffers)}, effective_cache_size {_size(s.effective_cache_size)}"
    )
    measured = {
        "working_set_bytes": total,
        "stored_bytes": stored,
        "shared_buffers_bytes": s.shared_buffers,
        "effective_cache_size_bytes": s.effective_cache_size,
    }
    if total <= WORKING_SET_SHARE * s.shared_buffers:
        return [Finding("working_set", SERVER, Status.PASS, value, measured=measured)]
    options = (
        f"raise shared_buffers to at least {_size(total / WORKING_SET_SHARE)} (needs a restart), "
        "make hot tables index-only (covering_index = true: their heap then leaves the working set), or "
        "serve reads from a replica with its own memory. Separate read and write pools do not help: "
        "shared_buffers is one cache shared by every backend of the server"
    )
    if total <= s.effective_cache_size:
        return [
            Finding(
                "working_set",
                SERVER,
                Status.WARN,
                value,
                "the working set exceeds what shared_buffers can hold for it: misses are copied from the OS "
                "page cache (microseconds each, and the two caches hold the same pages twice); " + options,
                measured=measured,
            )
        ]
    return [
        Finding(
            "working_set",
            SERVER,
            Status.FAIL,
            value,
            "the working set exceeds effective_cache_size too: misses go to disk; " + options,
            measured=measured,
        )
    ]


def _dead_rows(f: Facts, t: TableFacts) -> tuple[int, int, str, str | None]:
    """(live, dead, source, doubt): a fresh count when there is one, else the statistics counters,
    with why they may be stale when they claim many dead rows."""
    if t.exact is not None:
        return t.exact.live, t.exact.dead, "pgstattuple_approx", None
    doubt = None
    if t.counted_dead_ratio > DEAD_WARN:
        recent = (
            f" the last VACUUM ran {t.vacuumed_ago:,.0f}s ago, and a session's counts reach them up to a second "
            "after it commits, so counts of a load it vacuumed can land after that VACUUM and stay"
            if t.vacuumed_ago is not None and t.vacuumed_ago < STALE_SECONDS
            else ""
        )
        doubt = (
            f"these are pg_stat_user_tables' counters, updated lazily, and may be stale:{recent or ' they are not a count'}; "
            f"{f.server.pgstattuple or 'pgstattuple was not used'}. For an exact count: CREATE EXTENSION pgstattuple "
            "(or grant pg_stat_scan_tables) and run the doctor again"
        )
    return t.live_rows, t.dead_rows, "pg_stat_user_tables", doubt


def check_vacuum(f: Facts) -> list[Finding]:
    out = [_vacuum_server(f.server)]
    for t in f.existing:
        live, dead, source, doubt = _dead_rows(f, t)
        ratio = dead / (live + dead) if live + dead else 0.0
        enabled = t.reloptions.get("autovacuum_enabled", "true").lower() not in ("false", "off", "0", "no")
        scale = t.reloptions.get("autovacuum_vacuum_scale_factor", f"{f.server.vacuum_scale_factor:g}")
        last_analyze = t.stat.get("last_analyze") or t.stat.get("last_autoanalyze")
        vacuumed = t.stat.get("last_vacuum") or t.stat.get("last_autovacuum")
        value = (
            f"{dead:,} dead / {live:,} live rows ({_pct(ratio)}, {source}); last vacuum {vacuumed or 'never'}, "
            f"last analyze {last_analyze or ('unknown' if t.analyzed else 'never')}; "
            f"autovacuum {'on' if enabled else 'OFF'} (scale factor {scale})"
        )
        measured = {
            "dead_rows": dead,
            "live_rows": live,
            "dead_ratio": ratio,
            "dead_rows_source": source,
            "counter_dead_rows": t.dead_rows,
            "counter_live_rows": t.live_rows,
            "autovacuum_enabled": enabled,
            "scale_factor": scale,
            "last_vacuum": vacuumed,
            "last_analyze": last_analyze,
            "seconds_since_vacuum": t.vacuumed_ago,
        }
        status, advice, fix = Status.PASS, [], []
        if not enabled:
            status = Status.FAIL
            advice.append("autovacuum is disabled on this table: dead rows and unset visibility-map pages accumulate")
            fix.append(f"ALTER TABLE {t.ident} RESET (autovacuum_enabled)")
        few = dead < f.server.vacuum_threshold and enabled  # autovacuum's own floor: harmless in any table
        if few and ratio > DEAD_WARN:
            value += f"; below autovacuum_vacuum_threshold ({f.server.vacuum_threshold}): a few updated rows, left to autovacuum"
        elif ratio > DEAD_WARN:
            # Only a count can fail the check; counters that may be stale can only warn.
            level = Status.FAIL if ratio > DEAD_FAIL and doubt is None else Status.WARN
            status = max(status, level, key=lambda x: x.rank)
            advice.append(
                f"{_pct(ratio)} of the rows are dead: lookups step over them and index-only scans visit the heap; "
                f"VACUUM now, and for a table updated in place lower the trigger: ALTER TABLE {t.ident} "
                "SET (autovacuum_vacuum_scale_factor = 0.02)"
            )
            if doubt:
                advice.append(doubt)
            fix.append(_vacuum(t))
        if not t.analyzed and t.rows:
            status = max(status, Status.WARN, key=lambda x: x.rank)
            advice.append("never analyzed: the planner guesses its size and the doctor has no keys to explain")
            fix.append(_vacuum(t))
        out.append(Finding("vacuum", t.subject, status, value, "; ".join(advice), tuple(dict.fromkeys(fix)), measured))
    return out


def _vacuum_server(s: ServerFacts) -> Finding:
    who, age = s.oldest_xact or ("none", 0.0)
    value = (
        f"autovacuum {'on' if s.autovacuum else 'OFF'}, track_counts {'on' if s.track_counts else 'OFF'}; "
        f"oldest open transaction: {who}" + (f", {age:,.0f}s" if s.oldest_xact else "")
    )
    measured = {
        "autovacuum": s.autovacuum,
        "track_counts": s.track_counts,
        "oldest_xact": who,
        "oldest_xact_seconds": age,
    }
    off = [name for name, on in (("autovacuum", s.autovacuum), ("track_counts", s.track_counts)) if not on]
    if off:
        return Finding(
            "vacuum",
            SERVER,
            Status.FAIL,
            value,
            "without autovacuum dead rows pile up and the visibility map decays; turn it back on: "
            + "; ".join(f"ALTER SYSTEM SET {name} = on" for name in off)
            + "; SELECT pg_reload_conf()",
            measured=measured,
        )
    if age > LONG_XACT_SECONDS:
        return Finding(
            "vacuum",
            SERVER,
            Status.WARN,
            value,
            "VACUUM can neither remove rows that died after this transaction began nor mark newer pages "
            "all-visible, so index-only scans decay while it stays open: end it (pg_terminate_backend(pid) "
            "if it is stuck; COMMIT PREPARED / ROLLBACK PREPARED a forgotten prepared transaction). "
            "Replication slots (pg_replication_slots.xmin) hold VACUUM back the same way",
            measured=measured,
        )
    return Finding("vacuum", SERVER, Status.PASS, value, measured=measured)


SERVICES = "services"  # the subject of the materialized check when no service is materialized


def check_materialized(f: Facts) -> list[Finding]:
    if not f.materialized:
        return [Finding("materialized", SERVICES, Status.PASS, "no materialized services in the definitions")]
    out = []
    for name, s in f.materialized.items():
        subject, rebuild = f"service {name}", f"pgfeatures materialize {name}"
        measured: dict[str, Any] = {
            "state": s.state,
            "sampled": s.sampled,
            "differing": s.differing,
            "examples": [e.describe() for e in s.examples],
            "disabled_triggers": list(s.disabled_triggers),
            "missing_triggers": list(s.missing_triggers),
            "command": rebuild,
            "full": s.full,
            "rows": s.rows,
            "differing_per_table": dict(s.per_table),
        }
        if s.state in ("missing", "stale"):
            what = "missing" if s.state == "missing" else "built for another definition of the service (stale)"
            out.append(
                Finding(
                    "materialized",
                    subject,
                    Status.WARN,
                    f"serving rows {what}",
                    f"reads of {name} go table by table meanwhile (correct, one lookup per table instead of "
                    f"one per entity); build them: {rebuild}",
                    measured=measured,
                )
            )
            continue
        if s.error:
            out.append(
                Finding(
                    "materialized",
                    subject,
                    Status.WARN,
                    f"could not compare the serving rows: {s.error}",
                    "see the schema check",
                    measured=measured,
                )
            )
            continue
        problems, advice, fix = [], [], []
        if s.differing and s.full:
            tables = ", ".join(f"{t}: {n:,}" for t, n in s.per_table.items())
            problems.append(
                f"{s.differing:,} of {s.sampled:,} keys differ from the tables ({tables}); e.g. "
                + "; ".join(e.describe() for e in s.examples)
            )
        elif s.differing:
            problems.append(
                f"{s.differing:,} of {s.sampled:,} sampled keys differ from a fresh read of the tables; e.g. "
                + "; ".join(e.describe() for e in s.examples[:1])
            )
        if s.differing:
            advice.append(
                "the serving rows were changed behind pgfeatures' back (a trigger disabled, a session with "
                "session_replication_role = replica, a direct write to the serving table): reads of the "
                f"service return stale values. Rebuild them: {rebuild}"
            )
        if s.disabled_triggers:
            on = sorted({item.partition(".")[0] for item in s.disabled_triggers})
            problems.append(f"{len(s.disabled_triggers)} maintenance trigger(s) disabled on {', '.join(on)}")
            advice.append(
                "writes to those tables no longer reach the serving rows: enable the triggers, then rebuild "
                f"the rows written meanwhile: {rebuild}"
            )
            for item in s.disabled_triggers:
                table, _, trigger = item.partition(".")
                fix.append(
                    sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}")
                    .format(sql.Identifier(f.registry.schema, table), sql.Identifier(trigger))
                    .as_string(None)
                )
        if s.missing_triggers:
            on = sorted({item.partition(".")[0] for item in s.missing_triggers})
            problems.append(f"{len(s.missing_triggers)} maintenance trigger(s) missing on {', '.join(on)}")
            advice.append(f"writes to those tables do not reach the serving rows; {rebuild} recreates the triggers")
        if not s.full:
            advice.append(sample_limits(s))
        if problems:
            out.append(
                Finding(
                    "materialized", subject, Status.FAIL, "; ".join(problems), "; ".join(advice), tuple(fix), measured
                )
            )
        elif s.full:
            out.append(
                Finding(
                    "materialized",
                    subject,
                    Status.PASS,
                    f"built; every serving row ({s.sampled:,} keys) equals the tables, values and updated_at; "
                    "triggers in place",
                    measured=measured,
                )
            )
        else:
            out.append(
                Finding(
                    "materialized",
                    subject,
                    Status.PASS,
                    f"built; {s.sampled:,} sampled keys ({_share(s)}) equal a fresh read of the tables; "
                    "triggers in place (a sample can miss a few changed keys and cannot see an updated_at "
                    "changed within the TTL: --full compares every row)",
                    "; ".join(advice),
                    measured=measured,
                )
            )
    return out


def _share(s: Any) -> str:
    return (
        f"{min(1.0, s.sampled / s.rows):.1%} of about {s.rows:,} serving rows"
        if s.rows
        else "serving rows never analyzed"
    )


def sample_limits(s: Any) -> str:
    """What a sample of serving rows can and cannot detect (said with every sampled comparison)."""
    return (
        f"a sample ({_share(s)}) finds drift that touches many keys, and every trigger is checked; it can miss "
        "a few changed keys (each is compared with the probability of its share) and cannot see an updated_at "
        "changed within the TTL (the read is the same): `pgfeatures doctor --full` compares every serving row"
    )


CHECKS: dict[str, Callable[[Facts], list[Finding]]] = {
    "schema": check_schema,
    "prepared": check_prepared,
    "cache": check_cache,
    "scans": check_scans,
    "index_only": check_index_only,
    "row_width": check_row_width,
    "working_set": check_working_set,
    "vacuum": check_vacuum,
    "materialized": check_materialized,
}


def evaluate(facts: Facts) -> Report:
    """Every check's findings, in check order."""
    return Report(tuple(finding for check in CHECKS.values() for finding in check(facts)))
