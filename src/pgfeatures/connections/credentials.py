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

A provider that hangs (a token endpoint that does not answer) must not hang
the store: every call has a deadline (``credentials_timeout``, default
5 s, see ``ProviderDeadline``), after which the connection attempt fails with
a CredentialsTimeoutError naming the provider. A call that overran its
deadline is left to finish in its own thread (Python cannot stop it); while
one is hung, concurrent callers share one call and a new call is started at
most once a deadline, so a provider hung for an hour leaves at most one thread
per deadline behind, and the first call that answers brings the store back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from ..definitions.callables import import_callable
from ..errors import ConfigError

CredentialProvider = Callable[[], str | Mapping[str, Any]]
"""Returns the password, or libpq connection parameters, for the next connection."""


DEFAULT_CREDENTIALS_TIMEOUT = 5.0  # seconds a credential provider may take to answer


class CredentialProviderError(Exception):
    """A credential provider failed (raised inside a connection attempt, then classified as an
    authentication failure)."""


class CredentialProviderTimeout(CredentialProviderError):
    """A credential provider did not answer within its deadline (classified as a
    CredentialsTimeoutError)."""


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
    pgfeatures was started (``definitions/callables.py``, which transforms use too).

    Raises ConfigError naming what was wrong (bad form, module not importable or failing to
    import, no such attribute, not callable).
    """
    return cast(CredentialProvider, import_callable(spec, "credential provider", ConfigError))


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


class ProviderDeadline:
    """``provider`` called with a deadline of ``seconds``: each call runs in its own daemon thread
    and the caller waits at most ``seconds`` for its answer, normalised by ``credential_params``.

    Raises CredentialProviderTimeout past the deadline, CredentialProviderError when the provider
    fails. A call that overran its deadline keeps its thread until the provider returns; while such
    a call is pending, callers share the latest call instead of each starting one, and a new call
    is started only once that one is a deadline old: a hung provider costs at most one thread per
    deadline, and a provider that answers again is heard within a deadline. Calls that do not
    overlap a hung one are independent (one per new connection, as before).

    ``repr`` is the provider's: messages name the provider the user gave.
    """

    def __init__(self, provider: CredentialProvider, seconds: float = DEFAULT_CREDENTIALS_TIMEOUT):
        if seconds <= 0:
            raise ConfigError(f"credentials_timeout must be more than 0 seconds, got {seconds:g}")
        self.provider: CredentialProvider = provider.provider if isinstance(provider, ProviderDeadline) else provider
        self.seconds = seconds
        self._lock = threading.Lock()
        self._hung: set[concurrent.futures.Future[dict[str, Any]]] = set()  # overran their deadline, still running
        self._latest: tuple[concurrent.futures.Future[dict[str, Any]], float] | None = None

    def __call__(self) -> dict[str, Any]:
        return self.params()

    def __repr__(self) -> str:
        return repr(self.provider)

    def params(self) -> dict[str, Any]:
        """The provider's answer as libpq parameters, waiting at most ``seconds`` (blocking)."""
        call = self._call()
        try:
            return call.result(timeout=self.seconds)
        except concurrent.futures.TimeoutError:
            raise self._overran(call) from None

    async def params_async(self) -> dict[str, Any]:
        """``params`` for the event loop: waits without blocking it and without an executor thread
        (a hung provider must not take the loop's default executor, which DNS lookups need)."""
        call = self._call()
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()

        def wake(_: object) -> None:
            try:
                loop.call_soon_threadsafe(_wake, answered)
            except RuntimeError:  # the loop closed meanwhile: nobody waits
                pass

        call.add_done_callback(wake)
        try:
            await asyncio.wait_for(answered, self.seconds)
        except TimeoutError:
            raise self._overran(call) from None
        return call.result()

    def _call(self) -> concurrent.futures.Future[dict[str, Any]]:
        """The call to wait on: a new one, or (while a call is hung) the latest if it is younger than the deadline."""
        now = time.monotonic()
        with self._lock:
            latest = self._latest
            if self._hung and latest is not None and not latest[0].done() and now - latest[1] < self.seconds:
                return latest[0]
            call: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
            self._latest = (call, now)
        threading.Thread(target=self._run, args=(call,), name="pgfeatures-credentials", daemon=True).start()
        return call

    def _run(self, call: concurrent.futures.Future[dict[str, Any]]) -> None:
        try:
            call.set_result(credential_params(self.provider))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
            call.set_exception(exc)
        with self._lock:
            self._hung.discard(call)

    def _overran(self, call: concurrent.futures.Future[dict[str, Any]]) -> CredentialProviderTimeout:
        with self._lock:
            if not call.done():
                self._hung.add(call)
        return CredentialProviderTimeout(
            f"credential provider {self.provider!r} did not answer within {self.seconds:g}s (credentials_timeout)"
        )

    def hung_calls(self) -> int:
        """Calls that overran their deadline and have not returned yet (threads left behind)."""
        with self._lock:
            return len(self._hung)


def _wake(answered: asyncio.Future[None]) -> None:
    if not answered.done():
        answered.set_result(None)


def with_deadline(provider: CredentialProvider, seconds: float | None = None) -> ProviderDeadline:
    """``provider`` with a deadline: itself if it already has one (and ``seconds`` is None or its
    own), else wrapped with ``seconds`` (default DEFAULT_CREDENTIALS_TIMEOUT)."""
    if isinstance(provider, ProviderDeadline) and (seconds is None or seconds == provider.seconds):
        return provider
    return ProviderDeadline(provider, DEFAULT_CREDENTIALS_TIMEOUT if seconds is None else seconds)
