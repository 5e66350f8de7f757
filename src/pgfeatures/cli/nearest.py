"""``pgfeatures nearest``: the k rows of a table nearest a query vector, printed as JSON.

::

    pgfeatures nearest items embedding --query '[0.1, 0.2, ...]' -k 10
    pgfeatures nearest items embedding --query @query.json -f title,price --where category=shoes
    pgfeatures nearest items embedding --query @query.json --ef-search 200      # HNSW: more candidates
    pgfeatures nearest items embedding --query @query.json --exact              # every row's distance

``--query``: a JSON array of numbers, or ``@FILE`` holding one. ``--where NAME=VALUE`` (repeatable,
ANDed): equality on a feature of the table; the value is text for a string feature, else JSON
(``price=9.5``, ``active=true``); a JSON array means any of its values, ``null`` means IS NULL. The
output is the HTTP answer (``reader/answer.py``): ``{"table", "feature", "metric", "search",
"ef_search", "neighbours": [{"key", "distance", "features"}]}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CliError, Command, add_definitions, add_dsn, add_json, dsn_of, load_registry, store_options_of
from .output import Output

if TYPE_CHECKING:
    from ..definitions import FeatureTable


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("table", help="the feature table")
    p.add_argument("feature", help="its embedding feature")
    p.add_argument("--query", "-q", required=True, help="the query vector: a JSON array of numbers, or @FILE")
    p.add_argument("-k", type=int, default=10, help="neighbours to return, 1 to 1000 (default 10)")
    p.add_argument(
        "--features", "-f", help="comma-separated features of each neighbour's row to print ('*': all; default none)"
    )
    p.add_argument(
        "--where",
        "-w",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="equality filter on a feature (repeatable, ANDed): text for a string feature, else JSON; "
        "a JSON array: any of; null: IS NULL",
    )
    p.add_argument("--ef-search", type=int, help="HNSW candidates for this search, k to 1000 (default: the server's)")
    p.add_argument("--exact", action="store_true", help="compute every row's distance even where an index exists")
    p.add_argument("--exact-limit", type=int, help="most rows an exact search may scan (default 50000)")
    add_json(p)  # the output is JSON either way; accepted so that every command takes --json


def parse_query(text: str) -> Any:
    """The query vector from ``--query``: JSON text, or ``@FILE``. Raises CliError."""
    source = "--query"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"--query {path}: cannot read it ({exc.strerror or exc})") from None
        source = f"--query {path}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source}: not a JSON array of numbers ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, list):
        raise CliError(f"{source}: expected a JSON array of numbers, got {type(value).__name__}")
    return value


def parse_where(table: FeatureTable, items: list[str]) -> dict[str, Any]:
    """``--where NAME=VALUE`` options as a mapping (checked by the store). Raises CliError."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, text = item.partition("=")
        if not eq or not name:
            raise CliError(
                f"--where {item!r}: write NAME=VALUE (features of {table.name}: {', '.join(table.feature_names)})"
            )
        feature = table.feature(name)  # UnknownFeatureError names the valid ones
        if name in out:  # two equalities on one feature would match nothing: it is a list of values meant
            raise CliError(
                f"--where {name}= given twice: for any of several values write them as one JSON array, "
                f'--where \'{name}=["a", "b"]\''
            )
        if feature.type.kind == "string" and not text.startswith("[") and text != "null":
            out[name] = text
            continue
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            if feature.type.kind in ("string", "timestamp"):
                out[name] = text
            else:
                raise CliError(f"--where {item!r}: {text!r} is not a JSON value ({feature.type.spec})") from None
    return out


def run(args: argparse.Namespace, out: Output) -> int:
    from ..reader import FeatureResult, Selection
    from ..reader.answer import Reals, nearest_answer
    from ..reader.nearest import ALL, check_request
    from ..store import FeatureStore

    registry = load_registry(args.definitions)
    table = registry.table(args.table)  # UnknownTableError names the valid tables
    features: Any = None
    if args.features:
        features = ALL if args.features.strip() == ALL else [f for f in args.features.split(",") if f]
    kwargs = {
        "features": features,
        "where": parse_where(table, args.where),
        "ef_search": args.ef_search,
        "exact": args.exact,
    }
    query = parse_query(args.query)
    checked = check_request(registry, args.table, args.feature, query, args.k, **kwargs)  # before any I/O
    settings = {} if args.exact_limit is None else {"exact_limit": args.exact_limit}
    with FeatureStore(registry, dsn_of(args), options=store_options_of(args, **settings)) as store:
        found = store.nearest(args.table, args.feature, query, args.k, **kwargs)
    reals = Reals(Selection(registry.schema, ((checked.table, checked.features),)))
    shown = [reals.features(FeatureResult({table.name: n.features}))[table.name] for n in found]
    out.json(nearest_answer(found, shown))
    return 0


COMMANDS = (
    Command(
        "nearest",
        "the k rows of a table nearest a query vector (an embedding feature), with distances and features, as JSON",
        configure,
        run,
    ),
)
