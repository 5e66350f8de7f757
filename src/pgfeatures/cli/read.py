"""``pgfeatures get``: read features for one or more keys and print them as JSON."""

from __future__ import annotations

import argparse

from .common import Command, add_definitions, add_dsn, add_json, dsn_of, load_registry
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    add_dsn(p)
    add_definitions(p)
    p.add_argument("keys", nargs="+", metavar="KEY", help="64-character hex keys")
    p.add_argument("--tables", "-t", help="comma-separated tables (default: all)")
    p.add_argument("--features", "-f", help="comma-separated table.feature names")
    p.add_argument("--strategy", "-s", help="read strategy (default: single)")
    add_json(p)  # the output is JSON either way; accepted so that every command takes --json


def run(args: argparse.Namespace, out: Output) -> int:
    from ..store import FeatureStore

    tables = args.tables.split(",") if args.tables else None
    features = args.features.split(",") if args.features else None
    registry = load_registry(args.definitions)
    with FeatureStore(registry, dsn_of(args), pool_size=1, write_pool_size=1) as store:
        if len(args.keys) == 1:
            result = store.get_features(args.keys[0], tables, features, strategy=args.strategy)
        else:
            result = store.get_features_batch(args.keys, tables, features)
    out.json(result)
    return 0


COMMANDS = (Command("get", "read features for one or more keys (hex) and print JSON", configure, run),)
