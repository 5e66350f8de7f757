"""StoreOptions: every store setting validated once (ConfigError naming it), and what the stores,
``pgfeatures serve``, the CLI and the Feast plugin derive from it. No database: nothing here opens."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from pgfeatures import AsyncFeatureStore, FeatureStore, StoreOptions
from pgfeatures.definitions import Entity, FeatureTable, Registry, demo_registry
from pgfeatures.errors import ConfigError
from pgfeatures.reader import Strategy
from pgfeatures.store.options import StoreSettings, hot_keys_by_entity


def test_defaults_are_the_stores_defaults():
    options = StoreOptions()
    assert options.pool_size == 4 and options.write_pool_size == 2 and options.pool_order == "lifo"
    assert options.strategy is Strategy.SINGLE and options.on_drift == "raise"
    assert FeatureStore(demo_registry(), "host=nowhere", open=False).options == options


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"pool_size": 2.5}, "pool_size must be an integer"),
        ({"pool_size": True}, "pool_size must be a number"),
        ({"write_pool_size": -1}, "write_pool_size must be at least 0"),
        ({"acquire_timeout": 0}, "acquire_timeout must be at least"),
        ({"connect_timeout": float("nan")}, "connect_timeout must be at least"),
        ({"max_replica_lag": -1}, "max_replica_lag must be at least 0"),
        ({"pooler": "statement"}, "unknown pooler 'statement'"),
        ({"strategy": "fastest"}, "fastest"),
        ({"on_drift": "ignore"}, "unknown on_drift 'ignore'; valid: raise, isolate"),
        ({"pool_order": "random"}, "unknown pool order 'random'; valid: lifo, fifo"),
        ({"max_future_skew": -5}, "max_future_skew"),
        ({"hot_keys": "abc"}, "not a single key"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(bad, match):
    with pytest.raises(ConfigError, match=match):
        StoreOptions(**bad)
    # The stores' keyword constructor builds the same options, so it fails the same way (before any I/O).
    with pytest.raises(ConfigError, match=match):
        FeatureStore(demo_registry(), "host=nowhere", open=False, **bad)
    with pytest.raises(ConfigError, match=match):
        AsyncFeatureStore(demo_registry(), "host=nowhere", **bad)


def test_keywords_apply_on_top_of_options_and_read_dsn_adds_a_replica():
    base = StoreOptions(pool_size=8, read_dsns=("host=r1",))
    store = FeatureStore(demo_registry(), "host=p", open=False, options=base, write_pool_size=0, read_dsn="host=r2")
    assert store.options == base.replace(write_pool_size=0, read_dsns=("host=r1", "host=r2"))
    assert store.pool_size == 8 and store.write_pool_size == 0 and store.read_dsns == ("host=r1", "host=r2")
    assert StoreOptions(read_dsns="host=r1").read_dsns == ("host=r1",)  # a lone string is one replica
    assert StoreOptions(strategy="union").strategy is Strategy.UNION


def test_options_are_frozen_and_replace_validates():
    options = StoreOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.pool_size = 2  # type: ignore[misc]
    with pytest.raises(ConfigError):
        options.replace(pool_size=0)


def test_the_keyword_arguments_are_the_options_fields():
    """StoreSettings (the typed **kwargs of the stores) names exactly StoreOptions' fields."""
    assert set(typing.get_type_hints(StoreSettings)) == set(StoreOptions.names())


def _two_entities() -> Registry:
    user = Entity("user", "bigint")
    return Registry.of(
        (
            FeatureTable.of("u", [("a", "real")], entity=user),
            FeatureTable.of("h", [("b", "real")]),
        ),
        schema="s",
    )


def test_hot_keys_are_per_entity():
    """``hot_keys=[42]`` for a bigint entity is a key of that entity, not a malformed hash key."""
    user = Entity("user", "bigint")
    one = Registry.of((FeatureTable.of("u", [("a", "real")], entity=user),), schema="s")
    store = FeatureStore(one, "host=nowhere", open=False, hot_keys=[42, 7])
    assert store.hot_keys_by_entity == {"user": (42, 7)} and store.hot_keys == []
    two = _two_entities()
    store = FeatureStore(two, "host=nowhere", open=False, hot_keys={"user": [42], "entity": [bytes(32)]})
    assert store.hot_keys_by_entity == {"user": (42,), "entity": (bytes(32),)}
    assert store.hot_keys == [bytes(32)]  # what warm-up's cache probe reads: the 32-byte keys
    with pytest.raises(ConfigError, match="entities entity, user: give"):
        FeatureStore(two, "host=nowhere", open=False, hot_keys=[42])
    with pytest.raises(ConfigError, match="hot_keys of entity user"):
        FeatureStore(two, "host=nowhere", open=False, hot_keys={"user": ["not a number"]})
    with pytest.raises(ConfigError, match="no table has entity 'merchant'"):
        hot_keys_by_entity(two, FeatureStore(two, "host=x", open=False).readers, {"merchant": [1]})


def test_serve_derives_its_store_from_store_options():
    server = pytest.importorskip("pgfeatures.server.config")
    config = server.ServerConfig(pool_size=7, write_pool_size=0, acquire_timeout=0.5, read_dsn="host=a;host=b")
    options = config.store_options()
    shared = [n for n in StoreOptions.names() if n in {f.name for f in dataclasses.fields(config)}]
    assert {"pool_size", "write_pool_size", "acquire_timeout", "pooler", "max_lifetime"} <= set(shared)
    for name in shared:
        if name != "credentials":  # the config names a provider; the options hold it
            assert getattr(options, name) == getattr(config, name), name
    assert options.read_dsns == ("host=a", "host=b") and options.on_drift == "isolate"
    # The store's rules check the service's settings at startup, as ConfigError.
    with pytest.raises(ConfigError, match="unknown pooler"):
        server.ServerConfig(pooler="statement")
    service_module = pytest.importorskip("pgfeatures.server.service")
    service = service_module.Service(config, demo_registry())
    assert service.store.options == options


def test_the_cli_derives_its_store_from_store_options():
    from pgfeatures.cli.common import store_options_of

    args = argparse.Namespace(command="get", credentials=None, password_file=None)
    options = store_options_of(args)
    assert options == StoreOptions(pool_size=1, write_pool_size=0, on_drift="isolate")
    assert store_options_of(args, pool_size=2).pool_size == 2
