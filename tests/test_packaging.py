"""The two distributions of this repository, built as pip builds them: the core wheel (``pip install
pgfeatures``) holds no benchmark code and registers no command of another distribution; the bench
wheel (``bench/``, pgfeatures-bench) holds the benchmarks and their harness and registers its commands
with the core's command line (entry point group ``pgfeatures.cli``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two wheel builds, a few seconds each


def build_wheel(project: Path, out: Path) -> zipfile.ZipFile:
    """``pip wheel --no-deps`` of ``project`` into ``out``, built as ``pip install`` builds it (in an
    isolated environment with the setuptools pyproject asks for)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return build_wheel(ROOT, tmp_path_factory.mktemp("core"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return build_wheel(ROOT / "bench", tmp_path_factory.mktemp("bench"))


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_the_core_wheel_holds_no_benchmark_code(core):
    names = core.namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("pgfeatures/") for n in code), code
    assert not [n for n in code if "bench" in n], "benchmark code in the core wheel"
    assert "pgfeatures/timing.py" in code  # the demo's timing loop is the core's own
    assert "pgfeatures.cli" not in _dist_info(core, "entry_points.txt").split("[console_scripts]")[0]


def test_the_core_names_pgfeatures_bench_only_in_its_bench_extra(core):
    requires = [line for line in _dist_info(core, "METADATA").splitlines() if line.startswith("Requires-Dist:")]
    named = [line for line in requires if "pgfeatures-bench" in line]
    assert named and all('extra == "bench"' in line for line in named), named


def test_the_bench_wheel_holds_the_benchmarks_the_harness_and_the_commands(bench):
    names = set(bench.namelist())
    for module in ("cli", "reads", "http", "soak", "harness/serve", "harness/clusters", "harness/proxy"):
        assert f"pgfeatures_bench/{module}.py" in names
    assert not [n for n in names if n.startswith("pgfeatures/")]
    points = _dist_info(bench, "entry_points.txt")
    assert "[pgfeatures.cli]" in points and "bench = pgfeatures_bench.cli:COMMANDS" in points


def test_both_distributions_carry_the_same_version():
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bench = tomllib.loads((ROOT / "bench" / "pyproject.toml").read_text())["project"]
    assert f"pgfeatures-bench=={core['version']}" in core["optional-dependencies"]["bench"]
    assert bench["version"] == core["version"]
    assert f"pgfeatures[load,server]=={core['version']}" in bench["dependencies"]
