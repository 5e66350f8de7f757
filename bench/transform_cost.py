"""What a request-time transform adds to a read: the same feature service with and without one, in one run.

Issue 22's target: a transform computing 3 features from 2 context values and 4 fetched features adds at
most 0.02 ms p50 to a library read, and at most 0.05 ms through ``pgfeatures serve``. Standalone, on the
demo data (30 tables x 8 real, ``pgfeatures demo``): two services over the same 16 features (``t00.*``,
``t01.*``), ``tx_plain`` and ``tx_transform``, the latter with ``context = {amount, lat}`` and the
transform ``three_features`` (below) reading ``t00.f0..f3``. The forms are interleaved round by round
(each round shuffles their order), sequential caller, loopback; every transformed answer is first checked
against the function applied by hand to the plain answer.

Reports p50 / p99 (ms) and client CPU per request of each form, the difference with-minus-without per
pair (the figure the target is about), and the transform alone (no I/O: the compiled transforms applied
to already-read results, best of 20, microseconds per request), which a loaded machine's noise does not
drown. ``--serve`` adds the same pair through a ``pgfeatures serve`` process (one worker, keep-alive
client, dict answers). Run it::

    PYTHONPATH=src python -m pgfeatures.cli demo --requests 50          # once: the data
    PYTHONPATH=src:bench/src python bench/transform_cost.py --rounds 20 --requests 200 [--serve]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pgfeatures.connections import resolve_dsn
from pgfeatures.definitions import FeatureService, Registry, demo_registry
from pgfeatures.definitions.transforms import Transform
from pgfeatures.store import FeatureStore

N_ENTITIES = 100_000  # the demo's
FEATURES = ("t00.*", "t01.*")
CONTEXT = {"amount": "double", "lat": "double"}
INPUTS = ("t00.f0", "t00.f1", "t00.f2", "t00.f3")
OUTPUTS = {"ratio": "double", "spread": "double", "big": "boolean"}

# The transform, as a module a server can import too (written next to the definitions for --serve).
SOURCE = """
def three_features(context, features):
    amount, lat = context["amount"], context["lat"]
    f0, f1, f2, f3 = features["t00.f0"], features["t00.f1"], features["t00.f2"], features["t00.f3"]
    return {
        "ratio": amount / ((f0 or 0.0) + 1.0),
        "spread": (f1 or 0.0) - (f2 or 0.0) + lat,
        "big": amount > (f3 or 0.0),
    }
"""
_module: dict[str, Any] = {}
exec(SOURCE, _module)  # noqa: S102 - our own constant: the function the library forms call in-process
three_features: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] = _module["three_features"]


def entity_key(i: int) -> bytes:
    import hashlib

    return hashlib.sha256(b"entity:%d" % i).digest()  # the demo's (pgfeatures.demo.entity_key)


def registry(function: Any = None) -> Registry:
    demo = demo_registry()
    transform = Transform(function or three_features, OUTPUTS, name="tx", inputs=INPUTS)
    services = [
        FeatureService("tx_plain", FEATURES),
        FeatureService("tx_transform", FEATURES, context=CONTEXT, transforms=(transform,)),
    ]
    return Registry.of(demo.tables.values(), demo.schema, services=services)


def toml_of(reg: Registry) -> str:
    lines = [f'schema = "{reg.schema}"']
    for name, table in reg.tables.items():
        lines += [f"[tables.{name}]", f"[tables.{name}.features]"]
        lines += [f'{f.name} = "real"' for f in table.features]
    refs = ", ".join(f'"{r}"' for r in FEATURES)
    lines += ["[services.tx_plain]", f"features = [{refs}]"]
    lines += ["[services.tx_transform]", f"features = [{refs}]", 'context = { amount = "double", lat = "double" }']
    lines += [
        "[[services.tx_transform.transforms]]",
        'function = "pgf_transform_cost:three_features"',
        'name = "tx"',
        "inputs = [" + ", ".join(f'"{i}"' for i in INPUTS) + "]",
        'outputs = { ratio = "double", spread = "double", big = "boolean" }',
    ]
    return "\n".join(lines) + "\n"


def measure(
    forms: dict[str, Callable[[bytes, dict[str, float]], Any]], keys: list[bytes], rounds: int, requests: int, seed: int
) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    lat: dict[str, list[float]] = {n: [] for n in forms}
    cpu: dict[str, list[float]] = {n: [] for n in forms}
    for _ in range(rounds):
        order = list(forms)
        rng.shuffle(order)
        batch = [
            (rng.choice(keys), {"amount": rng.uniform(0, 500), "lat": rng.uniform(-90, 90)}) for _ in range(requests)
        ]
        for name in order:
            call, times = forms[name], lat[name]
            c0 = time.process_time()
            for key, ctx in batch:
                t0 = time.perf_counter()
                call(key, ctx)
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


def transform_alone(store: FeatureStore, keys: list[bytes], repeat: int = 20) -> dict[str, float]:
    """Microseconds per request of the transform step alone (CPU, best of ``repeat``): the context checked
    and the compiled transforms applied to results already read (fresh copies each pass), dict and vector."""
    plan = store.transform_plan("tx_transform", None, None)
    assert plan is not None
    ctx = {"amount": 125.0, "lat": 52.5}
    out = {}
    for output in ("dict", "list"):
        read = [store.get_service("tx_plain", k, output=output) for k in keys]
        best = float("inf")
        for _ in range(repeat):
            # fresh results, their status not yet built (as a read returns them: the transform step builds it)
            copies = [type(r)(r) for r in read] if output == "dict" else list(read)
            t0 = time.process_time()
            for c in copies:
                plan.apply(c, plan.context(ctx))
            best = min(best, time.process_time() - t0)
        out[output] = round(1e6 * best / len(keys), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", help="default: $PGFEATURES_DSN, else the embedded server")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--requests", type=int, default=200, help="requests per form per round")
    p.add_argument("--serve", action="store_true", help="also through a `pgfeatures serve` process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dsn = resolve_dsn(args.dsn)
    reg = registry()
    rng = random.Random(args.seed)
    keys = [entity_key(rng.randrange(int(N_ENTITIES * 1.05))) for _ in range(500)]  # some reads miss
    with FeatureStore(reg, dsn, write_pool_size=0) as store:
        for key in keys[:200]:  # the transform's outputs are the function's, applied by hand to the plain read
            ctx = {"amount": 125.0, "lat": 52.5}
            plain, done = store.get_service("tx_plain", key), store.get_service("tx_transform", key, context=ctx)
            assert done == {
                **plain,
                "tx": three_features(ctx, {i: plain[i[:3]] and plain[i[:3]][i[4:]] for i in INPUTS}),
            }
        forms: dict[str, Callable[[bytes, dict[str, float]], Any]] = {
            "library dict": lambda k, c: store.get_service("tx_plain", k),
            "library dict + transform": lambda k, c: store.get_service("tx_transform", k, context=c),
            "library vector": lambda k, c: store.get_service("tx_plain", k, output="list"),
            "library vector + transform": lambda k, c: store.get_service("tx_transform", k, output="list", context=c),
        }
        pairs = [("library dict", "library dict + transform"), ("library vector", "library vector + transform")]
        server = http = None
        if args.serve:
            import httpx

            sys.path.insert(0, str(Path(__file__).parent / "src"))
            from pgfeatures_bench.harness.serve import ServeProcess

            folder = Path(tempfile.mkdtemp(prefix="pgf-transform-cost-"))
            (folder / "features.toml").write_text(toml_of(reg))
            (folder / "pgf_transform_cost.py").write_text(SOURCE)
            server = ServeProcess(
                "--dsn", dsn, "-d", str(folder / "features.toml"), "--workers", "1", env={"PYTHONPATH": str(folder)}
            )
            server.__enter__()
            http = httpx.Client(base_url=server.url, timeout=10)
            got = http.post(
                "/v1/services/tx_transform", json={"key": keys[0].hex(), "context": {"amount": 1, "lat": 2}}
            )
            assert got.status_code == 200 and "tx" in got.json()["features"], got.text
            forms["serve dict"] = lambda k, c: http.post("/v1/services/tx_plain", json={"key": k.hex()})
            forms["serve dict + transform"] = lambda k, c: http.post(
                "/v1/services/tx_transform", json={"key": k.hex(), "context": c}
            )
            pairs.append(("serve dict", "serve dict + transform"))
        try:
            measure(forms, keys, 2, 50, args.seed)  # warm every connection and prepared statement
            got_forms = measure(forms, keys, args.rounds, args.requests, args.seed)
            alone = transform_alone(store, keys[:200])
        finally:
            if http is not None:
                http.close()
            if server is not None:
                server.__exit__(None, None, None)
    added = {
        f"{b} - {a}": {
            "p50_ms": round(got_forms[b]["p50_ms"] - got_forms[a]["p50_ms"], 4),
            "cpu_ms": round(got_forms[b]["cpu_ms"] - got_forms[a]["cpu_ms"], 4),
        }
        for a, b in pairs
    }
    if args.json:
        print(json.dumps({"forms": got_forms, "added": added, "transform_alone_us": alone}, indent=2))
        return
    print(f"{'form':30} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>8}")
    for name, row in got_forms.items():
        print(f"{name:30} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['cpu_ms']:8.4f}")
    print()
    print(f"{'added by the transform':54} {'p50 ms':>8} {'cpu ms':>8}")
    for name, row in added.items():
        print(f"{name:54} {row['p50_ms']:8.4f} {row['cpu_ms']:8.4f}")
    print()
    print(f"transform step alone, no I/O (us per request): dict {alone['dict']}, vector {alone['list']}")


if __name__ == "__main__":
    main()
