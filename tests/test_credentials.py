"""Credential providers (``pgfeatures.connections.credentials``) and every way in: the built-in
providers, ``load_provider`` (from the working directory too, as ``pgfeatures serve --credentials
mycompany.features:token`` is run), ``credential_params``; and against real clusters
(``pgfeatures_bench.harness.clusters.Cluster``, scram-sha-256 logins): the async store through a password
rotation under load, ``max_lifetime`` renewing connections through the provider, and every CLI
command that connects logging in through ``--credentials`` / ``--password-file`` /
``$PGFEATURES_CREDENTIALS`` / ``$PGFEATURES_PASSWORD_FILE``, or failing with one line naming the
refused login.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cli_run import cli, error_line
from pgfeatures import AsyncFeatureStore, Cached, EnvPassword, FeatureStore, PasswordFile
from pgfeatures.connections import CredentialProviderError, credentials, load_provider
from pgfeatures.connections.credentials import credential_params
from pgfeatures.definitions import demo_registry
from pgfeatures.errors import ConfigError, CredentialsTimeoutError, PgFeaturesError
from pgfeatures.schema import apply_schema
from pgfeatures_bench.harness.clusters import Cluster

SCHEMA = "cred"
REGISTRY = demo_registry(n_tables=3, n_features=2, schema=SCHEMA)
KEY = bytes(range(32))
EXPECTED = {"t00": {"f0": 1.0, "f1": 2.0}, "t01": None, "t02": None}


class Recording:
    """A real provider, with the time of every call kept (thread-safe: pools call from their workers)."""

    def __init__(self, provider: Any):
        self.provider = provider
        self.calls: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls.append(time.monotonic())
        return self.provider()

    def __repr__(self) -> str:
        return f"Recording({self.provider!r})"


# -- EnvPassword ----------------------------------------------------------------------------------


def test_env_password_reads_the_variable_at_every_call(monkeypatch):
    name = f"PGF_TEST_PW_{uuid.uuid4().hex[:8].upper()}"
    provider = EnvPassword(name)
    monkeypatch.setenv(name, "first")
    assert provider() == "first"
    monkeypatch.setenv(name, "second")  # rotated in the process environment: the next call sees it
    assert provider() == "second"
    assert repr(provider) == f"EnvPassword({name!r})"
    assert EnvPassword().name == "PGPASSWORD"


@pytest.mark.parametrize("value", [None, ""])
def test_env_password_unset_or_empty_is_a_clear_error(monkeypatch, value):
    name = f"PGF_TEST_PW_{uuid.uuid4().hex[:8].upper()}"
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    with pytest.raises(CredentialProviderError, match=f"^the environment variable {name} is not set$"):
        EnvPassword(name)()


# -- PasswordFile ---------------------------------------------------------------------------------


def test_password_file_is_read_at_every_call_and_stripped(tmp_path):
    path = tmp_path / "pg-password"
    path.write_text("  s3cret\n")
    provider = PasswordFile(path)
    assert provider() == "s3cret"
    path.write_text("rotated\n")  # what a Kubernetes secret update or a sidecar does
    assert provider() == "rotated"
    assert repr(provider) == f"PasswordFile({str(path)!r})"
    assert PasswordFile(str(path))() == "rotated"  # a str path works too


@pytest.mark.parametrize("content", ["", "\n", "  \n\t"])
def test_an_empty_password_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "pg-password"
    path.write_text(content)
    with pytest.raises(CredentialProviderError, match=f"^the password file {path} is empty$"):
        PasswordFile(path)()


def test_a_missing_password_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nowhere" / "pg-password"
    with pytest.raises(CredentialProviderError) as info:
        PasswordFile(path)()
    assert str(info.value) == f"cannot read the password file {path}: No such file or directory"
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one line, no chained OSError


def test_a_directory_as_password_file_is_a_clear_error(tmp_path):
    with pytest.raises(CredentialProviderError, match=f"cannot read the password file {tmp_path}: Is a directory"):
        PasswordFile(tmp_path)()


# -- Cached ---------------------------------------------------------------------------------------


def test_cached_calls_the_provider_at_most_once_per_window():
    counted = Recording(lambda: f"token-{len(counted.calls)}")
    cached = Cached(counted, 3600)
    assert [cached() for _ in range(50)] == ["token-1"] * 50
    assert len(counted.calls) == 1
    assert repr(cached).startswith("Cached(Recording(") and repr(cached).endswith(", 3600)")


def test_cached_asks_again_once_the_window_is_over(monkeypatch):
    # The module's clock, stepped by hand: the window's edges exactly, whatever the machine's load
    now = [1000.0]
    monkeypatch.setattr(credentials, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    counted = Recording(lambda: {"password": f"token-{len(counted.calls)}"})
    cached = Cached(counted, 2.0)
    first = cached()
    now[0] += 1.5
    assert cached() == first == {"password": "token-1"} and len(counted.calls) == 1  # within the window
    now[0] += 0.5  # the window is over (2 s after the call): the next call asks again
    assert cached() == {"password": "token-2"} and len(counted.calls) == 2
    now[0] += 1.75
    assert cached() == {"password": "token-2"} and len(counted.calls) == 2  # a new window from the second call


def test_cached_under_concurrent_calls_asks_once():
    def slow() -> str:
        time.sleep(0.05)  # a token endpoint's round-trip: every thread arrives while it runs
        return "tok"

    counted = Recording(slow)
    cached = Cached(counted, 3600)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cached())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["tok"] * 8 and len(counted.calls) == 1


def test_cached_does_not_cache_a_failure():
    answers: list[object] = [RuntimeError("token endpoint down"), "tok-1"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    counted = Recording(flaky)
    cached = Cached(counted, 3600)
    with pytest.raises(RuntimeError, match="token endpoint down"):
        cached()
    assert cached() == "tok-1"  # the failure was not remembered: the next call asked again
    assert cached() == "tok-1" and len(counted.calls) == 2  # and the success is cached


# -- load_provider --------------------------------------------------------------------------------


def _module(tmp_path: Path, source: str) -> str:
    """A new module (unique name, so nothing cached in sys.modules interferes) importable from tmp_path."""
    name = f"pgf_test_provider_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(source)
    return name


@pytest.fixture()
def importable(tmp_path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_provider_loads_a_function_and_a_dotted_attribute(importable):
    name = _module(
        importable,
        "def token():\n    return 'pw'\n\n"
        "class Tokens:\n    @staticmethod\n    def fresh():\n        return {'password': 'x'}\n"
        "\ncached = None\n",
    )
    assert load_provider(f"{name}:token")() == "pw"
    assert load_provider(f"{name}:Tokens.fresh")() == {"password": "x"}
    assert load_provider(f" {name} : token ")() == "pw"  # spaces around the parts are forgiven
    assert load_provider("pgfeatures:EnvPassword") is EnvPassword  # a class is callable


@pytest.mark.parametrize("spec", ["mycompany.features", "mycompany.features:", ":token", "", ":", "  :  "])
def test_load_provider_rejects_a_bad_form(spec):
    with pytest.raises(ConfigError, match=r"must be written 'module:callable'") as info:
        load_provider(spec)
    assert repr(spec) in str(info.value)


def test_load_provider_names_a_missing_module():
    with pytest.raises(ConfigError) as info:
        load_provider("pgf_no_such_module_xyz.features:token")
    text = str(info.value)
    assert text.startswith(
        "credential provider 'pgf_no_such_module_xyz.features:token': no module named "
        "'pgf_no_such_module_xyz' (looked in the current directory "
    )
    assert os.getcwd() in text


def test_load_provider_tells_a_missing_dependency_from_a_missing_module(importable):
    name = _module(importable, "import pgf_no_such_sdk_xyz\n\ndef token():\n    return 'pw'\n")
    with pytest.raises(
        ConfigError, match=rf"'{name}:token': importing {name} failed: No module named 'pgf_no_such_sdk_xyz'"
    ):
        load_provider(f"{name}:token")


def test_load_provider_reports_a_module_that_raises_at_import(importable):
    name = _module(importable, "raise RuntimeError('no workspace configured')\n")
    with pytest.raises(ConfigError, match=rf"importing {name} failed: RuntimeError: no workspace configured"):
        load_provider(f"{name}:token")


def test_load_provider_names_a_missing_attribute(importable):
    name = _module(importable, "def token():\n    return 'pw'\n")
    with pytest.raises(ConfigError, match=rf"^credential provider '{name}:tokn': {name} has no attribute 'tokn'$"):
        load_provider(f"{name}:tokn")
    with pytest.raises(ConfigError, match=rf"{name} has no attribute 'token.nope'"):
        load_provider(f"{name}:token.nope")


def test_load_provider_rejects_what_is_not_callable(importable):
    name = _module(importable, "token = 'a password in the code'\n")
    with pytest.raises(ConfigError, match=rf"^credential provider '{name}:token' is not callable \(it is a str\)$"):
        load_provider(f"{name}:token")


@pytest.fixture()
def bare_path(monkeypatch) -> list[str]:
    """sys.path without the working directory ('' or '.' or its absolute path), as the ``pgfeatures``
    console script starts (``python -m pytest`` put the working directory there)."""
    cwd = os.getcwd()
    path = [p for p in sys.path if not isinstance(p, str) or os.path.abspath(p) != cwd]
    monkeypatch.setattr(sys, "path", path)
    return path


def test_load_provider_finds_a_package_in_the_working_directory(tmp_path, monkeypatch, bare_path):
    package = f"mycompany_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "features.py").write_text("def lakebase_token():\n    return {'password': 'tok'}\n")
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    provider = load_provider(f"{package}.features:lakebase_token")
    assert provider() == {"password": "tok"}
    assert sys.path[0] == str(tmp_path)  # like uvicorn: the working directory first
    load_provider(f"{package}.features:lakebase_token")
    assert sys.path.count(str(tmp_path)) == 1  # put there once, not at every load


def test_load_provider_leaves_sys_path_alone_when_the_working_directory_is_on_it(tmp_path, monkeypatch, bare_path):
    name = _module(tmp_path, "def token():\n    return 'pw'\n")
    monkeypatch.chdir(tmp_path)
    sys.path.append("")  # '' is the working directory, wherever it is listed
    before = list(sys.path)
    assert load_provider(f"{name}:token")() == "pw"
    assert sys.path == before


# -- credential_params ----------------------------------------------------------------------------


def test_credential_params_normalises_a_password_and_a_mapping():
    assert credential_params(lambda: "pw") == {"password": "pw"}
    answer = {"user": "sp-app", "password": "tok", "sslmode": "require"}
    params = credential_params(lambda: answer)
    assert params == answer and params is not answer  # a copy: merging it cannot change the provider's
    frozen = types.MappingProxyType({"password": "tok"})  # any Mapping, not only a dict
    assert credential_params(lambda: frozen) == {"password": "tok"}


@pytest.mark.parametrize("value, kind", [(None, "NoneType"), (42, "int"), (["pw"], "list"), (b"pw", "bytes")])
def test_credential_params_rejects_another_type(value, kind):
    def provider() -> Any:
        return value

    with pytest.raises(
        CredentialProviderError,
        match=rf"returned {kind}: expected a password \(str\) or a mapping "
        r"of connection parameters",
    ):
        credential_params(provider)


def test_credential_params_reports_a_provider_that_raises():
    def broken() -> str:
        raise ValueError("token endpoint said 401")

    with pytest.raises(CredentialProviderError) as info:
        credential_params(broken)
    assert "failed: ValueError: token endpoint said 401" in str(info.value) and "broken" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    error = CredentialProviderError("the password file /x is empty")

    def own() -> str:
        raise error

    with pytest.raises(CredentialProviderError) as info:
        credential_params(own)
    assert info.value is error  # a provider's own error passes unchanged


# -- against real clusters ------------------------------------------------------------------------


def _prepare(cluster: Cluster) -> None:
    with cluster.admin() as conn:
        apply_schema(conn, REGISTRY)
        conn.execute(
            f"GRANT USAGE ON SCHEMA {SCHEMA} TO app; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {SCHEMA} TO app"
        )
        conn.execute(f"INSERT INTO {SCHEMA}.t00 (hashkey, f0, f1) VALUES (%s, 1, 2) ON CONFLICT DO NOTHING", [KEY])


@pytest.fixture()
def primary() -> Iterator[Cluster]:
    with Cluster(name="cred-primary") as cluster:
        cluster.create_role("app", "pw-1")
        _prepare(cluster)
        yield cluster


def _refused(cluster: Cluster, password: str) -> bool:
    try:
        psycopg.connect(cluster.dsn("app", password=password), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
        return True
    return False


@pytest.mark.cluster
def test_async_store_password_rotation_under_load_fails_no_request(primary: Cluster, tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("pw-1\n")
    provider = Recording(PasswordFile(secret))
    dsn = primary.dsn("app", password="")  # the password comes from the provider

    async def run() -> tuple[int, list[BaseException], list[int]]:
        ok, failures, calls = 0, [], []
        async with AsyncFeatureStore(
            REGISTRY, dsn, credentials=provider, pool_size=2, write_pool_size=1, acquire_timeout=5
        ) as store:
            done = asyncio.Event()

            async def reader() -> None:
                nonlocal ok
                while not done.is_set():
                    try:
                        assert await store.get_features(KEY) == EXPECTED
                        ok += 1
                    except Exception as exc:  # noqa: BLE001 - counted
                        failures.append(exc)
                    await asyncio.sleep(0.002)

            readers = [asyncio.create_task(reader()) for _ in range(3)]
            await asyncio.sleep(0.3)
            for new in ("pw-2", "pw-3"):
                calls.append(len(provider.calls))
                await asyncio.to_thread(primary.set_password, "app", new)  # the operator rotates it ...
                secret.write_text(new + "\n")  # ... and the secret file follows
                assert await asyncio.to_thread(primary.terminate, user="app") >= 1  # each new login is afresh
                await asyncio.sleep(0.8)
            calls.append(len(provider.calls))
            assert await store.update_features(bytes(32), "t01", {"f0": 5.0}) == 1  # writes log in afresh too
            done.set()
            await asyncio.gather(*readers)
        return ok, failures, calls

    ok, failures, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert failures == [] and ok > 50, (ok, failures[:3])
    # the provider was asked again after each rotation (the 2 read connections logged in again; the idle
    # write connection is found dead, and renewed, when the update uses it) ...
    assert calls[1] - calls[0] >= 2 and calls[2] - calls[1] >= 2, calls
    # ... and the rotation was real: the old passwords are refused, the current one is not
    assert _refused(primary, "pw-1") and _refused(primary, "pw-2") and not _refused(primary, "pw-3")


def _app_backends(cluster: Cluster) -> set[int]:
    rows = cluster.execute(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND application_name = %s", ["pgfeatures-read"]
    )
    return {int(r[0]) for r in rows}


@pytest.mark.cluster
def test_max_lifetime_renews_connections_through_the_provider(primary: Cluster, tmp_path: Path) -> None:
    """psycopg_pool has no lower bound on max_lifetime and expires a connection at 95-100 % of it
    (jitter), checked when the connection goes back to the pool: reads must keep coming."""
    lifetime = 2.0
    secret = tmp_path / "pg-password"
    secret.write_text("pw-1\n")
    provider = Recording(PasswordFile(secret))
    with FeatureStore(
        REGISTRY,
        primary.dsn("app", password=""),
        credentials=provider,
        pool_size=1,
        write_pool_size=0,
        max_lifetime=lifetime,
    ) as store:
        opened = time.monotonic()
        asked = len(provider.calls)
        assert asked >= 1
        first = _app_backends(primary)
        assert len(first) == 1
        # Rotated without terminating anything: the open connection stays valid (a password is checked
        # at login only); only a renewal, through the provider, can log in with pw-2.
        primary.set_password("app", "pw-2")
        secret.write_text("pw-2\n")
        deadline = opened + lifetime + 10
        while len(provider.calls) == asked:
            assert time.monotonic() < deadline, (
                f"no connection renewed {lifetime + 10:g}s after max_lifetime={lifetime:g}"
            )
            assert store.get_features(KEY) == EXPECTED
            time.sleep(0.05)
        renewed = provider.calls[asked]
        assert renewed - opened >= 0.9 * lifetime - 0.5, "renewed before max_lifetime was over"
        while True:  # the new backend serves reads; the old one is gone
            assert store.get_features(KEY) == EXPECTED
            now = _app_backends(primary)
            if now and not now & first:
                break
            assert time.monotonic() < deadline, f"backends {now}, first {first}"
            time.sleep(0.05)
    assert _refused(primary, "pw-1")  # the renewed connection could only have logged in with the new password


class Hanging:
    """A real provider in front of a token endpoint that can hang. While ``hanging`` is set a call
    blocks until the end of the test (``release``), as a request on a dead TCP connection does: a
    call that hung stays hung after the endpoint is fixed; a call made once it is fixed answers."""

    def __init__(self, password: str):
        self.password = password
        self.hanging = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.calls = 0
        self.hung = 0

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
            hangs = self.hanging.is_set()
            self.hung += hangs
        if hangs:
            self._released.wait(120)
            raise RuntimeError("token endpoint: connection reset")
        return self.password

    def release(self) -> None:
        self._released.set()

    def __repr__(self) -> str:
        return "Hanging()"


HANG_TIMEOUT = 1.0  # credentials_timeout of the hanging-provider tests


def _outcome(read: Any) -> tuple[bool, BaseException | None]:
    try:
        assert read() == EXPECTED
        return True, None
    except PgFeaturesError as exc:
        return False, exc


def _check_hang_errors(errors: list[BaseException], provider: Hanging, hung_for: float) -> None:
    """Every read that failed while the provider hung says so (not pool_exhausted), and the
    provider was not called once per attempt: at most one call a deadline, plus the first ones."""
    assert errors, "no read failed while the provider hung"
    assert all(isinstance(e, CredentialsTimeoutError) for e in errors), [f"{type(e).__name__}: {e}" for e in errors]
    assert any(f"credential provider Hanging() did not answer within {HANG_TIMEOUT:g}s" in str(e) for e in errors), [
        str(e) for e in errors
    ]
    assert provider.hung <= hung_for / HANG_TIMEOUT + 4, (provider.hung, hung_for)


@pytest.mark.cluster
@pytest.mark.timing  # back within the deadline + 2 s
def test_a_hanging_provider_is_a_credentials_timeout_and_reads_return_within_a_probe(primary: Cluster) -> None:
    """The provider hangs (calls that hung never return), the store's connections are lost: reads
    fail with CredentialsTimeoutError naming the provider within their acquire_timeout, and once
    the provider answers again reads are back within a deadline and a probe (psycopg_pool's own
    retries would wait for the hung calls)."""
    provider = Hanging("pw-1")
    with FeatureStore(
        REGISTRY,
        primary.dsn("app", password=""),
        credentials=provider,
        credentials_timeout=HANG_TIMEOUT,
        pool_size=2,
        write_pool_size=0,
        acquire_timeout=1.0,
    ) as store:
        assert store.get_features(KEY) == EXPECTED
        try:
            provider.hanging.set()
            assert primary.terminate(user="app") >= 1
            errors, started = [], time.monotonic()
            while time.monotonic() - started < 4:
                ok, error = _outcome(lambda: store.get_features(KEY))
                assert not ok, "a read succeeded with every connection lost and the provider hanging"
                errors.append(error)
            _check_hang_errors(errors, provider, time.monotonic() - started)
            provider.hanging.clear()
            fixed = time.monotonic()
            while not _outcome(lambda: store.get_features(KEY))[0]:
                assert time.monotonic() - fixed < 10, "reads did not come back 10 s after the provider answered"
            back = time.monotonic() - fixed
            assert back < HANG_TIMEOUT + 2.0, f"reads back {back:.1f}s after the provider answered again"
        finally:
            provider.release()


@pytest.mark.cluster
@pytest.mark.timing  # back within the deadline + 2 s
def test_async_store_a_hanging_provider_is_a_credentials_timeout_and_reads_return_within_a_probe(
    primary: Cluster,
) -> None:
    provider = Hanging("pw-1")

    async def run() -> None:
        async with AsyncFeatureStore(
            REGISTRY,
            primary.dsn("app", password=""),
            credentials=provider,
            credentials_timeout=HANG_TIMEOUT,
            pool_size=2,
            write_pool_size=0,
            acquire_timeout=1.0,
        ) as store:
            assert await store.get_features(KEY) == EXPECTED
            provider.hanging.set()
            assert await asyncio.to_thread(primary.terminate, user="app") >= 1
            errors, started = [], time.monotonic()
            while time.monotonic() - started < 4:
                try:
                    await store.get_features(KEY)
                    raise AssertionError("a read succeeded with every connection lost and the provider hanging")
                except PgFeaturesError as exc:
                    errors.append(exc)
            _check_hang_errors(errors, provider, time.monotonic() - started)
            provider.hanging.clear()
            fixed = time.monotonic()
            while True:
                try:
                    assert await store.get_features(KEY) == EXPECTED
                    break
                except PgFeaturesError:
                    assert time.monotonic() - fixed < 10, "reads did not come back 10 s after the provider answered"
            back = time.monotonic() - fixed
            assert back < HANG_TIMEOUT + 2.0, f"reads back {back:.1f}s after the provider answered again"

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        provider.release()


@pytest.mark.cluster
@pytest.mark.timing  # fails within 5 s of a 1 s deadline
def test_opening_with_a_hanging_provider_fails_within_its_deadline(primary: Cluster) -> None:
    provider = Hanging("pw-1")
    provider.hanging.set()
    try:
        started = time.monotonic()
        with pytest.raises(CredentialsTimeoutError, match=r"credential provider Hanging\(\) did not answer within 1s"):
            FeatureStore(
                REGISTRY,
                primary.dsn("app", password=""),
                credentials=provider,
                credentials_timeout=1,
                pool_size=1,
                write_pool_size=0,
            )
        assert time.monotonic() - started < 5
    finally:
        provider.release()


class Slow:
    """A healthy provider whose token endpoint takes longer to answer than a request waits for a
    pooled connection (``pgfeatures serve``'s acquire_timeout is 1 s)."""

    def __init__(self, password: str, seconds: float):
        self.password, self.seconds = password, seconds
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        time.sleep(self.seconds)
        return self.password


@pytest.mark.slow
@pytest.mark.cluster
def test_max_lifetime_renewal_fails_no_read(primary: Cluster) -> None:
    """Connections renewed by max_lifetime under a read loop, through a provider slower than the
    acquire timeout: the old connections serve until the new ones are ready, so no read fails."""
    provider = Slow("pw-1", 1.3)
    failures: list[BaseException] = []
    reads = 0
    with FeatureStore(
        REGISTRY,
        primary.dsn("app", password=""),
        credentials=provider,
        pool_size=2,
        write_pool_size=0,
        max_lifetime=2.0,
        acquire_timeout=1.0,
    ) as store:
        first = _app_backends(primary)
        opened_calls = provider.calls
        started = time.monotonic()
        done = threading.Event()

        def loop() -> None:
            nonlocal reads
            while not done.is_set():
                ok, error = _outcome(lambda: store.get_features(KEY))
                reads += ok
                if error is not None:
                    failures.append(error)
                time.sleep(0.005)

        threads = [threading.Thread(target=loop) for _ in range(3)]
        for t in threads:
            t.start()
        while provider.calls < opened_calls + 4 or _app_backends(primary) & first:  # two renewals of both connections
            assert time.monotonic() - started < 30, (provider.calls, opened_calls)
            time.sleep(0.1)
        time.sleep(0.5)
        done.set()
        for t in threads:
            t.join(30)
    assert failures == [] and reads > 100, (reads, [f"{type(e).__name__}: {e}" for e in failures[:3]])


@pytest.mark.slow
@pytest.mark.cluster
def test_async_store_max_lifetime_renewal_fails_no_read(primary: Cluster) -> None:
    provider = Slow("pw-1", 1.3)

    async def run() -> tuple[int, list[BaseException]]:
        ok, failures = 0, []
        async with AsyncFeatureStore(
            REGISTRY,
            primary.dsn("app", password=""),
            credentials=provider,
            pool_size=2,
            write_pool_size=0,
            max_lifetime=2.0,
            acquire_timeout=1.0,
        ) as store:
            first = await asyncio.to_thread(_app_backends, primary)
            opened_calls = provider.calls
            done = asyncio.Event()

            async def loop() -> None:
                nonlocal ok
                while not done.is_set():
                    try:
                        assert await store.get_features(KEY) == EXPECTED
                        ok += 1
                    except PgFeaturesError as exc:
                        failures.append(exc)
                    await asyncio.sleep(0.005)

            readers = [asyncio.create_task(loop()) for _ in range(3)]
            started = time.monotonic()
            while provider.calls < opened_calls + 4 or (await asyncio.to_thread(_app_backends, primary)) & first:
                assert time.monotonic() - started < 30, (provider.calls, opened_calls)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            done.set()
            await asyncio.gather(*readers)
        return ok, failures

    ok, failures = asyncio.run(asyncio.wait_for(run(), 60))
    assert failures == [] and ok > 100, (ok, [f"{type(e).__name__}: {e}" for e in failures[:3]])


SERVE_DEFS = 'schema = "credserve"\n[tables.a.features]\nf = "real"\n'
SERVE_KEY = "cd" * 32
SERVE_PROVIDER = """
import time
from pathlib import Path

HERE = Path(__file__).parent


def _call():
    with open(HERE / "calls", "a") as calls:
        calls.write("1\\n")


def hanging():
    \"\"\"While the file 'hang' exists a call hangs until the test ends ('released'); else it answers.\"\"\"
    _call()
    if (HERE / "hang").exists():
        while not (HERE / "released").exists():
            time.sleep(0.05)
        raise RuntimeError("token endpoint: connection reset")
    return "pw-1"


def slow():
    \"\"\"A healthy token endpoint slower than serve's acquire_timeout (1 s).\"\"\"
    _call()
    time.sleep(1.3)
    return "pw-1"
"""


@pytest.fixture()
def served(primary: Cluster, tmp_path: Path) -> Iterator[Path]:
    """A directory with the definitions and the provider module ``credserve_provider``; its table
    created on ``primary`` with one row. Hung provider calls are released at the end."""
    from pgfeatures.definitions import Registry

    (tmp_path / "features.toml").write_text(SERVE_DEFS)
    (tmp_path / "credserve_provider.py").write_text(SERVE_PROVIDER)
    registry = Registry.from_toml(tmp_path / "features.toml")
    with primary.admin() as conn:
        apply_schema(conn, registry)
        conn.execute("GRANT USAGE ON SCHEMA credserve TO app; GRANT SELECT ON ALL TABLES IN SCHEMA credserve TO app")
        conn.execute("INSERT INTO credserve.a (hashkey, f) VALUES (%s, 1.5)", [bytes.fromhex(SERVE_KEY)])
    try:
        yield tmp_path
    finally:
        (tmp_path / "released").touch()


def _serve(primary: Cluster, directory: Path, provider: str, *flags: str) -> Any:
    from support.serve import ServeProcess

    path = os.pathsep.join([str(directory), *filter(None, [os.environ.get("PYTHONPATH")])])
    return ServeProcess(
        "-d",
        str(directory / "features.toml"),
        "--dsn",
        primary.dsn("app", password=""),
        "--credentials",
        f"credserve_provider:{provider}",
        "--no-prewarm",
        "--pool-size",
        "2",
        "--write-pool-size",
        "0",
        *flags,
        env={"PYTHONPATH": path},
    )


def _calls(directory: Path) -> int:
    path = directory / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timing  # serving within 3 s
def test_serve_a_hanging_provider_is_503_credentials_timeout_and_serves_within_a_probe_of_it_answering(
    primary: Cluster, served: Path
) -> None:
    import httpx

    with _serve(primary, served, "hanging", "--credentials-timeout", "1") as serve:

        def read() -> httpx.Response:
            return httpx.post(f"{serve.url}/v1/features", json={"key": SERVE_KEY}, timeout=30)

        assert read().json()["features"] == {"a": {"f": 1.5}}
        (served / "hang").touch()
        assert primary.terminate(user="app") >= 2
        answers, started = [], time.monotonic()
        while time.monotonic() - started < 4:
            answers.append(read())
        failed = [r for r in answers if r.status_code != 200]
        assert failed, "no request failed while the provider hung"
        for r in failed:
            assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["retryable"]) == (
                503,
                "credentials_timeout",
                True,
            ), r.text
            assert r.headers.get("retry-after") == "1"
        assert any(
            "credential provider <function hanging at" in r.json()["error"]["message"]
            and "did not answer within 1s" in r.json()["error"]["message"]
            for r in failed
        ), failed[-1].text
        (served / "hang").unlink()
        fixed = time.monotonic()
        while (r := read()).status_code != 200:
            assert r.json()["error"]["type"] == "credentials_timeout", r.text
            assert time.monotonic() - fixed < 10, "not serving 10 s after the provider answered again"
        back = time.monotonic() - fixed
        assert back < 3.0, f"serving again {back:.1f}s after the provider answered again"


@pytest.mark.slow
@pytest.mark.cluster
def test_serve_max_lifetime_renewal_fails_no_request(primary: Cluster, served: Path) -> None:
    """The issue's run: connections renewed by max_lifetime while requests come, the provider (a
    healthy token endpoint) slower than serve's acquire_timeout: every request is answered."""
    import httpx

    with _serve(primary, served, "slow", "--max-lifetime", "2") as serve:
        opened = _calls(served)
        statuses: list[int] = []
        with httpx.Client(base_url=serve.url, timeout=30) as client:
            started = time.monotonic()
            while _calls(served) < opened + 4:  # both connections renewed twice
                assert time.monotonic() - started < 30, (_calls(served), opened)
                r = client.post("/v1/features", json={"key": SERVE_KEY})
                statuses.append(r.status_code)
                assert r.status_code == 200, r.text
                time.sleep(0.01)
        assert len(statuses) > 20  # requests all along (each renewal took a slow provider call): every one answered


# -- the CLI, every command that connects ---------------------------------------------------------

CONSOLE_SCRIPT = Path(sys.executable).parent / "pgfeatures"
CLI_DEFS = (
    'schema = "clicred"\n[tables.a.features]\nf = "real"\n[tables.b.features]\ng = "integer"\n'
    '[services.svc]\nfeatures = ["a.*", "b.*"]\nmaterialize = true\n'
)
CLI_KEY = "ab" * 32


def pgfeatures(*args: str, cwd: Path, env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``pgfeatures`` script, as a user runs it: unlike ``python -m``, it does not put
    the working directory on sys.path."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGFEATURES_") and not k.startswith("PG")}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "pgfeatures.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=180)


def pgfeatures_in_process(
    *args: str, cwd: Path, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``pgfeatures`` as ``pgfeatures()`` runs it, in this process: the environment without the test run's
    PGFEATURES_* and PG* variables, ``cwd`` the working directory, and the provider's package
    (``mycompany``, one per test's directory) imported afresh."""
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("PGFEATURES_", "PG"))}
    for name in [m for m in sys.modules if m == "mycompany" or m.startswith("mycompany.")]:
        del sys.modules[name]
    try:
        return cli(*args, cwd=cwd, env={**cleared, **(env or {})})
    finally:
        for name in [m for m in sys.modules if m == "mycompany" or m.startswith("mycompany.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[Cluster]:
    with Cluster(name="cred-cli") as cluster:
        cluster.create_role("app", "pw-cli")
        yield cluster


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A working directory holding the definitions, a data file, the password file and the
    ``mycompany`` package with the provider (as the docs' recipes lay them out)."""
    (tmp_path / "features.toml").write_text(CLI_DEFS)
    (tmp_path / "data.csv").write_text(f"hashkey,f\n{CLI_KEY},1.5\n")
    (tmp_path / "pg-password").write_text("pw-cli\n")
    (tmp_path / "mycompany").mkdir()
    (tmp_path / "mycompany" / "__init__.py").write_text("")
    (tmp_path / "mycompany" / "features.py").write_text(
        "from pathlib import Path\n\n"
        "def lakebase_token():\n"
        "    return {'password': (Path(__file__).parent.parent / 'pg-password').read_text().strip()}\n"
    )
    return tmp_path


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_commands_log_in_through_the_provider(cli_cluster: Cluster, workdir: Path) -> None:
    assert CONSOLE_SCRIPT.exists(), "the venv's pgfeatures script (pip install -e .)"
    dsn = cli_cluster.dsn("app", password="")  # no password in the DSN: only the provider knows it
    base = {"PGFEATURES_DSN": dsn, "PGFEATURES_DEFINITIONS": "features.toml"}
    by_file = {**base, "PGFEATURES_PASSWORD_FILE": str(workdir / "pg-password")}
    by_provider = {**base, "PGFEATURES_CREDENTIALS": "mycompany.features:lakebase_token"}

    done = pgfeatures("init", cwd=workdir, env=by_file)  # $PGFEATURES_PASSWORD_FILE
    assert done.returncode == 0 and done.stdout.startswith("created: a, b\n"), done.stderr
    done = pgfeatures(
        "load", "a", "data.csv", "--json", cwd=workdir, env=by_provider
    )  # $PGFEATURES_CREDENTIALS, from cwd
    assert done.returncode == 0 and json.loads(done.stdout)["inserted"] == 1, done.stderr
    done = pgfeatures("materialize", "svc", "--password-file", "pg-password", cwd=workdir, env=base)
    assert done.returncode == 0, done.stderr
    done = pgfeatures("get", CLI_KEY, "--credentials", "mycompany.features:lakebase_token", cwd=workdir, env=base)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["features"] == {"a": {"f": 1.5}, "b": None}
    done = pgfeatures("tables", "--json", "--password-file", "pg-password", cwd=workdir, env=base)
    assert done.returncode == 0 and [t["name"] for t in json.loads(done.stdout)["tables"]] == ["a", "b"], done.stderr
    done = pgfeatures("warmup", "--json", cwd=workdir, env=by_file)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = pgfeatures("doctor", "--json", cwd=workdir, env=by_provider)  # the provider's answer merged into the DSN
    assert done.returncode in (0, 1) and json.loads(done.stdout)["findings"][0]["check"] == "schema", done.stderr
    # the flags win over the environment, as --dsn does over $PGFEATURES_DSN
    (workdir / "wrong-password").write_text("not-it\n")
    done = pgfeatures(
        "get",
        CLI_KEY,
        "--password-file",
        "pg-password",
        cwd=workdir,
        env={**base, "PGFEATURES_PASSWORD_FILE": str(workdir / "wrong-password")},
    )
    assert done.returncode == 0, done.stderr


# One command line per command that connects (the bench commands fail at their first login, before measuring).
CONNECTING = {
    "init": ["init"],
    "get": ["get", CLI_KEY],
    "tables": ["tables"],
    "load": ["load", "a", "data.csv"],
    "materialize": ["materialize", "svc"],
    "doctor": ["doctor"],
    "warmup": ["warmup"],
    "demo": ["demo", "--entities", "200", "--requests", "1"],
    "bench": ["bench", "--quick", "--save", "bench.json"],
    "bench-load": ["bench-load", "--rows", "100"],
    "bench-http": ["bench-http"],
}


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["password-file", "credentials"])
@pytest.mark.parametrize("command", sorted(CONNECTING))
def test_cli_a_wrong_credential_is_one_line_naming_the_refused_login(
    cli_cluster: Cluster, workdir: Path, command: str, how: str
) -> None:
    (workdir / "pg-password").write_text("not-the-password\n")  # both the file and the provider answer it
    env = {"PGFEATURES_DSN": cli_cluster.dsn("app", password=""), "PGFEATURES_DEFINITIONS": "features.toml"}
    flag = (
        ["--password-file", "pg-password"]
        if how == "password-file"
        else ["--credentials", "mycompany.features:lakebase_token"]
    )
    line = error_line(pgfeatures_in_process(*CONNECTING[command], *flag, cwd=workdir, env=env))
    assert "refused the credentials" in line and 'password authentication failed for user "app"' in line, line
    assert "not-the-password" not in line


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_provider_problems_are_one_line(cli_cluster: Cluster, workdir: Path) -> None:
    env = {"PGFEATURES_DSN": cli_cluster.dsn("app", password=""), "PGFEATURES_DEFINITIONS": "features.toml"}
    line = error_line(pgfeatures("tables", "--password-file", "missing-file", cwd=workdir, env=env))
    assert (
        "no credentials for the database at" in line
        and "cannot read the password file missing-file: No such file or directory" in line
    ), line
    line = error_line(pgfeatures("get", CLI_KEY, "--credentials", "mycompany.nope:token", cwd=workdir, env=env))
    assert line.startswith("error: credential provider 'mycompany.nope:token': no module named 'mycompany.nope'"), line
    line = error_line(pgfeatures("doctor", "--credentials", "mycompany.features", cwd=workdir, env=env))
    assert "must be written 'module:callable'" in line
    line = error_line(
        pgfeatures(
            "init",
            "--password-file",
            "pg-password",
            cwd=workdir,
            env={**env, "PGFEATURES_CREDENTIALS": "mycompany.features:lakebase_token"},
        )
    )
    assert "not both" in line and "--credentials" in line and "--password-file" in line
    line = error_line(
        pgfeatures("serve", "--port", "0", "--credentials", "mycompany.features:nothing", cwd=workdir, env=env)
    )
    assert (
        line == "error: credential provider 'mycompany.features:nothing': mycompany.features has no attribute 'nothing'"
    )


@pytest.mark.slow
@pytest.mark.cluster
def test_cli_a_hanging_provider_fails_within_its_deadline_naming_it(cli_cluster: Cluster, workdir: Path) -> None:
    """A provider that never answers: each command fails after the provider's deadline (5 s),
    saying so in one line, instead of waiting and then blaming a pooler."""
    (workdir / "mycompany" / "stuck.py").write_text("import time\n\ndef token():\n    time.sleep(3600)\n")
    env = {"PGFEATURES_DSN": cli_cluster.dsn("app", password=""), "PGFEATURES_DEFINITIONS": "features.toml"}
    for command in (["get", CLI_KEY], ["doctor"], ["init"]):
        started = time.monotonic()
        done = pgfeatures(*command, "--credentials", "mycompany.stuck:token", cwd=workdir, env=env)
        took = time.monotonic() - started
        line = error_line(done)
        assert done.returncode == 2 and "did not answer within 5s (credentials_timeout)" in line, (command, line)
        assert "credential provider <function token at" in line and "PgBouncer" not in line, line
        assert took < 30, (command, took)


@pytest.mark.cluster
def test_serve_finds_the_provider_in_the_working_directory(cli_cluster: Cluster, workdir: Path) -> None:
    """The issue: ``pgfeatures serve --credentials mycompany.features:lakebase_token`` from the
    directory holding mycompany/. The service answers /readyz through the provider."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGFEATURES_") and not k.startswith("PG")}
    proc = subprocess.Popen(
        [
            str(CONSOLE_SCRIPT),
            "serve",
            "--port",
            str(port),
            "--no-prewarm",
            "-d",
            "features.toml",
            "--dsn",
            cli_cluster.dsn("app", password=""),
            "--credentials",
            "mycompany.features:lakebase_token",
        ],
        cwd=workdir,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer within 30 s"
                time.sleep(0.2)
        assert body["status"] == "ready", body
    finally:
        proc.terminate()
        proc.wait(15)
