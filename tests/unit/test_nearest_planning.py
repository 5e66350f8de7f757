"""The nearest-neighbour compiler without a database: requests checked, statements built from identifiers
and parameters only (never a user value in the text), one statement per shape, the search chosen from
what the database has."""

from __future__ import annotations

import pytest

from pgfeatures.definitions import Registry
from pgfeatures.errors import FeatureValueError, NearestError
from pgfeatures.reader import ReaderCache
from pgfeatures.reader.nearest import DEFAULT_EF_SEARCH, EXACT, HNSW, VectorFacts, check_request, compile_nearest

REGISTRY = Registry.from_dict(
    {
        "schema": "s",
        "tables": {
            "items": {
                "ttl": "1h",
                "features": {
                    "emb": {"type": "embedding", "dim": 3, "index": "hnsw", "metric": "cosine"},
                    "half": {"type": "embedding", "dim": 3, "storage": "halfvec", "index": "hnsw", "metric": "ip"},
                    "plain": {"type": "embedding", "dim": 3},
                    "label": {"type": "string", "max_length": 16},
                    "price": "real",
                },
            }
        },
    }
)
INDEXED = VectorFacts("vector(3)", "0.8.6", True)


def test_hnsw_sets_ef_search_and_iterative_scan_in_the_statement() -> None:
    request = check_request(REGISTRY, "items", "emb", [1, 2, 3], 5, where={"label": "x'; DROP"}, ef_search=50)
    reader = compile_nearest("s", request, INDEXED)
    text = reader.statement.decode()
    assert reader.search == HNSW and "<=>" in text and "DROP" not in text
    assert "set_config('hnsw.ef_search'" in text and "set_config('hnsw.iterative_scan', 'strict_order', true)" in text
    assert '"t"."label" = $4::text' in text and "'3600 seconds'::interval" in text
    assert reader.params(request) == ([1.0, 2.0, 3.0], 5, 50, "x'; DROP")
    old = compile_nearest("s", request, VectorFacts("vector(3)", "0.7.4", True)).statement.decode()
    assert "iterative_scan" not in old  # pgvector before 0.8 has no such setting


def test_the_search_follows_what_the_database_has() -> None:
    request = check_request(REGISTRY, "items", "emb", [1, 2, 3])
    assert compile_nearest("s", request, VectorFacts("vector(3)", "0.8.6", False)).search == EXACT  # no index
    assert compile_nearest("s", request, VectorFacts("real[]", None, False)).search == EXACT
    exact = check_request(REGISTRY, "items", "emb", [1, 2, 3], exact=True)
    assert compile_nearest("s", exact, INDEXED).search == EXACT
    plain = check_request(REGISTRY, "items", "plain", [1, 2, 3])
    assert compile_nearest("s", plain, INDEXED).search == EXACT  # no index declared
    text = compile_nearest("s", plain, VectorFacts("real[]", None, False), 77).statement.decode()
    assert "unnest" in text and "<->" not in text and "LIMIT $3::int8 + 1" in text
    half = check_request(REGISTRY, "items", "half", [1, 2, 3])
    assert (
        "<#> $1::float4[]::halfvec(3)"
        in compile_nearest("s", half, VectorFacts("halfvec(3)", "0.8.6", True)).statement.decode()
    )


def test_one_statement_per_shape() -> None:
    cache = ReaderCache(REGISTRY)
    a = check_request(REGISTRY, "items", "emb", [1, 2, 3], 5, where={"label": "a"}, ef_search=40)
    b = check_request(REGISTRY, "items", "emb", [3, 2, 1], 9, where={"label": "b"})
    c = check_request(REGISTRY, "items", "emb", [3, 2, 1], 9, where={"label": ["b"]})
    assert cache.nearest_reader(a, INDEXED, 10) is cache.nearest_reader(b, INDEXED, 10)
    assert cache.nearest_reader(c, INDEXED, 10) is not cache.nearest_reader(a, INDEXED, 10)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (
            {"feature": "price"},
            NearestError,
            "items.price is real, not an embedding.*(embeddings of items: emb, half, plain)",
        ),
        ({"k": 0}, NearestError, "k must be an integer from 1 to 1000"),
        ({"k": 5, "ef_search": 4}, NearestError, "ef_search must be an integer from 5 to 1000"),
        ({"query": [1, 2]}, FeatureValueError, "2 values where the embedding has dim 3"),
        ({"query": [1, float("inf"), 2]}, FeatureValueError, "must be finite"),
        ({"query": [0, 0, 0]}, FeatureValueError, "all-zero vector"),
        ({"query": None}, FeatureValueError, "query vector is required"),
        ({"where": {"emb": [1, 2, 3]}}, NearestError, "cannot be filtered on"),
        ({"where": {"updated_at": "2026-01-01T00:00:00Z"}}, NearestError, "cannot be filtered on"),
        ({"where": {"price": float("nan")}}, FeatureValueError, "NaN"),
        ({"where": {"price": [1.0, None]}}, NearestError, "may not hold null"),
        ({"where": "price = 1"}, NearestError, "must be a mapping"),
    ],
)
def test_bad_requests_say_what_is_valid(kwargs: dict, error: type[Exception], words: str) -> None:
    args = {"feature": "emb", "query": [1, 2, 3], **kwargs}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_request(REGISTRY, "items", args.pop("feature"), args.pop("query"), **args)


def test_a_declared_ef_search_is_the_default_of_a_search_at_least_k() -> None:
    registry = Registry.from_dict(
        {"tables": {"t": {"features": {"e": {"type": "embedding", "dim": 2, "index": "hnsw", "ef_search": 120}}}}}
    )
    assert registry.table("t").feature("e").type.ef_search == 120
    assert check_request(registry, "t", "e", [1, 0], 10).ef_search == 120
    assert check_request(registry, "t", "e", [1, 0], 200).ef_search == 200  # at least k
    assert check_request(registry, "t", "e", [1, 0], 10, ef_search=40).ef_search == 40  # the request's own wins
    assert check_request(REGISTRY, "items", "emb", [1, 2, 3], 5).ef_search == DEFAULT_EF_SEARCH == 300  # none declared
    with pytest.raises(Exception, match="declare index"):
        Registry.from_dict({"tables": {"t": {"features": {"e": {"type": "embedding", "dim": 2, "ef_search": 99}}}}})
