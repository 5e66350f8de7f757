"""`pgfeatures serve` against its floor: a materialized service's vector over HTTP next to `GET /healthz`
(the HTTP stack's own cost, client included) and the library's read of the same vector, in one run.

Issue 21's target: ``POST /v1/services/{name}`` (vector, one keep-alive client) p50 <= ``/healthz`` p50 +
the library's p50 for the same read + 0.05 ms. Uses the demo data and ``hot_mat``, the materialized
service ``bench/hot_path.py`` builds (run it once first). Forms interleaved round by round; every HTTP
answer is checked equal to the library's. Also reports the server's CPU per request (its /proc times over
a block of requests of each kind). Run it::

    PYTHONPATH=src python bench/hot_path.py --rounds 2 --requests 20        # once: builds hot_mat
    PYTHONPATH=src:bench/src python bench/serve_path.py --rounds 10 --requests 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from hot_path import MAT, entity_key, registry  # noqa: E402

from pgfeatures import FeatureStore  # noqa: E402
from pgfeatures.connections import resolve_dsn  # noqa: E402
from pgfeatures_bench.harness.serve import ServeProcess  # noqa: E402


def toml_of(reg) -> str:
    lines = [f'schema = "{reg.schema}"']
    for name, table in reg.tables.items():
        lines += [f"[tables.{name}]", f"[tables.{name}.features]"]
        lines += [f'{f.name} = "real"' for f in table.features]
    refs = ", ".join(f'"{t}.*"' for t in reg.tables)
    lines += [f"[services.{MAT}]", f"features = [{refs}]", "materialize = true"]
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="default: $PGFEATURES_DSN, else the embedded server")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--requests", type=int, default=200, help="requests per form per round")
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry()
    folder = Path(tempfile.mkdtemp(prefix="pgf-serve-path-"))
    (folder / "features.toml").write_text(toml_of(reg))
    rng = random.Random(0)
    samples: dict[str, list[float]] = {"healthz": [], "serve vector": [], "library vector": []}
    cpu: dict[str, float] = {"healthz": 0.0, "serve vector": 0.0}
    with (
        ServeProcess("--dsn", dsn, "-d", str(folder / "features.toml"), "--workers", "1") as server,
        FeatureStore(reg, dsn) as store,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        assert http.get(f"/v1/services/{MAT}").json()["serving"] == "materialized"
        for i in range(50):  # checked equal, and warmed
            key = entity_key(rng.randrange(args.entities))
            got = http.post(f"/v1/services/{MAT}", json={"key": key.hex(), "output": "vector"}).json()
            want = store.get_service(MAT, key, output="list")
            assert len(got["values"]) == len(want.values) and all(
                (g is None) == (w is None) and (g is None or math.isclose(g, float(w), rel_tol=1e-6))
                for g, w in zip(got["values"], want.values)
            ), i

        def healthz(key: bytes) -> None:
            http.get("/healthz")

        def serve(key: bytes) -> None:
            http.post(f"/v1/services/{MAT}", json={"key": key.hex(), "output": "vector"})

        def library(key: bytes) -> None:
            store.get_service(MAT, key, output="list")

        forms = {"healthz": healthz, "serve vector": serve, "library vector": library}
        for _ in range(args.rounds):
            order = list(forms)
            rng.shuffle(order)
            for name in order:
                keys = [entity_key(rng.randrange(args.entities)) for _ in range(args.requests)]
                before = cpu_seconds(server.proc.pid) if name in cpu else 0.0
                for key in keys:
                    t0 = time.perf_counter()
                    forms[name](key)
                    samples[name].append(time.perf_counter() - t0)
                if name in cpu:
                    cpu[name] += cpu_seconds(server.proc.pid) - before
    n = args.rounds * args.requests
    p50 = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    out = {
        "p50_ms": {k: round(v, 4) for k, v in p50.items()},
        "server_cpu_ms_per_request": {k: round(v / n * 1000, 4) for k, v in cpu.items()},
        "floor_ms": round(p50["healthz"] + p50["library vector"], 4),
        "above_floor_ms": round(p50["serve vector"] - p50["healthz"] - p50["library vector"], 4),
        "target_met": p50["serve vector"] <= p50["healthz"] + p50["library vector"] + 0.05,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, value in out["p50_ms"].items():
            print(f"{name:<16} p50 {value:.3f} ms")
        print(f"server CPU per request: {out['server_cpu_ms_per_request']}")
        print(
            f"serve - (healthz + library) = {out['above_floor_ms']:.3f} ms "
            f"(target <= 0.05 ms: {'met' if out['target_met'] else 'missed'})"
        )


if __name__ == "__main__":
    main()
