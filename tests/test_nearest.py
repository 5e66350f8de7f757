"""Nearest neighbours of an embedding feature (issue 22.3), on a real PostgreSQL with pgvector: exact
search equal to a brute-force numpy computation of the same metric over the same rows (pgvector's
operators, a ``real[]`` column cast to vector, and SQL arithmetic as on a server without pgvector),
HNSW recall against exact search and the effect of ``ef_search``, TTL, ``where``, features equal to
``get_features``, the sync and async stores, HTTP and the CLI, and the errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from cli_run import cli
from pgfeatures import AsyncFeatureStore, FeatureStore
from pgfeatures.definitions import Registry
from pgfeatures.errors import (
    ExactSearchRefusedError,
    FeatureValueError,
    NearestError,
    UnknownFeatureError,
    UnknownTableError,
)
from pgfeatures.reader.nearest import DEFAULT_EF_SEARCH, VectorFacts
from pgfeatures.server import ServerConfig
from support.inprocess import running_app

DIM = 16
METRICS = {"l2": ("emb_l2", "arr_l2"), "cosine": ("emb_cos", "arr_cos"), "ip": ("emb_ip", "arr_ip")}
CATEGORIES = ["a", "b", "c"]

DEFINITIONS = """
schema = "{schema}"

[entities.item]
key = "bigint"

[entities.doc]
hash = "sha256"

[tables.items]
entity = "item"
ttl = "1d"
[tables.items.features]
emb_l2 = {{ type = "embedding", dim = 16, index = "hnsw", metric = "l2" }}
emb_cos = {{ type = "embedding", dim = 16, index = "hnsw", metric = "cosine" }}
emb_ip = {{ type = "embedding", dim = 16, index = "hnsw", metric = "ip" }}
arr_l2 = {{ type = "embedding", dim = 16, storage = "array", metric = "l2" }}
arr_cos = {{ type = "embedding", dim = 16, storage = "array", metric = "cosine" }}
arr_ip = {{ type = "embedding", dim = 16, storage = "array", metric = "ip" }}
category = {{ type = "string", max_length = 8, default = "none" }}
price = "real"
rank = {{ type = "integer", default = -1 }}
tags = "list<string>"

[tables.docs]
entity = "item"
[tables.docs.features]
vec = {{ type = "embedding", dim = 64, index = "hnsw", metric = "l2" }}

[tables.hashed]
entity = "doc"
[tables.hashed.features]
vec = {{ type = "embedding", dim = 4, index = "hnsw", metric = "l2" }}
"""

N_ITEMS = 600
N_DOCS = 3000
EXPIRED = 9001  # a row past the ttl whose embeddings equal QUERY: nearest of all, were it served
EMPTY = 9002  # a row without embeddings
ZERO = 9003  # a row whose embeddings are all zeros: no cosine neighbour
RNG = np.random.default_rng(22)
VECTORS = RNG.standard_normal((N_ITEMS, DIM)).astype(np.float32)
QUERIES = RNG.standard_normal((8, DIM)).astype(np.float32)
DOCS = RNG.standard_normal((N_DOCS, 64)).astype(np.float32)
DOC_QUERIES = RNG.standard_normal((40, 64)).astype(np.float32)


def _row(i: int) -> dict[str, Any]:
    v = VECTORS[i].tolist()
    row: dict[str, Any] = {name: v for pair in METRICS.values() for name in pair}
    row["category"] = CATEGORIES[i % 3] if i % 10 else None  # every 10th NULL: its default
    row["price"] = float(i) / 4
    row["rank"] = i if i % 7 else None
    row["tags"] = [CATEGORIES[i % 3]]
    return row


@pytest.fixture(scope="module")
def defs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    schema = f"test_nearest_{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("nearest") / "features.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    done = cli("init", "--dsn", dsn, "-d", str(path))
    assert done.returncode == 0, done.stderr
    registry = Registry.from_toml(path)
    stale = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).isoformat()
    with FeatureStore(registry, dsn) as store:
        store.update_features_batch("items", {i + 1: _row(i) for i in range(N_ITEMS)})
        expired = {name: QUERIES[0].tolist() for pair in METRICS.values() for name in pair}
        store.update_features(EXPIRED, "items", {**expired, "updated_at": stale})
        store.update_features(EMPTY, "items", {"price": 1.0})
        store.update_features(ZERO, "items", {name: [0.0] * DIM for pair in METRICS.values() for name in pair})
        store.update_features_batch("hashed", {f"item-{i}": {"vec": [float(i), 0.0, 0.0, 0.0]} for i in range(20)})
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} (item_id, vec) FROM STDIN").format(sql.Identifier(schema, "docs"))) as copy:
            for i, v in enumerate(DOCS):
                copy.write_row((i + 1, "[" + ",".join(map(repr, v.tolist())) + "]"))
        conn.commit()
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "items")))
        conn.commit()
    yield schema, path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def registry(defs: tuple[str, Path]) -> Registry:
    return Registry.from_toml(defs[1])


@pytest.fixture(scope="module")
def store(dsn: str, registry: Registry) -> Iterator[FeatureStore]:
    with FeatureStore(registry, dsn) as s:
        yield s


def _stored(dsn: str, schema: str, feature: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(keys, vectors) of the fresh rows with a ``feature``, read back by plain SQL, and the expired keys."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT item_id, {}::text, updated_at >= now() - interval '1 day' FROM {}").format(
                sql.Identifier(feature), sql.Identifier(schema, "items")
            )
        ).fetchall()
    fresh = [(k, v) for k, v, ok in rows if ok and v is not None]
    vectors = np.array([[float(x) for x in v.strip("[]{}").split(",")] for _, v in fresh], dtype=np.float64)
    return np.array([k for k, _ in fresh]), vectors, [k for k, _, ok in rows if not ok]


def brute_force(keys: np.ndarray, vectors: np.ndarray, query: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row's distance to ``query`` as pgvector defines it (ip: the negative inner product), rows
    without one (cosine of a zero vector) left out, sorted nearest first: (keys, distances)."""
    q = query.astype(np.float64)
    if metric == "l2":
        d = np.sqrt(((vectors - q) ** 2).sum(axis=1))
    elif metric == "ip":
        d = -(vectors @ q)
    else:
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(q)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = 1 - (vectors @ q) / norms
    keep = np.isfinite(d)
    keys, d = keys[keep], d[keep]
    order = np.lexsort((keys, d))
    return keys[order], d[order]


def assert_exact(found: Any, keys: np.ndarray, distances: np.ndarray, k: int) -> None:
    """``found`` is the k nearest of the brute force: the same distances in order, each key's own distance."""
    assert found.search == "exact" and found.ef_search is None
    assert len(found) == min(k, len(keys))
    np.testing.assert_allclose(found.distances, distances[:k], rtol=1e-5, atol=1e-5)
    by_key = dict(zip(keys.tolist(), distances.tolist()))
    for n in found:
        assert by_key[n.key] == pytest.approx(n.distance, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("source", ["vector", "array cast to vector", "array without pgvector"])
def test_exact_search_equals_brute_force(
    dsn: str, defs: tuple[str, Path], store: FeatureStore, metric: str, source: str
) -> None:
    emb, arr = METRICS[metric]
    feature = emb if source == "vector" else arr
    if source == "array without pgvector":  # the facts a server without pgvector reports: SQL arithmetic
        store.readers.vector_facts[("items", feature)] = VectorFacts("real[]", None, False)
    keys, vectors, _ = _stored(dsn, defs[0], feature)
    for query in QUERIES:
        expected_keys, distances = brute_force(keys, vectors, query, metric)
        found = store.nearest("items", feature, query, 10, exact=True)
        assert_exact(found, expected_keys, distances, 10)
        assert found.metric == metric
    if source == "array without pgvector":
        del store.readers.vector_facts[("items", feature)]


def test_an_expired_row_is_no_neighbour_and_get_features_says_expired(store: FeatureStore) -> None:
    query = QUERIES[0]
    for metric, (emb, arr) in METRICS.items():
        for feature, exact in ((emb, False), (emb, True), (arr, False)):
            found = store.nearest("items", feature, query, 5, exact=exact)
            assert EXPIRED not in found.keys, (feature, exact)
            assert EMPTY not in found.keys
            if metric == "cosine":
                assert ZERO not in store.nearest("items", feature, query, N_ITEMS, exact=True).keys
    assert store.get_features(EXPIRED, ["items"]).status["items"] == "expired"


def test_neighbours_features_equal_get_features(store: FeatureStore) -> None:
    names = ["category", "price", "rank", "tags", "updated_at"]
    for exact in (False, True):
        found = store.nearest("items", "emb_l2", QUERIES[1], 20, features=names, exact=exact)
        assert len(found) == 20
        assert any(
            n.features["category"] == "none" for n in store.nearest("items", "emb_l2", QUERIES[1], 200, features=names)
        )
        for n in found:
            assert n.features == store.get_features(n.key, ["items"], {"items": names})["items"]
    every = store.nearest("items", "emb_l2", QUERIES[1], 3, features="*")
    assert every[0].features == store.get_features(every[0].key, ["items"])["items"]
    assert store.nearest("items", "emb_l2", QUERIES[1], 3)[0].features == {}


def _recall(store: FeatureStore, ef_search: int | None, k: int = 10) -> float:
    hits = 0
    for q in DOC_QUERIES:
        truth = brute_force(np.arange(1, N_DOCS + 1), DOCS.astype(np.float64), q, "l2")[0][:k]
        found = store.nearest("docs", "vec", q, k, ef_search=ef_search)
        assert found.search == "hnsw" and len(found) == k
        assert found.ef_search == (ef_search or DEFAULT_EF_SEARCH)
        hits += len(set(found.keys) & set(truth.tolist()))
    return hits / (k * len(DOC_QUERIES))


def test_hnsw_recall_and_ef_search(store: FeatureStore) -> None:
    low, default, high = _recall(store, 10), _recall(store, None), _recall(store, 400)
    assert high >= 0.95
    assert low <= default <= high  # raising ef_search never lowers recall
    assert low < high  # ef_search reaches the index scan: at 10 candidates it misses neighbours that 400 finds
    exact = store.nearest("docs", "vec", DOC_QUERIES[0], 10, exact=True)
    truth = brute_force(np.arange(1, N_DOCS + 1), DOCS.astype(np.float64), DOC_QUERIES[0], "l2")
    assert_exact(exact, *truth, 10)


def test_where_filters_hnsw_and_exact_alike(dsn: str, defs: tuple[str, Path], store: FeatureStore) -> None:
    keys, vectors, _ = _stored(dsn, defs[0], "emb_l2")
    category = {i + 1: (CATEGORIES[i % 3] if i % 10 else None) for i in range(N_ITEMS)}
    category.update({ZERO: None, EMPTY: None, EXPIRED: None})  # rows written without a category
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"category": "a"}, lambda k: category.get(k) == "a"),
        ({"category": ["b", "c"]}, lambda k: category.get(k) in ("b", "c")),
        ({"category": None}, lambda k: k in category and category[k] is None),
        ({"category": "c", "price": 2.75}, lambda k: k == 12),
    ]
    for where, keep in cases:
        mask = np.array([keep(int(k)) for k in keys])
        expected = brute_force(keys[mask], vectors[mask], QUERIES[2], "l2")
        exact = store.nearest("items", "emb_l2", QUERIES[2], 10, where=where, exact=True)
        assert_exact(exact, *expected, 10)
        hnsw = store.nearest("items", "emb_l2", QUERIES[2], 10, where=where, ef_search=200)
        assert hnsw.search == "hnsw" and len(hnsw) == min(10, int(mask.sum()))  # iterative scan: k found
        assert all(keep(k) for k in hnsw.keys)


def test_async_store_answers_the_same(dsn: str, registry: Registry, store: FeatureStore) -> None:
    async def main() -> Any:
        async with AsyncFeatureStore(registry, dsn) as s:
            return await s.nearest("items", "emb_cos", QUERIES[3].tolist(), 7, features=["price"], ef_search=100)

    assert asyncio.run(main()) == store.nearest("items", "emb_cos", QUERIES[3], 7, features=["price"], ef_search=100)


def test_a_statement_is_compiled_once_per_shape(store: FeatureStore) -> None:
    first = store.nearest("items", "emb_ip", QUERIES[4], 5, where={"category": "a"})
    before = len(store.readers)
    again = store.nearest("items", "emb_ip", QUERIES[5], 8, where={"category": "b"}, ef_search=50)
    assert len(store.readers) == before and first.search == again.search == "hnsw"
    store.nearest("items", "emb_ip", QUERIES[5], 8, where={"category": ["b"]})
    assert len(store.readers) == before + 1  # another where-shape: another statement


def test_hashed_keys_come_back_as_the_stored_hash(store: FeatureStore) -> None:
    found = store.nearest("hashed", "vec", [3.2, 0.0, 0.0, 0.0], 2)
    assert [n.distance for n in found] == pytest.approx([0.2, 0.8])
    assert all(isinstance(k, bytes) and len(k) == 32 for k in found.keys)
    import hashlib

    assert found.keys[0] == hashlib.sha256(b"item-3").digest()


def test_errors_name_what_is_valid(dsn: str, registry: Registry, store: FeatureStore) -> None:
    q = QUERIES[0].tolist()
    with pytest.raises(UnknownTableError, match="valid tables: docs, hashed, items"):
        store.nearest("nope", "emb_l2", q)
    with pytest.raises(UnknownFeatureError, match="valid features: emb_l2"):
        store.nearest("items", "nope", q)
    with pytest.raises(NearestError, match=r"items.price is real, not an embedding.*emb_l2, emb_cos"):
        store.nearest("items", "price", q)
    for k in (0, 1001, "3", True):
        with pytest.raises(NearestError, match="k must be an integer from 1 to 1000"):
            store.nearest("items", "emb_l2", q, k)  # type: ignore[arg-type]
    with pytest.raises(NearestError, match="ef_search must be an integer from 10 to 1000"):
        store.nearest("items", "emb_l2", q, 10, ef_search=5)
    with pytest.raises(FeatureValueError, match="3 values where the embedding has dim 16"):
        store.nearest("items", "emb_l2", [1.0, 2.0, 3.0])
    with pytest.raises(FeatureValueError, match="must be finite"):
        store.nearest("items", "emb_l2", [float("nan")] + q[1:])
    with pytest.raises(FeatureValueError, match="all-zero vector"):
        store.nearest("items", "emb_cos", [0.0] * DIM)
    with pytest.raises(UnknownFeatureError, match="valid features"):
        store.nearest("items", "emb_l2", q, where={"colour": "red"})
    with pytest.raises(NearestError, match="cannot be filtered on"):
        store.nearest("items", "emb_l2", q, where={"tags": ["a"]})
    with pytest.raises(NearestError, match="empty list matches no row"):
        store.nearest("items", "emb_l2", q, where={"category": []})
    with pytest.raises(FeatureValueError, match="longer than max_length 8"):
        store.nearest("items", "emb_l2", q, where={"category": "x" * 9})
    with FeatureStore(registry, dsn, exact_limit=100) as small:
        with pytest.raises(ExactSearchRefusedError, match="more than 100 rows"):
            small.nearest("items", "arr_l2", q)
        assert small.nearest("items", "emb_l2", q).search == "hnsw"  # the index: no limit


def test_http_answers_as_the_library(dsn: str, defs: tuple[str, Path], store: FeatureStore) -> None:
    config = ServerConfig(dsn=dsn, definitions=str(defs[1]), prewarm=False, pool_size=2)
    query = QUERIES[6].tolist()
    with running_app(config) as client:
        url = "/v1/tables/items/nearest"
        body = {"feature": "emb_cos", "query": query, "k": 5, "features": ["price", "category", "emb_cos"]}
        answer = client.post(url, json={**body, "where": {"category": ["a", "b"]}, "ef_search": 64})
        assert answer.status_code == 200, answer.text
        got = answer.json()
        lib = store.nearest(
            "items",
            "emb_cos",
            query,
            5,
            features=["price", "category", "emb_cos"],
            where={"category": ["a", "b"]},
            ef_search=64,
        )
        assert {k: got[k] for k in ("table", "feature", "metric", "search", "ef_search")} == {
            "table": "items",
            "feature": "emb_cos",
            "metric": "cosine",
            "search": "hnsw",
            "ef_search": 64,
        }
        assert [n["key"] for n in got["neighbours"]] == lib.keys
        assert [n["distance"] for n in got["neighbours"]] == lib.distances
        for shown, n in zip(got["neighbours"], lib):
            assert shown["features"]["category"] == n.features["category"]
            assert np.float32(shown["features"]["price"]) == np.float32(n.features["price"])
            assert np.array_equal(np.float32(shown["features"]["emb_cos"]), np.float32(n.features["emb_cos"]))
        exact = client.post(url, json={"feature": "arr_l2", "query": query}).json()
        assert exact["search"] == "exact" and exact["ef_search"] is None and len(exact["neighbours"]) == 10
        assert all(n["features"] == {} for n in exact["neighbours"])
        hashed = client.post("/v1/tables/hashed/nearest", json={"feature": "vec", "query": [3, 0, 0, 0], "k": 1})
        assert hashed.json()["neighbours"][0]["key"] == __import__("hashlib").sha256(b"item-3").hexdigest()
        for request, status, kind, words in [
            ({"feature": "price", "query": query}, 400, "invalid_nearest", "not an embedding"),
            ({"feature": "emb_l2", "query": query[:3]}, 400, "invalid_value", "dim 16"),
            ({"feature": "emb_l2", "query": query, "k": 0}, 400, "invalid_nearest", "from 1 to 1000"),
            ({"feature": "emb_l2", "query": query, "k": "5"}, 400, "invalid_request", "k must be an integer"),
            ({"feature": "emb_l2"}, 400, "invalid_request", "missing field 'query'"),
            ({"feature": "emb_l2", "query": query, "colour": 1}, 400, "invalid_request", "unknown field"),
            ({"feature": "emb_l2", "query": query, "where": {"nope": 1}}, 400, "unknown_feature", "valid features"),
        ]:
            refused = client.post(url, json=request)
            assert refused.status_code == status, (request, refused.text)
            assert refused.json()["error"]["type"] == kind and words in refused.json()["error"]["message"]
        unknown = client.post("/v1/tables/nope/nearest", json={"feature": "x", "query": [1]})
        assert unknown.status_code == 400 and "valid tables: docs, hashed, items" in unknown.text
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/tables/items/nearest", "/v1/tables/docs/nearest"} <= set(paths)


def test_cli_prints_the_answer(dsn: str, defs: tuple[str, Path], store: FeatureStore, tmp_path: Path) -> None:
    query = QUERIES[7].tolist()
    file = tmp_path / "q.json"
    file.write_text(json.dumps(query))
    done = cli(
        "nearest", "--dsn", dsn, "-d", str(defs[1]), "items", "emb_ip", "--query", f"@{file}", "-k", "4",
        "-f", "category,price", "--where", "category=a", "--ef-search", "100",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    lib = store.nearest(
        "items", "emb_ip", query, 4, features=["category", "price"], where={"category": "a"}, ef_search=100
    )
    assert got["search"] == "hnsw" and got["ef_search"] == 100 and got["metric"] == "ip"
    assert [n["key"] for n in got["neighbours"]] == lib.keys
    assert [n["distance"] for n in got["neighbours"]] == lib.distances
    assert [n["features"]["price"] for n in got["neighbours"]] == [float(np.float32(n.features["price"])) for n in lib]
    exact = cli(
        "nearest", "--dsn", dsn, "-d", str(defs[1]), "items", "arr_l2", "-q", json.dumps(query), "--exact-limit", "50"
    )
    assert exact.returncode == 2 and "more than 50 rows" in exact.stderr and "Traceback" not in exact.stderr
    wrong = cli("nearest", "--dsn", dsn, "-d", str(defs[1]), "items", "category", "-q", json.dumps(query))
    assert wrong.returncode == 2 and "items.category is string, not an embedding" in wrong.stderr
    short = cli("nearest", "--dsn", dsn, "-d", str(defs[1]), "items", "emb_l2", "-q", "[1, 2]")
    assert short.returncode == 2 and "2 values where the embedding has dim 16" in short.stderr
