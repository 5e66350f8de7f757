"""What the doctor reports: a ``Finding`` per check and subject, gathered in a ``Report``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SERVER = "server"  # the subject of server-wide findings


class Status(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return ("pass", "warn", "fail").index(self.value)


@dataclass(frozen=True)
class Finding:
    """One check's verdict on one subject (``schema.table`` or ``server``)."""

    check: str
    subject: str
    status: Status
    value: str  # what was measured, for people
    advice: str = ""
    fix: tuple[str, ...] = ()  # SQL safe to run as-is
    measured: Mapping[str, Any] = field(default_factory=dict)  # the numbers, for --json

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "subject": self.subject,
            "status": self.status.value,
            "value": self.value,
            "advice": self.advice,
            "fix": list(self.fix),
            "measured": dict(self.measured),
        }


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]

    @property
    def status(self) -> Status:
        return max((f.status for f in self.findings), key=lambda s: s.rank, default=Status.PASS)

    @property
    def ok(self) -> bool:
        """Every check passes."""
        return self.status is Status.PASS

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fix statements of every finding that is not a pass, in check order, without repeats."""
        return tuple(dict.fromkeys(s for f in self.findings if f.status is not Status.PASS for s in f.fix))

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def get(self, check: str, subject: str) -> Finding:
        """The finding of ``check`` on ``subject`` (a table name, qualified or not, or ``server``)."""
        for f in self.findings:
            if f.check == check and (f.subject == subject or f.subject.endswith("." + subject)):
                return f
        raise KeyError(f"no {check!r} finding for {subject!r}")

    def as_dict(self) -> dict[str, Any]:
        counts = {s.value: sum(f.status is s for f in self.findings) for s in Status}
        return {
            "status": self.status.value,
            "counts": counts,
            "fixes": list(self.fixes),
            "findings": [f.as_dict() for f in self.findings],
        }
