"""The map of the tree (docs/architecture.toml) is true, and the floors it gives hold.

- Every module and package under ``src/pgfeatures`` is in the map, and everything in the map exists.
- A module's top-level imports never reach a higher floor than its own (imports inside functions are
  how a lower floor reaches an optional extra on demand, e.g. the store's ``write_features``
  calling the loader, and are not counted; nor are ``TYPE_CHECKING`` imports).
- The modules of each ``[[never]]`` rule import none of its names, anywhere (the read path has nothing
  of HTTP or the CLI).

The checks are functions of a map and a package directory, so the last tests run them on a small
package made for the purpose and see them catch what they are meant to catch.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAP_FILE = ROOT / "docs" / "architecture.toml"
ENTRY_KEYS = {"floor", "owns", "modules"}


def read_map(path: Path = MAP_FILE) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _is_package(directory: Path) -> bool:
    return directory.is_dir() and (directory / "__init__.py").exists()


def tree_entries(package: Path) -> dict[str, Path]:
    """Top-level name (``reader``, ``schema``, ``__init__``) -> its package directory or module file."""
    out = {p.name: p for p in package.iterdir() if _is_package(p)}
    out.update({p.stem: p for p in package.glob("*.py")})
    return out


def _generated(names: Iterable[str]) -> set[str]:
    """The sync twins among ``names``: ``x`` beside ``x_async`` (the map lists the source only)."""
    names = set(names)
    return {n for n in names if f"{n}_async" in names}


def map_problems(the_map: Mapping[str, Any], package: Path) -> list[str]:
    """How the map and the tree disagree (empty: every module mapped, everything mapped exists, every
    entry well formed)."""
    problems = []
    floors = {int(k) for k in the_map.get("floors", {})}
    entries: Mapping[str, Any] = the_map.get("map", {})
    tree = tree_entries(package)
    for name, entry in entries.items():
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            problems.append(
                f"{name}: unknown key(s) {', '.join(sorted(unknown))} (valid: {', '.join(sorted(ENTRY_KEYS))})"
            )
        if entry.get("floor") not in floors:
            problems.append(f"{name}: floor {entry.get('floor')!r} is not one of [floors] ({sorted(floors)})")
        if not isinstance(entry.get("owns"), str) or not entry["owns"].strip():
            problems.append(f'{name}: says nothing of what it owns (owns = "...")')
        if name not in tree:
            problems.append(f"{name}: in the map but not in the tree")
            continue
        modules = entry.get("modules", {})
        if tree[name].is_dir():
            present = {p.stem for p in tree[name].glob("*.py")} - {"__init__"}
            missing = present - set(modules) - _generated(present)
            if missing:
                problems.append(f"{name}/: modules missing from the map: {', '.join(sorted(missing))}")
            absent = set(modules) - present
            if absent:
                problems.append(f"{name}/: modules in the map but not in the tree: {', '.join(sorted(absent))}")
        elif modules:
            problems.append(f"{name}: a module, not a package: it has no modules")
    unmapped = set(tree) - set(entries) - _generated(tree)
    if unmapped:
        problems.append(f"in the tree but not in the map: {', '.join(sorted(unmapped))}")
    for path in the_map.get("elsewhere", {}):
        if not (ROOT / path).exists():
            problems.append(f"[elsewhere] {path}: does not exist")
    return problems


def _imports(tree: ast.Module, top_level_only: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    """The import statements of a module: at import time only (not in functions or TYPE_CHECKING
    blocks), or anywhere."""
    if not top_level_only:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return

    def visit(body: list[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                yield from visit(node.body)
                yield from visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    yield from visit(handler.body)
                yield from visit(getattr(node, "finalbody", []))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node

    yield from visit(tree.body)


def imported_entries(path: Path, package: Path, top_level_only: bool = True) -> set[str]:
    """The package's top-level entries (``reader``, ``write``) a module imports."""
    name = package.name
    where = path.relative_to(package).parts[:-1]  # the module's package, inside ``package``
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text()), top_level_only):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(where[: len(where) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # from . import x, at the package root
                    found.update(a.name for a in node.names)
                    continue
            elif node.module and node.module.split(".")[0] == name:
                parts = node.module.split(".")[1:] or [a.name for a in node.names]
            else:
                continue
            found.add(parts[0])
        else:
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == name and len(parts) > 1:
                    found.add(parts[1])
    return found & set(tree_entries(package))  # not names of the package root (__version__)


def external_imports(path: Path) -> set[str]:
    """Top-level names of everything a module imports from outside its package, anywhere in it."""
    out = set()
    for node in _imports(ast.parse(path.read_text()), top_level_only=False):
        if isinstance(node, ast.ImportFrom):
            if not node.level and node.module:
                out.add(node.module.split(".")[0])
        else:
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def _owner(path: Path, package: Path) -> str:
    """The top-level entry a file belongs to (``reader`` for reader/keys.py, ``schema`` for schema.py)."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def _floor(entries: Mapping[str, Any], name: str) -> int:
    if name not in entries and f"{name}_async" in entries:  # a generated twin: its source's floor
        name = f"{name}_async"
    return int(entries[name]["floor"])


def floor_violations(the_map: Mapping[str, Any], package: Path) -> list[str]:
    entries = the_map["map"]
    out = []
    for path in sorted(package.rglob("*.py")):
        own_name = _owner(path, package)
        own = _floor(entries, own_name)
        for imported in sorted(imported_entries(path, package) - {own_name}):
            floor = _floor(entries, imported)
            if floor > own:
                out.append(f"{path.relative_to(package)} (floor {own}) imports {imported} (floor {floor})")
    return out


def never_violations(the_map: Mapping[str, Any], package: Path) -> list[str]:
    out = []
    for rule in the_map.get("never", []):
        owners = set(rule["modules"])
        forbidden = set(rule["imports"])
        for path in sorted(package.rglob("*.py")):
            owner = _owner(path, package)
            if "*" not in owners and owner not in owners and owner.removesuffix("_async") not in owners:
                continue
            found = external_imports(path) & forbidden
            if found:
                out.append(f"{path.relative_to(package)} imports {', '.join(sorted(found))}: {rule['why']}")
    return out


# -- the real tree -------------------------------------------------------------------------------------

THE_MAP = read_map()
PACKAGE = ROOT / THE_MAP["package"]


def test_the_map_lists_every_module_and_only_modules_that_exist():
    assert map_problems(THE_MAP, PACKAGE) == []


def test_lower_floors_never_import_higher_ones():
    assert floor_violations(THE_MAP, PACKAGE) == []


def test_the_never_rules_hold():
    assert THE_MAP["never"], "the read path's rule, at least"
    assert never_violations(THE_MAP, PACKAGE) == []


def test_the_core_never_imports_the_benchmarks():
    """pgfeatures-bench (bench/src/pgfeatures_bench) is a second distribution: a rule over the whole core forbids it."""
    assert any(r["modules"] == ["*"] and "pgfeatures_bench" in r["imports"] for r in THE_MAP["never"])
    assert "bench" not in THE_MAP["map"] and "bench/src/pgfeatures_bench" in THE_MAP["elsewhere"]


# -- the checks catch what they are meant to catch -----------------------------------------------------


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    """A package ``toy``: low (floor 1) and high (floor 2) modules, a package ``mid`` with a generated twin."""
    package = tmp_path / "toy"
    (package / "mid").mkdir(parents=True)
    for name in ("__init__.py", "low.py", "high.py", "mid/__init__.py", "mid/a_async.py", "mid/a.py"):
        (package / name).write_text("")
    return package


TOY = {
    "package": "toy",
    "floors": {"1": "low", "2": "mid", "3": "high", "9": "root"},
    "map": {
        "low": {"floor": 1, "owns": "the bottom"},
        "mid": {"floor": 2, "owns": "the middle", "modules": {"a_async": "a (generated a.py)"}},
        "high": {"floor": 3, "owns": "the top"},
        "__init__": {"floor": 9, "owns": "the root"},
    },
    "never": [{"why": "low stays plain", "modules": ["low"], "imports": ["argparse"]}],
}


def test_a_correct_toy_passes_every_check(toy):
    (toy / "high.py").write_text("from .mid import a\nfrom toy import low\n")
    (toy / "mid" / "a_async.py").write_text("from ..low import x\n")
    assert map_problems(TOY, toy) == [] and floor_violations(TOY, toy) == [] and never_violations(TOY, toy) == []


@pytest.mark.parametrize(
    "file, code",
    [
        ("low.py", "from .high import x\n"),
        ("low.py", "from toy.mid.a import x\n"),
        ("low.py", "import toy.high\n"),
        ("low.py", "try:\n    from . import high\nexcept ImportError:\n    pass\n"),
        ("mid/a.py", "from ..high import x\n"),  # a generated twin has its source's floor
        ("mid/__init__.py", "from .. import high\n"),
    ],
)
def test_an_import_of_a_higher_floor_is_found(toy, file, code):
    (toy / file).write_text(code)
    (violation,) = floor_violations(TOY, toy)
    assert violation.startswith(f"{file} (floor ")


@pytest.mark.parametrize(
    "code",
    [
        "def f():\n    from .high import x\n",  # on demand, inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import x\n",
    ],
)
def test_imports_on_demand_and_for_type_checking_do_not_count(toy, code):
    (toy / "low.py").write_text(code)
    assert floor_violations(TOY, toy) == []


def test_a_never_rule_counts_imports_anywhere(toy):
    (toy / "low.py").write_text("def f():\n    import argparse.x\n")
    assert never_violations(TOY, toy) == ["low.py imports argparse: low stays plain"]


def test_a_never_rule_may_cover_the_whole_package(toy):
    """As the core's rule that it never imports the benchmarks would: ``modules = ["*"]``."""
    (toy / "mid" / "a.py").write_text("try:\n    from benchmarks import runner\nexcept ImportError:\n    pass\n")
    rule = {"why": "the core has no benchmarks", "modules": ["*"], "imports": ["benchmarks"]}
    assert never_violations({**TOY, "never": [rule]}, toy) == [
        "mid/a.py imports benchmarks: the core has no benchmarks"
    ]


def test_what_the_map_and_the_tree_disagree_on_is_named(toy):
    (toy / "new.py").write_text("")
    (toy / "mid" / "b.py").write_text("")
    broken = {
        **TOY,
        "map": {
            **TOY["map"],
            "gone": {"floor": 1, "owns": "nothing now"},
            "low": {"floor": 7, "owns": "", "colour": "red"},
            "high": {"floor": 3, "owns": "the top", "modules": {"x": "?"}},
        },
    }
    assert map_problems(broken, toy) == [
        "low: unknown key(s) colour (valid: floor, modules, owns)",
        "low: floor 7 is not one of [floors] ([1, 2, 3, 9])",
        'low: says nothing of what it owns (owns = "...")',
        "mid/: modules missing from the map: b",
        "high: a module, not a package: it has no modules",
        "gone: in the map but not in the tree",
        "in the tree but not in the map: new",
    ]
