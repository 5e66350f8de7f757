"""Credentials that change: a provider the pools call for every new connection.

Managed PostgreSQL hands out short-lived credentials: a Databricks Lakebase
OAuth token or an AWS RDS IAM token is valid for about an hour, and checked
only at login (a connection opened with it stays valid). So a service must
ask for the current credential each time it opens a connection, never once
at start. A *credential provider* is any callable that returns, when called,
either the password (a ``str``) or a mapping of libpq connection parameters
(``{"user": ..., "password": ..., "sslmode": ...}``); the stores call it for
every new connection, on the pool's worker thread (sync) or in a thread off
the event loop (async), and merge what it returns over the DSN.

Built in:

- ``PasswordFile(path)``: the file's content, read on every call (a rotated
  secret mounted by Kubernetes or written by a sidecar is picked up at the next
  connection);
- ``EnvPassword(name)``: an environment variable, read on every call;
- ``Cached(provider, seconds)``: calls ``provider`` at most every ``seconds``
  (a token endpoint need not be hit once per pooled connection);
- ``load_provider("module:callable")``: a provider named by import path, for
  ``--credentials`` (``$PGFEATURES_CREDENTIALS``) of ``pgfeatures serve`` and of every
  other command that connects.

Combine them with the stores' ``max_lifetime`` (default 30 minutes):
connections are renewed before a one-hour token could be needed again, each
renewal asking the provider. Recipes for Databricks and AWS are in
docs/production.md; neither SDK is a dependency of pgfeatures.

A provider that raises makes that connection attempt fail (the pool retries
with backoff); the error is reported as an AuthenticationError naming the
provider.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union, cast

from ..errors import ConfigError

CredentialProvider = Callable[[], Union[str, Mapping[str, Any]]]
"""Returns the password, or libpq connection parameters, for the next connection."""


class CredentialProviderError(Exception):
    """A credential provider failed (raised inside a connection attempt, then classified as an
    authentication failure)."""


class PasswordFile:
    """The password is the content of ``path`` (surrounding whitespace stripped), read on every call."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __call__(self) -> str:
        try:
            password = self.path.read_text().strip()
        except OSError as exc:
            raise CredentialProviderError(f"cannot read the password file {self.path}: {exc.strerror or exc}") from None
        if not password:
            raise CredentialProviderError(f"the password file {self.path} is empty")
        return password

    def __repr__(self) -> str:
        return f"PasswordFile({str(self.path)!r})"


class EnvPassword:
    """The password is the environment variable ``name``, read on every call."""

    def __init__(self, name: str = "PGPASSWORD"):
        self.name = name

    def __call__(self) -> str:
        value = os.environ.get(self.name)
        if not value:
            raise CredentialProviderError(f"the environment variable {self.name} is not set")
        return value

    def __repr__(self) -> str:
        return f"EnvPassword({self.name!r})"


class Cached:
    """Calls ``provider`` at most once every ``seconds``; between calls it returns the last answer.

    Choose ``seconds`` well below the credential's validity (e.g. 15 minutes for a one-hour
    token). A failed call is not cached: the next connection asks again.
    """

    def __init__(self, provider: CredentialProvider, seconds: float):
        self.provider = provider
        self.seconds = seconds
        self._value: str | Mapping[str, Any] | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str | Mapping[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._at >= self.seconds:
                self._value = self.provider()
                self._at = now
            return self._value

    def __repr__(self) -> str:
        return f"Cached({self.provider!r}, {self.seconds:g})"


def load_provider(spec: str) -> CredentialProvider:
    """The provider named ``"package.module:name"`` (``name`` may be dotted: ``module:Class.method``).

    As ASGI servers do for an app, the current working directory is put first on ``sys.path``
    (unless it is on it already) before the import, so ``pgfeatures serve --credentials
    mycompany.features:token`` run from the directory holding ``mycompany/`` finds it, however
    pgfeatures was started (the ``pgfeatures`` script does not put the working directory on the
    path; ``python -m`` does).

    Raises ConfigError naming what was wrong (bad form, module not importable or failing to
    import, no such attribute, not callable).
    """
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name.strip() or not attr.strip():
        raise ConfigError(f"credential provider {spec!r} must be written 'module:callable' (e.g. mycompany.features:token)")
    module_name, attr = module_name.strip(), attr.strip()
    _put_cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if isinstance(exc, ModuleNotFoundError) and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(f"credential provider {spec!r}: no module named {missing!r} (looked in the current "
                              f"directory {os.getcwd()} and on sys.path)") from None
        raise ConfigError(f"credential provider {spec!r}: importing {module_name} failed: {exc}") from None
    except Exception as exc:  # the module itself raised (a bad configuration, a syntax error, ...)
        raise ConfigError(f"credential provider {spec!r}: importing {module_name} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"credential provider {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(target):
        raise ConfigError(f"credential provider {spec!r} is not callable (it is a {type(target).__name__})")
    return cast(CredentialProvider, target)


def _put_cwd_on_path() -> None:
    """The working directory first on ``sys.path``, unless already there ('' and '.' count)."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return
    if cwd not in {os.path.abspath(entry) for entry in sys.path if isinstance(entry, str)}:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def credential_params(provider: CredentialProvider) -> dict[str, Any]:
    """Call ``provider`` and normalise its answer to libpq parameters. Raises CredentialProviderError."""
    try:
        value = provider()
    except CredentialProviderError:
        raise
    except Exception as exc:
        raise CredentialProviderError(f"credential provider {provider!r} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(value, str):
        return {"password": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise CredentialProviderError(
        f"credential provider {provider!r} returned {type(value).__name__}: expected a password (str) "
        "or a mapping of connection parameters"
    )
