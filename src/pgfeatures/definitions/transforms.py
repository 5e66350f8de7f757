"""Request-time transforms of a feature service, and the request context they take (definitions only).

::

    [services.fraud_v2]
    features = ["user_stats.*", "merchant_risk.chargeback_rate"]
    context = { amount = "double", lat = "double" }   # what callers send with each request

    [[services.fraud_v2.transforms]]
    function = "my_model.features:ratios"       # module:function, resolved as --credentials is
    name = "ratios"                             # optional: default the function's name
    inputs = ["user_stats.amount_avg"]          # optional: default every feature of the service
    outputs = { amount_ratio = "double", is_big = "boolean" }
    batch = false                               # true: the function takes columns (one call per batch)
    offload = false                             # true: run it on a worker thread, off the event loop

A transform's outputs are features like stored ones, under a pseudo-table named after the transform
(``ratios.amount_ratio``), after the service's stored features in the vector. This module only says
what is declared and checks it against the tables; ``reader/transforms.py`` resolves the functions and
runs them (docs/transforms.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError
from .types import TYPES, FeatureType, check_identifier, feature_type

TypedNames = tuple[tuple[str, FeatureType], ...]
"""Names with their declared types, in declared order (context values, a transform's outputs)."""

TRANSFORM_KEYS = ("function", "name", "inputs", "outputs", "batch", "offload")


def typed_names(what: str, spec: Any) -> TypedNames:
    """``{name: type}`` (a mapping, or pairs) as checked ``(name, FeatureType)`` pairs, in order.
    Raises DefinitionError naming ``what``."""
    pairs = spec.items() if isinstance(spec, Mapping) else spec
    try:
        items = [(name, kind) for name, kind in pairs]
    except (TypeError, ValueError):
        raise DefinitionError(f'{what} must be a table of name = "type", got {spec!r}') from None
    out: list[tuple[str, FeatureType]] = []
    for name, kind in items:
        check_identifier(f"{what} name", name)
        try:
            type_ = kind if isinstance(kind, FeatureType) else feature_type(kind)
        except DefinitionError as exc:
            raise DefinitionError(f"{what} {name!r}: {exc}") from None
        if type_.kind != "scalar":  # a transform's values join vectors, which hold numbers
            raise DefinitionError(
                f"{what} {name!r}: {type_.spec} is not a type a transform takes or gives (valid: "
                f"{', '.join(TYPES)}): transforms map values to numbers"
            )
        out.append((name, type_))
    return tuple(out)


def function_name(function: str | Callable[..., Any]) -> str:
    """What ``function`` is called: ``"module:function"`` as written, or a callable's import path."""
    if isinstance(function, str):
        return function
    module = getattr(function, "__module__", None) or "?"
    return f"{module}:{getattr(function, '__qualname__', None) or type(function).__name__}"


@dataclass(frozen=True)
class Transform:
    """One request-time transform: ``function`` (``"module:function"``, or in Python definitions the
    callable itself) computes ``outputs`` from the request's context and ``inputs`` (``table.feature``
    names of the service; None: all of them). ``batch``: the function takes columns and is called once
    per batch (and with columns of one for a single request); else once per request (per row of a
    batch). ``offload``: called on a worker thread (see docs/transforms.md for when that pays)."""

    function: str | Callable[..., Any]
    outputs: TypedNames
    name: str = ""
    inputs: tuple[str, ...] | None = None
    batch: bool = False
    offload: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.function, str) and not callable(self.function):
            raise DefinitionError(f"transform function must be 'module:function' or a callable, got {self.function!r}")
        if not self.name:
            tail = function_name(self.function).rpartition(":")[2].rpartition(".")[2]
            object.__setattr__(self, "name", tail)
        check_identifier("transform", self.name)
        object.__setattr__(self, "outputs", typed_names(f"transform {self.name!r}: output", self.outputs))
        if not self.outputs:
            raise DefinitionError(f'transform {self.name!r}: outputs must declare at least one name = "type"')
        if self.inputs is not None:
            if isinstance(self.inputs, str) or not all(isinstance(i, str) for i in self.inputs):
                raise DefinitionError(f'transform {self.name!r}: inputs must be a list of "table.feature"')
            object.__setattr__(self, "inputs", tuple(self.inputs))
        for flag in ("batch", "offload"):
            if not isinstance(getattr(self, flag), bool):
                raise DefinitionError(f"transform {self.name!r}: {flag} must be true or false")

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs as the service names them: ``transform.output``, in declared order."""
        return tuple(f"{self.name}.{o}" for o, _ in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"function": function_name(self.function), "name": self.name}
        if self.inputs is not None:
            out["inputs"] = list(self.inputs)
        out["outputs"] = {o: t.name for o, t in self.outputs}
        if self.batch:
            out["batch"] = True
        if self.offload:
            out["offload"] = True
        return out

    @classmethod
    def from_dict(cls, service: str, spec: Any) -> Transform:
        """From one ``[[services.<service>.transforms]]`` table. Raises DefinitionError naming the service."""
        if not isinstance(spec, Mapping):
            raise DefinitionError(f"service {service!r}: each [[services.{service}.transforms]] must be a table")
        unknown = set(spec) - set(TRANSFORM_KEYS)
        if unknown:
            raise DefinitionError(
                f"service {service!r}: transform: unknown key(s) {', '.join(sorted(unknown))} "
                f"(valid: {', '.join(TRANSFORM_KEYS)})"
            )
        function = spec.get("function")
        if not isinstance(function, str):
            raise DefinitionError(f'service {service!r}: a transform needs function = "module:function"')
        if not isinstance(spec.get("outputs"), Mapping):
            raise DefinitionError(
                f'service {service!r}: transform {function!r} needs outputs = {{ name = "type", ... }}'
            )
        inputs = spec.get("inputs")
        if inputs is not None and not isinstance(inputs, list):
            raise DefinitionError(
                f'service {service!r}: transform {function!r}: inputs must be a list of "table.feature"'
            )
        return cls(
            function,
            spec["outputs"],
            spec.get("name", ""),
            None if inputs is None else tuple(inputs),
            spec.get("batch", False),
            spec.get("offload", False),
        )
