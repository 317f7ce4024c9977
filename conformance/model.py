"""Check result types: the status enum, what a check function returns, and the full result."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Outcome of one check. ``skip``: not run; ``inconclusive``: run, could not judge."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


NOT_IMPLEMENTED = "not implemented in this version"


@dataclass
class Finding:
    """What a check function returns; the engine adds the catalogue's id, title and refs."""

    status: Status
    message: str
    observed: Any = None
    expected: Any = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, message: str, observed: Any = None, expected: Any = None,
               **evidence: Any) -> "Finding":
        return cls(Status.PASS, message, observed, expected, evidence)

    @classmethod
    def failed(cls, message: str, observed: Any = None, expected: Any = None,
               **evidence: Any) -> "Finding":
        return cls(Status.FAIL, message, observed, expected, evidence)

    @classmethod
    def inconclusive(cls, message: str, observed: Any = None, expected: Any = None,
                     **evidence: Any) -> "Finding":
        return cls(Status.INCONCLUSIVE, message, observed, expected, evidence)

    @classmethod
    def skipped(cls, message: str, **evidence: Any) -> "Finding":
        return cls(Status.SKIP, message, None, None, evidence)


@dataclass
class CheckResult:
    """One check's result as it appears in the report's ``checks`` list."""

    id: str
    title: str
    level: str
    category: str
    status: Status
    message: str
    observed: Any = None
    expected: Any = None
    evidence: dict[str, Any] = field(default_factory=dict)
    spec_refs: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "level": self.level,
            "category": self.category, "status": self.status.value, "message": self.message,
            "observed": self.observed, "expected": self.expected,
            "evidence": self.evidence, "spec_refs": [dict(r) for r in self.spec_refs],
        }
