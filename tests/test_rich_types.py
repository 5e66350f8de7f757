"""Strings, timestamps, lists and embeddings end to end (issue 22): definitions, ``init`` DDL and drift,
live updates, every read path (library sync and async, every strategy, batch, services as dicts and
vectors, HTTP, the CLI), each compared with the table read back by plain SQL, never with the store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import uuid
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cli_run import cli
from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import Registry, feature_type
from pgfeatures.errors import DefinitionError, FeatureValueError, SchemaDriftError, VectorOutputError
from pgfeatures.schema import apply_schema, drift
from pgfeatures.server import ServerConfig
from support.inprocess import running_app

DEFINITIONS = """
schema = "{schema}"

[entities.user]
key = "bigint"

[tables.profile]
entity = "user"
[tables.profile.features]
country = {{ type = "string", max_length = 2, default = "ZZ" }}
last_login = "timestamp"
merchant_categories = {{ type = "list<string>", max_length = 5 }}
recent_ids = "list<bigint>"
amounts = "list<real>"
embedding = {{ type = "embedding", dim = 4 }}
score = "real"

[tables.stats]
entity = "user"
[tables.stats.features]
clicks = "integer"
first_seen = "timestamp"
amount = "double"

[services.dict_only]
features = ["profile.*", "stats.*"]

[services.ranker]
features = ["stats.clicks", "profile.embedding", "profile.score", "stats.first_seen"]

[services.served]
materialize = true
features = ["profile.country", "profile.last_login", "profile.score", "stats.*"]

[services.served_all]
materialize = true
features = ["profile.*", "stats.*"]

[services.mapped]
features = ["profile.country", "profile.score", "profile.embedding"]
[[services.mapped.transforms]]
function = "support.transforms:country_flag"
name = "geo"
inputs = ["profile.country"]
outputs = {{ is_de = "boolean" }}

[services.served_ctx]
materialize = true
features = ["stats.clicks", "profile.score"]
context = {{ basket = "double" }}
[[services.served_ctx.transforms]]
function = "support.transforms:basket_share"
outputs = {{ share = "double" }}

[services.ranker_m]
materialize = true
features = ["stats.clicks", "profile.embedding", "profile.score", "stats.first_seen"]
"""

T0 = dt.datetime(2026, 5, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
ROWS: dict[int, dict[str, dict[str, Any]]] = {
    1: {
        "profile": {
            "country": "DE",
            "last_login": T0,
            "merchant_categories": ['grocery "fresh"', "back\\slash", "ünïcødé", ""],
            "recent_ids": [2**40, -1, 0],
            "amounts": [0.1, 2.5],
            "embedding": [0.1, -0.2, 0.3, 1e-3],
            "score": 0.25,
        },
        "stats": {"clicks": 3, "first_seen": "2026-01-01T00:00:00+02:00", "amount": 12.5},
    },
    2: {"profile": {"country": None, "merchant_categories": [], "embedding": None}},
}


@pytest.fixture(scope="module")
def defs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    schema = f"test_rich_{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("rich") / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    registry = Registry.from_toml(path)
    with FeatureStore(registry, dsn) as store:
        store.update_features(1, "stats", ROWS[1]["stats"])  # before the build: the build copies it
    for service in ("served", "served_all", "ranker_m", "served_ctx"):
        done = cli("materialize", service, "--dsn", dsn, "-d", str(path))
        assert done.returncode == 0, done.stderr
    with FeatureStore(registry, dsn) as store:  # after: the serving rows' triggers copy the rest
        for key, tables in ROWS.items():
            for table, values in tables.items():
                if (key, table) != (1, "stats"):
                    store.update_features(key, table, values)
    yield schema, path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def registry(defs: tuple[str, Path]) -> Registry:
    return Registry.from_toml(defs[1])


def _stored(conn: psycopg.Connection, schema: str, table: str, key: int, registry: Registry) -> dict[str, Any] | None:
    """The row as plain SQL reads it (an embedding column as text, parsed here), with defaults applied."""
    features = registry.table(table).features
    cols = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(f.name)) if f.type.kind == "embedding" else sql.Identifier(f.name)
        for f in features
    )
    row = (
        conn.cursor(binary=True)  # real values as the float32 they are, widened
        .execute(sql.SQL("SELECT {} FROM {} WHERE user_id = %s").format(cols, sql.Identifier(schema, table)), [key])
        .fetchone()
    )
    if row is None:  # a table not present: its defaults, or None
        return {f.name: f.default for f in features} if any(f.default is not None for f in features) else None
    out = {}
    for f, v in zip(features, row):
        if f.type.kind == "embedding" and v is not None:
            v = array("f", [float(x) for x in v.strip("[]{}").split(",")])  # as reads return it: float32
        if isinstance(v, dt.datetime):
            v = v.astimezone(dt.UTC)
        out[f.name] = f.default if v is None else v
    return out


@pytest.fixture(scope="module")
def truth(dsn: str, defs: tuple[str, Path], registry: Registry) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        return {key: {t: _stored(conn, defs[0], t, key, registry) for t in ("profile", "stats")} for key in (1, 2, 3)}


def test_init_makes_the_columns_the_types_promise(dsn: str, defs: tuple[str, Path], registry: Registry) -> None:
    with psycopg.connect(dsn) as conn:
        columns = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [f"{defs[0]}.profile"],
            ).fetchall()
        )
        assert drift(conn, defs[0], registry.table("profile")) == []
    assert columns["country"] == "character varying(2)"
    assert columns["last_login"] == "timestamp with time zone"
    assert columns["merchant_categories"] == "character varying(256)[]"
    assert columns["recent_ids"] == "bigint[]"
    assert columns["amounts"] == "real[]"
    assert columns["embedding"] in ("vector(4)", "real[]")  # pgvector where the server has it


def test_a_changed_max_length_is_drift(dsn: str, defs: tuple[str, Path]) -> None:
    text = defs[1].read_text().replace("max_length = 2", "max_length = 3")
    registry = Registry.from_dict(__import__("tomllib").loads(text))
    with psycopg.connect(dsn) as conn:
        problems = drift(conn, defs[0], registry.table("profile"))
    assert problems == ["column country is character varying(2), definition says character varying(3)"]


def test_stored_values_read_back_exactly(truth: dict[int, dict[str, Any]]) -> None:
    profile = truth[1]["profile"]
    assert profile is not None
    assert profile["country"] == "DE" and profile["last_login"] == T0
    assert profile["merchant_categories"] == ROWS[1]["profile"]["merchant_categories"]
    assert profile["recent_ids"] == [2**40, -1, 0]
    assert profile["embedding"] == array("f", ROWS[1]["profile"]["embedding"])
    assert truth[1]["stats"]["first_seen"] == dt.datetime(2025, 12, 31, 22, tzinfo=dt.UTC)  # type: ignore[index]
    assert truth[2]["profile"]["country"] == "ZZ"  # type: ignore[index]  # NULL: the default


@pytest.mark.parametrize("strategy", ["single", "join", "pipeline", "sequential"])
def test_every_strategy_reads_what_is_stored(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]], strategy: str
) -> None:
    with FeatureStore(registry, dsn) as store:
        for key in (1, 2, 3):
            got = store.get_features(key, strategy=strategy)
            assert got == truth[key]
            assert got.status["stats"] == ("present" if truth[key]["stats"] else "missing")


def test_union_names_what_it_cannot_read(dsn: str, registry: Registry) -> None:
    with FeatureStore(registry, dsn) as store, pytest.raises(Exception, match="profile hold"):
        store.get_features(1, strategy="union")


def test_async_and_batch_reads_agree(dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]) -> None:
    async def main() -> list[Any]:
        async with AsyncFeatureStore(registry, dsn) as store:
            return [await store.get_features(k) for k in (1, 2, 3)] + [await store.get_features_batch([3, 1, 2])]

    *singles, batch = asyncio.run(main())
    assert singles == [truth[1], truth[2], truth[3]]
    assert batch == [truth[3], truth[1], truth[2]]


def test_an_embedding_is_flattened_into_a_service_vector(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]
) -> None:
    with FeatureStore(registry, dsn) as store:
        vector = store.get_service("ranker", 1, output="list")
        assert vector.names == (
            "stats.clicks",
            "profile.embedding[0]",
            "profile.embedding[1]",
            "profile.embedding[2]",
            "profile.embedding[3]",
            "profile.score",
            "stats.first_seen",
        )
        t = truth[1]
        assert vector.values == [
            t["stats"]["clicks"],
            *t["profile"]["embedding"],
            t["profile"]["score"],
            t["stats"]["first_seen"],
        ]
        assert store.get_service("ranker", 2, output="list").values[1:5] == [None] * 4  # NULL embedding
        array = store.get_service("ranker", 1, output="numpy").values
        assert array.shape == (7,) and array[1] == np.float32(0.1)
        rows = store.get_service_batch("ranker", [1, 3], output="numpy").values
        assert rows.shape == (2, 7) and np.isnan(rows[1]).all()


def test_a_service_holding_strings_refuses_vector_output_naming_them(dsn: str, registry: Registry) -> None:
    with FeatureStore(registry, dsn) as store:
        assert store.get_service("dict_only", 1)["profile"]["country"] == "DE"  # type: ignore[index]
        with pytest.raises(VectorOutputError) as err:
            store.get_service("dict_only", 1, output="list")
    message = str(err.value)
    assert "profile.country (string)" in message and "profile.merchant_categories (list<string>)" in message
    assert "transform" in message


@pytest.mark.parametrize(
    "values, message",
    [
        ({"country": "DEU"}, "longer than max_length 2"),
        ({"embedding": [1.0, 2.0]}, "2 values where the embedding has dim 4"),
        ({"embedding": [1.0, float("nan"), 2.0, 3.0]}, "must be finite"),
        ({"merchant_categories": list("abcdef")}, "6 elements where max_length is 5"),
        ({"recent_ids": [1, None]}, "may not be NULL"),
        ({"recent_ids": "1,2"}, "is not a list"),
        ({"last_login": "2026-05-01T12:00:00"}, "time zone"),
        ({"country": "a\x00"}, "NUL"),
    ],
)
def test_bad_values_are_refused_naming_the_row_and_nothing_is_written(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]], values: dict[str, Any], message: str
) -> None:
    with FeatureStore(registry, dsn) as store:
        with pytest.raises(FeatureValueError, match=message) as err:
            store.update_features(1, "profile", values)
        assert "key 1" in str(err.value)
        assert store.get_features(1) == truth[1]


def test_http_answers_json_and_vectors(dsn: str, defs: tuple[str, Path], truth: dict[int, dict[str, Any]]) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(defs[1]), prewarm=False, pool_size=2)
    with running_app(config) as client:
        body = client.post("/v1/features", json={"key": 1}).json()
        profile = body["features"]["profile"]
        assert profile["country"] == "DE" and profile["last_login"] == "2026-05-01T12:30:15.250000Z"
        assert profile["embedding"] == [0.1, -0.2, 0.3, 0.001]  # float32, printed shortest
        assert profile["amounts"] == [0.1, 2.5]
        assert profile["merchant_categories"] == truth[1]["profile"]["merchant_categories"]
        assert profile["recent_ids"] == [2**40, -1, 0]
        assert body["features"]["stats"]["first_seen"] == "2025-12-31T22:00:00Z"
        vector = client.post("/v1/services/ranker", json={"key": 1, "output": "vector"})
        assert vector.status_code == 200, vector.text
        assert vector.json()["values"][1:6] == [0.1, -0.2, 0.3, 0.001, 0.25]
        refused = client.post("/v1/services/dict_only", json={"key": 1, "output": "vector"})
        assert refused.status_code == 400 and "profile.country (string)" in refused.text
        assert refused.json()["error"]["type"] == "vector_output_refused"
        raw = client.post("/v1/services/ranker", json={"key": 1}, headers={"Accept": "application/octet-stream"})
        assert raw.status_code == 200 and raw.headers["x-pgfeatures-columns"] == "7"

        pushed = {"country": "FR", "merchant_categories": ["a"], "embedding": [1, 2, 3, 4], "amounts": [0.5]}
        done = client.post("/v1/push/profile", json={"rows": [{"key": 7, "features": pushed}]})
        assert done.status_code == 200, done.text
        got = client.post("/v1/features", json={"key": 7, "tables": ["profile"]}).json()["features"]["profile"]
        assert {k: got[k] for k in pushed} == pushed
        bad = client.post("/v1/push/profile", json={"rows": [{"key": 7, "features": {"embedding": [1, 2]}}]})
        assert bad.status_code == 400 and "profile.embedding" in bad.text and "dim 4" in bad.text
        assert client.post("/v1/features", json={"key": 7, "tables": ["profile"]}).json()["features"]["profile"] == got

        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        values = schemas["PushFeatures.profile"]["properties"]
        assert values["embedding"]["anyOf"][0] == {
            "type": "array",
            "items": values["amounts"]["anyOf"][0]["items"],
            "minItems": 4,
            "maxItems": 4,
        }
        assert values["country"]["anyOf"][0] == {"type": "string", "maxLength": 2}


def test_cli_get_prints_rich_values_as_json(dsn: str, defs: tuple[str, Path]) -> None:
    done = cli("get", "--dsn", dsn, "-d", str(defs[1]), "1", "--json")
    assert done.returncode == 0, done.stderr
    profile = json.loads(done.stdout)["features"]["profile"]
    assert profile["last_login"] == "2026-05-01T12:30:15.250000Z"
    assert profile["embedding"] == [0.1, -0.2, 0.3, 0.001]
    assert profile["merchant_categories"][0] == 'grocery "fresh"'


def test_definition_errors_say_what_is_valid() -> None:
    with pytest.raises(DefinitionError, match="needs its dimension"):
        feature_type("embedding")
    with pytest.raises(DefinitionError, match="list's elements must be"):
        feature_type("list<boolean>")
    with pytest.raises(DefinitionError, match="takes no option dim"):
        feature_type("string", dim=3)
    with pytest.raises(DefinitionError, match="takes no default"):
        Registry.from_dict({"tables": {"t": {"features": {"e": {"type": "embedding", "dim": 2, "default": [0, 0]}}}}})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=2),
    words=st.lists(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))), max_size=5),
    embedding=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
)
def test_any_string_and_embedding_round_trips(
    dsn: str, defs: tuple[str, Path], registry: Registry, text: str, words: list[str], embedding: list[float]
) -> None:
    values = {"country": text, "merchant_categories": words, "embedding": embedding}
    squares = math.fsum(float(np.float32(x)) ** 2 for x in embedding)
    with FeatureStore(registry, dsn) as store:
        before = store.get_features(9, ["profile"])
        if squares >= 3.4028234663852886e38 or 0 < squares < 2.0**-126:  # pgvector could not rank it
            with pytest.raises(FeatureValueError, match="squared norm"):
                store.update_features(9, "profile", values)
            assert store.get_features(9, ["profile"]) == before  # nothing written
            return
        store.update_features(9, "profile", values)
        got = store.get_features(9, ["profile"])["profile"]
    with psycopg.connect(dsn) as conn:
        stored = _stored(conn, defs[0], "profile", 9, registry)
    assert got == stored
    assert got is not None and got["country"] == (text or text) and got["merchant_categories"] == words
    assert got["embedding"] == array("f", embedding)


def test_a_materialized_service_serves_strings_and_timestamps_in_one_lookup(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]
) -> None:
    names = ("country", "last_login", "score")
    with FeatureStore(registry, dsn) as store:
        reader = store.readers.service_reader("served", None, "single")
        assert reader.materialized and len(reader.statements) == 1
        for key in (1, 2, 3):
            profile, stats = truth[key]["profile"], truth[key]["stats"]
            expected = {"profile": None if profile is None else {n: profile[n] for n in names}, "stats": stats}
            if profile is None:
                expected["profile"] = {"country": "ZZ", "last_login": None, "score": None}  # the default
            assert store.get_service("served", key) == expected
        assert store.get_service_batch("served", [2, 1]) == [store.get_service("served", k) for k in (2, 1)]


def test_a_materialized_service_serves_lists_and_embeddings_from_their_own_columns(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]
) -> None:
    with FeatureStore(registry, dsn) as store:
        assert store.readers.service_reader("served_all", None, "single").materialized
        assert store.readers.service_reader("ranker_m", None, "single").materialized
        for key in (1, 2, 3):
            assert store.get_service("served_all", key) == truth[key]
            assert store.get_service("served_all", key) == store.get_service("dict_only", key)
            flexible = store.get_service("ranker", key, output="list")
            materialized = store.get_service("ranker_m", key, output="list")
            assert materialized.values == flexible.values and materialized.status == flexible.status
        assert store.get_service_batch("served_all", [3, 1]) == [truth[3], truth[1]]
        # a live update reaches the serving row's own columns through the triggers
        store.update_features(2, "profile", {"embedding": [1, 2, 3, 4], "recent_ids": [5]})
        got = store.get_service("served_all", 2)["profile"]
        assert got is not None and got["embedding"] == array("f", [1, 2, 3, 4]) and got["recent_ids"] == [5]
        store.update_features(2, "profile", {"embedding": None, "recent_ids": None})


def test_the_doctor_tells_what_declared_rich_features_cost_without_failing_them(dsn: str, registry: Registry) -> None:
    from pgfeatures.doctor import Status, diagnose

    report = diagnose(registry, dsn, full=True)
    width = report.get("row_width", "profile")
    assert width.status is Status.PASS, width
    for service in ("served", "served_all", "ranker_m", "served_ctx"):  # serving rows against tables, own columns too
        found = report.get("materialized", f"service {service}")
        assert found.status is Status.PASS and found.measured["full"], found
    rich = width.measured["rich_columns"]
    assert [r.split(" ")[0] for r in rich] == ["country", "merchant_categories", "recent_ids", "amounts", "embedding"]
    assert "4 bytes per dimension" in rich[-1]


def test_apply_adds_rich_features_to_a_live_table(dsn: str, schema: str, tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(f'schema = "{schema}"\n[tables.t.features]\nx = "real"\n')
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    with FeatureStore(Registry.from_toml(path), dsn) as store:
        store.update_features("ab" * 32, "t", {"x": 1.5})
    path.write_text(
        f'schema = "{schema}"\n[tables.t.features]\nx = "real"\nnick = {{ type = "string", max_length = 8 }}\n'
        'seen = "timestamp"\ntags = "list<string>"\nvec = { type = "embedding", dim = 2, index = "hnsw" }\n'
    )
    plan = cli("plan", "--dsn", dsn, "-d", str(path))
    assert plan.returncode == 0 and "nick" in plan.stdout, plan.stdout + plan.stderr
    done = cli("apply", "--dsn", dsn, "-d", str(path))
    assert done.returncode == 0, done.stderr
    registry = Registry.from_toml(path)
    with psycopg.connect(dsn) as conn:
        assert drift(conn, schema, registry.table("t")) == []
        indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", [schema])]
    assert "t_vec_hnsw_l2" in indexes
    with FeatureStore(registry, dsn) as store:
        store.update_features("ab" * 32, "t", {"nick": "neo", "seen": T0, "tags": ["x"], "vec": [0.5, 0.25]})
        assert store.get_features("ab" * 32)["t"] == {
            "x": 1.5,
            "nick": "neo",
            "seen": T0,
            "tags": ["x"],
            "vec": array("f", [0.5, 0.25]),
        }


def materialized_t(dsn: str, tmp_path: Path, definitions: str) -> Registry:
    """``definitions`` (a table ``t`` and a materialized service ``m``) written, initialized and built."""
    path = tmp_path / "f.toml"
    path.write_text(definitions)
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    assert cli("materialize", "m", "--dsn", dsn, "-d", str(path)).returncode == 0
    return Registry.from_toml(path)


def test_an_expired_rich_row_is_expired_on_every_path(dsn: str, schema: str, tmp_path: Path) -> None:
    registry = materialized_t(
        dsn,
        tmp_path,
        f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n[tables.t]\nentity = "user"\nttl = "1h"\n'
        '[tables.t.features]\nname = { type = "string", default = "?" }\nvec = { type = "embedding", dim = 2 }\n'
        '[services.m]\nmaterialize = true\nfeatures = ["t.*"]\n',
    )
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with FeatureStore(registry, dsn) as store:
        store.update_features(1, "t", {"name": "old", "vec": [1, 2], "updated_at": old})
        store.update_features(2, "t", {"name": "new", "vec": [3, 4]})
        expired = {"t": {"name": "?", "vec": None}}
        for read in (
            lambda k: store.get_features(k),
            lambda k: store.get_features(k, strategy="join"),
            lambda k: store.get_features_batch([k])[0],
            lambda k: store.get_service("m", k),
        ):
            got = read(1)
            assert got == expired and got.status == {"t": "expired"}
            assert read(2) == {"t": {"name": "new", "vec": array("f", [3.0, 4.0])}}
        vector = store.get_service("m", 1, ["t.vec"], output="list")
        assert vector.values == [None, None] and vector.status == {"t": "expired"}


def test_a_transform_that_maps_a_string_to_a_number_makes_the_vector_leave_the_string_out(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]
) -> None:
    with FeatureStore(registry, dsn) as store:
        vector = store.get_service("mapped", 1, output="list")
        assert vector.names == ("profile.score", *(f"profile.embedding[{i}]" for i in range(4)), "geo.is_de")
        profile = truth[1]["profile"]
        assert vector.values == [profile["score"], *profile["embedding"], True]
        answer = store.get_service("mapped", 1)  # the dict still holds the string
        assert answer["profile"]["country"] == "DE" and answer["geo"] == {"is_de": True}  # type: ignore[index]


def test_the_service_catalogue_describes_a_service_with_no_vector(dsn: str, defs: tuple[str, Path]) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(defs[1]), prewarm=False, pool_size=2)
    with running_app(config) as client:
        listing = client.get("/v1/services")
        assert listing.status_code == 200, listing.text
        one = client.get("/v1/services/dict_only").json()
        assert one["columns"] is None and one["names"] is None and "profile.country (string)" in one["vector"]
        ranker = client.get("/v1/services/ranker").json()
        assert ranker["columns"] == 7 and ranker["names"][1] == "profile.embedding[0]"
        mapped = client.get("/v1/services/mapped").json()
        assert mapped["names"][-1] == "geo.is_de" and "profile.country" not in mapped["names"]


def test_a_transaction_pooler_store_reads_rich_features(
    dsn: str, registry: Registry, truth: dict[int, dict[str, Any]]
) -> None:
    """Behind a transaction-mode pooler reads go through server-side functions, which cannot return an
    anonymous record: a read of rich features goes unprepared instead, and answers the same."""
    with FeatureStore(registry, dsn, pooler="transaction") as store:
        for key in (1, 2, 3):
            assert store.get_features(key) == truth[key]
        assert store.get_features_batch([3, 1]) == [truth[3], truth[1]]
        assert store.get_service("dict_only", 1) == truth[1]
        assert store.get_service("ranker", 1, output="list").values[1:5] == list(truth[1]["profile"]["embedding"])


def test_a_transform_gives_and_takes_numbers_only() -> None:
    for part in ('context = { country = "string" }', ""):
        outputs = '{ x = "list<real>" }' if not part else '{ x = "double" }'
        with pytest.raises(DefinitionError, match="transforms map values to numbers"):
            Registry.from_dict(
                __import__("tomllib").loads(
                    '[tables.t.features]\nx = "real"\n[services.s]\nfeatures = ["t.*"]\n'
                    f"{part}\n[[services.s.transforms]]\n"
                    f'function = "support.transforms:ratios"\noutputs = {outputs}\n'
                )
            )


def test_a_load_refuses_times_no_read_could_return_and_vectors_no_search_could_rank(
    dsn: str, defs: tuple[str, Path], registry: Registry, truth: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = {
        "offset.csv": ('user_id,last_login\n1,"9999-12-31T23:30:00-05:00"\n', "out of range for a timestamp"),
        "norm.csv": ('user_id,embedding\n1,"[1e20, -1e20, 1, 0]"\n', "overflows float32"),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    pq.write_table(
        pa.table({"user_id": [1], "last_login": pa.array([253402300800], pa.timestamp("s", tz="UTC"))}),
        tmp_path / "year10000.parquet",
    )
    cases["year10000.parquet"] = ("", "out of range for a timestamp")
    for name, (_, message) in cases.items():
        done = cli("load", "--dsn", dsn, "-d", str(defs[1]), "--partial", "--key-column", "user_id", "profile",
                   str(tmp_path / name))  # fmt: skip
        assert done.returncode == 2 and message in done.stderr and "nothing was loaded" in done.stderr, done.stderr
        assert "internal error" not in done.stderr
    with FeatureStore(registry, dsn) as store:
        assert store.get_features(1) == truth[1]


def test_a_changed_metric_is_a_change_plan_shows_and_apply_makes(dsn: str, schema: str, tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    spec = f'schema = "{schema}"\n[tables.t.features]\nvec = {{{{ type = "embedding", dim = 2, index = "hnsw", metric = "{{}}" }}}}\n'
    path.write_text(spec.format("ip"))
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    path.write_text(spec.format("cosine"))
    plan = cli("plan", "--dsn", dsn, "-d", str(path))
    assert "t_vec_hnsw_cosine" in plan.stdout, plan.stdout
    assert cli("apply", "--dsn", dsn, "-d", str(path)).returncode == 0
    registry = Registry.from_toml(path)
    with FeatureStore(registry, dsn) as store:
        store.update_features("ab" * 32, "t", {"vec": [1.0, 0.0]})
        found = store.nearest("t", "vec", [1.0, 0.5], 1)
    assert found.search == "hnsw" and found.keys == [bytes.fromhex("ab" * 32)]


def test_apply_says_when_it_left_a_change_out(dsn: str, schema: str, tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    spec = f'schema = "{schema}"\n[tables.t.features]\nname = {{{{ type = "string", max_length = {{}} }}}}\n'
    path.write_text(spec.format(32))
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    path.write_text(spec.format(4))
    done = cli("apply", "--dsn", dsn, "-d", str(path))
    assert done.returncode == 1, done.stdout + done.stderr  # the database still differs: not a success
    assert done.stdout.startswith("nothing applied: 1 change(s) left out, they need --allow-destructive")
    assert json.loads(cli("apply", "--dsn", dsn, "-d", str(path), "--json").stdout)["blocked"]
    with psycopg.connect(dsn, autocommit=True) as conn:  # a value the shorter bound cannot hold
        conn.execute(
            sql.SQL("INSERT INTO {} (hashkey, name) VALUES (%s, 'abcde')").format(sql.Identifier(schema, "t")),
            [bytes(32)],
        )
    done = cli("apply", "--dsn", dsn, "-d", str(path), "--allow-destructive")
    assert done.returncode == 2 and "t.name" in done.stderr and "nothing was changed" in done.stderr, done.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute(sql.SQL("SELECT name FROM {}").format(sql.Identifier(schema, "t"))).fetchone() == ("abcde",)


def test_non_finite_list_elements_written_around_pgfeatures_print_as_strings_never_null(
    dsn: str, schema: str, tmp_path: Path
) -> None:
    """Writes refuse NaN and ±Infinity in lists, but an application's own SQL can store them: an answer shows
    them as their strings, as it does a stored non-finite real, never as the null that reads as NULL."""
    path = tmp_path / "f.toml"
    path.write_text(
        f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n[tables.t]\nentity = "user"\n'
        '[tables.t.features]\nr = "list<real>"\nd = "list<double>"\ne = { type = "embedding", dim = 2, storage = "array" }\n'
    )
    assert cli("init", "--dsn", dsn, "-d", str(path)).returncode == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, r, d, e) VALUES (1, '{{NaN,1.5}}', '{{Infinity,2}}', '{{-Infinity,0}}')"
            ).format(sql.Identifier(schema, "t"))
        )
    expected = {"r": ["NaN", 1.5], "d": ["Infinity", 2.0], "e": ["-Infinity", 0.0]}
    done = cli("get", "--dsn", dsn, "-d", str(path), "1", "--json")
    assert json.loads(done.stdout)["features"]["t"] == expected, done.stdout
    config = ServerConfig(dsn=dsn, definitions=str(path), prewarm=False, pool_size=1)
    with running_app(config) as client:
        assert client.post("/v1/features", json={"key": 1}).json()["features"]["t"] == expected


@pytest.mark.parametrize("stored", ["{1,NULL,3}", "{1,2}", "{{1,2,3},{4,5,6}}"])
def test_a_stored_value_that_is_no_embedding_is_a_typed_error_on_every_path(
    dsn: str, schema: str, tmp_path: Path, stored: str
) -> None:
    """A ``real[]`` embedding written around pgfeatures with a NULL element, another length or two
    dimensions: every read says so, naming the feature, never hands back a value of another shape."""
    registry = materialized_t(
        dsn,
        tmp_path,
        f'schema = "{schema}"\n[entities.user]\nkey = "bigint"\n[tables.t]\nentity = "user"\n'
        '[tables.t.features]\nx = "real"\nvec = { type = "embedding", dim = 3, storage = "array" }\n'
        '[services.m]\nmaterialize = true\nfeatures = ["t.*"]\n[services.flex]\nfeatures = ["t.*"]\n',
    )
    with FeatureStore(registry, dsn) as store:
        store.update_features(1, "t", {"x": 1.5, "vec": [1, 2, 3]})
        assert store.get_service("m", 1) == {"t": {"x": 1.5, "vec": array("f", [1, 2, 3])}}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("UPDATE {} SET vec = %s::real[]").format(sql.Identifier(schema, "t")), [stored])
        reads = (
            lambda: store.get_features(1),
            lambda: store.get_features(1, strategy="join"),
            lambda: store.get_features(1, strategy="pipeline"),
            lambda: store.get_features_batch([1]),
            lambda: store.get_service("flex", 1, output="list"),
            lambda: store.get_service("m", 1),
            lambda: store.get_service("m", 1, output="list"),
        )
        for read in reads:
            with pytest.raises(SchemaDriftError, match="vec: a stored value .* where the definition says an embedding"):
                read()


def test_a_column_retyped_to_a_domain_under_an_open_store_is_drift_not_bytes(dsn: str, schema: str) -> None:
    registry = Registry.from_dict(
        {
            "schema": schema,
            "entities": {"user": {"key": "bigint"}},
            "tables": {"t": {"entity": "user", "features": {"x": "real", "name": {"type": "string"}}}},
        }
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, registry)
        with FeatureStore(registry, dsn) as store:
            store.update_features(1, "t", {"x": 1.5, "name": "a"})
            assert store.get_features(1) == {"t": {"x": 1.5, "name": "a"}}
            conn.execute(sql.SQL("CREATE DOMAIN {} AS real").format(sql.Identifier(schema, "real_d")))
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN x TYPE {}").format(
                    sql.Identifier(schema, "t"), sql.Identifier(schema, "real_d")
                )
            )
            for read in (lambda: store.get_features(1), lambda: store.get_features_batch([1])):
                with pytest.raises(SchemaDriftError, match="x: a stored value of a type pgfeatures does not read"):
                    read()
