"""The hot path against its limit: the public API next to the same read hand-written on one bare connection.

Standalone (no benchmark package needed): the demo data (30 tables x 8 real, ``pgfeatures demo``) and a
materialized service over all of it (``hot_mat``, built here unless ``--no-build``). In one run, with the
forms interleaved round by round (each round shuffles their order), sequential caller, loopback:

- ``get_features`` (30 tables) vs the same statement (30 scalar subqueries) on a bare psycopg connection,
  prepared and binary like the store's, decoded to the same dicts;
- ``get_service("hot_mat")`` (dict) and ``output="list"`` (vector) vs a hand-written read of the same
  serving row (``SELECT r, ts FROM <serving table> WHERE hashkey = $1``), decoded to the same answer.

The library forms run twice: on a store with the default pool and one with ``pool_size=1`` (the pool
hands out connections first-in first-out, so with 4 a sequential caller lands on another backend each
request). Every form is first checked equal to its hand-written twin on ``--check`` keys.

Reports per form: p50 and p99 latency (ms) and client CPU per request (``time.process_time``, ms), and
each library form's ratio to its hand-written twin; then the decoders alone (no I/O: the same fetched
rows decoded by the library's reader and by hand, best of 20, microseconds per request), the part of the
per-request Python work that does not drown in a loaded machine's noise. Run it::

    PGFEATURES_HOME=... PYTHONPATH=src python -m pgfeatures.cli demo --requests 50   # once: the data
    PGFEATURES_HOME=... PYTHONPATH=src python bench/hot_path.py --rounds 20 --requests 200
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import FeatureService, Registry, demo_registry
from pgfeatures.materialize.build import materialize
from pgfeatures.store import FeatureStore

MAT = "hot_mat"
N_ENTITIES = 100_000  # the demo's


def entity_key(i: int) -> bytes:
    import hashlib

    return hashlib.sha256(b"entity:%d" % i).digest()  # the demo's (pgfeatures.demo.entity_key)


def registry() -> Registry:
    demo = demo_registry()
    refs = tuple(f"{t}.*" for t in demo.tables)
    return Registry.of(demo.tables.values(), demo.schema, services=[FeatureService(MAT, refs, materialize=True)])


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

    def features_row(self, key: bytes) -> Any:
        cur = self.cur
        cur.execute(self.features_sql, (key,), prepare=True, binary=True)
        return cur.fetchone()

    def features(self, key: bytes) -> dict[str, Any]:
        return self.decode_features(self.features_row(key))

    def decode_features(self, row: Any) -> dict[str, Any]:
        return {name: None if v is None else dict(zip(names, v)) for (name, names), v in zip(self.tables, row)}

    def _serving(self, key: bytes) -> tuple[Any, Any] | None:
        cur = self.cur
        cur.execute(self.serving_sql, (key,), prepare=True, binary=True)
        return cur.fetchone()

    def service_dict(self, key: bytes) -> tuple[dict[str, Any], dict[str, str]]:
        return self.decode_dict(self._serving(key))

    def service_vector(self, key: bytes) -> tuple[list[Any], dict[str, str]]:
        return self.decode_vector(self._serving(key))

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


def check(forms: dict[str, Callable[[bytes], Any]], hand: Hand, keys: list[bytes]) -> None:
    for key in keys:
        want = hand.features(key)
        for name in ("get_features", "get_features pool=1"):
            got = forms[name](key)
            assert got == want and got.status == {t: "missing" if v is None else "present" for t, v in want.items()}
        values, status = hand.service_dict(key)
        for name in ("service dict", "service dict pool=1"):
            got = forms[name](key)
            assert got == values and got.status == status, key.hex()
        values, status = hand.service_vector(key)
        for name in ("service vector", "service vector pool=1"):
            got = forms[name](key)
            assert list(got.values) == list(values) and got.status == status, key.hex()


def measure(forms: dict[str, Callable[[bytes], Any]], keys: list[bytes], rounds: int, requests: int, seed: int) -> dict:
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
    hand_rows = {
        "hand features": [hand.features_row(k) for k in keys],
        "hand serving row (dict)": [hand._serving(k) for k in keys],
    }
    hand_rows["hand serving row (vector)"] = hand_rows["hand serving row (dict)"]
    calls: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        **{n: (r.decode, lib_rows[n]) for n, r in readers.items()},
        "hand features": (hand.decode_features, hand_rows["hand features"]),
        "hand serving row (dict)": (hand.decode_dict, hand_rows["hand serving row (dict)"]),
        "hand serving row (vector)": (hand.decode_vector, hand_rows["hand serving row (vector)"]),
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", help="default: $PGFEATURES_DSN, else the embedded server")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--requests", type=int, default=200, help="requests per form per round")
    p.add_argument("--check", type=int, default=200, help="keys each form is checked equal on")
    p.add_argument("--no-build", action="store_true", help="the service hot_mat is built already")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry()
    if not args.no_build:
        with psycopg.connect(dsn, autocommit=True) as conn:
            materialize(conn, reg, MAT)
    rng = random.Random(args.seed)
    # Keys beyond the demo's entities too: some reads miss.
    keys = [entity_key(rng.randrange(int(N_ENTITIES * 1.05))) for _ in range(max(args.check, 200))]
    hand = Hand(dsn, reg)
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
        assert MAT in store.readers.materialized, "the service is read from its serving rows"
        check(forms, hand, keys[: args.check])
        measure(forms, keys, 2, 50, args.seed)  # warm every connection and prepared statement
        got = measure(forms, keys, args.rounds, args.requests, args.seed)
        decoding = decode_only(store, hand, keys)
    hand.conn.close()
    ratios = {
        f"{a} / {b}": {
            "p50": round(got[a]["p50_ms"] / got[b]["p50_ms"], 3),
            "cpu": round(got[a]["cpu_ms"] / got[b]["cpu_ms"], 3),
        }
        for a, b in PAIRS
    }
    if args.json:
        print(json.dumps({"forms": got, "ratios": ratios, "decode_us": decoding}, indent=2))
        return
    print(f"{'form':28} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>8}")
    for name, row in got.items():
        print(f"{name:28} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['cpu_ms']:8.4f}")
    print()
    print(f"{'ratio':54} {'p50':>6} {'cpu':>6}")
    for name, row in ratios.items():
        print(f"{name:54} {row['p50']:6.2f} {row['cpu']:6.2f}")
    print()
    print(f"{'decoding alone, no I/O (us per request)':40} {'library':>8} {'by hand':>8}")
    for lib, by_hand in PAIRS[::2]:
        print(f"{lib:40} {decoding[lib]:8.2f} {decoding[by_hand]:8.2f}")


if __name__ == "__main__":
    main()
