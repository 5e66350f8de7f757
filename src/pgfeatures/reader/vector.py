"""A service's features as one flat vector in the service's order, with the status per table (pure).

A model wants ``[f1, f2, ..., f240]`` in a fixed order, not 30 dicts. (An event time in a vector is an
aware datetime in a list, epoch seconds in a numpy array or raw numbers.) The order is the service's
(its features as listed, ``table.*`` expanded, see ``FeatureService.order``), restricted to a
subset when one is asked for. A feature whose table is missing or expired, or whose value is NULL,
takes its default, else None (NaN in a numpy array).

The vector decoders read the same rows as the dict decoders (same statement, same prepared
statement). A materialized service's vector decoder is compiled from its serving rows' layout
(``materialized._Plan.vector``): values picked by precomputed slots, never through per-table dicts;
a whole one-entity service stored in its order is one slice of the serving row's array.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..definitions import EVENT_TIME, to_micros
from ..errors import VectorOutputError
from .compile import BatchReader, Reader
from .decode import FeatureResult, Row

ServiceOrder = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceVector:
    """One request's features in the service's order (``names``), and each table's status."""

    values: Any  # list, or a numpy array (output="numpy")
    status: dict[str, str]
    names: ServiceOrder
    # Values a service's transforms read that the vector does not hold as they are (an embedding, which the
    # vector flattens; a string or a list a transform maps to numbers, which the vector leaves out).
    kept: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ServiceVectors:
    """A batch's features as a 2-D numpy array (a row per request, a column per ``names``), with
    each request's status per table."""

    values: Any
    status: list[dict[str, str]]
    names: ServiceOrder


def _features_in(reader: Reader[Any] | BatchReader[Any], order: Sequence[str]) -> ServiceOrder:
    """``order`` (the service's ``table.feature`` list) restricted to what ``reader`` reads."""
    asked = {f"{t.name}.{f.name}" for t, fs in reader.selection.items for f in fs}
    return tuple(name for name in order if name in asked)


def service_order(reader: Reader[Any] | BatchReader[Any], order: Sequence[str]) -> ServiceOrder:
    """The names of a vector's values: ``order`` restricted to what ``reader`` reads, each embedding
    flattened into its elements (``table.feature[0]``, ...). Raises VectorOutputError when a feature
    is a string or a list: a vector holds numbers (see ``vector_layout``)."""
    return vector_layout(reader, order)[1]


def vector_layout(
    reader: Reader[Any] | BatchReader[Any], order: Sequence[str]
) -> tuple[ServiceOrder, ServiceOrder, Callable[[list[Any]], list[Any]] | None]:
    """(the features read, in the vector's order; the vector's names; what flattens the embeddings of a
    list of the features' values into the vector, None when there is none). Raises VectorOutputError
    naming every feature that is a string or a list (a vector holds numbers; a request-time transform can
    map them to numbers)."""
    features = _features_in(reader, order)
    kinds = {f"{t.name}.{f.name}": f.type for t, fs in reader.selection.items for f in fs}
    wrong = [f"{n} ({kinds[n].spec})" for n in features if kinds[n].kind in ("string", "list")]
    if wrong:
        raise VectorOutputError(
            f"service {reader.selection.service!r} cannot be read as a vector: {', '.join(wrong)} "
            f"{'is not a number' if len(wrong) == 1 else 'are not numbers'}; read it as a dict (output='dict'), "
            "list only its numeric features, or add a request-time transform that maps them to numbers"
        )
    dims = [kinds[n].dim if kinds[n].kind == "embedding" else 0 for n in features]
    if not any(dims):
        return features, features, None
    names = tuple(
        name for n, dim in zip(features, dims) for name in ([f"{n}[{i}]" for i in range(dim)] if dim else [n])
    )
    spans = tuple(dims)

    def flatten(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for dim, v in zip(spans, values):
            if not dim:
                out.append(v)
            elif v is None:
                out.extend([None] * dim)
            else:
                out.extend(v)
        return out

    return features, names, flatten


def vector_of(result: FeatureResult, names: ServiceOrder) -> list[Any]:
    """The flat vector of a decoded result (the general path: any strategy, any layout)."""
    return _picker(names)(result)


def _picker(names: ServiceOrder) -> Callable[[FeatureResult], list[Any]]:
    """``vector_of`` for ``names``, compiled once: the names split into (table, feature) before any request."""
    pairs = tuple((table, feature) for table, _, feature in (name.partition(".") for name in names))

    def pick(result: FeatureResult) -> list[Any]:
        return [None if (values := result[table]) is None else values.get(feature) for table, feature in pairs]

    return pick


def _kept(reader: Reader[Any] | BatchReader[Any], keep: Collection[str]) -> ServiceOrder:
    """The names of ``keep`` (``table.feature``) that ``reader`` reads."""
    read = {f"{t.name}.{f.name}" for t, fs in reader.selection.items for f in fs}
    return tuple(n for n in keep if n in read)


def vector_reader(
    reader: Reader[FeatureResult], order: Sequence[str], keep: Collection[str] = ()
) -> Reader[ServiceVector]:
    """``reader`` with a decoder returning a ServiceVector (same statements): straight from the row when
    the reader compiled a vector decoder (a materialized service's serving rows), else from the result.
    ``keep``: features whose values the vector carries beside it as they are (``ServiceVector.kept``)."""
    features, names, flatten = vector_layout(reader, order)
    kept = _kept(reader, keep)
    if kept:  # the vector and the kept values, from the decoded result
        decode_result = reader.decode
        pick_all = _picker(features)
        pick_kept = _picker(kept)
        spread = flatten or list

        def decode(row: Any) -> ServiceVector:
            result = decode_result(row)
            return ServiceVector(spread(pick_all(result)), result.status, names, dict(zip(kept, pick_kept(result))))
    elif flatten is not None:  # embeddings: the vector of the features, flattened
        decode_dict = reader.decode
        pick = _picker(features)

        def decode(row: Any) -> ServiceVector:
            result = decode_dict(row)
            return ServiceVector(flatten(pick(result)), result.status, names)
    elif reader.vector_rows is not None:
        rows = reader.vector_rows(names)

        def decode(row: Any) -> ServiceVector:
            values, status = rows(row)
            return ServiceVector(values, status, names)
    else:
        decode_dict = reader.decode
        pick = _picker(names)

        def decode(row: Any) -> ServiceVector:
            result = decode_dict(row)
            return ServiceVector(pick(result), result.status, names)

    return reader.decoding(decode)


def vector_batch_reader(
    reader: BatchReader[FeatureResult], order: Sequence[str], keep: Collection[str] = ()
) -> BatchReader[ServiceVector]:
    """``reader`` (a batch) with a decoder returning one ServiceVector per row (``keep``: as ``vector_reader``)."""
    features, names, flatten = vector_layout(reader, order)
    kept = _kept(reader, keep)
    if kept:
        decode_results = reader.decode
        pick_all_rows = _picker(features)
        pick_kept_rows = _picker(kept)
        spread_rows = flatten or list

        def decode(batch: Sequence[Row]) -> list[ServiceVector]:
            return [
                ServiceVector(spread_rows(pick_all_rows(r)), r.status, names, dict(zip(kept, pick_kept_rows(r))))
                for r in decode_results(batch)
            ]
    elif flatten is not None:
        decode_many = reader.decode
        pick_features = _picker(features)

        def decode(batch: Sequence[Row]) -> list[ServiceVector]:
            return [ServiceVector(flatten(pick_features(r)), r.status, names) for r in decode_many(batch)]
    elif reader.vector_rows is not None:
        rows = reader.vector_rows(names)

        def decode(batch: Sequence[Row]) -> list[ServiceVector]:
            out = []
            for row in batch:
                values, status = rows(row)
                out.append(ServiceVector(values, status, names))
            return out
    else:
        decode_rows = reader.decode
        pick = _picker(names)

        def decode(batch: Sequence[Row]) -> list[ServiceVector]:
            return [ServiceVector(pick(r), r.status, names) for r in decode_rows(batch)]

    return reader.decoding(decode)


Output = Literal["dict", "list", "numpy"]
"""What ``get_service`` returns: a FeatureResult (``dict``), a ServiceVector of a list or of a numpy array."""
OUTPUTS: tuple[Output, ...] = ("dict", "list", "numpy")


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        from ..errors import DefinitionError

        raise DefinitionError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")


def value_types(names: ServiceOrder, registry: Any, outputs: Mapping[str, str] | None = None) -> list[str]:
    """The type name of each value of a vector named ``names``: a stored feature's (an embedding's elements
    are ``real``), or (``outputs``) a transform output's."""
    out = []
    for name in names:
        if outputs and name in outputs:
            out.append(outputs[name])
            continue
        table, _, feature = name.partition(".")
        out.append("real" if feature.endswith("]") else registry.tables[table].feature(feature).type.name)
    return out


def _dtype(names: ServiceOrder, registry: Any, outputs: Mapping[str, str] | None = None) -> Any:
    import numpy as np

    return np.float32 if set(value_types(names, registry, outputs)) <= {"real"} else np.float64


def event_time_positions(
    names: ServiceOrder, registry: Any, outputs: Mapping[str, str] | None = None
) -> tuple[int, ...]:
    """Where a vector holds event times (``updated_at``): as numbers they are epoch seconds. ``outputs``:
    the type names of transform outputs among ``names``."""
    return tuple(i for i, t in enumerate(value_types(names, registry, outputs)) if t == EVENT_TIME.name)


def as_numbers(values: Sequence[Any], positions: tuple[int, ...]) -> Sequence[Any]:
    """``values`` with the event times at ``positions`` as epoch seconds (float), for numeric vectors."""
    if not positions:
        return values
    out = list(values)
    for i in positions:
        if out[i] is not None:
            out[i] = to_micros(out[i]) / 1e6
    return out


def _numpy() -> Any:
    try:
        import numpy as np
    except ImportError:
        from ..errors import ExtraNotInstalledError

        raise ExtraNotInstalledError(
            "output='numpy' needs numpy, which the load extra brings: "
            "pip install 'pgfeatures[load]' (or pip install numpy)"
        ) from None
    return np


def as_numpy(vector: ServiceVector, registry: Any, outputs: Mapping[str, str] | None = None) -> ServiceVector:
    """The vector as a 1-D numpy array (None -> NaN). ``outputs``: type names of transform outputs in it."""
    np = _numpy()
    values = as_numbers(vector.values, event_time_positions(vector.names, registry, outputs))
    return ServiceVector(np.array(values, dtype=_dtype(vector.names, registry, outputs)), vector.status, vector.names)


def stack_numpy(
    vectors: list[ServiceVector], registry: Any, outputs: Mapping[str, str] | None = None
) -> ServiceVectors:
    """A batch's vectors as one 2-D numpy array (``outputs``: as ``as_numpy``)."""
    np = _numpy()
    if not vectors:
        return ServiceVectors(np.zeros((0, 0), dtype=np.float64), [], ())
    names = vectors[0].names
    times = event_time_positions(names, registry, outputs)
    values = np.array([as_numbers(v.values, times) for v in vectors], dtype=_dtype(names, registry, outputs))
    return ServiceVectors(values, [v.status for v in vectors], names)
