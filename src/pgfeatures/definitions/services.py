"""Feature services: the named, versioned set of features a model reads, across tables and entities.

::

    [services.fraud_v1]
    features = ["user_stats.*", "merchant_risk.chargeback_rate", "card_stats.amount_avg"]
    ttl = "1d"            # optional: a table's rows older than this are not served by this service
    ttl_override = false  # optional: true makes ttl replace the tables' own, even where theirs is stricter
    version = "2026-11-30" # optional: published with the service
    description = "fraud model v1"
    context = { amount = "double" }   # optional: values callers send with each request, for transforms

    [[services.fraud_v1.transforms]]  # optional: features computed at request time (transforms.py)
    function = "my_model.features:ratios"
    outputs = { amount_ratio = "double" }

The TTL that applies to a table read by a service (``effective_ttl``) is the stricter of the
service's and the table's: a service cannot serve a 1-day-old row of a 12-hour table as present by
accident. ``ttl_override = true`` says it on purpose: the service's ttl replaces the tables'.

``table.*`` means every declared feature of the table, in the table's order. The service's
order (its features as listed, ``*`` expanded) is part of its definition: it is the order of the
flat vector a model gets (``output="vector"``) and is published by ``GET /v1/services/{name}``.
A service is compiled once and prepared on every read connection when a store opens.

A transform's outputs are named ``transform.output`` and come after the stored features (``order``
is the stored features', ``output_names`` the transforms'); a transform may not take a table's name,
so its outputs never collide with stored features.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError
from .names import check_not_reserved
from .transforms import Transform, TypedNames, typed_names
from .types import check_identifier, format_duration, parse_duration

if TYPE_CHECKING:
    from .registry import Registry
    from .tables import Feature, FeatureTable


@dataclass(frozen=True)
class FeatureService:
    """A named set of ``"table.feature"`` / ``"table.*"`` references; see the module docstring."""

    name: str
    features: tuple[str, ...]
    ttl: int | None = None
    materialize: bool = False
    version: str | None = None
    description: str | None = None
    ttl_override: bool = False
    context: TypedNames = ()  # a mapping {name: type} is taken too
    transforms: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        check_not_reserved("service", check_identifier("service", self.name))
        object.__setattr__(self, "context", typed_names(f"service {self.name!r}: context", self.context))
        if isinstance(self.transforms, Transform) or not all(isinstance(t, Transform) for t in self.transforms):
            raise DefinitionError(f"service {self.name!r}: transforms must be a list of Transform")
        object.__setattr__(self, "transforms", tuple(self.transforms))
        names = [t.name for t in self.transforms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DefinitionError(
                f"service {self.name!r}: transform name(s) {', '.join(twice)} used twice: give each a name = ..."
            )
        if isinstance(self.features, str) or not self.features:
            raise DefinitionError(
                f'service {self.name!r}: features must be a non-empty list of "table.feature" or "table.*"'
            )
        object.__setattr__(self, "features", tuple(self.features))
        for ref in self.features:
            table, dot, feature = str(ref).partition(".")
            if not dot or not table or not feature:
                raise DefinitionError(f'service {self.name!r}: {ref!r} must be written "table.feature" or "table.*"')
        if self.ttl is not None and (not isinstance(self.ttl, int) or self.ttl <= 0):
            raise DefinitionError(f"service {self.name!r}: ttl must be a positive number of seconds, got {self.ttl!r}")
        if self.ttl_override and self.ttl is None:
            raise DefinitionError(
                f"service {self.name!r}: ttl_override = true needs a ttl (it replaces the tables' ttl)"
            )

    def effective_ttl(self, table: FeatureTable) -> int | None:
        """The TTL (seconds; None: none) this service applies to ``table``'s rows: the stricter of the
        service's and the table's, or the service's when ``ttl_override``."""
        if self.ttl is None:
            return table.ttl
        if self.ttl_override or table.ttl is None:
            return self.ttl
        return min(self.ttl, table.ttl)

    def table_ttls(self, registry: Registry) -> dict[str, int | None]:
        """``{table: effective TTL}`` for every table the service reads, in the service's order."""
        return {table.name: self.effective_ttl(table) for table, _ in self.resolve(registry)}

    def resolve(self, registry: Registry) -> tuple[tuple[FeatureTable, tuple[Feature, ...]], ...]:
        """The service's tables (in order of first mention) and, per table, its features in the order
        listed. Raises UnknownTableError / UnknownFeatureError / DefinitionError naming the service."""
        by_table: dict[str, list[Feature]] = {}
        seen: set[tuple[str, str]] = set()
        for ref in self.features:
            table_name, _, feature_name = ref.partition(".")
            table = registry.table(table_name)
            chosen = table.features if feature_name == "*" else (table.feature(feature_name),)
            for f in chosen:
                if (table_name, f.name) in seen:
                    raise DefinitionError(f"service {self.name!r}: {table_name}.{f.name} is listed twice")
                seen.add((table_name, f.name))
                by_table.setdefault(table_name, []).append(f)
        return tuple((registry.tables[t], tuple(fs)) for t, fs in by_table.items())

    def order(self, registry: Registry) -> tuple[str, ...]:
        """The service's features as ``"table.feature"``, in the service's order (the vector's order)."""
        out: list[str] = []
        for ref in self.features:
            table_name, _, feature_name = ref.partition(".")
            table = registry.table(table_name)
            names = table.feature_names if feature_name == "*" else (feature_name,)
            out.extend(f"{table_name}.{n}" for n in names)
        return tuple(out)

    def vector_order(self, registry: Registry) -> tuple[str, ...]:
        """The stored features of the service's vector, in order: ``order`` without the strings and lists
        a transform takes as inputs (named in its ``inputs``, or all of the service's when it names none: its
        numeric outputs stand for them in the vector; a dict answer still holds them). A string or list no transform maps stays, and a vector read refuses
        it (``VectorOutputError``)."""
        mapped = {
            name
            for t in self.transforms
            for name in self.transform_inputs(registry, t)
            if registry.table(name.partition(".")[0]).feature(name.partition(".")[2]).type.kind in ("string", "list")
        }
        return tuple(name for name in self.order(registry) if name not in mapped)

    def output_names(self) -> tuple[str, ...]:
        """The transforms' outputs as ``"transform.output"``, in declared order (after ``order`` in the vector)."""
        return tuple(n for t in self.transforms for n in t.output_names)

    def transform_inputs(self, registry: Registry, transform: Transform) -> tuple[str, ...]:
        """The ``table.feature`` names ``transform`` reads, in the service's order (``table.*`` expanded).
        Raises DefinitionError for a name the service does not read."""
        order = self.order(registry)
        if transform.inputs is None:
            return order
        asked: set[str] = set()
        for ref in transform.inputs:
            table, _, feature = ref.partition(".")
            found = [n for n in order if n.partition(".")[0] == table] if feature == "*" else [ref] * (ref in order)
            if not found:
                raise DefinitionError(
                    f"service {self.name!r}: transform {transform.name!r}: input {ref!r} is not a feature of the "
                    f"service (its features: {', '.join(order)})"
                )
            asked.update(found)
        return tuple(n for n in order if n in asked)

    def check_transforms(self, registry: Registry) -> None:
        """The transforms against the tables: no transform takes a table's name (its outputs would share
        the table's ``table.feature`` names), every input is a feature of the service. Raises DefinitionError."""
        for transform in self.transforms:
            if transform.name in registry.tables:
                raise DefinitionError(
                    f"service {self.name!r}: transform {transform.name!r} has the name of a feature table, so its "
                    f"outputs ({', '.join(transform.output_names)}) would collide with stored features: rename it "
                    "(name = ...)"
                )
            self.transform_inputs(registry, transform)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"features": list(self.features)}
        if self.ttl is not None:
            out["ttl"] = format_duration(self.ttl)
        if self.ttl_override:
            out["ttl_override"] = True
        if self.materialize:
            out["materialize"] = True
        if self.version is not None:
            out["version"] = self.version
        if self.description is not None:
            out["description"] = self.description
        if self.context:
            out["context"] = {n: t.name for n, t in self.context}
        if self.transforms:
            out["transforms"] = [t.to_dict() for t in self.transforms]
        return out

    @classmethod
    def from_dict(cls, name: str, spec: Any) -> FeatureService:
        """From the TOML ``[services.<name>]`` table. Raises DefinitionError naming the service."""
        if not isinstance(spec, Mapping):
            raise DefinitionError(f'service {name!r} needs a table with features = ["table.feature", ...]')
        valid = {"features", "ttl", "ttl_override", "materialize", "version", "description", "context", "transforms"}
        unknown = set(spec) - valid
        if unknown:
            raise DefinitionError(
                f"service {name!r}: unknown key(s) {', '.join(sorted(unknown))} (valid: {', '.join(sorted(valid))})"
            )
        features = spec.get("features")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise DefinitionError(f'service {name!r}: features must be a list of "table.feature" or "table.*" strings')
        ttl = parse_duration(spec["ttl"], f"service {name!r}: ttl") if "ttl" in spec else None
        version = spec.get("version")
        context = spec.get("context", {})
        if not isinstance(context, Mapping):
            raise DefinitionError(f'service {name!r}: context must be a table of name = "type"')
        transforms = spec.get("transforms", [])
        if not isinstance(transforms, list):
            raise DefinitionError(f"service {name!r}: transforms must be written [[services.{name}.transforms]]")
        override = spec.get("ttl_override", False)
        if not isinstance(override, bool):
            raise DefinitionError(f"service {name!r}: ttl_override must be true or false, got {override!r}")
        return cls(
            name,
            tuple(features),
            ttl,
            bool(spec.get("materialize", False)),
            None if version is None else str(version),
            spec.get("description"),
            override,
            typed_names(f"service {name!r}: context", context),
            tuple(Transform.from_dict(name, t) for t in transforms),
        )


def check_services(registry: Registry, services: Iterable[FeatureService]) -> None:
    """Resolve every service against the registry (raises DefinitionError naming the service)."""
    for service in services:
        try:
            service.resolve(registry)
            service.check_transforms(registry)
        except DefinitionError:
            raise
        except Exception as exc:
            raise DefinitionError(f"service {service.name!r}: {exc}") from None
