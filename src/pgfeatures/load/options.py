"""What a load is asked to do (``LoadOptions`` and its choices), what it reports while it runs
(``LoadProgress``) and what it did (``LoadSummary``). No I/O, no pyarrow."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..definitions import DEFAULT_MAX_FUTURE_SKEW
from ..definitions.eventtime import UNITS
from ..errors import LoadInputError

REBUILD_FRACTION = 0.25  # auto strategy: rebuild when loaded rows >= this fraction of the table...
REBUILD_MIN_ROWS = 50_000  # ...and at least this many: a swap is not worth its brief exclusive lock for less
VACUUM_FRACTION = 0.10  # auto vacuum: after an upsert that updated >= this fraction of the table
BATCH_ROWS = 65_536
MAX_EXAMPLES = 5  # rejected-row reasons kept in the summary
FORMATS = ("parquet", "csv", "arrow")


class _Choice(str, enum.Enum):
    @classmethod
    def parse(cls, value: Any, option: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise LoadInputError(f"invalid {option}={value!r}; valid: {', '.join(c.value for c in cls)}") from None


class Mode(_Choice):
    MERGE = "merge"  # upsert the loaded rows; other rows stay
    REPLACE = "replace"  # the table becomes exactly the loaded rows


class ApplyStrategy(_Choice):
    AUTO = "auto"
    UPSERT = "upsert"
    REBUILD = "rebuild"


class OnDuplicate(_Choice):
    NEWEST = "newest"  # a key seen twice: the row with the newest updated_at wins (equal: the later row)
    LAST = "last"  # a key seen twice: the later row wins, whatever its updated_at
    REJECT = "reject"  # a key seen twice fails the load


class NanPolicy(_Choice):
    REJECT = "reject"
    NULL = "null"  # NaN is loaded as NULL


class InfPolicy(_Choice):
    REJECT = "reject"
    KEEP = "keep"  # ±Infinity is loaded as it is (JSON answers carry it as "Infinity" / "-Infinity")


class OnInvalid(_Choice):
    ABORT = "abort"  # the first invalid value fails the load
    SKIP = "skip"  # rows with invalid values are left out and counted as rejected


class VacuumPolicy(_Choice):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class LoadOptions:
    """How to read, validate and apply a load. Invalid values raise LoadInputError naming the valid ones."""

    mode: Mode | str = Mode.MERGE
    key_column: str | None = None  # the source column holding the entity key; default: the entity's key column
    hash_keys: bool = False  # key column holds natural ids: hash them with SHA-256 (hashed entities always are)
    on_duplicate: OnDuplicate | str = OnDuplicate.NEWEST
    # NaN and ±Infinity in real / double precision columns (in lists and embeddings they always fail a row)
    nan: NanPolicy | str = NanPolicy.REJECT
    inf: InfPolicy | str = InfPolicy.REJECT
    on_invalid: OnInvalid | str = OnInvalid.ABORT
    partial: bool = False  # merge only the feature columns present (others keep their values)
    ignore_extra: bool = False  # skip source columns the table does not have
    strategy: ApplyStrategy | str = ApplyStrategy.AUTO
    vacuum: VacuumPolicy | str = VacuumPolicy.AUTO
    # Event time for rows without one (no updated_at column, or NULL in it): an aware datetime, an ISO
    # 8601 string with a zone or epoch seconds; default: the load's transaction time on the database server.
    updated_at: Any = None
    # The unit of epoch numbers in an integer (or floating) updated_at column or timestamp feature: s, ms or us
    event_time_unit: str = "s"
    # The zone of an updated_at or timestamp feature without one (Arrow timestamps without a time zone, ISO
    # strings without an offset), e.g. "UTC" or "Europe/Paris"; None: such values are refused (which zone
    # they mean is not known).
    event_time_zone: str | None = None
    # Seconds an event time may be ahead of the database server's clock (None: no bound); a row further
    # ahead is invalid (on_invalid: the load fails naming it, or it is skipped and counted).
    max_future_skew: float | None = DEFAULT_MAX_FUTURE_SKEW
    # Newest wins: a source row carrying updated_at never overwrites a stored row with a larger one
    # (skipped and counted in LoadSummary.skipped_newer). True: write every row anyway.
    overwrite_newer: bool = False
    format: str | None = None  # parquet, csv or arrow; default: from the file extension
    # Refuse, before anything is loaded, a file whose every page is not checksummed (Parquet written without
    # page checksums, CSV, Arrow IPC): damage in it that still decodes could not be detected.
    require_checksums: bool = False
    batch_rows: int = BATCH_ROWS
    lock_timeout: float = 10.0  # seconds to wait for the table lock (rebuild and swap)

    def __post_init__(self) -> None:
        for name, cls in (
            ("mode", Mode),
            ("on_duplicate", OnDuplicate),
            ("nan", NanPolicy),
            ("inf", InfPolicy),
            ("on_invalid", OnInvalid),
            ("strategy", ApplyStrategy),
            ("vacuum", VacuumPolicy),
        ):
            object.__setattr__(self, name, cls.parse(getattr(self, name), name))
        if self.format is not None and self.format not in FORMATS:
            raise LoadInputError(f"invalid format={self.format!r}; valid: {', '.join(FORMATS)}")
        if self.partial and (self.mode is Mode.REPLACE or self.strategy is ApplyStrategy.REBUILD):
            raise LoadInputError(
                "partial=True merges some columns into existing rows: it needs mode='merge' "
                "and strategy 'auto' or 'upsert'"
            )
        if self.batch_rows < 1 or self.lock_timeout <= 0:
            raise LoadInputError("batch_rows and lock_timeout must be positive")
        if self.event_time_unit not in UNITS:
            raise LoadInputError(
                f"invalid event_time_unit={self.event_time_unit!r}; valid: {', '.join(UNITS)} "
                "(epoch seconds, milliseconds, microseconds)"
            )
        if self.event_time_zone is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(self.event_time_zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise LoadInputError(
                    f"invalid event_time_zone={self.event_time_zone!r}: not a time zone (e.g. UTC, Europe/Paris)"
                ) from None
        skew = self.max_future_skew
        if skew is not None and (isinstance(skew, bool) or not isinstance(skew, (int, float)) or not skew >= 0):
            raise LoadInputError(f"invalid max_future_skew={skew!r}: seconds >= 0, or None for no bound")


def load_options(options: LoadOptions | None = None, **changes: Any) -> LoadOptions:
    """``options`` with ``changes`` applied; unknown option names raise LoadInputError naming the valid ones."""
    valid = [f.name for f in dataclasses.fields(LoadOptions)]
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise LoadInputError(f"unknown load option(s): {', '.join(unknown)}; valid: {', '.join(valid)}")
    return dataclasses.replace(options or LoadOptions(), **changes)


@dataclass(frozen=True)
class LoadProgress:
    """Reported after every batch and at every phase change."""

    phase: str  # reading, deduplicating, merging, copying untouched rows, indexing, analyzing, swapping, ...
    rows: int  # rows read so far (all sources)
    total: int | None  # rows in all sources, when the formats say so upfront (Parquet, Arrow)
    source: str | None = None


ProgressCallback = Callable[[LoadProgress], None]


@dataclass
class LoadSummary:
    """What a committed load did. ``integrity`` says, per Parquet file, what its rows were checked
    against (page checksums; column statistics only, which miss a value changed inside the recorded
    range; or nothing the file carried)."""

    table: str
    mode: str
    strategy: str = ""  # upsert, rebuild or replace
    sources: list[str] = field(default_factory=list)
    rows_read: int = 0
    rejected: int = 0  # rows left out for invalid values (on_invalid="skip")
    superseded: int = 0  # rows dropped because a newer (or, on_duplicate="last", a later) row had the same key
    skipped_newer: int = 0  # rows not written: the stored row's updated_at is newer (newest wins)
    inserted: int = 0
    updated: int = 0
    rows_before: int | None = None  # exact for rebuild and replace
    rows_after: int | None = None
    seconds: float = 0.0  # from opening the sources to COMMIT
    maintenance: str = ""
    maintenance_seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # why rows were rejected (first few)
    notes: list[str] = field(default_factory=list)
    integrity: dict[str, str] = field(default_factory=dict)  # Parquet file -> what its rows were verified against

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"{self.mode} into {self.table} ({self.strategy}) from {len(self.sources)} source(s) in {self.seconds:.2f}s: "
            f"{self.rows_per_second:,.0f} rows/s",
            f"rows read {self.rows_read:,} | inserted {self.inserted:,} | updated {self.updated:,} | "
            f"rejected {self.rejected:,} | duplicates superseded {self.superseded:,}",
        ]
        if self.skipped_newer:
            lines.append(
                f"skipped {self.skipped_newer:,} row(s): the stored row is newer (newest wins; "
                "--overwrite-newer / overwrite_newer=True writes them)"
            )
        if self.rows_before is not None and self.rows_after is not None:
            lines.append(f"table rows {self.rows_before:,} -> {self.rows_after:,}")
        if self.integrity:
            ways = set(self.integrity.values())
            if len(ways) == 1 and len(self.integrity) > 1:
                lines.append(f"verified against: {ways.pop()} ({len(self.integrity)} files)")
            else:
                lines += [f"verified against: {how} ({name})" for name, how in self.integrity.items()]
        lines += [f"rejected: {e}" for e in self.examples]
        lines += [f"note: {n}" for n in self.notes]
        if self.maintenance:
            lines.append(f"after the load: {self.maintenance} ({self.maintenance_seconds:.2f}s)")
        return "\n".join(lines)
