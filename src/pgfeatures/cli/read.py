"""``pgfeatures get``: read features (of tables, or of a feature service) for one request or a batch, print JSON.

Keys, one request::

    pgfeatures get KEY                          # a bare key: the request reads one entity
    pgfeatures get user=42 merchant=m-1         # one key per entity the request reads

a batch (one request per key, one round-trip)::

    pgfeatures get KEY1 KEY2 KEY3               # bare keys: a request each (one entity)
    pgfeatures get --key user=42,merchant=m-1 --key user=43,merchant=m-2

``ENTITY=KEY`` names a key's entity (``[entities.<name>]``; ``entity`` for the default one). A bare
key that itself looks like ``NAME=...`` is written ``ENTITY=KEY``. In ``--key``, a comma followed
by ``NAME=`` starts the next entity's key. Keys are checked by their entities before any I/O.

The output follows the HTTP API: one request prints ``{"key", "features", "status", "missing"}``
(``status``: per table ``present``/``missing``/``expired``; ``missing``: the tables not present),
a batch ``{"results": [...]}`` in input order. ``--service NAME --output vector`` prints the
service's flat vector instead of ``features``: ``{"key", "service", "names", "values", "status",
"missing"}``. ``real`` values print as the shortest decimal that reads back as the same float32
(``0.11``, not ``0.10999999940395355``); a stored non-finite value prints as the string
``"Infinity"``, ``"-Infinity"`` or ``"NaN"``, as over HTTP (JSON has no number for it).
"""

from __future__ import annotations

import argparse
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .common import CliError, Command, add_definitions, add_dsn, add_json, dsn_of, load_registry, store_options_of
from .output import Output

if TYPE_CHECKING:
    from ..definitions import Registry

_ENTITY_KEY = re.compile(r"^([a-z_][a-z0-9_]*)=(.*)$", re.DOTALL)
_NEXT_ENTITY = re.compile(r",(?=[a-z_][a-z0-9_]*=)")
_FLOAT32 = struct.Struct("<f")
NO_KEY = (
    "no key given: pass KEY (one entity), ENTITY=KEY per entity (user=42 merchant=m-1), "
    "or --key ENTITY=KEY[,...] per request of a batch"
)


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="one request: ENTITY=KEY per entity it reads (user=42 merchant=m-1), or a bare key when it "
        "reads one entity; several bare keys: a batch, one request each",
    )
    p.add_argument(
        "--key",
        "-k",
        action="append",
        dest="rows",
        metavar="ENTITY=KEY[,ENTITY=KEY...]",
        help="one request of a batch, with a key per entity (repeat for each request)",
    )
    p.add_argument("--tables", "-t", help="comma-separated tables (default: all)")
    p.add_argument(
        "--features", "-f", help="comma-separated table.feature names (with --service: a subset of its features)"
    )
    p.add_argument("--service", help="read this feature service (its features, order and ttl)")
    p.add_argument(
        "--output",
        "-o",
        choices=["features", "vector"],
        default="features",
        help="features: {table: {feature: value}}; vector (with --service): the service's flat vector "
        "with its names (default features)",
    )
    p.add_argument("--strategy", "-s", help="read strategy of a single request (default: single)")
    add_json(p)  # the output is JSON either way; accepted so that every command takes --json


# -- keys -----------------------------------------------------------------------------------------


def _entity_key(text: str, registry: Registry, where: str) -> tuple[str, str] | None:
    """``(entity, key)`` for ``ENTITY=KEY``; None for a bare key. Raises CliError for an unknown entity."""
    m = _ENTITY_KEY.match(text)
    if m is None:
        return None
    name, key = m.group(1), m.group(2)
    if name not in registry.entities:
        raise CliError(
            f"unknown entity {name!r} in {where} {text!r}; valid entities: {', '.join(registry.entities)} "
            "(a bare key that contains '=' is written ENTITY=KEY)"
        )
    return name, key


def _request(pairs: Sequence[tuple[str, str]], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, key in pairs:
        if name in out:
            raise CliError(
                f"entity {name!r} is given twice in {where}: a request takes one key per entity; "
                "for a batch, pass --key ENTITY=KEY[,ENTITY=KEY...] once per request"
            )
        out[name] = key
    return out


def parse_requests(registry: Registry, keys: Sequence[str], rows: Sequence[str] | None) -> tuple[list[Any], bool]:
    """The requests of a command line, and whether they are one request (not a batch).

    Each request is a bare key (str) or ``{entity: key}``. Raises CliError for a mix of bare and
    entity keys, an entity given twice, an unknown entity, or no key at all."""
    if keys and rows:
        raise CliError(
            "give the keys either as arguments (one request, or a batch of bare keys) or with --key "
            "(one request each), not both"
        )
    if rows:
        requests: list[Any] = []
        for i, row in enumerate(rows):
            where = f"--key #{i + 1}"
            pairs = []
            for part in _NEXT_ENTITY.split(row):
                pair = _entity_key(part, registry, where)
                if pair is None:
                    raise CliError(
                        f"{where} {row!r}: write each key as ENTITY=KEY, comma-separated "
                        f"(entities: {', '.join(registry.entities)})"
                    )
                pairs.append(pair)
            requests.append(_request(pairs, where))
        return requests, False
    if not keys:
        raise CliError(NO_KEY)
    parsed = [_entity_key(k, registry, "argument") for k in keys]
    named = [p for p in parsed if p is not None]
    if named and len(named) < len(parsed):
        bare = next(k for k, p in zip(keys, parsed) if p is None)
        raise CliError(
            f"bare key {bare!r} mixed with ENTITY=KEY arguments: one request takes ENTITY=KEY for each "
            "entity it reads; for a batch pass --key ENTITY=KEY[,...] once per request"
        )
    if named:
        return [_request(named, "the arguments")], True
    return list(keys), len(keys) == 1


def _check_keys(binder: Any, requests: Sequence[Any], single: bool) -> None:
    """Check every key by its entity before any I/O, with the CLI's way of writing them in errors."""
    from ..errors import KeyFormatError

    if len(binder.names) > 1:
        for r in requests:
            if not isinstance(r, Mapping):
                raise CliError(
                    f"this request reads entities {', '.join(binder.names)}: pass one key per entity, "
                    f"as {' '.join(n + '=KEY' for n in binder.names)}"
                    + (
                        ""
                        if single
                        else " (a batch: --key " + ",".join(n + "=KEY" for n in binder.names) + " per request)"
                    )
                )
    for i, r in enumerate(requests):
        try:
            binder.one(r)
        except KeyFormatError as exc:
            raise KeyFormatError(str(exc) if single else f"request {i + 1} ({_shown(r)}): {exc}") from None


def _echoed(registry: Registry, entities: Sequence[str], request: Any) -> Any:
    """A request's keys as the output shows them: a ``bigint`` key as a JSON number (as HTTP echoes it)."""

    def one(entity: str, key: Any) -> Any:
        return int(key) if registry.entities[entity].key_type == "bigint" else key

    if isinstance(request, Mapping):
        return {name: one(name, key) for name, key in request.items()}
    return one(entities[0], request) if len(entities) == 1 else request


def _shown(request: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in request.items()) if isinstance(request, Mapping) else str(request)


# -- values ---------------------------------------------------------------------------------------


def shortest_real(x: float) -> float:
    """The float with the shortest decimal form that reads back as the same float32 as ``x`` (a
    value read from a ``real`` column): ``0.10999999940395355`` -> ``0.11``. Non-finite values as they are."""
    if not math.isfinite(x):
        return x
    target = _FLOAT32.pack(x)
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        candidate = float(f"{x:.{digits}g}")
        try:
            if _FLOAT32.pack(candidate) == target:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return x


def _real_features(registry: Registry) -> dict[str, frozenset[str]]:
    return {t.name: frozenset(f.name for f in t.features if f.type.name == "real") for t in registry.tables.values()}


def _short(value: Any) -> Any:
    return shortest_real(value) if isinstance(value, float) and math.isfinite(value) else _plain(value)


def _plain(value: Any) -> Any:
    """A value for JSON: a non-finite float as its string (json.dumps would print a bare Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        from ..definitions import nonfinite_json

        return nonfinite_json(value)
    return value


def features_json(result: Any, reals: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """``{table: {feature: value} | None}`` with real values in their shortest form."""
    out: dict[str, Any] = {}
    for table, values in result.items():
        real = reals.get(table, frozenset())
        out[table] = None if values is None else {f: _short(v) if f in real else _plain(v) for f, v in values.items()}
    return out


def result_json(key: Any, result: Any, reals: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """One request's answer, as the HTTP API gives it."""
    status = dict(result.status)
    return {
        "key": key,
        "features": features_json(result, reals),
        "status": status,
        "missing": [t for t, s in status.items() if s != "present"],
    }


def vector_json(key: Any, service: str, vector: Any, reals: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """One request's service vector: the values in the service's order, their names, the status per table."""
    values = []
    for name, value in zip(vector.names, vector.values):
        table, _, feature = name.partition(".")
        values.append(_short(value) if feature in reals.get(table, frozenset()) else _plain(value))
    status = dict(vector.status)
    return {
        "key": key,
        "service": service,
        "names": list(vector.names),
        "values": values,
        "status": status,
        "missing": [t for t, s in status.items() if s != "present"],
    }


# -- the command ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: Output) -> int:
    from ..reader import ReaderCache
    from ..store import FeatureStore

    if not args.keys and not args.rows:
        raise CliError(NO_KEY)
    registry = load_registry(args.definitions)
    tables = [t for t in args.tables.split(",") if t] if args.tables else None
    features = [f for f in args.features.split(",") if f] if args.features else None
    service = args.service
    if service is not None:
        registry.service(service)  # UnknownServiceError names the valid services
        if tables is not None:
            raise CliError(
                f"--tables does not apply to --service (the service {service!r} says which tables it reads); "
                "use -f table.feature,... to read a subset of its features"
            )
    elif args.output == "vector":
        raise CliError("--output vector needs --service NAME: a vector is in a feature service's order")
    requests, single = parse_requests(registry, args.keys, args.rows)
    # Compile and check before any I/O: unknown tables, features and services, and bad keys, fail here.
    readers = ReaderCache(registry)
    if service is not None:
        probe = readers.service_reader(service, features, args.strategy or "single")
    else:
        probe = readers.reader(tables, features, args.strategy or "single")
    _check_keys(probe.binder, requests, single)
    reals = _real_features(registry)
    vector = args.output == "vector"
    with FeatureStore(registry, dsn_of(args), options=store_options_of(args)) as store:
        if service is not None:
            output = "list" if vector else "dict"
            results = (
                [store.get_service(service, requests[0], features, output=output)]
                if single
                else store.get_service_batch(service, requests, features, output=output)
            )
        elif single:
            results = [store.get_features(requests[0], tables, features, strategy=args.strategy)]
        else:
            results = store.get_features_batch(requests, tables, features)
    keys = [_echoed(registry, probe.binder.names, k) for k in requests]
    shown = [vector_json(k, service, r, reals) if vector else result_json(k, r, reals) for k, r in zip(keys, results)]
    out.json(shown[0] if single else {"results": shown})
    return 0


COMMANDS = (
    Command(
        "get", "read features (of tables or a feature service) for one request or a batch, print JSON", configure, run
    ),
)
