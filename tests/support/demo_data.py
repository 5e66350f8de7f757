"""The demo layout (tables of ``real`` features, deterministic values) in a test's own schema,
with a definitions file for the service; the ground truth is ``pgfeatures.demo.expected``."""

from __future__ import annotations

from pathlib import Path

import psycopg

from pgfeatures.definitions import Registry, demo_registry
from pgfeatures.demo import load_demo


def create(dsn: str, schema: str, folder: Path, *, entities: int, n_tables: int = 30) -> tuple[Path, Registry]:
    """Load the demo tables into ``schema``; returns the definitions file and the registry."""
    registry = demo_registry(n_tables=n_tables, schema=schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        load_demo(conn, registry, entities)
    lines = [f'schema = "{schema}"']
    for table in registry.tables.values():
        lines.append(f"[tables.{table.name}.features]")
        lines += [f'{f.name} = "{f.type.name}"' for f in table.features]
    path = folder / "demo.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, registry
