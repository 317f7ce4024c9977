"""The check registry: the ``@check("KT-001")`` decorator and the context a check reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from agent.evidence import Evidence
from conformance.catalogue import CheckSpec
from conformance.join import Joined, join
from conformance.model import Finding

CheckFn = Callable[["CheckContext"], Finding]


@dataclass(frozen=True)
class Registered:
    fn: CheckFn
    # KT-007 judges the agent's own loss, so it must run when the agent lost events.
    runs_on_agent_loss: bool = False


REGISTRY: dict[str, Registered] = {}


def check(check_id: str, *, runs_on_agent_loss: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the implementation of catalogue check ``check_id``."""

    def decorator(fn: CheckFn) -> CheckFn:
        if check_id in REGISTRY and REGISTRY[check_id].fn is not fn:
            raise ValueError(f"check {check_id} is registered twice")
        REGISTRY[check_id] = Registered(fn, runs_on_agent_loss)
        return fn

    return decorator


@dataclass
class CheckContext:
    """What one check function gets: the evidence, its catalogue entry and thresholds.

    ``joined`` and ``cache`` are shared by all checks of one evaluation, so the join and
    any parsed scrape are computed once.
    """

    evidence: Evidence
    spec: CheckSpec
    thresholds: dict[str, float]
    cache: dict[str, Any] = field(default_factory=dict)

    def threshold(self, name: str) -> float:
        try:
            return self.thresholds[name]
        except KeyError:
            raise KeyError(f"{self.spec.id} has no threshold {name!r}; add it to "
                           "catalogue.yaml") from None

    def shared(self, key: str, build: Callable[[], Any]) -> Any:
        """Compute ``build()`` once per evaluation and share it between checks."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    @property
    def joined(self) -> Joined:
        return self.shared("joined", lambda: join(self.evidence))
