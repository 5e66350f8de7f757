"""A small Feast feature repository, and data for it, made by the tests (real Feast, no mocks).

``definitions()`` returns fresh Feast objects: entities with Int64, String and composite join keys;
views using every Feast type pgfeatures stores (Float32, Float64, Int32, Int64, Bool), with and
without ttl; a view fed by a push source; feature services (two with ``precompute_online=True``,
served from pgfeatures materialized services, and a twin of one without it); an on-demand view
(Feast's generic read path). ``write_data`` writes the Parquet files the views read: fresh rows, rows older than
their view's ttl, rows with nulls, and older duplicates of a key (newest wins).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

# Driver ids and what their driver_stats row is (ttl 1 day).
FRESH = [1001, 1002, 1003]
EXPIRED = [1004]  # 3 days old
NULLS = [1005]  # fresh, every feature null
MISSING = [9999]  # no row at all
DRIVERS = FRESH + EXPIRED + NULLS + MISSING
CUSTOMERS = ["c-1", "c-2", "c-3", "nobody"]  # c-3: expired in driver_customer only
PRECOMPUTED = "driver_precomputed"  # precompute_online=True over every view
PLAIN = "driver_everything"  # the same views, without precompute_online
DRIVER_VECTOR = "driver_vector"  # precompute_online=True, keyed by driver_id alone
EVERYTHING = ("driver_stats", "customer_profile", "driver_customer", "driver_live")  # the views of PRECOMPUTED


def write_data(root: Path) -> None:
    """The views' Parquet files under ``root``."""
    n = len(FRESH)
    stats = pd.DataFrame(
        {
            "driver_id": [*FRESH, *EXPIRED, *NULLS, 1001],  # the last: an older duplicate of 1001 (newest wins)
            "conv": np.array([0.5, 0.25, 0.1, 0.75, np.nan, 9.0], dtype="float32"),
            "acc": [0.125, 1e-300, 3.5, 2.0, None, 9.0],
            "trips": pd.array([10, -20, 2**31 - 1, 40, None, 99], dtype="Int32"),
            "lifetime": pd.array([2**62, -(2**62), 0, 4, None, 99], dtype="Int64"),
            "active": pd.array([True, False, True, True, None, False], dtype="boolean"),
            "event_timestamp": [NOW - HOUR * (i + 1) for i in range(n)] + [NOW - 3 * DAY, NOW - HOUR, NOW - 5 * HOUR],
        }
    )
    stats.loc[stats.index[-1], "event_timestamp"] = NOW - 20 * HOUR  # older than 1001's row at NOW - 1h
    stats.to_parquet(root / "driver_stats.parquet")
    customers = pd.DataFrame(
        {
            "customer_id": ["c-1", "c-2", "c-3"],
            "score": np.array([0.5, 1.5, 2.5], dtype="float32"),
            "age": pd.array([30, 40, None], dtype="Int64"),
            "event_timestamp": [NOW - HOUR, NOW - 10 * DAY, NOW - 2 * HOUR],
        }
    )
    customers.to_parquet(root / "customer_profile.parquet")
    pairs = pd.DataFrame(
        {
            "driver_id": [1001, 1002, 1003],
            "customer_id": ["c-1", "c-2", "c-3"],
            "affinity": [0.9, 0.1, 0.4],
            "event_timestamp": [NOW - HOUR, NOW - 2 * HOUR, NOW - 30 * DAY],
        }
    )
    pairs.to_parquet(root / "driver_customer.parquet")
    live = pd.DataFrame(
        {
            "driver_id": pd.array([], dtype="Int64"),
            "speed": np.array([], dtype="float32"),
            "event_timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )
    live.to_parquet(root / "driver_live.parquet")


def definitions(root: Path) -> dict[str, Any]:
    """Fresh Feast objects for the repository whose data ``write_data`` wrote under ``root``."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)

    def source(name: str) -> Any:
        return FileSource(name=f"{name}_source", path=str(root / f"{name}.parquet"), timestamp_field="event_timestamp")

    driver_stats = FeatureView(
        name="driver_stats",
        entities=[driver],
        ttl=DAY,
        source=source("driver_stats"),
        schema=[
            Field(name="driver_id", dtype=Int64),
            Field(name="conv", dtype=Float32),
            Field(name="acc", dtype=Float64),
            Field(name="trips", dtype=Int32),
            Field(name="lifetime", dtype=Int64),
            Field(name="active", dtype=Bool),
        ],
    )
    customer_profile = FeatureView(
        name="customer_profile",
        entities=[customer],
        ttl=dt.timedelta(0),
        source=source("customer_profile"),
        schema=[
            Field(name="customer_id", dtype=String),
            Field(name="score", dtype=Float32),
            Field(name="age", dtype=Int64),
        ],
    )
    driver_customer = FeatureView(
        name="driver_customer",
        entities=[driver, customer],
        ttl=7 * DAY,
        source=source("driver_customer"),
        schema=[
            Field(name="driver_id", dtype=Int64),
            Field(name="customer_id", dtype=String),
            Field(name="affinity", dtype=Float64),
        ],
    )
    push = PushSource(name="driver_push", batch_source=source("driver_live"))
    driver_live = FeatureView(
        name="driver_live",
        entities=[driver],
        ttl=DAY,
        source=push,
        schema=[Field(name="driver_id", dtype=Int64), Field(name="speed", dtype=Float32)],
    )
    service = FeatureService(name="driver_service", features=[driver_stats[["conv", "trips"]], customer_profile])
    # Every view, every type, three entities (one composite), a push-fed view: precomputed, and its twin without.
    everything = [driver_stats, customer_profile, driver_customer, driver_live]  # EVERYTHING
    precomputed = FeatureService(name=PRECOMPUTED, features=everything, precompute_online=True)
    plain = FeatureService(name=PLAIN, features=everything)
    # One entity (driver_id): what Feast's precomputed-vector hooks can address (the first view's join keys).
    driver_vector = FeatureService(
        name=DRIVER_VECTOR, features=[driver_stats[["conv", "trips", "active"]], driver_live], precompute_online=True
    )
    request = RequestSource(name="boost", schema=[Field(name="boost", dtype=Float64)])

    @on_demand_feature_view(
        sources=[driver_stats, request], schema=[Field(name="conv_boosted", dtype=Float64)], mode="python"
    )
    def conv_boosted(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"conv_boosted": [None if c is None else c + b for c, b in zip(inputs["conv"], inputs["boost"])]}

    return {
        "driver": driver,
        "customer": customer,
        "driver_stats": driver_stats,
        "customer_profile": customer_profile,
        "driver_customer": driver_customer,
        "driver_push": push,
        "driver_live": driver_live,
        "driver_service": service,
        PRECOMPUTED: precomputed,
        PLAIN: plain,
        DRIVER_VECTOR: driver_vector,
        "conv_boosted": conv_boosted,
    }


def write_config(root: Path, project: str, online_store: dict[str, Any], **extra: Any) -> Path:
    """``feature_store.yaml`` of a repository at ``root`` (local provider, file registry), with ``extra`` settings."""
    config = {
        **extra,
        "project": project,
        "provider": "local",
        "registry": str(root / "registry.db"),
        "online_store": online_store,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    path = root / "feature_store.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_store(
    root: Path, project: str, online_store: dict[str, Any], objects: dict[str, Any] | None = None, **extra: Any
) -> Any:
    """A Feast FeatureStore for a repository at ``root`` with the objects applied (``feast apply``)
    and the batch views materialized."""
    from feast import FeatureStore

    root.mkdir(parents=True, exist_ok=True)
    write_data(root)
    write_config(root, project, online_store, **extra)
    objects = objects if objects is not None else definitions(root)
    store = FeatureStore(repo_path=str(root))
    store.apply(list(objects.values()))
    store.materialize(NOW - 60 * DAY, NOW + dt.timedelta(seconds=1))
    return store


ALL_FEATURES = [
    "driver_stats:conv",
    "driver_stats:acc",
    "driver_stats:trips",
    "driver_stats:lifetime",
    "driver_stats:active",
    "customer_profile:score",
    "customer_profile:age",
    "driver_customer:affinity",
    "driver_live:speed",
]


def entity_rows() -> list[dict[str, Any]]:
    """Every driver with every customer: present, expired, null and missing rows in every view."""
    return [{"driver_id": d, "customer_id": c} for d in DRIVERS for c in CUSTOMERS]


def serving_cell(repo_path: Any, service: str, entity: str, table: str, feature: str) -> tuple[Any, Any]:
    """(UPDATE setting one feature of one key's serving row to %s, SELECT of it; the key is the second
    parameter) for a built materialized service of the repository (its definitions as import-feast writes
    them): how a test shows that an answer comes from the serving rows."""
    from psycopg import sql

    from pgfeatures.feast.importer import import_repo

    registry = import_repo(Path(repo_path)).registry
    layout = next(lay for lay in registry.layouts(service) if lay.entity.name == entity)
    slot = next(s for s in layout.slots if (s.table, s.feature.name) == (table, feature))
    target = sql.Identifier(registry.schema, layout.table_name)
    cell = sql.SQL("{}[{}]").format(sql.Identifier(slot.group), sql.Literal(slot.index + 1))
    where = sql.SQL("{} = %s").format(sql.Identifier(layout.entity.column))
    return (
        sql.SQL("UPDATE {} SET {} = %s WHERE {}").format(target, cell, where),
        sql.SQL("SELECT {} FROM {} WHERE {}").format(cell, target, where),
    )
