"""The cache probe: how warm the feature tables and their indexes are, and the scans their lookups use.

Owns the relations the probe and the warm-up act on (the registry's tables that exist, and their
indexes: ``relations``), the keys a probe reads (the hot keys, else random absent keys and, for
the plans, present keys from ANALYZE's histogram: ``sample_keys``, ``random_keys``), and the
probe itself (``probe``, ``measure``): block counters of one read-only transaction before and
after, hit ratios per table and per index, and the EXPLAIN (ANALYZE, BUFFERS) scan nodes. See the
package docstring for why warmth is measured this way.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.numeric import Int8

from ..definitions import KEY_LENGTH, Registry
from ..reader import compile_batch_reader, select
from ..schema import qualified
from .steps import Query, Rows, Steps

PROBE_KEYS = 1000  # at most this many hot keys per table in a probe
PROBE_PLACES = 100  # random index descents and heap pages per table in a probe


# -- relations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """A feature table or one of its indexes."""

    table: str
    name: str
    oid: int
    is_index: bool
    blocks: int
    has_vm: bool  # the visibility-map fork exists (VACUUM has run)


_RELATIONS = """
SELECT t.relname, c.relname, c.oid::int8, c.relkind IN ('i', 'I'),
       pg_relation_size(c.oid) / current_setting('block_size')::int,
       pg_relation_size(c.oid, 'vm') > 0
FROM pg_class t
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class c ON c.oid = t.oid OR c.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = t.oid)
WHERE n.nspname = %s AND t.relname = ANY(%s) AND t.relkind = 'r'
ORDER BY 1, 4, 2
"""


def relations(registry: Registry) -> Steps[list[Relation]]:
    """The registry's tables that exist, and their indexes (tables first)."""
    rows = yield Query(_RELATIONS, (registry.schema, list(registry.tables)))
    return [Relation(*row) for row in rows]


def existing_tables(registry: Registry, rels: Iterable[Relation]) -> list[str]:
    """Registry tables present in ``rels``, in registry order."""
    present = {r.table for r in rels}
    return [name for name in registry.tables if name in present]


# -- the probe ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocks:
    """Buffer accesses of one relation during a probe."""

    fetched: int
    hit: int

    @property
    def read(self) -> int:
        return self.fetched - self.hit

    @property
    def ratio(self) -> float | None:
        return self.hit / self.fetched if self.fetched else None


@dataclass(frozen=True)
class Scan:
    """One scan node of a probed plan."""

    node: str  # "Index Only Scan", "Index Scan", "Seq Scan", ...
    index: str | None
    rows: int  # rows returned over all loops (EXPLAIN gives a per-loop mean to 2 decimals: approximate)
    heap_fetches: float | None  # index-only scans only


@dataclass(frozen=True)
class TableProbe:
    table: str
    keys: int
    scans: tuple[Scan, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Probe:
    """What reading a sample of keys did to the buffer cache, per table and per index."""

    source: str  # of the keys whose plans were explained: "hot keys", "statistics" or "none"
    places: str  # what the cache measurement read
    tables: Mapping[str, TableProbe]
    blocks: Mapping[str, Blocks]  # relation name -> its buffer accesses

    def total(self, names: Iterable[str] | None = None) -> Blocks:
        chosen = self.blocks.values() if names is None else [self.blocks[n] for n in names if n in self.blocks]
        return Blocks(sum(b.fetched for b in chosen), sum(b.hit for b in chosen))

    @property
    def ratio(self) -> float | None:
        return self.total().ratio

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "places": self.places,
            "hit_ratio": self.ratio,
            "relations": {n: {"fetched": b.fetched, "hit": b.hit, "ratio": b.ratio} for n, b in self.blocks.items()},
            "tables": {
                t.table: {"keys": t.keys, "error": t.error, "scans": [s.__dict__ for s in t.scans]}
                for t in self.tables.values()
            },
        }


# The key histogram ANALYZE keeps, per table, of the table's own key column (its entity's), as text:
# parsed back by the key's own type in one statement per key type.
_KEY_SAMPLE = """
SELECT s.tablename::text, s.histogram_bounds::text
FROM pg_stats s JOIN unnest(%s::text[], %s::text[]) AS k(tablename, attname)
  ON k.tablename = s.tablename AND k.attname = s.attname
WHERE s.schemaname = %s AND NOT s.inherited AND s.histogram_bounds IS NOT NULL
"""

_KEY_ARRAY = {"bytea": "bytea[]", "int8": "int8[]", "text": "text[]", "uuid": "uuid[]"}

_BLOCK_COUNTS = """
SELECT oid::int8, pg_stat_get_xact_blocks_fetched(oid), pg_stat_get_xact_blocks_hit(oid)
FROM pg_class WHERE oid = ANY(%s::oid[])
"""

_INDEX_PATHS = "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
_EXPLAIN = b"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) "
_TID_SCAN = sql.SQL("SELECT count(*) FROM {} WHERE ctid = ANY(%s::text[]::tid[])")


def hot_tables(registry: Registry, tables: Sequence[str]) -> list[str]:
    """The tables hot keys (32-byte keys, or 64 hex characters) apply to: those of 32-byte keys not hashed from natural ids."""
    return [t for t in tables if registry.tables[t].entity.key_type == "bytea32" and not registry.tables[t].entity.hash]


def sample_keys(
    registry: Registry, tables: Sequence[str], hot_keys: Sequence[bytes] = ()
) -> Steps[tuple[str, dict[str, list[Any]]]]:
    """Keys to probe per table: the hot keys when given (for the tables of 32-byte keys), else the
    key histogram of ``pg_stats`` (of each table's own key column, as its key type)."""
    if hot_keys:
        return "hot keys", {t: list(hot_keys[:PROBE_KEYS]) for t in hot_tables(registry, tables)}
    keys: dict[str, list[Any]] = {}
    by_cast: dict[str, list[str]] = {}
    for t in tables:
        by_cast.setdefault(registry.tables[t].entity.cast, []).append(t)
    for cast, names in by_cast.items():
        rows = yield Query(_KEY_SAMPLE, (names, [registry.tables[t].key_column for t in names], registry.schema))
        for table, text in rows:
            parsed = yield Query(sql.SQL("SELECT %s::text::{}").format(sql.SQL(_KEY_ARRAY[cast])), (text,))
            keys[table] = [_key_param(cast, k) for k in parsed[0][0] or () if k is not None]
    return ("statistics" if keys else "none"), keys


def _key_param(cast: str, key: Any) -> Any:
    """A key as the batch statement's parameter takes it (bytes, an Int8, a str, a UUID)."""
    if cast == "int8":
        return Int8(key)
    return bytes(key) if cast == "bytea" else key


def random_keys(registry: Registry, table: str, n: int, known: Sequence[Any], rng: random.Random) -> list[Any]:
    """``n`` keys (mostly absent) spread over the table's key space, so each lookup descends to a
    random index leaf: uniform random bytes for 32-byte keys and UUIDs; for integer and text keys,
    between two random neighbours of the key histogram (``known``), which follows where the keys are."""
    entity = registry.tables[table].entity
    kind = entity.key_type
    if kind == "bytea32":
        return [rng.randbytes(KEY_LENGTH) for _ in range(n)]
    if kind == "uuid":
        return [uuid.UUID(int=rng.getrandbits(128)) for _ in range(n)]
    bounds = sorted(known)
    if kind == "bigint":
        lo, hi = (int(bounds[0]), int(bounds[-1])) if bounds else (0, 2**31)
        return [Int8(rng.randint(lo, max(lo, hi))) for _ in range(n)]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for _ in range(n):
        suffix = "".join(rng.choice(alphabet) for _ in range(4))
        base = rng.choice(bounds) if bounds else ""
        out.append((base + suffix)[: entity.max_length])
    return out


def scan_nodes(plan: Any) -> list[tuple[str, Scan]]:
    """``(relation, scan)`` for every node of an EXPLAIN (FORMAT JSON) plan that reads a relation."""
    found = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", ()))
        if "Relation Name" in node:
            rows = round(float(node.get("Actual Rows", 0)) * float(node.get("Actual Loops", 1)))
            found.append(
                (node["Relation Name"], Scan(node["Node Type"], node.get("Index Name"), rows, node.get("Heap Fetches")))
            )
    return found


def _attempt(query: Query) -> Steps[tuple[Rows | None, str | None]]:
    """Run one table's statement under a savepoint: its failure (say, a column its definition
    names is missing) is returned, and the other tables are still probed."""
    yield Query("SAVEPOINT pgfeatures_probe")
    try:
        rows = yield query
    except psycopg.Error as exc:
        yield Query("ROLLBACK TO SAVEPOINT pgfeatures_probe")
        return None, str(exc).strip().splitlines()[0]
    return rows, None


def _block_counts(by_oid: Mapping[int, str]) -> Steps[dict[int, tuple[int, int]]]:
    rows = yield Query(_BLOCK_COUNTS, (list(by_oid),))
    return {oid: (int(fetched), int(hit)) for oid, fetched, hit in rows}


def probe(
    registry: Registry,
    tables: Sequence[str],
    keys: Mapping[str, Sequence[bytes]],
    rels: Sequence[Relation],
    source: str,
    *,
    places: int = PROBE_PLACES,
    rng: random.Random | None = None,
) -> Steps[Probe]:
    """Measure, in one read-only transaction: the cache, then the plans.

    Cache: with hot keys, the store's batch statement reads them; otherwise it
    reads ``places`` random keys per table (absent keys, uniform over the key
    space, so each descends to a random index leaf) and a TID scan reads
    ``places`` random heap pages. Random places change from run to run, so an
    earlier probe does not make a later one look warm. Plans: the batch
    statement runs under EXPLAIN (ANALYZE, BUFFERS) for ``keys[table]``
    (present keys), which shows the scan used and its heap fetches. Sequential and bitmap scans
    are disabled in the probe's transaction, so the plans are those of a big table's lookups.
    """
    rng = rng or random.Random()
    results: dict[str, TableProbe] = {}
    by_oid = {r.oid: r.name for r in rels}
    heap_blocks = {r.table: r.blocks for r in rels if not r.is_index}
    yield Query("BEGIN READ ONLY")
    # Lookups are probed as they run on a big table: on a small one the planner rightly prefers a
    # sequential scan, which says nothing about whether the key index serves lookups (and a
    # heap-only read would hide the covering index's heap fetches). Disabled, a Seq Scan is
    # chosen only where no index can serve the lookup at all.
    yield Query(_INDEX_PATHS)
    # The "xact" counters hold every access not yet flushed to the statistics system, which
    # can span earlier transactions; nothing is flushed inside a transaction, so differences
    # between points of this one are exactly what happened in between.
    start = yield from _block_counts(by_oid)
    errors: dict[str, str] = {}
    for name in tables:
        statement = compile_batch_reader(select(registry, [name])).statement
        hot = source == "hot keys" and name in keys
        lookups = (
            list(keys[name])
            if hot
            else random_keys(registry, name, places, () if source == "hot keys" else keys.get(name, ()), rng)
        )
        _, error = yield from _attempt(Query(statement, (lookups,), raw=True))
        pages = rng.sample(range(heap_blocks[name]), min(places, heap_blocks[name]))
        if not hot and pages and error is None:
            tids = [f"({page},1)" for page in pages]
            _, error = yield from _attempt(Query(_TID_SCAN.format(qualified(registry, registry.tables[name])), (tids,)))
        if error:
            errors[name] = error
    cached = yield from _block_counts(by_oid)
    for name in tables:
        present = list(keys.get(name, ()))
        if name in errors or not present:
            results[name] = TableProbe(name, len(present), error=errors.get(name))
            continue
        statement = compile_batch_reader(select(registry, [name])).statement
        rows, error = yield from _attempt(Query(_EXPLAIN + statement, (present,), raw=True))
        scans = () if rows is None else tuple(s for rel, s in scan_nodes(rows[0][0]) if rel == name)
        results[name] = TableProbe(name, len(present), scans, error)
    yield Query("ROLLBACK")
    blocks = {
        by_oid[oid]: Blocks(fetched - start[oid][0], hit - start[oid][1])
        for oid, (fetched, hit) in cached.items()
        if oid in start
    }
    return Probe(
        source,
        "hot keys" if source == "hot keys" else f"{places} random keys and heap pages per table",
        results,
        {r.name: blocks[r.name] for r in rels if r.name in blocks},
    )


def measure(registry: Registry, hot_keys: Sequence[bytes] = ()) -> Steps[Probe]:
    """The probe on its own: how warm the registry's tables are right now."""
    rels = yield from relations(registry)
    tables = existing_tables(registry, rels)
    source, keys = yield from sample_keys(registry, tables, hot_keys)
    return (yield from probe(registry, tables, keys, rels, source))
