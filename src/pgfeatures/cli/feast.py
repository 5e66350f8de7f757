"""``pgfeatures import-feast PATH``: the pgfeatures definitions of a Feast feature repository
(see ``pgfeatures.feast.importer``), as a TOML file to serve with ``pgfeatures serve -d`` or the library."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, Command, add_json
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the Feast feature repository (the folder of its feature_store.yaml)")
    p.add_argument("-o", "--output", help="write the definitions to this file (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    add_json(p)


def run(args: argparse.Namespace, out: Output) -> int:
    from ..feast.importer import import_repo

    imported = import_repo(Path(args.path))
    text = imported.toml()
    if args.output:
        target = Path(args.output)
        if target.exists() and not args.force:
            raise CliError(f"{target} exists; pass --force to overwrite it")
        target.write_text(text)
    if args.json:
        out.json(
            {
                "definitions": imported.registry.to_dict(),
                "skipped": imported.skipped,
                "notes": imported.notes,
                "output": args.output,
            }
        )
        return 0
    if not args.output:
        out.stdout.write(text)
        out.stdout.flush()
    registry = imported.registry
    out.note(
        f"imported {len(registry.tables)} feature view(s), {len(registry.entities)} entit"
        f"{'y' if len(registry.entities) == 1 else 'ies'}, {len(registry.services)} service(s) into schema "
        f"{registry.schema}" + (f"; wrote {args.output}" if args.output else "")
    )
    for line in imported.skipped:
        out.note(f"not imported: {line}")
    for line in imported.notes:
        out.note(f"note: {line}")
    return 0


COMMANDS = (
    Command(
        "import-feast",
        "write pgfeatures definitions (entities, tables, ttls, services) from a Feast "
        "feature repository; what does not translate is listed",
        configure,
        run,
        needs=("feast",),
    ),
)
