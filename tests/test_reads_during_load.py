"""Reads while bulk loads run: never a half-applied load, never a starved read pool, prepared
statements survive table swaps.

Every load writes "generation" g into every feature of every row. Reader threads read batches of
keys (one statement, one snapshot) and single keys through prepared statements; a batch must be
complete (no missing rows, even across a replace's swap) and hold one generation, and each reader
must see generations in commit order.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pgfeatures import FeatureStore
from pgfeatures.schema import apply_schema
from test_load import keys_for, make_registry

N = 2000
KEYS = keys_for(range(N))


def generation(g: int) -> pa.Table:
    return pa.table(
        {"hashkey": pa.array(KEYS, pa.binary(32)), **{f"f{j}": np.full(N, g, np.float32) for j in range(4)}}
    )


@pytest.mark.parametrize("covering", [False, True])
def test_reads_see_whole_loads_only(dsn, conn, schema, covering):
    registry = make_registry(schema, covering=covering)
    apply_schema(conn, registry)
    with FeatureStore(registry, dsn, pool_size=2, write_pool_size=1) as store:
        store.write_features("plain", generation(1))
        batch_reader = store.batch_reader(["plain"])
        single_reader = store.reader(["plain"])
        stop = threading.Event()
        loading = threading.Event()
        problems: list[str] = []
        overlapped = [0]
        seen: list[list[int]] = [[], []]

        def read_batches(me: int) -> None:
            rng = random.Random(me)
            last = 0
            while not stop.is_set():
                sample = rng.sample(KEYS, 200)
                during = loading.is_set()
                try:
                    rows = store.read_batch(batch_reader, sample)
                except Exception as exc:  # noqa: BLE001 - reported below
                    problems.append(f"batch read failed: {exc!r}")
                    return
                if during and loading.is_set():
                    overlapped[0] += 1
                if any(r["plain"] is None for r in rows):
                    problems.append("a batch read missed rows")
                gens = {v for r in rows if r["plain"] for v in r["plain"].values()}
                if len(gens) != 1:
                    problems.append(f"one batch read saw generations {sorted(gens)}")
                g = int(gens.pop()) if gens else 0
                if g < last:
                    problems.append(f"generation went back from {last} to {g}")
                last = g
                seen[me].append(g)

        def read_single() -> None:
            while not stop.is_set():
                try:
                    row = store.read(single_reader, random.choice(KEYS))["plain"]
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"single read failed across a swap: {exc!r}")
                    return
                if row is None or len(set(row.values())) != 1:
                    problems.append(f"single read saw {row}")

        threads = [
            threading.Thread(target=read_batches, args=(0,)),
            threading.Thread(target=read_batches, args=(1,)),
            threading.Thread(target=read_single),
        ]
        for t in threads:
            t.start()
        plans = [
            ("merge", "upsert"),
            ("merge", "rebuild"),
            ("replace", "auto"),
            ("merge", "upsert"),
            ("replace", "auto"),
        ]
        try:
            for g, (mode, strategy) in enumerate(plans, start=2):
                loading.set()
                # Slow the reading phase a little so reads overlap every load's open transaction.
                summary = store.write_features(
                    "plain",
                    generation(g),
                    mode=mode,
                    strategy=strategy,
                    batch_rows=250,
                    progress=lambda p: time.sleep(0.01) if p.phase == "reading" else None,
                )
                loading.clear()
                assert summary.rows_read == N and summary.inserted + summary.updated == N
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert problems == []
        assert overlapped[0] > 0  # the read pool kept serving while the write pool was busy loading
        assert max(seen[0] + seen[1]) == len(plans) + 1
        final = store.get_features_batch(KEYS[:5], ["plain"])
        assert all(r["plain"] == {f"f{j}": float(len(plans) + 1) for j in range(4)} for r in final)
