"""The command line's structure: one way to derive flags from settings dataclasses, every settings
field reachable as a flag with its help, and ``--json`` meaning one JSON document on stdout."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cli_run import cli, cli_process
from pgfeatures.cli import build_parser, main
from pgfeatures.cli.common import add_settings, given, option_name
from pgfeatures.cli.main import COMMANDS
from pgfeatures.cli.write import LOAD_FLAGS
from pgfeatures.demo import DemoSettings
from pgfeatures.load import LoadOptions
from pgfeatures.server.config import ServerConfig
from pgfeatures_bench.cli import BENCH_FLAGS, settings_of
from pgfeatures_bench.hot_path import HotPathConfig
from pgfeatures_bench.http import HttpBenchConfig
from pgfeatures_bench.reads import BenchConfig
from pgfeatures_bench.schema_effects import SchemaBenchConfig
from pgfeatures_bench.serve_path import ServePathConfig


def subparser(name: str):
    parser = build_parser([name])
    return parser._subparsers._group_actions[0].choices[name]  # noqa: SLF001 (argparse has no public accessor)


def options_of(name: str) -> dict[str, object]:
    return {a.dest: a for a in subparser(name)._actions}  # noqa: SLF001


@pytest.mark.parametrize(
    "command, cls, helps",
    [
        ("load", LoadOptions, LOAD_FLAGS),
        ("bench", BenchConfig, BENCH_FLAGS),
        ("serve", ServerConfig, {}),
        ("demo", DemoSettings, {}),
        ("bench-hot-path", HotPathConfig, {}),
        ("bench-serve-path", ServePathConfig, {}),
    ],
)
def test_every_settings_field_is_a_flag_with_help(command, cls, helps):
    actions = options_of(command)
    for f in dataclasses.fields(cls):
        assert f.name in actions, f"{cls.__name__}.{f.name} has no flag on pgfeatures {command}"
        assert f.name in helps or "help" in f.metadata, f"{cls.__name__}.{f.name} has no help text"
        assert not actions[f.name].help.startswith(f"{cls.__name__}."), actions[f.name].help


@pytest.mark.parametrize("command, cls", [("bench-http", HttpBenchConfig), ("bench-schema", SchemaBenchConfig)])
def test_benchmark_settings_come_from_flags_not_a_namespace(command, cls):
    """The benchmark gets its settings dataclass, every field a flag whose default is the field's."""
    actions = options_of(command)
    for f in dataclasses.fields(cls):
        assert f.name in actions and actions[f.name].help, (
            f"{cls.__name__}.{f.name} has no flag on pgfeatures {command}"
        )
    assert settings_of(build_parser([command]).parse_args([command]), cls) == cls()


def test_bench_http_flags_parse_into_its_settings():
    argv = ["bench-http", "--concurrency", "1,2", "--mode", "services", "--serve-flag=--no-prewarm"]
    config = settings_of(build_parser(["bench-http"]).parse_args(argv), HttpBenchConfig)
    assert (config.concurrency, config.mode, config.serve_flag) == ((1, 2), "services", ("--no-prewarm",))


def test_an_unset_flag_keeps_the_dataclass_default():
    args = build_parser(["load"]).parse_args(["load", "t", "x.csv", "--mode", "replace", "--hash-keys"])
    assert given(args, LoadOptions) == {"mode": "replace", "hash_keys": True}
    args = build_parser(["bench"]).parse_args(["bench", "--rtt", "0,20", "--clients", "", "--tables", "30"])
    assert given(args, BenchConfig) == {"rtts_ms": (0.0, 20.0), "clients": (), "table_counts": (30,)}
    args = build_parser(["serve"]).parse_args(["serve", "--no-prewarm", "--pool-size", "3"])
    assert given(args, ServerConfig) == {"prewarm": False, "pool_size": "3"}  # ServerConfig parses its own text


def test_derivation_from_any_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Settings:
        size_mb: int = dataclasses.field(default=4, metadata={"help": "how big"})
        names: tuple[str, ...] = ("a", "b")
        fast: bool = True

    import argparse

    p = argparse.ArgumentParser()
    assert add_settings(p, Settings) == ["size_mb", "names", "fast"]
    args = p.parse_args(["--size-mb", "8", "--names", "x,y", "--no-fast"])
    assert given(args, Settings) == {"size_mb": 8, "names": ("x", "y"), "fast": False}
    assert given(p.parse_args([]), Settings) == {}
    assert option_name("size_mb") == "--size-mb"


def test_serve_flags_are_the_server_config_fields():
    actions = options_of("serve")
    derived = {f.name for f in dataclasses.fields(ServerConfig)}
    assert derived <= set(actions)
    assert "--pool-size" in actions["pool_size"].option_strings and "$PGFEATURES_POOL_SIZE" in actions["pool_size"].help
    assert "-d" in actions["definitions"].option_strings


def test_every_command_builds_and_documents_the_exit_codes(capsys):
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) and {
        "db",
        "init",
        "get",
        "serve",
        "bench-soak",
        "tables",
        "materialize",
    } <= set(names)
    build_parser()  # every command configured at once
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in names) and "exit codes:" in text


def test_json_means_one_document_on_stdout(dsn, schema, tmp_path):
    defs = tmp_path / "features.toml"
    defs.write_text(f'schema = "{schema}"\n[tables.a.features]\nf = "real"\n')
    data = tmp_path / "data.csv"
    data.write_text(f"hashkey,f\n{'01' * 32},0.5\n")
    runs = {
        "init": ["init", "--dsn", dsn, "-d", str(defs), "--json"],
        "init --print-sql": ["init", "-d", str(defs), "--print-sql", "--json"],
        "get": ["get", "--dsn", dsn, "-d", str(defs), "ef" * 32, "--json"],
        "doctor": ["doctor", "--dsn", dsn, "-d", str(defs), "--json"],
        "warmup": ["warmup", "--dsn", dsn, "-d", str(defs), "--json"],
        "db status": ["db", "status", "--json"],
        "load": ["load", "a", str(data), "--dsn", dsn, "-d", str(defs), "--json"],
    }
    for name, argv in runs.items():
        done = cli(*argv)
        assert done.returncode in (0, 1), (name, done.stderr)
        json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert json.loads(cli(*runs["init"]).stdout)["unchanged"] == ["a"]
    assert json.loads(cli(*runs["load"]).stdout)["rows_read"] == 1
    assert json.loads(cli(*runs["get"]).stdout)["features"] == {"a": None}
    assert json.loads(cli("get", "--dsn", dsn, "-d", str(defs), "01" * 32).stdout)["features"]["a"]["f"] == 0.5


def test_a_load_draws_no_progress_bar_when_stderr_is_not_a_terminal(dsn, schema, tmp_path):
    """A CI log or a pipe gets the load's summary lines, not a progress bar's frames."""
    defs = tmp_path / "f.toml"
    defs.write_text(f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n[tables.t]\nentity = "user"\n'
                    '[tables.t.features]\nx = "real"\n')  # fmt: skip
    (tmp_path / "t.csv").write_text("user_id,x\n1,0.5\n2,1.5\n")
    assert cli_process("init", "--dsn", dsn, "-d", str(defs)).returncode == 0
    done = cli_process("load", "t", str(tmp_path / "t.csv"), "--dsn", dsn, "-d", str(defs))
    assert done.returncode == 0, done.stderr
    assert "inserted 2" in done.stdout + done.stderr
    assert "━" not in done.stderr and "rows/s 0:00" not in done.stderr, done.stderr
