"""Fault switches of the reference service: the table (env var → what breaks → failing checks) and their parsed values."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    """One fault switch: the env var, a value that turns it on, and what it breaks."""

    env: str
    example: str  # a value that switches the fault on (used by tests and docs)
    breaks: str  # the one rule it breaks, in a sentence
    fails: tuple[str, ...]  # SPEC §5 check IDs that must fail with this fault on
    may_fail: tuple[str, ...] = ()  # checks that may also fail as a consequence (say why in `breaks`)


FAULTS: tuple[Fault, ...] = (
    Fault(
        "FAULT_DROP_SPANS",
        "every:5",
        "Server spans of some requests are never exported (`0.1` = a fraction, `every:N` = every "
        "Nth); counted in refservice_fault_dropped_spans_total and logged with their trace_id. "
        "Their histogram exemplars still point at the lost traces.",
        fails=("KT-001",),
        may_fail=("AL-002",),
    ),
    Fault(
        "FAULT_HIDDEN_LATENCY_MS",
        "15",
        "Each request sleeps that many ms before the instrumented section starts: the kernel sees "
        "the latency, the span and the histogram do not.",
        fails=("KT-003",),
        may_fail=("KT-004",),
    ),
)
FAULTS_BY_ENV: dict[str, Fault] = {f.env: f for f in FAULTS}


@dataclass(frozen=True)
class DropPolicy:
    """Deterministic span loss: every Nth server span, or a fraction spread evenly."""

    every: int = 0
    fraction: float = 0.0

    def should_drop(self, n: int) -> bool:
        """Whether the n-th (1-based) server span of this process is dropped."""
        if self.every:
            return n % self.every == 0
        return math.floor(n * self.fraction) > math.floor((n - 1) * self.fraction)

    @classmethod
    def parse(cls, value: str) -> DropPolicy:
        text = value.strip().lower()
        try:
            if text.startswith("every:"):
                every = int(text[len("every:"):])
                if every >= 1:
                    return cls(every=every)
            else:
                fraction = float(text)
                if 0.0 < fraction <= 1.0:
                    return cls(fraction=fraction)
        except ValueError:
            pass
        raise ValueError(
            f"FAULT_DROP_SPANS: expected a fraction in (0, 1] or every:N (N >= 1), got {value!r}"
        )


@dataclass(frozen=True)
class ActiveFaults:
    """The fault switches as read from the environment at start (all off by default)."""

    drop_spans: DropPolicy | None = None
    hidden_latency_ms: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ActiveFaults:
        """Parse the FAULT_* variables; a bad value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        drop = env.get("FAULT_DROP_SPANS", "").strip()
        return cls(
            drop_spans=DropPolicy.parse(drop) if drop else None,
            hidden_latency_ms=_non_negative_ms(env, "FAULT_HIDDEN_LATENCY_MS"),
        )

    def describe(self) -> dict[str, Any]:
        """The switches that are on, for the start-up log line."""
        return {k: v for k, v in asdict(self).items() if v not in (None, False, 0, 0.0)}


def _non_negative_ms(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative number of milliseconds, got {raw!r}")
    return value
