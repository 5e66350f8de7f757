"""The service's settings and where they come from: flags > environment > config file > defaults.

Every setting is one field of ``ServerConfig``; its flag (``--pool-size``),
environment variable (``PGFEATURES_POOL_SIZE``) and config-file key
(``pool_size``) are derived from the field name, so the three sources cannot
drift apart. The config file is TOML with the settings at top level::

    host = "0.0.0.0"
    port = 8000
    workers = 2
    pool_size = 4
    definitions = "features.toml"
    coalesce = true

and is named by ``--config`` or ``$PGFEATURES_CONFIG``. Unknown keys and
values of the wrong type are rejected with a ConfigError that names the
valid ones: a typo in a config file must not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..definitions import Registry, demo_registry, read_toml
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store.options import StoreOptions

log = logging.getLogger("pgfeatures.server")

ENV_PREFIX = "PGFEATURES_"
CONFIG_FILE_ENV = "PGFEATURES_CONFIG"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")


def _number(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}")
        return kind(value)

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("expected a string")
    return str(value)


def _setting(
    default: Any, help: str, parse: Callable[[Any], Any], *, minimum: float | None = None, secret: bool = False
) -> Any:
    """A setting's field; a secret one (a DSN may hold a password) is left out of the repr, hence out of tracebacks."""
    return field(default=default, repr=not secret, metadata={"help": help, "parse": parse, "minimum": minimum})


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``pgfeatures serve`` needs. Build with ``load_config``; every field has a sensible default."""

    host: str = _setting("127.0.0.1", "address to listen on", _text)
    port: int = _setting(8000, "TCP port to listen on", _number(int), minimum=0)
    workers: int = _setting(1, "worker processes (each has its own pools)", _number(int), minimum=1)
    dsn: str | None = _setting(None, "PostgreSQL connection string (default: the embedded server)", _text, secret=True)
    read_dsn: str | None = _setting(
        None, "read replicas' connection strings, separated by ';' (default: reads go to the DSN)", _text, secret=True
    )
    read_fallback: bool = _setting(
        True, "while every replica is down (or too far behind), read from the primary", _bool
    )
    max_replica_lag: float | None = _setting(
        None,
        "seconds a replica may be behind the primary and still be read (default: no bound)",
        _number(float),
        minimum=0,
    )
    credentials: str | None = _setting(
        None,
        "credential provider 'module:callable', called for every new connection (rotating passwords, "
        "OAuth or IAM tokens; see docs/production.md)",
        _text,
    )
    password_file: str | None = _setting(
        None, "file holding the database password, read at every new connection (a rotated secret is picked up)", _text
    )
    credentials_timeout: float = _setting(
        5.0,
        "seconds the credential provider (or password file) may take to answer before the connection attempt "
        "fails with 503 credentials_timeout (a token endpoint that hangs)",
        _number(float),
        minimum=0.001,
    )
    pooler: str | None = _setting(
        None,
        "'transaction' behind a transaction-mode pooler (PgBouncer): nothing prepared, reads through "
        "server-side functions; 'session' or unset: prepared statements",
        _text,
    )
    max_lifetime: float = _setting(
        1800.0,
        "seconds after which a pooled database connection is replaced (credentials renewed)",
        _number(float),
        minimum=1,
    )
    definitions: str | None = _setting(None, "feature-table definitions TOML (default: the demo layout)", _text)
    pool_size: int = _setting(4, "read connections per worker", _number(int), minimum=1)
    write_pool_size: int = _setting(
        1,
        "write connections per worker, for POST /v1/push (0: a read-only service, pushes are 403 read_only)",
        _number(int),
        minimum=0,
    )
    strategy: str = _setting("single", "read strategy for single-key requests", _text)
    max_future_skew: float = _setting(
        300.0,
        "seconds a pushed updated_at may be ahead of the database server's clock; a push with one further "
        "ahead is refused whole (400 invalid_value)",
        _number(float),
        minimum=0,
    )
    prewarm: bool = _setting(
        True,
        "load the feature tables and indexes into shared_buffers (pgfeatures warmup) before reporting ready",
        _bool,
    )
    max_batch_keys: int = _setting(
        1000, "most keys one batch request (or rows one push) may carry", _number(int), minimum=1
    )
    batch_chunk_keys: int = _setting(
        50,
        "keys per database statement of a batch; a larger batch is read in chunks and its answer streamed",
        _number(int),
        minimum=1,
    )
    batch_connections: int = _setting(
        0,
        "read connections batch chunks may hold at once, so single-key reads keep the rest "
        "(0: a quarter of the pool, at least 1)",
        _number(int),
        minimum=0,
    )
    inventory_interval: float = _setting(
        15.0,
        "seconds between refreshes of the table inventory (GET /v1/tables: rows, age of the newest row; "
        "the age gauges), which run only when asked for",
        _number(float),
        minimum=0,
    )
    expire_every: float = _setting(
        0.0,
        "seconds between background runs of pgfeatures expire (rows older than their table's ttl plus "
        "expire_grace deleted in small batches, on the primary; a read-only service never expires); 0: never",
        _number(float),
        minimum=0,
    )
    expire_grace: float = _setting(
        3600.0,
        "seconds rows are kept beyond their table's ttl before expire deletes them",
        _number(float),
        minimum=0,
    )
    coalesce: bool = _setting(False, "merge concurrent single-key requests into batched queries", _bool)
    coalesce_window_us: int = _setting(
        0,
        "how long the first request of a coalesced batch waits for company, in microseconds "
        "(0: the requests of the same event-loop iteration)",
        _number(int),
        minimum=0,
    )
    coalesce_max_keys: int = _setting(16, "most keys in one coalesced query", _number(int), minimum=1)
    acquire_timeout: float = _setting(
        1.0, "seconds a request waits for a pooled connection before 503 pool_exhausted", _number(float), minimum=0.001
    )
    request_timeout: float = _setting(
        5.0,
        "seconds a request may spend on the database in all before 504 query_timeout",
        _number(float),
        minimum=0.001,
    )
    connect_timeout: float = _setting(
        5.0, "seconds to wait for a new database connection", _number(float), minimum=0.001
    )
    retry_after: int = _setting(
        1, "Retry-After seconds sent with retryable (503, 504) responses", _number(int), minimum=0
    )
    token: str | None = _setting(
        None,
        "bearer token required on every endpoint but /healthz and /readyz (prefer PGFEATURES_TOKEN or "
        "--token-file: a flag is visible to every user in ps)",
        _text,
        secret=True,
    )
    token_file: str | None = _setting(
        None, "file holding the bearer token (read at startup; surrounding whitespace ignored)", _text
    )
    probe_details: bool = _setting(
        False,
        "/readyz shows its details (read targets with their hosts, tables that cannot be served, what "
        "failed) to requests without the token too; by default only the status and a reason class",
        _bool,
    )
    graceful_timeout: float = _setting(
        30.0, "seconds to let in-flight requests finish on shutdown", _number(float), minimum=0
    )
    header_timeout: float = _setting(
        10.0,
        "seconds a client may take to send a request's headers before a 408 closes the connection",
        _number(float),
        minimum=0.001,
    )
    body_timeout: float = _setting(
        10.0,
        "seconds a client may take to send a request's body after its headers before a 408 closes the connection",
        _number(float),
        minimum=0.001,
    )
    max_header_bytes: int = _setting(
        65536,
        "most bytes of a request's line and headers (read before the token is checked); past it a 431 "
        "closes the connection",
        _number(int),
        minimum=1024,
    )
    max_headers: int = _setting(
        100,
        "most headers in one request; past it a 431 closes the connection",
        _number(int),
        minimum=8,
    )
    keep_alive: float = _setting(
        60.0, "seconds an idle client connection is kept open (model servers reuse theirs)", _number(float), minimum=0
    )
    log_level: str = _setting("info", "log level", _text)
    access_log: bool = _setting(False, "log every request (costs CPU per request)", _bool)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, minimum = getattr(self, f.name), f.metadata["minimum"]
            if minimum is not None and value is not None and value < minimum:
                raise ConfigError(f"{f.name} must be at least {minimum:g}, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"unknown log_level {self.log_level!r}; valid: {', '.join(LOG_LEVELS)}")
        if self.token is not None and self.token_file is not None:
            raise ConfigError("set token or token_file, not both")
        # Read once here, so that a bad file fails at startup; not a field, so it never travels as JSON.
        object.__setattr__(self, "_bearer", read_token_file(self.token_file) if self.token_file else self.token)
        if self.credentials is not None and self.password_file is not None:
            raise ConfigError("set credentials or password_file, not both")
        # The store's settings are checked by the store's own rules (pooler, strategy, ...), here at
        # startup; the provider is loaded only when the store is made (``store_options``).
        self._store_settings()
        if self.batch_connections > self.pool_size:
            raise ConfigError(
                f"batch_connections ({self.batch_connections}) cannot exceed pool_size ({self.pool_size})"
            )

    def _store_settings(self) -> StoreOptions:
        """The store settings this config holds under the store's own names (``pick``), validated, with
        every read replica, ``on_drift="isolate"`` (a broken table fails only the requests touching it)
        and no credential provider yet. Raises ConfigError."""
        from ..store.options import StoreOptions, pick

        return StoreOptions(
            **{**pick(self), "read_dsns": tuple(self.read_dsns), "credentials": None, "on_drift": "isolate"}
        )

    def store_options(self) -> StoreOptions:
        """The options of the service's store: every StoreOptions setting this config has (same name), and
        the credential provider it names. Raises ConfigError (a provider that does not load, too)."""
        return self._store_settings().replace(credentials=self.credential_provider())

    @property
    def read_dsns(self) -> list[str]:
        return [d.strip() for d in (self.read_dsn or "").split(";") if d.strip()]

    def credential_provider(self) -> Any:
        """The credential provider the settings name (None: the DSN's own password). Raises ConfigError."""
        from ..connections import PasswordFile, load_provider

        if self.password_file:
            return PasswordFile(self.password_file)
        if self.credentials:
            return load_provider(self.credentials)
        return None

    @property
    def coalesce_window(self) -> float:
        return self.coalesce_window_us / 1e6

    @property
    def bearer_token(self) -> str | None:
        """The token requests must carry (from ``token`` or ``token_file``), or None: no auth."""
        # Set by __post_init__ with object.__setattr__: a declared attribute would be a dataclass field,
        # hence a setting (and would travel as JSON).
        return self._bearer  # type: ignore[attr-defined]

    @property
    def batch_slots(self) -> int:
        """How many batch chunks may hold a read connection at once."""
        return self.batch_connections or max(1, self.pool_size // 4)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body read: room for ``max_batch_keys`` keys plus a generous feature selection."""
        return max(1 << 20, self.max_batch_keys * 80)

    def registry(self) -> Registry:
        """The feature tables served. Raises DefinitionError for a bad definitions file."""
        return Registry.from_toml(self.definitions) if self.definitions else demo_registry()

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """For handing the config to worker processes (through their environment)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls(**json.loads(text))


def read_token_file(path: str) -> str:
    """The token in a file, without surrounding whitespace. Raises ConfigError naming the file."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token_file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"token_file {path} is empty")
    return token


SETTINGS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(ServerConfig)
NAMES = tuple(f.name for f in SETTINGS)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(f: dataclasses.Field, value: Any, source: str) -> Any:
    try:
        return f.metadata["parse"](value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid value {value!r} for {f.name}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML config file. Raises ConfigError for a missing file, bad TOML or unknown keys."""
    data = read_toml(path, ConfigError, "config file")
    unknown = sorted(set(data) - set(NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    by_name = {f.name: f for f in SETTINGS}
    return {name: _parse(by_name[name], value, str(path)) for name, value in data.items()}


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ServerConfig:
    """Merge the sources: a flag that is not None wins, then ``PGFEATURES_<NAME>``, then the file, then the default.

    ``config_file`` defaults to ``$PGFEATURES_CONFIG``. Raises ConfigError naming the bad setting and its source.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    if flags.get("token") is not None:
        log.warning(
            "pgfeatures: the bearer token was given as %s, which every user of this machine can read in ps; "
            "set %s or use %s instead",
            flag_name("token"),
            env_name("token"),
            flag_name("token_file"),
        )
    config_file = config_file or environ.get(CONFIG_FILE_ENV)
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    for f in SETTINGS:
        env = environ.get(env_name(f.name))
        if env not in (None, ""):
            values[f.name] = _parse(f, env, f"${env_name(f.name)}")
        flag = flags.get(f.name)
        if flag is not None:
            values[f.name] = _parse(f, flag, flag_name(f.name))
    return ServerConfig(**values)
