"""The store's settings, in one place: ``StoreOptions``.

One frozen dataclass holds every setting of a FeatureStore / AsyncFeatureStore except what it serves
(the definitions) and where (the primary's DSN). It is validated once, when it is built, and raises
ConfigError naming the setting (before any I/O). The stores take it whole (``options=``) or build it
from their keyword arguments; ``pgfeatures serve`` (``ServerConfig.store_options``), the CLI and the
Feast plugin derive theirs from it rather than listing the settings again. Each field's
``metadata["help"]`` says what it does (the store's docstring lists them too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..connections import POOL_ORDERS, READ_APP, WRITE_APP, CredentialProvider, check_pool_order, check_pooler
from ..connections.credentials import DEFAULT_CREDENTIALS_TIMEOUT
from ..definitions import DEFAULT_MAX_FUTURE_SKEW, Registry
from ..errors import ConfigError, PgFeaturesError
from ..reader import DEFAULT_STRATEGY, BatchReader, Reader, ReaderCache, Strategy, parse_keys
from ..reader.nearest import DEFAULT_EXACT_LIMIT
from ..write import check_skew
from .base import ON_DRIFT

# Hot keys: a sequence of keys (the definitions' one entity), or {entity: [keys]} (one list per entity).
HotKeys = Sequence[Any] | Mapping[str, Sequence[Any]]


def _opt(default: Any, help: str, *, minimum: float | None = None, factory: Any = None) -> Any:
    metadata = {"help": help, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StoreOptions:
    """Every setting of a store (see the module). Raises ConfigError for a bad value, naming it."""

    strategy: Strategy | str = _opt(DEFAULT_STRATEGY, "default read strategy (see reader/compile.py)")
    pool_size: int = _opt(4, "read connections per read target (a fixed-size pool)", minimum=1)
    write_pool_size: int = _opt(2, "write connections (0: a read-only store)", minimum=0)
    pool_order: str = _opt(
        "lifo",
        "which idle connection a request takes: 'lifo' the most recently returned (few backends kept hot), "
        "'fifo' every connection in turn (psycopg_pool's order)",
    )
    read_dsns: tuple[str, ...] = _opt((), "read replicas, taken in turn (default: reads go to the primary)")
    read_fallback: bool = _opt(True, "while every replica is down (or too far behind), read from the primary")
    max_replica_lag: float | None = _opt(
        None, "seconds a replica may be behind the primary and still be read (None: no bound)", minimum=0
    )
    credentials: CredentialProvider | None = _opt(None, "credential provider called for every new connection")
    credentials_timeout: float = _opt(
        DEFAULT_CREDENTIALS_TIMEOUT, "seconds the credential provider may take to answer", minimum=0.001
    )
    pooler: str | None = _opt(None, "'transaction' behind a transaction-mode pooler; 'session' or None: prepared")
    max_lifetime: float = _opt(1800.0, "seconds after which a pooled connection is replaced", minimum=1)
    connect_timeout: float = _opt(5.0, "seconds open and each new connection wait for the database", minimum=0.001)
    acquire_timeout: float = _opt(5.0, "seconds a request waits for a pooled connection", minimum=0.001)
    reconnect_timeout: float = _opt(
        10.0, "seconds a pool keeps retrying a lost connection before a request starts afresh", minimum=0.001
    )
    on_drift: str = _opt("raise", "'raise': open fails on drift; 'isolate': only requests touching it fail")
    hot_keys: HotKeys = _opt((), "keys read once at open (a list, or {entity: [keys]}), to load their pages")
    warm: tuple[Reader[Any] | BatchReader[Any], ...] = _opt((), "extra readers prepared on every read connection")
    reader_cache_size: int = _opt(100, "most prepared statements kept per connection for request shapes", minimum=1)
    read_application_name: str = _opt(READ_APP, "application_name of the read pools")
    write_application_name: str = _opt(WRITE_APP, "application_name of the write pool")
    max_future_skew: float | None = _opt(
        DEFAULT_MAX_FUTURE_SKEW, "seconds a written updated_at may be ahead of the server's clock (None: no bound)"
    )
    exact_limit: int = _opt(
        DEFAULT_EXACT_LIMIT,
        "most rows of a table an exact nearest-neighbour search scans (no usable HNSW index); past it, refused",
        minimum=1,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, minimum = getattr(self, f.name), f.metadata["minimum"]
            if minimum is None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if not value >= minimum:  # NaN too
                raise ConfigError(f"{f.name} must be at least {minimum:g}, got {value!r}")
        for name in ("pool_size", "write_pool_size", "reader_cache_size", "exact_limit"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        try:
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy))
            check_pooler(self.pooler)
            check_skew(self.max_future_skew)
        except PgFeaturesError as exc:
            raise ConfigError(str(exc)) from None
        if self.pool_order not in POOL_ORDERS:
            check_pool_order(self.pool_order)
        if self.on_drift not in ON_DRIFT:
            raise ConfigError(f"unknown on_drift {self.on_drift!r}; valid: {', '.join(ON_DRIFT)}")
        read_dsns = self.read_dsns
        if isinstance(read_dsns, str):
            read_dsns = (read_dsns,)
        object.__setattr__(self, "read_dsns", tuple(dict.fromkeys(d for d in read_dsns if d)))
        if isinstance(self.hot_keys, (str, bytes)):
            raise ConfigError("hot_keys must be a list of keys (or {entity: [keys]}), not a single key")
        hot = self.hot_keys
        if isinstance(hot, Mapping):
            hot = {str(e): tuple(keys) for e, keys in hot.items()}
        else:
            hot = tuple(hot)
        object.__setattr__(self, "hot_keys", hot)
        object.__setattr__(self, "warm", tuple(self.warm))

    @property
    def read_strategy(self) -> Strategy:
        """``strategy`` as a Strategy (it is parsed when the options are built)."""
        return Strategy.parse(self.strategy)

    def replace(self, **changes: Any) -> StoreOptions:
        """A copy with ``changes``, validated again. Raises ConfigError, and TypeError for an unknown name."""
        return dataclasses.replace(self, **changes)

    def with_settings(self, read_dsn: str | None = None, **settings: Any) -> StoreOptions:
        """These options with a store's keyword arguments applied (``read_dsn``: one more replica, after
        ``read_dsns``). Raises ConfigError, and TypeError for an unknown name."""
        if read_dsn:
            read_dsns = settings.get("read_dsns", self.read_dsns)
            settings["read_dsns"] = (*((read_dsns,) if isinstance(read_dsns, str) else read_dsns), read_dsn)
        return self.replace(**settings) if settings else self

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names."""
        return tuple(f.name for f in dataclasses.fields(cls))


DEFAULT_OPTIONS = StoreOptions()


class StoreSettings(TypedDict, total=False):
    """StoreOptions' fields as a store's keyword arguments (``FeatureStore(registry, dsn, pool_size=8)``):
    the same names (tests/unit/test_store_options.py checks it), the types a caller may pass."""

    strategy: Strategy | str
    pool_size: int
    write_pool_size: int
    pool_order: str
    read_dsns: Sequence[str]
    read_fallback: bool
    max_replica_lag: float | None
    credentials: CredentialProvider | None
    credentials_timeout: float
    pooler: str | None
    max_lifetime: float
    connect_timeout: float
    acquire_timeout: float
    reconnect_timeout: float
    on_drift: str
    hot_keys: HotKeys
    warm: Iterable[Reader[Any] | BatchReader[Any]]
    reader_cache_size: int
    read_application_name: str
    write_application_name: str
    max_future_skew: float | None
    exact_limit: int


def hot_keys_by_entity(registry: Registry, readers: ReaderCache, hot_keys: HotKeys) -> dict[str, tuple[Any, ...]]:
    """``hot_keys`` as {entity: keys}, each key checked against its entity (no I/O): a bare list is the
    keys of the one entity the tables have; with several, ``{entity: [keys]}`` says whose keys they are.
    Raises ConfigError naming the entity (and the key's position) for a key its entity does not accept."""
    if not hot_keys:
        return {}
    by_entity: dict[str, list[str]] = {}
    for name, table in registry.tables.items():
        by_entity.setdefault(table.entity.name, []).append(name)
    if isinstance(hot_keys, Mapping):
        wanted = dict(hot_keys)
    elif len(by_entity) == 1:
        wanted = {next(iter(by_entity)): tuple(hot_keys)}
    else:
        raise ConfigError(
            f"hot_keys: the tables have entities {', '.join(sorted(by_entity))}: give "
            "{entity: [keys]} to say whose keys they are"
        )
    out: dict[str, tuple[Any, ...]] = {}
    for entity, keys in wanted.items():
        if entity not in by_entity:
            raise ConfigError(f"hot_keys: no table has entity {entity!r}; entities: {', '.join(sorted(by_entity))}")
        try:
            readers.batch_reader(by_entity[entity], None).binder.many(list(keys))
        except PgFeaturesError as exc:
            raise ConfigError(f"hot_keys of entity {entity}: {exc}") from None
        out[entity] = tuple(keys)
    return out


def hashkey_hot_keys(registry: Registry, by_entity: Mapping[str, Sequence[Any]]) -> list[bytes]:
    """The hot keys of entities keyed by 32-byte keys (not hashed from natural ids), as bytes: those the
    cache probe of ``pgfeatures warmup`` reads (see warmup/cache_probe.py)."""
    out: list[bytes] = []
    for name, keys in by_entity.items():
        entity = registry.entity(name)
        if entity.key_type == "bytea32" and not entity.hash:
            out += parse_keys(keys)
    return out


def pick(source: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The StoreOptions fields ``source`` (a settings object) has, by the same name, as keyword
    arguments: front ends hold some of the store's settings under the store's names and hand them
    on without listing them."""
    wanted = StoreOptions.names() if names is None else tuple(names)
    return {n: getattr(source, n) for n in wanted if hasattr(source, n)}
