"""The README's Architecture section is the map of the tree, and the floors it names hold.

- Every module and package under ``src/pgfeatures`` is in the map, and everything in the map exists.
- A module's top-level imports never reach a higher floor than its own (imports inside functions are
  how a lower floor reaches an optional extra on demand, e.g. the store's ``write_features``
  calling the loader, and are not counted; nor are ``TYPE_CHECKING`` imports).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pgfeatures"
UNFLOORED = {"errors.py": 0, "demo.py": 7, "__init__.py": 8}  # errors: anyone's; the package root: everything


def architecture_block() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def mapped() -> dict[str, tuple[int | None, str]]:
    """Top-level entry -> (floor, what the map says of it)."""
    entries: dict[str, tuple[int | None, str]] = {}
    current = None
    for line in architecture_block().splitlines():
        m = re.match(r"^  (\S+?)\s+(?:floor (\d)\s+)?(.*)$", line)
        if m and not line.startswith("   "):
            current = m.group(1)
            entries[current] = (int(m.group(2)) if m.group(2) else None, m.group(3))
        elif current and line.startswith("   "):
            floor, text = entries[current]
            entries[current] = (floor, text + " " + line.strip())
    return entries


def test_the_map_lists_every_module_and_only_modules_that_exist():
    entries = mapped()
    tree = {
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"
    } - {"__init__.py"}
    generated = {f"{name}.py" for name in ("inventory", "retention")}  # named beside their async source
    assert set(entries) - tree == set(), "in the map but not in the tree"
    assert tree - set(entries) - generated == set(), "in the tree but not in the map"
    for entry, (_, text) in entries.items():
        if entry.endswith("/"):
            modules = {p.stem for p in (PACKAGE / entry).glob("*.py")} - {"__init__", "__main__"}
            named = set(re.findall(r"[a-z_]+", text))
            assert modules - named == set(), f"{entry}: modules missing from the map"


def _top_level_imports(path: Path) -> set[str]:
    """The pgfeatures entries (``reader/``, ``write.py``) a module imports at import time."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(PACKAGE).parts[:-1]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(package[: len(package) - node.level + 1])
                    parts = base + (node.module.split(".") if node.module else [])
                    if not parts:  # from . import x, at the package root
                        parts = [a.name for a in node.names]
                elif node.module and node.module.split(".")[0] == "pgfeatures":
                    parts = node.module.split(".")[1:] or [a.name for a in node.names]
                else:
                    continue
                found.update(_entry(p) for p in ([parts[0]] if parts else []))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "pgfeatures" and len(parts) > 1:
                        found.add(_entry(parts[1]))

    visit(tree.body)
    return {e for e in found if (PACKAGE / e).exists()}  # not names of the package root (__version__)


def _entry(name: str) -> str:
    return f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py"


def floor_of(entries: dict[str, tuple[int | None, str]], entry: str) -> int:
    if entry in UNFLOORED:
        return UNFLOORED[entry]
    if entry in ("inventory.py", "retention.py"):
        entry = entry.replace(".py", "_async.py")
    floor = entries[entry][0]
    assert floor is not None, f"{entry} has no floor in the map"
    return floor


def test_lower_floors_never_import_higher_ones():
    entries = mapped()
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        entry = _entry(rel.parts[0].removesuffix(".py")) if len(rel.parts) > 1 else rel.name
        own = floor_of(entries, entry)
        for imported in _top_level_imports(path) - {entry}:
            if floor_of(entries, imported) > own:
                violations.append(f"{rel} (floor {own}) imports {imported} (floor {floor_of(entries, imported)})")
    assert violations == []


def test_the_read_path_has_nothing_of_http_or_the_cli():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("definitions", "reader", "store", "connections", "schema.py", "write.py", "materialize"):
            text = path.read_text()
            assert not re.search(r"\b(starlette|uvicorn|argparse|rich)\b", text), rel
