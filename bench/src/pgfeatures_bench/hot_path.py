"""The hot path against its limit (``pgfeatures bench-hot-path``): the public API next to the same read
hand-written on one bare connection, in one run.

Data: the demo layout (``--tables`` tables x 8 ``real``, ``--entities`` entities, ``pgfeatures demo``
loads schema ``demo``) and ``hot_mat``, a materialized service over every table (built here unless
``--no-build``). With the forms interleaved round by round (each round shuffles their order), sequential
caller, loopback:

- ``get_features`` (every table) vs the same statement (one scalar subquery per table) on a bare psycopg
  connection, prepared and binary like the store's, decoded to the same dicts;
- ``get_service("hot_mat")`` (dict) and ``output="list"`` (vector) vs a hand-written read of the same
  serving row (``SELECT r, ts FROM <serving table> WHERE hashkey = $1``), decoded to the same answer.

Each library form runs on a store with the default pool and on one with ``pool_size=1``. Every form is
first checked equal to its hand-written twin on ``--check`` keys.

Reports per form: p50 and p99 latency (ms) and client CPU per request (``time.process_time``, ms), each
library form's ratio to its hand-written twin with issue 21's targets (PASS / MISS), and the decoders
alone (no I/O: the same fetched rows decoded by the library's reader and by hand, best of 20,
microseconds per request), the part of the per-request Python work that does not drown in a loaded
machine's noise.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgfeatures.definitions import FeatureService, Registry, demo_registry
from pgfeatures.demo import entity_key
from pgfeatures.materialize.build import materialize
from pgfeatures.store import FeatureStore

MAT = "hot_mat"


@dataclass(frozen=True)
class HotPathConfig:
    rounds: int = field(default=10, metadata={"help": "rounds; each times every form once, in a shuffled order"})
    requests: int = field(default=200, metadata={"help": "timed requests per form per round"})
    check: int = field(default=200, metadata={"help": "keys each form is checked equal to its hand-written twin on"})
    build: bool = field(
        default=True, metadata={"help": f"materialize the service {MAT} first (--no-build: it is built already)"}
    )
    schema: str = field(default="demo", metadata={"help": "schema of the demo tables (pgfeatures demo loads demo)"})
    tables: int = field(default=30, metadata={"help": "demo tables read (t00...)"})
    entities: int = field(default=100_000, metadata={"help": "demo entities loaded (keys are drawn from 1.05x them)"})
    seed: int = field(default=0, metadata={"help": "seed of the keys drawn and of the order of the forms"})


def registry(schema: str = "demo", tables: int = 30) -> Registry:
    """The demo tables and ``hot_mat``, a materialized service over all of them."""
    demo = demo_registry(n_tables=tables, schema=schema)
    refs = tuple(f"{t}.*" for t in demo.tables)
    return Registry.of(demo.tables.values(), demo.schema, services=[FeatureService(MAT, refs, materialize=True)])


def build(dsn: str, reg: Registry) -> None:
    """Materialize ``hot_mat`` (its serving rows built from the tables as they are)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        materialize(conn, reg, MAT)


class Hand:
    """The same reads written by hand on one bare connection (prepared, binary, raw cursor)."""

    def __init__(self, dsn: str, reg: Registry):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.cur = psycopg.RawCursor(self.conn)
        schema = reg.schema
        self.tables = [(t.name, tuple(f.name for f in t.features)) for t in reg.tables.values()]
        subqueries = [
            sql.SQL("(SELECT ARRAY[{}]::float4[] FROM {} WHERE hashkey = $1::bytea)").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(schema, name)
            )
            for name, names in self.tables
        ]
        self.features_sql = sql.SQL("SELECT {}").format(sql.SQL(", ").join(subqueries)).as_bytes(self.conn)
        (layout,) = reg.layouts(MAT)
        self.serving_sql = (
            sql.SQL("SELECT r, ts FROM {} WHERE hashkey = $1::bytea")
            .format(sql.Identifier(schema, layout.table_name))
            .as_bytes(self.conn)
        )
        # Where each table's values sit in the serving row's r[] and its stamp in ts[].
        self.spans = []
        order = []
        for name, names in self.tables:
            slots = {s.feature.name: s.index for s in layout.table_slots(name)}
            index = [slots[n] for n in names]
            assert index == list(range(index[0], index[0] + len(index))), "a table's slots are contiguous"
            self.spans.append((name, names, index[0], index[0] + len(names), layout.ts_index(name)))
            order += index
        assert order == list(range(len(order))), "the service's order is the serving row's"
        self.size = len(order)

    def close(self) -> None:
        self.conn.close()

    def features_row(self, key: bytes) -> Any:
        cur = self.cur
        cur.execute(self.features_sql, (key,), prepare=True, binary=True)
        return cur.fetchone()

    def features(self, key: bytes) -> dict[str, Any]:
        return self.decode_features(self.features_row(key))

    def decode_features(self, row: Any) -> dict[str, Any]:
        return {name: None if v is None else dict(zip(names, v)) for (name, names), v in zip(self.tables, row)}

    def serving(self, key: bytes) -> tuple[Any, Any] | None:
        cur = self.cur
        cur.execute(self.serving_sql, (key,), prepare=True, binary=True)
        return cur.fetchone()

    def service_dict(self, key: bytes) -> tuple[dict[str, Any], dict[str, str]]:
        return self.decode_dict(self.serving(key))

    def service_vector(self, key: bytes) -> tuple[list[Any], dict[str, str]]:
        return self.decode_vector(self.serving(key))

    def decode_dict(self, row: Any) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        status: dict[str, str] = {}
        for name, names, a, b, j in self.spans:
            if row is None or row[1][j] is None:
                values[name], status[name] = None, "missing"
            else:
                values[name], status[name] = dict(zip(names, row[0][a:b])), "present"
        return values, status

    def decode_vector(self, row: Any) -> tuple[list[Any], dict[str, str]]:
        if row is None:
            return [None] * self.size, {name: "missing" for name, *_ in self.spans}
        r, ts = row
        status = {}
        values = r
        for name, _, a, b, j in self.spans:
            if ts[j] is None:
                if values is r:
                    values = list(r)
                values[a:b] = [None] * (b - a)
                status[name] = "missing"
            else:
                status[name] = "present"
        return values, status


def check(forms: dict[str, Callable[[bytes], Any]], hand: Hand, keys: Iterable[bytes]) -> None:
    """Every library form answers what its hand-written twin answers (values and status)."""
    for key in keys:
        want = hand.features(key)
        for name in ("get_features", "get_features pool=1"):
            got = forms[name](key)
            status = {t: "missing" if v is None else "present" for t, v in want.items()}
            assert got == want and got.status == status, f"{name}: {key.hex()}"
        values, status = hand.service_dict(key)
        for name in ("service dict", "service dict pool=1"):
            got = forms[name](key)
            assert got == values and got.status == status, f"{name}: {key.hex()}"
        vector, status = hand.service_vector(key)
        for name in ("service vector", "service vector pool=1"):
            got = forms[name](key)
            assert list(got.values) == list(vector) and got.status == status, f"{name}: {key.hex()}"


def measure(
    forms: dict[str, Callable[[bytes], Any]], keys: list[bytes], rounds: int, requests: int, seed: int
) -> dict[str, dict[str, float]]:
    """p50, p99 (ms) and client CPU per request (ms, the median of the rounds) of each form, interleaved."""
    rng = random.Random(seed)
    lat: dict[str, list[float]] = {n: [] for n in forms}
    cpu: dict[str, list[float]] = {n: [] for n in forms}
    for _ in range(rounds):
        order = list(forms)
        rng.shuffle(order)
        batch = [rng.choice(keys) for _ in range(requests)]
        for name in order:
            call = forms[name]
            times = lat[name]
            c0 = time.process_time()
            for key in batch:
                t0 = time.perf_counter()
                call(key)
                times.append(time.perf_counter() - t0)
            cpu[name].append((time.process_time() - c0) / requests)
    out = {}
    for name in forms:
        xs = sorted(lat[name])
        out[name] = {
            "p50_ms": round(1e3 * statistics.median(xs), 4),
            "p99_ms": round(1e3 * xs[int(0.99 * (len(xs) - 1))], 4),
            "cpu_ms": round(1e3 * statistics.median(cpu[name]), 4),
        }
    return out


def decode_only(store: FeatureStore, hand: Hand, keys: list[bytes], repeat: int = 20) -> dict[str, float]:
    """Microseconds per request of decoding alone (no I/O): each library reader's decoder and its hand-written
    twin over the same fetched rows (best of ``repeat``): the per-request Python work the decoders cost."""
    readers = {
        "get_features": store.reader(),
        "service dict": store.readers.service_reader(MAT, None, store.strategy),
        "service vector": store.readers.service_vector_reader(MAT, None, store.strategy),
    }
    lib_rows = {}
    for name, reader in readers.items():
        rows = []
        with store.connection() as conn:
            cur = psycopg.RawCursor(conn)
            for key in keys:
                cur.execute(reader.statements[0], (key,), binary=True)
                rows.append(cur.fetchone())
        lib_rows[name] = rows
    serving_rows = [hand.serving(k) for k in keys]
    calls: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        **{n: (r.decode, lib_rows[n]) for n, r in readers.items()},
        "hand features": (hand.decode_features, [hand.features_row(k) for k in keys]),
        "hand serving row (dict)": (hand.decode_dict, serving_rows),
        "hand serving row (vector)": (hand.decode_vector, serving_rows),
    }
    out = {}
    for name, (decode, rows) in calls.items():
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            for row in rows:
                decode(row)
            best = min(best, time.process_time() - t0)
        out[name] = round(1e6 * best / len(rows), 2)
    return out


PAIRS = [
    ("get_features", "hand features"),
    ("get_features pool=1", "hand features"),
    ("service dict", "hand serving row (dict)"),
    ("service dict pool=1", "hand serving row (dict)"),
    ("service vector", "hand serving row (vector)"),
    ("service vector pool=1", "hand serving row (vector)"),
]
# Issue 21's targets, each a ratio of the default store's form to its hand-written twin in one run.
TARGETS = (
    ("get_features p50", "get_features / hand features", "p50", 1.05),
    ("get_features client CPU", "get_features / hand features", "cpu", 1.15),
    ("service dict p50 (materialized)", "service dict / hand serving row (dict)", "p50", 1.1),
    ("service vector p50 (materialized)", "service vector / hand serving row (vector)", "p50", 1.2),
)


def run(dsn: str, config: HotPathConfig) -> dict[str, Any]:
    """Measure (building ``hot_mat`` first unless ``config.build`` is off); the result as plain data."""
    reg = registry(config.schema, config.tables)
    if config.build:
        build(dsn, reg)
    rng = random.Random(config.seed)
    # Keys beyond the demo's entities too: some reads miss.
    keys = [entity_key(rng.randrange(int(config.entities * 1.05))) for _ in range(max(config.check, 200))]
    hand = Hand(dsn, reg)
    try:
        with (
            FeatureStore(reg, dsn, write_pool_size=0) as store,
            FeatureStore(reg, dsn, write_pool_size=0, pool_size=1) as one,
        ):
            forms: dict[str, Callable[[bytes], Any]] = {
                "get_features": store.get_features,
                "get_features pool=1": one.get_features,
                "hand features": hand.features,
                "service dict": lambda k: store.get_service(MAT, k),
                "service dict pool=1": lambda k: one.get_service(MAT, k),
                "hand serving row (dict)": hand.service_dict,
                "service vector": lambda k: store.get_service(MAT, k, output="list"),
                "service vector pool=1": lambda k: one.get_service(MAT, k, output="list"),
                "hand serving row (vector)": hand.service_vector,
            }
            if MAT not in store.readers.materialized:
                raise RuntimeError(f"{MAT} is not served from its serving rows: build it (leave out --no-build)")
            check(forms, hand, keys[: config.check])
            measure(forms, keys, 2, min(50, config.requests), config.seed)  # warm every connection and statement
            got = measure(forms, keys, config.rounds, config.requests, config.seed)
            decoding = decode_only(store, hand, keys)
    finally:
        hand.close()
    ratios = {
        f"{a} / {b}": {
            "p50": round(got[a]["p50_ms"] / got[b]["p50_ms"], 3),
            "cpu": round(got[a]["cpu_ms"] / got[b]["cpu_ms"], 3),
        }
        for a, b in PAIRS
    }
    targets = [
        {"target": name, "ratio": ratios[pair][kind], "at_most": limit, "met": ratios[pair][kind] <= limit}
        for name, pair, kind, limit in TARGETS
    ]
    return {"config": asdict(config), "forms": got, "ratios": ratios, "targets": targets, "decode_us": decoding}


def report(result: dict[str, Any]) -> list[str]:
    """The result as lines of text."""
    lines = [f"{'form':28} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>8}"]
    for name, row in result["forms"].items():
        lines.append(f"{name:28} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['cpu_ms']:8.4f}")
    lines += ["", f"{'ratio':54} {'p50':>6} {'cpu':>6}"]
    for name, row in result["ratios"].items():
        lines.append(f"{name:54} {row['p50']:6.2f} {row['cpu']:6.2f}")
    lines += ["", "targets (issue 21; ratios of this run)"]
    for t in result["targets"]:
        lines.append(f"  {t['target']:36} {t['ratio']:5.2f} <= {t['at_most']:<5} {'PASS' if t['met'] else 'MISS'}")
    decoding = result["decode_us"]
    lines += ["", f"{'decoding alone, no I/O (us per request)':40} {'library':>8} {'by hand':>8}"]
    for lib, by_hand in PAIRS[::2]:
        lines.append(f"{lib:40} {decoding[lib]:8.2f} {decoding[by_hand]:8.2f}")
    return lines
