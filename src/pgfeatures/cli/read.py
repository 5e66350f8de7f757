"""``pgfeatures get``: read features (of tables, or of a feature service) for one request or a batch, print JSON.

Keys, one request::

    pgfeatures get KEY                          # a bare key: the request reads one entity
    pgfeatures get user=42 merchant=m-1         # one key per entity the request reads

a batch (one request per key, one round-trip)::

    pgfeatures get KEY1 KEY2 KEY3               # bare keys: a request each (one entity)
    pgfeatures get --key user=42,merchant=m-1 --key user=43,merchant=m-2

``ENTITY=KEY`` names a key's entity (``[entities.<name>]``; ``entity`` for the default one). A bare
key that itself looks like ``NAME=...`` is written ``ENTITY=KEY``. In ``--key``, a comma followed
by ``NAME=`` starts the next entity's key. Keys are checked by their entities, and bound to the
reader's parameters, once and before any I/O; the store compiles each reader once.

The output follows the HTTP API: one request prints ``{"key", "features", "status", "missing"}``
(``status``: per table ``present``/``missing``/``expired``; ``missing``: the tables not present),
a batch ``{"results": [...]}`` in input order (built by ``reader/answer.py``, as the server's).
``--service NAME --output vector`` prints the service's flat vector instead of ``features``: ``{"key",
"service", "names", "values", "status", "missing"}``. ``--context NAME=VALUE`` (with ``--service``) gives
the values the service's request-time transforms take, read as their declared types; their outputs
print beside the stored features (``{"features": {transform: {output: value}}}``, or last in a vector). ``real`` values print as the shortest decimal that reads back as the same float32
(``0.11``, not ``0.10999999940395355``); a stored non-finite value prints as the string
``"Infinity"``, ``"-Infinity"`` or ``"NaN"``, as over HTTP (JSON has no number for it).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..reader.answer import shortest_real
from .common import CliError, Command, add_definitions, add_dsn, add_json, dsn_of, load_registry, store_options_of
from .output import Output

if TYPE_CHECKING:
    from ..definitions import Registry
    from ..reader import KeyBinder

__all__ = ["bind_requests", "parse_requests", "shortest_real"]

_ENTITY_KEY = re.compile(r"^([a-z_][a-z0-9_]*)=(.*)$", re.DOTALL)
_NEXT_ENTITY = re.compile(r",(?=[a-z_][a-z0-9_]*=)")
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
    p.add_argument(
        "--context",
        "-c",
        action="append",
        metavar="NAME=VALUE",
        help="with --service: a value of the request context its transforms take (repeat for each; a batch "
        "uses the same context for every request)",
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


def bind_requests(binder: KeyBinder, requests: Sequence[Any], single: bool) -> list[tuple[Any, ...]]:
    """Every request's keys bound to the reader's parameters, each parsed (and hashed) once, before any
    I/O; errors in the CLI's way of writing keys. Raises CliError, KeyFormatError."""
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
    bound = []
    for i, r in enumerate(requests):
        try:
            bound.append(binder.one(r))
        except KeyFormatError as exc:
            raise KeyFormatError(str(exc) if single else f"request {i + 1} ({_shown(r)}): {exc}") from None
    return bound


def parse_context(registry: Registry, service: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as the service's context, each value read as its declared type (``12.5``,
    ``3``, ``true``); a value that does not read as its type, or a name the service does not declare, is
    passed on as written, for the service's check to name. Raises CliError for a pair without ``=``."""
    declared = dict(registry.service(service).context)
    out: dict[str, Any] = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        if not eq or not name:
            raise CliError(
                f"--context {pair!r}: write NAME=VALUE (context of {service}: {', '.join(declared) or 'none'})"
            )
        if name in out:
            raise CliError(f"--context {name} is given twice")
        kind = declared.get(name)
        out[name] = text if kind is None else _typed(text, kind.name)
    return out


def _typed(text: str, kind: str) -> Any:
    try:
        if kind == "boolean":
            return {"true": True, "false": False}.get(text.strip().lower(), text)
        if kind in ("real", "double precision"):
            return float(text)
        return int(text)
    except ValueError:
        return text


def _echoed(registry: Registry, entities: Sequence[str], request: Any) -> Any:
    """A request's keys as the output shows them: a ``bigint`` key as a JSON number (as HTTP echoes it)."""

    def one(entity: str, key: Any) -> Any:
        return int(key) if registry.entities[entity].key_type == "bigint" else key

    if isinstance(request, Mapping):
        return {name: one(name, key) for name, key in request.items()}
    return one(entities[0], request) if len(entities) == 1 else request


def _shown(request: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in request.items()) if isinstance(request, Mapping) else str(request)


# -- the command ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: Output) -> int:
    from ..reader import KeyBinder, Strategy, select, select_service
    from ..reader.answer import Reals, answer, missing
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
    if args.context and service is None:
        raise CliError("--context needs --service NAME: a context is what a feature service's transforms take")
    context = parse_context(registry, service, args.context) if service is not None and args.context else None
    strategy = Strategy.parse(args.strategy) if args.strategy else None
    requests, single = parse_requests(registry, args.keys, args.rows)
    # Checked and bound before any I/O: unknown tables, features and services, and bad keys, fail here. The
    # readers are compiled once, by the store (the one a service is read by depends on what the database
    # holds: its serving rows when built), and every key is parsed once, here.
    selection = (
        select_service(registry, service, features) if service is not None else select(registry, tables, features)
    )
    binder = KeyBinder(selection.entities, selection.known, selection.needs())
    bound = bind_requests(binder, requests, single)
    vector = args.output == "vector"
    with FeatureStore(registry, dsn_of(args), options=store_options_of(args)) as store:
        readers = store.readers
        # The transforms are compiled when the store opens; the context is checked before the read.
        plan = store.transform_plan(service, features, context) if service is not None else None
        if plan is not None:
            columns = plan.contexts([context or {}] * len(bound), len(bound))
        if single:
            if service is None:
                reader: Any = store.reader(tables, features, strategy)
            elif vector:
                reader = readers.service_vector_reader(service, features, strategy or store.strategy)
            else:
                reader = readers.service_reader(service, features, strategy or store.strategy)
            results = [store.read_bound(reader, bound[0])]
            if plan is not None:
                results = [store.apply_transforms(plan, results[0], {k: v[0] for k, v in columns.items()})]
        else:
            if service is None:
                batch: Any = store.batch_reader(tables, features)
            elif vector:
                batch = readers.service_vector_batch_reader(service, features)
            else:
                batch = readers.service_batch_reader(service, features)
            results = store.read_batch_bound(batch, tuple(map(list, zip(*bound))))
            if plan is not None:
                results = store.apply_transforms_batch(plan, results, columns)
    outputs = plan.types if plan is not None else None
    keys = [_echoed(registry, binder.names, k) for k in requests]
    if vector:
        names = results[0].names
        reals = Reals(selection, names, outputs)
        shown = [
            {
                "key": k,
                "service": service,
                "names": list(names),
                "values": reals.vector(r.values),
                "status": r.status,
                "missing": missing(r.status),
            }
            for k, r in zip(keys, results)
        ]
    else:
        reals = Reals(selection, (), outputs)
        shown = [answer(k, reals.features(r), r.status) for k, r in zip(keys, results)]
    out.json(shown[0] if single else {"results": shown})
    return 0


COMMANDS = (
    Command(
        "get", "read features (of tables or a feature service) for one request or a batch, print JSON", configure, run
    ),
)
