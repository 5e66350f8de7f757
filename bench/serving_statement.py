"""Where a materialized read's time goes on the server: the library's serving statement against variants.

Standalone (issue 21's materialized targets compare ``get_service`` with a hand-written
``SELECT r, ts FROM <serving rows> WHERE hashkey = $1``; the library's statement carries more, and this
says what each part costs). On one bare connection, prepared, binary, interleaved round by round:

- ``library``: the statement ``get_service("hot_mat")`` runs (its own text, from the store's reader);
- ``no guard``: the same without ``WHERE NOT EXISTS (SELECT FROM <guard view>)``. The guard view selects
  every column the layout reads from every table (so DDL on them fails or drops it, and then no reader
  uses the rows; docs/evolve.md); a generic plan that names it locks the view's 30 tables at every execution;
- ``no now``: the same without the server's clock column (TTL needs it);
- ``plain``: the hand-written read.

Needs the demo and ``hot_mat`` built (``pgfeatures demo`` then ``pgfeatures bench-hot-path`` once). Run::

    PYTHONPATH=src:bench/src python bench/serving_statement.py --rounds 15 --requests 200
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import psycopg

from pgfeatures.connections import resolve_dsn
from pgfeatures.demo import entity_key
from pgfeatures.materialize.sql import guarded
from pgfeatures.store import FeatureStore
from pgfeatures_bench.hot_path import MAT, registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=None, help="default: PGFEATURES_DSN, else the embedded server")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per form per round")
    parser.add_argument("--entities", type=int, default=100_000)
    args = parser.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry()
    with FeatureStore(reg, dsn, write_pool_size=0) as store:
        reader = store.readers.service_reader(MAT, None, "single")
        if not reader.materialized:
            raise SystemExit(f"{MAT} is not built: run pgfeatures bench-hot-path once")
        library = reader.statements[0]
    (layout,) = reg.layouts(MAT)
    with psycopg.connect(dsn, autocommit=True) as conn:
        guard = b" WHERE " + guarded(reg.schema, layout).as_bytes(conn)
        now = library[len(b"SELECT ") : library.index(b", ")] + b", "
        assert guard in library and now in library, "the statement's shape changed: update this script"
        forms = {
            "library": library,
            "no guard": library.replace(guard, b""),
            "no now": library.replace(now, b""),
            "plain": f'SELECT r, ts FROM "{reg.schema}"."{layout.table_name}" WHERE hashkey = $1::bytea'.encode(),
        }
        rng = random.Random(0)
        keys = [entity_key(rng.randrange(int(args.entities * 1.05))) for _ in range(1000)]
        cursors = {}
        for name, statement in forms.items():
            cursors[name] = psycopg.RawCursor(conn)
            cursors[name].execute(statement, (keys[0],), prepare=True, binary=True)
            cursors[name].fetchone()
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.rounds):
            for name in rng.sample(list(forms), len(forms)):
                cur, statement = cursors[name], forms[name]
                for key in rng.sample(keys, args.requests):
                    started = time.perf_counter()
                    cur.execute(statement, (key,), prepare=True, binary=True)
                    cur.fetchone()
                    times[name].append(time.perf_counter() - started)
    plain = statistics.median(times["plain"])
    report = {
        "command": "PYTHONPATH=src:bench/src python bench/serving_statement.py "
        f"--rounds {args.rounds} --requests {args.requests}",
        **{
            name: {
                "p50_us": round(statistics.median(t) * 1e6, 1),
                "ratio_to_plain": round(statistics.median(t) / plain, 3),
            }
            for name, t in times.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
