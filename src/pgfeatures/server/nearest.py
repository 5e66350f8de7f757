"""``POST /v1/tables/{table}/nearest``: the nearest neighbours of a query vector, as JSON.

Body::

    {"feature": "embedding", "query": [0.1, ...], "k"?: 10, "features"?: ["name", ...] | "*",
     "where"?: {"feature": value | [values] | null}, "ef_search"?: n, "exact"?: false}

Answer: ``reader.answer.nearest_answer`` (``{"table", "feature", "metric", "search", "ef_search",
"neighbours": [{"key", "distance", "features"}]}``), ``real`` values printed as float32 as every answer
prints them (``encoding.Float32Plan``). The body is checked before any I/O (fields and their JSON types
here, then the store's own rules: ``reader.nearest.check_request``); the search runs under the
service's deadline like any read.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..reader import FeatureResult, Selection
from ..reader.answer import nearest_answer
from ..reader.nearest import ALL, check_request
from .encoding import Float32Plan, dumps
from .errors import JSON, RequestError
from .parsing import check_fields, json_type, parse_json
from .service import Service

NEAREST_FIELDS = ("feature", "query", "k", "features", "where", "ef_search", "exact")
PATH = "/v1/tables/{table}/nearest"


def parse_nearest(body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields as ``store.nearest``'s arguments, their JSON types checked. Raises RequestError."""
    check_fields(body, NEAREST_FIELDS, "query")
    if "feature" not in body:
        raise RequestError("invalid_request", f"missing field 'feature'; valid fields: {', '.join(NEAREST_FIELDS)}")
    feature, query = body["feature"], body["query"]
    if not isinstance(feature, str):
        raise RequestError("invalid_request", f"feature must be a string, got {json_type(feature)}")
    if not isinstance(query, list):
        raise RequestError("invalid_request", f"query must be an array of numbers, got {json_type(query)}")
    k = body.get("k", 10)
    ef_search = body.get("ef_search")
    for name, value in (("k", k), ("ef_search", ef_search)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RequestError("invalid_request", f"{name} must be an integer, got {json_type(value)}")
    features = body.get("features")
    if features is not None and features != ALL:
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise RequestError("invalid_request", 'features must be an array of feature names, or "*" for all')
    where = body.get("where")
    if where is not None and not isinstance(where, dict):
        raise RequestError("invalid_request", f"where must be an object of feature: value, got {json_type(where)}")
    exact = body.get("exact", False)
    if not isinstance(exact, bool):
        raise RequestError("invalid_request", f"exact must be true or false, got {json_type(exact)}")
    return {
        "feature": feature,
        "query": query,
        "k": k,
        "features": features,
        "where": where,
        "ef_search": ef_search,
        "exact": exact,
    }


def nearest_route(service: Service, read_body: Callable[[Request, int], Awaitable[bytes]]) -> Route:
    """The route, reading bodies with ``read_body`` (the app's, bounded by ``max_body_bytes``)."""
    limit = service.config.max_body_bytes

    async def nearest(request: Request) -> Response:
        raw = await read_body(request, limit)
        table = request.path_params["table"]
        registry = service.registry
        registry.table(table)  # UnknownTableError names the valid tables
        args = parse_nearest(parse_json(raw))
        feature = args.pop("feature")
        checked = check_request(registry, table, feature, **args)  # every rule, before any I/O
        service._check_ready()
        store = service.store
        found = await service._db("single", functools.partial(store.nearest, table, feature, **args))
        shown = [FeatureResult({table: dict(n.features)}) for n in found]
        Float32Plan(Selection(registry.schema, ((checked.table, checked.features),))).apply(shown)
        return Response(dumps(nearest_answer(found, [s[table] for s in shown])), media_type=JSON)

    return Route(PATH, nearest, methods=["POST"])
