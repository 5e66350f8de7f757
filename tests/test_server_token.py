"""The bearer token stays out of ``ps``: it comes from a file (``token_file``) or the environment
(``PGFEATURES_TOKEN``); a token given as a flag still works but is warned about."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pgfeatures.errors import ConfigError
from pgfeatures.server.config import ServerConfig, load_config
from support import server_data as data
from support.inprocess import running_app

TOKEN = "from-a-file-7f3a"


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # a trailing newline, as editors and `echo` leave
    path.chmod(0o600)
    return path


def test_token_from_a_file_guards_the_api(dsn: str, tmp_path: Path, token_file: Path) -> None:
    definitions = data.create(dsn, f"test_tok_{tmp_path.name[-8:].lower()}".replace("-", "_"), tmp_path)
    schema = definitions.read_text().split('"')[1]
    try:
        config = load_config(
            {"token_file": str(token_file), "dsn": dsn, "definitions": str(definitions), "prewarm": False}, environ={}
        )
        assert config.bearer_token == TOKEN
        assert TOKEN not in repr(config) and TOKEN not in config.to_json()  # workers re-read the file
        assert ServerConfig.from_json(config.to_json()).bearer_token == TOKEN
        with running_app(config) as client:
            assert client.post("/v1/features", json={"key": data.hexkey(1)}).status_code == 401
            r = client.post("/v1/features", json={"key": data.hexkey(1)}, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["features"] == data.expected(1)
            assert client.get("/readyz").status_code == 200  # probes stay open
    finally:
        data.drop(dsn, schema)


def test_token_from_a_flag_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgfeatures"):
        config = load_config({"token": "on-the-command-line"}, environ={})
    assert config.bearer_token == "on-the-command-line"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ps" in warnings[0] and "PGFEATURES_TOKEN" in warnings[0] and "--token-file" in warnings[0]
    assert "on-the-command-line" not in warnings[0]


def test_token_from_the_environment_or_a_file_is_not_warned_about(
    caplog: pytest.LogCaptureFixture, token_file: Path
) -> None:
    with caplog.at_level(logging.WARNING, logger="pgfeatures"):
        assert load_config({}, environ={"PGFEATURES_TOKEN": "t0k"}).bearer_token == "t0k"
        assert load_config({}, environ={"PGFEATURES_TOKEN_FILE": str(token_file)}).bearer_token == TOKEN
    assert not caplog.records


def test_no_token_means_no_auth() -> None:
    assert load_config({}, environ={}).bearer_token is None


@pytest.mark.parametrize("content, says", [(None, "cannot read token_file"), ("  \n", "is empty")])
def test_bad_token_files_are_named(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=says) as info:
        load_config({"token_file": str(path)}, environ={})
    assert str(path) in str(info.value)


def test_token_and_token_file_together_are_refused(token_file: Path) -> None:
    with pytest.raises(ConfigError, match="token or token_file, not both"):
        load_config({"token_file": str(token_file)}, environ={"PGFEATURES_TOKEN": "x"})
