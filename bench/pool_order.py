"""Which idle connection a read takes: p50 of a 30-table read, pool_size 1/4/8, LIFO vs FIFO, in one run.

    python bench/pool_order.py [--dsn DSN] [--sizes 1,4,8] [--rounds 9] [--requests 200]

One sequential caller reads the demo data (schema ``demo``, tables ``t00..t29`` × 8 ``real``: load it
first with ``pgfeatures demo``) through ``FeatureStore.get_features`` with every table, one random
demo key per request. One store per (pool_size, pool_order) is open for the whole run; the rounds
interleave them (each round takes every store once, in a shuffled order, ``--requests`` reads each),
so drift of the machine hits every form alike. Every store is checked to answer the same values for
the same keys before timing. Prints p50, p90 and client CPU per read for each form, and the ratio of
each p50 to the pool_size=1 LIFO p50 of the same run.

Nothing here is shipped: it drives the public API like a user would. On a shared 2-core machine the
figures are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time

from pgfeatures import FeatureStore
from pgfeatures.definitions import demo_registry


def demo_key(i: int) -> bytes:
    """The demo's key for entity ``i`` (see ``pgfeatures.demo``)."""
    return hashlib.sha256(b"entity:%d" % i).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="default: $PGFEATURES_DSN, else the embedded server")
    parser.add_argument("--schema", default="demo")
    parser.add_argument("--tables", type=int, default=30)
    parser.add_argument("--entities", type=int, default=10_000, help="keys are drawn from the first N demo entities")
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--orders", default="lifo,fifo")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200, help="reads per store per round")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    registry = demo_registry(schema=args.schema)
    tables = list(registry.tables)[: args.tables]
    forms = [(int(s), o) for s in args.sizes.split(",") for o in args.orders.split(",")]
    rng = random.Random(args.seed)
    stores = {
        form: FeatureStore(registry, args.dsn, pool_size=form[0], write_pool_size=0, pool_order=form[1])
        for form in forms
    }
    try:
        check = [demo_key(rng.randrange(args.entities)) for _ in range(50)]
        answers = {form: [store.get_features(k, tables) for k in check] for form, store in stores.items()}
        first = answers[forms[0]]
        assert all(a == first for a in answers.values()), "the stores answered differently"
        assert any(r[tables[0]] is not None for r in first), (
            f"no demo data in schema {args.schema}: run `pgfeatures demo`"
        )

        latencies: dict[tuple[int, str], list[float]] = {form: [] for form in forms}
        cpu: dict[tuple[int, str], float] = dict.fromkeys(forms, 0.0)
        for store in stores.values():  # warm every store's path once, untimed
            for _ in range(50):
                store.get_features(demo_key(rng.randrange(args.entities)), tables)
        for _ in range(args.rounds):
            order = list(forms)
            rng.shuffle(order)
            for form in order:
                store, out = stores[form], latencies[form]
                keys = [demo_key(rng.randrange(args.entities)) for _ in range(args.requests)]
                c0 = time.process_time()
                for key in keys:
                    t0 = time.perf_counter()
                    store.get_features(key, tables)
                    out.append(time.perf_counter() - t0)
                cpu[form] += time.process_time() - c0
    finally:
        for store in stores.values():
            store.close()

    base = statistics.median(latencies[forms[0]])
    print(f"{len(tables)} tables, {args.rounds} rounds x {args.requests} reads per form, one sequential caller")
    print(f"{'pool_size':>9} {'order':>5} {'p50 ms':>8} {'p90 ms':>8} {'cpu ms':>8} {'p50 / first':>11}")
    for form in forms:
        lat = sorted(latencies[form])
        p50, p90 = statistics.median(lat), lat[int(0.9 * (len(lat) - 1))]
        print(
            f"{form[0]:>9} {form[1]:>5} {p50 * 1e3:8.3f} {p90 * 1e3:8.3f} "
            f"{cpu[form] / len(lat) * 1e3:8.3f} {p50 / base:11.2f}"
        )


if __name__ == "__main__":
    main()
