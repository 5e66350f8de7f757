"""The demo: deterministic entities and features, bulk-loaded with binary COPY, and the
measurement ``pgfeatures demo`` prints (``run_demo``: every read strategy at several table counts).

Entity ``i`` has the key ``sha256(b"entity:<i>")``. Table ``t`` holds every
entity except those with ``(i + t) % MISS_EVERY == 0``, so reads see realistic
misses. Feature values are float32 from a generator seeded per table, so the
same (seed, table, rows) always gives the same data and tests can recompute
the ground truth.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

from .definitions import KEY_COLUMN, KEY_LENGTH, UPDATED_AT, FeatureTable, Registry
from .schema import apply_schema, qualified

if TYPE_CHECKING:
    from .timing import Stats

MISS_EVERY = 50
DEMO_EPOCH = 1_764_000_000  # a fixed updated_at, so demo data is reproducible


def entity_key(i: int) -> bytes:
    return hashlib.sha256(b"entity:%d" % i).digest()


def entity_keys(n: int) -> list[bytes]:
    return [entity_key(i) for i in range(n)]


@dataclass(frozen=True)
class TableData:
    """One demo table's rows: entity indexes present, and their float32 feature matrix."""

    entities: np.ndarray  # int64 entity indexes, ascending
    values: np.ndarray  # float32, shape (len(entities), n_features)


def table_data(table_index: int, n_entities: int, n_features: int, seed: int = 0) -> TableData:
    entities = np.arange(n_entities, dtype=np.int64)
    entities = entities[(entities + table_index) % MISS_EVERY != 0]
    rng = np.random.default_rng([seed, table_index])
    values = rng.random((len(entities), n_features), dtype=np.float32)
    return TableData(entities, values)


def expected(registry: Registry, entity: int, n_entities: int, seed: int = 0) -> dict[str, dict[str, float] | None]:
    """Ground truth for one entity across every demo table (recomputes the generator)."""
    out: dict[str, dict[str, float] | None] = {}
    for ti, table in enumerate(registry.tables.values()):
        data = table_data(ti, n_entities, len(table.features), seed)
        pos = np.searchsorted(data.entities, entity)
        if pos < len(data.entities) and data.entities[pos] == entity:
            out[table.name] = {f.name: float(v) for f, v in zip(table.features, data.values[pos])}
        else:
            out[table.name] = None
    return out


def copy_binary_float4(
    conn: psycopg.Connection, schema: str, table: FeatureTable, keys: np.ndarray, values: np.ndarray, updated_at: int
) -> None:
    """COPY rows of (32-byte key, float4 features..., timestamptz updated_at: ``updated_at`` epoch
    seconds) in PostgreSQL's binary format.

    The payload is built by the write path's numpy encoder: no per-row Python
    (millions of rows per second).
    """
    from .load import COPY_HEADER, COPY_TRAILER, encode_copy_rows
    from .load.copy import timestamptz_values

    n = len(keys)
    columns: list[tuple[np.ndarray, np.ndarray | None]] = [  # (values, NULL mask): load.copy's Column
        (np.ascontiguousarray(keys).view(np.uint8).reshape(n, KEY_LENGTH), None)
    ]
    columns += [(np.ascontiguousarray(values[:, j]), None) for j in range(values.shape[1])]
    columns.append((timestamptz_values(np.full(n, updated_at * 1_000_000, dtype=np.int64)), None))
    names = sql.SQL(", ").join(
        [sql.Identifier(KEY_COLUMN), *(sql.Identifier(f.name) for f in table.features), sql.Identifier(UPDATED_AT)]
    )
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(qualified(schema, table), names)
    payload = encode_copy_rows(columns)
    step = 8 << 20
    with conn.cursor().copy(stmt) as copy:
        copy.write(COPY_HEADER)
        for start in range(0, len(payload), step):
            copy.write(payload[start : start + step])
        copy.write(COPY_TRAILER)


def table_row_count(conn: psycopg.Connection, schema: str, table: str) -> int | None:
    """The row count VACUUM/ANALYZE recorded (None: no such table, -1: never analyzed).

    Read from pg_class rather than count(*): a count is a sequential scan of a hot
    table, which the doctor rightly flags.
    """
    row = conn.execute(
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'",
        [schema, table],
    ).fetchone()
    return None if row is None else row[0]


def load_demo(
    conn: psycopg.Connection,
    registry: Registry,
    n_entities: int,
    seed: int = 0,
    progress: Callable[[str, int], None] | None = None,
) -> bool:
    """Create and fill the demo tables unless they already hold this data. Returns True if it loaded.

    Tables that drift from their definitions are first brought to them by ``apply`` (additive
    changes of the tables only; services are the caller's), so demo tables an older version made
    (integer ``updated_at``) are migrated, not refused. Each table is loaded in its own transaction
    (TRUNCATE + COPY), then the whole schema is VACUUM ANALYZEd so the visibility map is set. Raises
    SchemaDriftError when a table differs in a way only a destructive change would fix (nothing is
    dropped for the demo).
    """
    if apply_schema(conn, registry, raise_on_drift=False).drift:
        from .evolve.apply import apply

        apply(conn, Registry(registry.tables, registry.schema, entities=registry.entities))
        apply_schema(conn, registry)  # raises on what apply left (destructive changes) as drift
    all_keys = np.frombuffer(b"".join(entity_keys(n_entities)), dtype=f"S{KEY_LENGTH}")
    loaded = False
    for ti, table in enumerate(registry.tables.values()):
        data = table_data(ti, n_entities, len(table.features), seed)
        if table_row_count(conn, registry.schema, table.name) == len(data.entities) and _marker_ok(
            conn, registry, table, n_entities, seed
        ):
            if progress:
                progress(table.name, 0)
            continue
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(qualified(registry, table)))
            copy_binary_float4(conn, registry.schema, table, all_keys[data.entities], data.values, DEMO_EPOCH)
        loaded = True
        if progress:
            progress(table.name, len(data.entities))
    if loaded:
        t0 = time.perf_counter()
        for table in registry.tables.values():
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(qualified(registry, table)))
        if progress:
            progress(f"vacuum analyze ({time.perf_counter() - t0:.1f}s)", 0)
    return loaded


def _marker_ok(conn: psycopg.Connection, registry: Registry, table: FeatureTable, n_entities: int, seed: int) -> bool:
    """Spot-check the first and last entity of a table against the generator (catches other seeds/sizes)."""
    ti = list(registry.tables).index(table.name)
    data = table_data(ti, n_entities, len(table.features), seed)
    query = sql.SQL("SELECT {} FROM {} WHERE hashkey = %b").format(
        sql.Identifier(table.features[0].name), qualified(registry, table)
    )
    for pos in (0, -1):
        row = conn.execute(query, [entity_key(int(data.entities[pos]))], binary=True).fetchone()
        if row is None or row[0] != float(data.values[pos, 0]):
            return False
    return True


# -- the measurement ------------------------------------------------------------------------------

# Strategies in the order they are shown: the baseline first, the default last.
DEMO_STRATEGIES = ("sequential", "pipeline", "join", "union", "single")
BATCH_ROW = "batch x100 (per key)"


@dataclass(frozen=True)
class DemoSettings:
    """What ``pgfeatures demo`` loads and measures (each field is one of its flags)."""

    entities: int = field(default=100_000, metadata={"help": "synthetic entities"})
    requests: int = field(default=1000, metadata={"help": "timed requests per strategy and table count"})
    table_counts: tuple[int, ...] = field(
        default=(10, 20, 30), metadata={"help": "tables per request, comma-separated"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the data and of the key choice"})
    schema: str = field(
        default="demo", metadata={"help": "schema of the demo tables (loaded if absent, reused if present)"}
    )

    def __post_init__(self) -> None:
        from .errors import PgFeaturesError

        if self.entities < 101 or self.requests < 1:
            raise PgFeaturesError(
                f"the demo needs at least 101 entities and 1 request, got {self.entities} and {self.requests}"
            )
        if not self.table_counts or min(self.table_counts) < 1 or max(self.table_counts) > 30:
            raise PgFeaturesError(
                f"table counts must be between 1 and 30 (the demo has 30 tables), got {self.table_counts}"
            )


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured: latency per strategy and table count, and a sample of what it read."""

    settings: DemoSettings
    server_version: int
    loaded: bool  # False: the data was already there and was reused
    load_seconds: float
    stats: dict[int, dict[str, Stats]]  # table count -> row name -> latency
    sample_key: bytes
    sample: Any  # entity 1, a few features of t00 and t01
    absent: Any  # a key no table holds
    missing_in_t01: Any  # entity 49, absent from t01 by construction

    def figures(self) -> list[dict[str, Any]]:
        return [{"tables": count, **s.as_dict()} for count, rows in self.stats.items() for s in rows.values()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "server_version": self.server_version,
            "entities": self.settings.entities,
            "requests": self.settings.requests,
            "loaded": self.loaded,
            "load_seconds": self.load_seconds,
            "figures": self.figures(),
            "sample": {"key": self.sample_key.hex(), "features": self.sample},
        }


def run_demo(
    dsn: str, settings: DemoSettings = DemoSettings(), *, progress: Callable[[str, int], None] | None = None
) -> DemoResult:
    """Load the demo tables (unless present) and time every strategy at each table count, interleaved.

    ``progress(name, rows)`` is called after each table is loaded and after the final VACUUM.
    Raises DatabaseUnavailableError (or AuthenticationError) when the database cannot be reached.
    """
    from .connections import connect
    from .definitions import demo_registry
    from .reader import Strategy
    from .store import FeatureStore
    from .timing import measure_interleaved

    registry = demo_registry(schema=settings.schema)
    t0 = time.perf_counter()
    with connect(dsn, "pgfeatures-demo", 10) as conn:
        server_version = conn.info.server_version
        loaded = load_demo(conn, registry, settings.entities, settings.seed, progress=progress)
    load_seconds = time.perf_counter() - t0

    keys = entity_keys(settings.entities)
    strategies = [Strategy(name) for name in DEMO_STRATEGIES]
    results: dict[int, dict[str, Stats]] = {}
    with FeatureStore(registry, dsn, pool_size=1, write_pool_size=1) as store:
        for count in settings.table_counts:
            names = list(registry.tables)[:count]
            calls = {
                s.value: (lambda r: lambda k: store.read(r, k))(store.reader(names, strategy=s)) for s in strategies
            }
            batch = store.batch_reader(names)
            batches = [keys[i : i + 100] for i in range(0, len(keys) - 100, 100)]
            stats = measure_interleaved(calls, keys, settings.requests, seed=settings.seed)
            stats.update(
                measure_interleaved(
                    {BATCH_ROW: functools.partial(store.read_batch, batch)},
                    batches,
                    max(50, settings.requests // 20),
                    per={BATCH_ROW: 100},
                )
            )
            results[count] = stats
        sample_key = keys[1]
        sample = store.get_features(
            sample_key, ["t00", "t01"], {"t00": ["f0", "f1", "f2"], "t01": ["f0", "updated_at"]}
        )
        absent = store.get_features(bytes(32), ["t00"])
        missing_in_t01 = store.get_features(keys[49], ["t01"])
    return DemoResult(
        settings, server_version, loaded, load_seconds, results, sample_key, sample, absent, missing_in_t01
    )
