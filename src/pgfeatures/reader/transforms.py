"""A feature service's request-time transforms, compiled once and run on what a read returned (pure).

``compile_transforms(registry)`` resolves every transform's function (``module:function``, as
``--credentials`` is resolved), its inputs' places, its outputs' checks and the context's checks, once,
when a store opens (or reloads): a request only validates its context, calls the functions and checks
what they return. No I/O: the store runs them after the read, with the connection back in its pool, so
a transform never runs inside a database transaction.

The calling protocol (docs/transforms.md):

- one request (``batch = false``, the default): ``function(context, features)`` with ``context``
  ``{name: value}`` (validated against the service's ``context`` types) and ``features``
  ``{"table.feature": value}`` holding the transform's inputs as the service answers them: a feature
  whose row is missing or expired, or whose value is NULL, is its default, else None. A function
  with a third positional parameter also gets ``status``: ``{table: "present" | "missing" |
  "expired"}``. It returns ``{output: value}`` with every declared output, each of its declared type
  (None: no value). In a batch it is called once per row.
- columns (``batch = true``): the same call with every value a list, one item per row
  (``{"amount": [12.5, 3.0]}``; ``status``: ``{table: [status, ...]}``), called once per batch (a
  single request is a batch of one); it returns ``{output: sequence}`` of the batch's length (a list,
  a tuple, a numpy array).

Failures are TransformError naming the service, the transform and (for a value) the output, with the
inputs that made it fail; a bad context is a ContextError naming the value, raised before any I/O.
"""

from __future__ import annotations

import inspect
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..definitions import FeatureType, Registry, check_value
from ..definitions.callables import import_callable
from ..definitions.services import FeatureService
from ..definitions.transforms import Transform, function_name
from ..errors import ContextError, DefinitionError, FeatureValueError, TransformError
from .vector import ServiceVector

Observe = Callable[[str, str, float], None]
"""Told ``(service, transform, seconds)`` after each call of a transform (the server's metrics)."""

_F32 = struct.Struct("<f")
_SHOWN = 200  # characters of a transform's inputs an error message quotes


def _checker(where: str, kind: FeatureType, nan: str, null: bool = True) -> Callable[[Any], Any]:
    """A value of ``kind`` checked and normalised (``check_value``), with the common case decided by
    one type test: the check runs on every request. ``null``: None is a value (no value), else refused."""
    name = kind.name

    def slow(v: Any) -> Any:
        if v is None and not null:
            raise FeatureValueError(f"{where} is null: send a value")
        v = check_value(where, kind, v, nan=nan, inf="keep")
        return v if v is None or name != "real" else _F32.unpack(_F32.pack(v))[0]  # a real holds float32 values

    if name == "double precision":
        return lambda v: v if type(v) is float and v == v else slow(v)
    if name == "boolean":
        return lambda v: v if type(v) is bool else slow(v)
    return slow


def _takes_status(function: Callable[..., Any]) -> bool:
    """Whether ``function`` takes a third positional argument (``status``)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _names(value: Any) -> str:
    """The names of a context's or the features' values (a row's keys, or a batch's columns)."""
    return ", ".join(map(str, value)) if isinstance(value, Mapping) else "?"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class CompiledTransform:
    """One transform, resolved: its function, inputs as (name, table, feature), outputs and their checks."""

    __slots__ = ("service", "name", "spec", "function", "inputs", "tables", "outputs", "checks", "status", "batch")

    def __init__(self, service: FeatureService, registry: Registry, transform: Transform):
        self.service = service.name
        self.name = transform.name
        self.spec = function_name(transform.function)
        what = f"service {service.name!r}: transform {transform.name!r}: function"
        function = transform.function
        if isinstance(function, str):
            function = import_callable(function, what, DefinitionError)
        elif not callable(function):
            raise DefinitionError(f"{what} {function!r} is not callable")
        self.function: Callable[..., Any] = function
        names = service.transform_inputs(registry, transform)
        self.inputs = tuple((n, *n.split(".", 1)) for n in names)
        self.tables = tuple(dict.fromkeys(t for _, t, _ in self.inputs))
        self.outputs = tuple(o for o, _ in transform.outputs)
        self.checks = tuple(
            _checker(f"transform {self.name!r} output {o!r}", kind, "null") for o, kind in transform.outputs
        )
        self.status = _takes_status(function)
        self.batch = transform.batch

    def _fail(
        self, why: str, context: Any, features: Any, output: str | None = None, public_why: str | None = None
    ) -> TransformError:
        head = f"transform {self.name!r} ({self.spec}) of service {self.service!r}"
        names = f"inputs: context {_names(context)}, features {_names(features)}"
        return TransformError(
            f"{head} {why}; inputs: context {_shown(context)}, features {_shown(features)}",
            service=self.service,
            transform=self.name,
            output=output,
            public=f"{head} {public_why or why}; {names} (their values and the traceback: the server log)",
        )

    def _call(self, context: Any, features: Any, status: Any) -> Any:
        try:
            if self.status:
                out = self.function(context, features, status)
            else:
                out = self.function(context, features)
        except Exception as exc:
            raise self._fail(
                f"raised {type(exc).__name__}: {exc}", context, features, public_why=f"raised {type(exc).__name__}"
            ) from exc
        if not isinstance(out, Mapping):
            raise self._fail(
                f"returned {type(out).__name__}, not a mapping of its outputs ({', '.join(self.outputs)})",
                context,
                features,
            )
        if len(out) != len(self.outputs) or any(o not in out for o in self.outputs):
            missed = [o for o in self.outputs if o not in out]
            extra = sorted(str(k) for k in out if k not in self.outputs)
            why = "; ".join(
                ([f"missed output(s) {', '.join(missed)}"] if missed else [])
                + ([f"returned undeclared output(s) {', '.join(extra)}"] if extra else [])
            )
            raise self._fail(
                f"{why} (declared: {', '.join(self.outputs)})", context, features, missed[0] if missed else extra[0]
            )
        return out

    def row(self, context: Mapping[str, Any], features: dict[str, Any], status: Mapping[str, str]) -> list[Any]:
        """One request's outputs, in declared order, checked."""
        out = self._call(context, features, status)
        values = []
        for name, check in zip(self.outputs, self.checks):
            try:
                values.append(check(out[name]))
            except FeatureValueError as exc:
                raise self._fail(f"returned a wrong value: {exc}", context, features, name) from None
        return values

    def columns(self, context: Mapping[str, Any], features: dict[str, Any], status: Any, n: int) -> list[list[Any]]:
        """A batch's outputs (a list per output, ``n`` items each), from one call on columns."""
        out = self._call(context, features, status)
        columns = []
        for name, check in zip(self.outputs, self.checks):
            column = out[name]
            if hasattr(column, "tolist"):  # a numpy array: Python values, so the checks see ints and floats
                column = column.tolist()
            if isinstance(column, (str, bytes, Mapping)) or not isinstance(column, Sequence) or len(column) != n:
                size = f"of length {len(column)}" if isinstance(column, Sequence) else type(column).__name__
                raise self._fail(
                    f"returned {size} for output {name!r}: a batch transform returns a sequence of {n} "
                    "(one value per row)",
                    context,
                    features,
                    name,
                )
            try:
                columns.append([check(v) for v in column])
            except FeatureValueError as exc:
                raise self._fail(f"returned a wrong value: {exc}", context, features, name) from None
        return columns


class ServiceTransforms:
    """A service's context checks and its transforms, compiled; ``apply`` runs them on read results.

    ``names`` and ``types``: the outputs as the service names them (``transform.output``) and their
    type names, in vector order; ``offload``: some transform asked to run on a worker thread.
    """

    __slots__ = (
        "service",
        "context_names",
        "context_checks",
        "transforms",
        "names",
        "types",
        "offload",
        "_places",
        "_pairs",
        "_keys",
    )

    def __init__(self, service: FeatureService, registry: Registry):
        self.service = service.name
        self.context_names = tuple(n for n, _ in service.context)
        self.context_checks = tuple(
            _checker(f"context {n!r}", kind, "reject", null=False) for n, kind in service.context
        )
        self.transforms = tuple(CompiledTransform(service, registry, t) for t in service.transforms)
        self.names = service.output_names()
        self.types = {n: kind.name for t in service.transforms for n, (_, kind) in zip(t.output_names, t.outputs)}
        self.offload = any(t.offload for t in service.transforms)
        self._places: dict[tuple[str, ...], tuple[tuple[tuple[str, int], ...], ...]] = {}
        self._pairs = tuple(zip(self.context_names, self.context_checks))
        self._keys = frozenset(self.context_names)

    # -- context ----------------------------------------------------------------------------------

    def _valid(self) -> str:
        return ", ".join(self.context_names) or "none: the service declares no context"

    def context(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """One request's context, checked: every declared name, each of its type. Raises ContextError
        naming the value (an unknown name lists the valid ones)."""
        if type(values) is dict and values.keys() == self._keys:  # the common case, checked in one pass
            try:
                return {name: check(values[name]) for name, check in self._pairs}
            except FeatureValueError:
                pass  # said again below, naming the value
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ContextError(
                f"service {self.service!r}: context must be an object of name: value, got {type(values).__name__}"
            )
        if len(values) != len(self.context_names) or any(n not in values for n in self.context_names):
            self._unknown_or_missing(values)
        out = {}
        for name, check in zip(self.context_names, self.context_checks):
            out[name] = self._check(check, name, values[name])
        return out

    def contexts(self, values: Any, n: int) -> dict[str, list[Any]]:
        """A batch's context as columns (``{name: [value per row]}``), checked: given as one mapping per
        row, or as columns of ``n`` values each. Raises ContextError naming the value and the row."""
        if values is None or (isinstance(values, Mapping) and not values):
            self.context(values)  # refused unless the service takes no context
            return {}
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in self.context_names]
            if unknown or len(values) != len(self.context_names):
                self._unknown_or_missing(values)
            out = {}
            for name, check in zip(self.context_names, self.context_checks):
                column = values[name]
                if hasattr(column, "tolist"):
                    column = column.tolist()
                if isinstance(column, (str, bytes, Mapping)) or not isinstance(column, Sequence):
                    raise ContextError(
                        f"service {self.service!r}: context {name!r} of a batch must be a list of {n} values "
                        f"(one per key), got {type(column).__name__}"
                    )
                if len(column) != n:
                    raise ContextError(
                        f"service {self.service!r}: context {name!r} has {len(column)} values for {n} keys"
                    )
                out[name] = [self._check(check, name, v, i) for i, v in enumerate(column)]
            return out
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ContextError(
                f"service {self.service!r}: a batch's context is a list of objects (one per key) or an object "
                f"of columns, got {type(values).__name__}"
            )
        if len(values) != n:
            raise ContextError(f"service {self.service!r}: {len(values)} contexts for {n} keys (one per key)")
        rows = []
        for i, row in enumerate(values):
            try:
                rows.append(self.context(row))
            except ContextError as exc:
                raise ContextError(f"context[{i}]: {exc}" if n > 1 else str(exc)) from None  # one: no index
        return {name: [r[name] for r in rows] for name in self.context_names}

    def _check(self, check: Callable[[Any], Any], name: str, value: Any, row: int | None = None) -> Any:
        where = "" if row is None else f"[{row}]"
        try:
            return check(value)
        except FeatureValueError as exc:
            raise ContextError(f"service {self.service!r}: {exc}{' (row ' + str(row) + ')' if where else ''}") from None

    def _unknown_or_missing(self, values: Mapping[str, Any]) -> None:
        unknown = sorted(str(k) for k in values if k not in self.context_names)
        if unknown:
            raise ContextError(
                f"service {self.service!r}: unknown context value(s) {', '.join(unknown)}; valid: {self._valid()}"
            )
        missing = [n for n in self.context_names if n not in values]
        raise ContextError(
            f"service {self.service!r}: missing context value(s) {', '.join(missing)}; valid: {self._valid()}"
        )

    # -- running ----------------------------------------------------------------------------------

    def apply(self, result: Any, context: Mapping[str, Any], observe: Observe | None = None) -> Any:
        """One request's result (a FeatureResult, or a ServiceVector) with the transforms' outputs added:
        ``result[transform] = {output: value}`` (the same object, its ``status`` unchanged: it covers the
        stored tables), or a new ServiceVector with the outputs after the stored values. ``context``:
        checked by ``context``. Raises TransformError."""
        if isinstance(result, ServiceVector):
            return self._vectors([result], {k: [v] for k, v in context.items()}, observe)[0]
        status = result.status  # settled before the outputs join the tables (a lazy status reads the tables)
        for t in self.transforms:
            features = {n: None if (v := result[tb]) is None else v.get(f) for n, tb, f in t.inputs}
            start = time.perf_counter()
            if t.batch:
                cols = t.columns(
                    {k: [v] for k, v in context.items()},
                    {k: [v] for k, v in features.items()},
                    {tb: [status[tb]] for tb in t.tables} if t.status else None,
                    1,
                )
                values = [c[0] for c in cols]
            else:
                values = t.row(context, features, status)
            if observe is not None:
                observe(self.service, t.name, time.perf_counter() - start)
            result[t.name] = dict(zip(t.outputs, values))
        return result

    def apply_batch(
        self, results: list[Any], columns: Mapping[str, list[Any]], observe: Observe | None = None
    ) -> list[Any]:
        """``apply`` for a batch's results (FeatureResults or ServiceVectors), with the context as columns
        (``contexts``): a ``batch`` transform is called once for all of them, another once per row."""
        if not results:
            return results
        if isinstance(results[0], ServiceVector):
            return self._vectors(results, columns, observe)
        n = len(results)
        statuses = [r.status for r in results]
        for t in self.transforms:
            rows = [{name: None if (v := r[tb]) is None else v.get(f) for name, tb, f in t.inputs} for r in results]
            outputs = self._run(t, rows, statuses, columns, n, observe)
            for r, values in zip(results, outputs):
                r[t.name] = dict(zip(t.outputs, values))
        return results

    def _run(
        self,
        t: CompiledTransform,
        rows: list[dict[str, Any]],
        statuses: Sequence[Mapping[str, str]],
        columns: Mapping[str, list[Any]],
        n: int,
        observe: Observe | None,
    ) -> list[list[Any]]:
        """One transform's outputs per row (a list of values in declared order per row)."""
        start = time.perf_counter()
        out: list[Any]
        if t.batch:
            features = {name: [row[name] for row in rows] for name, _, _ in t.inputs}
            status = {tb: [s[tb] for s in statuses] for tb in t.tables} if t.status else None
            out = list(zip(*t.columns(columns, features, status, n)))
        else:
            names = tuple(columns)
            contexts = [dict(zip(names, ctx)) for ctx in zip(*columns.values())] if names else [{}] * n
            out = [t.row(ctx, row, s) for ctx, row, s in zip(contexts, rows, statuses)]
        if observe is not None:
            observe(self.service, t.name, time.perf_counter() - start)
        return out

    def _vectors(
        self, vectors: list[ServiceVector], columns: Mapping[str, list[Any]], observe: Observe | None
    ) -> list[ServiceVector]:
        names = vectors[0].names
        places = self._places.get(names)
        if places is None:  # where each transform's inputs are in this vector order, found once per order
            at = {n: i for i, n in enumerate(names)}  # an input not in the vector as it is: -1, read from ``kept``
            places = tuple(tuple((name, at.get(name, -1)) for name, _, _ in t.inputs) for t in self.transforms)
            self._places[names] = places
        n = len(vectors)
        statuses = [v.status for v in vectors]
        extra: list[list[Any]] = [[] for _ in vectors]
        for t, where in zip(self.transforms, places):
            rows = [{name: v.values[i] if i >= 0 else v.kept[name] for name, i in where} for v in vectors]  # type: ignore[index]
            for acc, values in zip(extra, self._run(t, rows, statuses, columns, n, observe)):
                acc.extend(values)
        all_names = names + self.names
        return [ServiceVector([*v.values, *e], v.status, all_names) for v, e in zip(vectors, extra)]


def compile_transforms(registry: Registry) -> dict[str, ServiceTransforms]:
    """The compiled transforms and context of every service that declares either. Raises DefinitionError
    naming the service and the transform for a function that cannot be imported or is not callable."""
    return {
        name: ServiceTransforms(service, registry)
        for name, service in registry.services.items()
        if service.transforms or service.context
    }


def no_context(service: str, context: Any) -> None:
    """A context sent to a service that declares none (and has no transforms). Raises ContextError."""
    if context:
        raise ContextError(
            f"service {service!r} takes no context (it declares none); got {', '.join(map(str, context))}"
        )
