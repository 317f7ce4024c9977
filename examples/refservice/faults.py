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
    attr: str  # the ActiveFaults field it sets
    example: str  # a value that switches the fault on (used by tests and docs)
    breaks: str  # the one rule it breaks, in a sentence
    fails: tuple[str, ...]  # SPEC §5 check IDs that must fail with this fault on
    may_fail: tuple[str, ...] = ()  # checks that may also fail as a consequence (see `breaks`)


# Checks that find a request's server span by its inbound trace id (joins) may report it
# missing when the span is re-rooted; those consequences are listed as may_fail.
_JOINED_BY_TRACE = ("KT-001", "KT-003", "KT-005", "KT-006", "TC-005", "BC-003", "EC-004", "AL-002")

FAULTS: tuple[Fault, ...] = (
    Fault(
        "FAULT_DROP_SPANS", "drop_spans", "every:5",
        "Server spans of some requests (and their client children) are never exported: `0.1` "
        "= a fraction, `every:N` = every Nth. Counted in refservice_fault_dropped_spans_total "
        "and logged (`fault: server span dropped`) with their trace_id. Exemplars, outbound "
        "traceparents and error responses still point at the lost spans.",
        fails=("KT-001",),
        may_fail=("AL-002", "TC-001", "TC-002", "BC-003", "EC-004"),
    ),
    Fault(
        "FAULT_HIDDEN_LATENCY_MS", "hidden_latency_ms", "15",
        "Each request sleeps that many ms before the instrumented section starts: the kernel "
        "sees the latency, the span and the histogram do not.",
        fails=("KT-003",),
        may_fail=("KT-004",),
    ),
    Fault(
        "FAULT_BREAK_PROPAGATION", "break_propagation", "1",
        "Outbound calls (the fan-out and the W3C harness callbacks) carry no traceparent "
        "(nor tracestate).",
        fails=("TC-002",),
        may_fail=("TC-003",),
    ),
    Fault(
        "FAULT_RESTART_TRACES", "restart_traces", "1",
        "A valid inbound traceparent is ignored: every request starts a new trace, so the "
        "outbound traceparent and X-Error-Trace-ID carry that new trace id too.",
        fails=("TC-001", "TC-002", "EC-003"),
        may_fail=_JOINED_BY_TRACE,
    ),
    Fault(
        "FAULT_FIXED_TRACE_ID", "fixed_trace_id", "1",
        "Traces the service starts itself (no or invalid inbound traceparent) all reuse one "
        "valid trace id.",
        fails=("TC-004",),
        may_fail=("TC-005", "TC-003", "KT-001"),
    ),
    Fault(
        "FAULT_LEAK_BIZCODE", "leak_bizcode", "1",
        "The outbound X-Biz-Code comes from a thread-local set only when the header is present "
        "and never reset: a request without X-Biz-Code sends the value of an earlier request "
        "served by the same thread.",
        fails=("BC-001", "BC-002"),
    ),
    Fault(
        "FAULT_WRONG_ERRCODE_STATUS", "wrong_errcode_status", "1",
        "PAYMENT_105 (PAYMENT_INSUFFICIENT_FUNDS) answers 400 instead of the catalogue's 402.",
        fails=("EC-001",),
    ),
    Fault(
        "FAULT_MISSING_ERROR_CODE_HEADER", "missing_error_code_header", "1",
        "Error responses lack the X-Error-Code header (the body still has `code`).",
        fails=("EC-002",),
    ),
    Fault(
        "FAULT_WRONG_ERROR_TRACE_ID", "wrong_error_trace_id", "1",
        "X-Error-Trace-ID and the body `trace_id` carry a locally made request id, not the "
        "request's trace id.",
        fails=("EC-003",),
    ),
    Fault(
        "FAULT_4XX_SPAN_ERROR", "span_error_on_4xx", "1",
        "Server spans of 4xx responses get status ERROR (semconv: unset).",
        fails=("EC-004", "SC-003"),
    ),
    Fault(
        "FAULT_TRACE_ID_LABEL", "trace_id_label", "1",
        "Adds the counter refservice_requests_by_trace_total{trace_id=...}: one series per "
        "request.",
        fails=("AL-004",),
    ),
    Fault(
        "FAULT_LOGS_WITHOUT_TRACE", "logs_without_trace", "1",
        "Log lines carry no trace_id/span_id.",
        fails=("AL-003",),
    ),
    Fault(
        "FAULT_BAD_METRIC_NAMES", "bad_metric_names", "1",
        "Adds refservice_dbQuery_duration_milliseconds, a histogram in milliseconds with a "
        "camelCase name (promtool: non-base unit, not snake_case).",
        fails=("SC-002",),
    ),
    Fault(
        "FAULT_INVALID_TRACEPARENT_ACCEPTED", "invalid_traceparent_accepted", "1",
        "An invalid inbound traceparent (version ff, upper-case hex, data after a version-00 "
        "value) is continued instead of starting a new trace.",
        fails=("TC-003",),
    ),
    Fault(
        "FAULT_DROP_TRACESTATE", "drop_tracestate", "1",
        "Outbound calls (the fan-out and the W3C harness callbacks) carry traceparent but not "
        "the inbound tracestate.",
        fails=("TC-002",),
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
    break_propagation: bool = False
    restart_traces: bool = False
    fixed_trace_id: bool = False
    leak_bizcode: bool = False
    wrong_errcode_status: bool = False
    missing_error_code_header: bool = False
    wrong_error_trace_id: bool = False
    span_error_on_4xx: bool = False
    trace_id_label: bool = False
    logs_without_trace: bool = False
    bad_metric_names: bool = False
    invalid_traceparent_accepted: bool = False
    drop_tracestate: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ActiveFaults:
        """Parse the FAULT_* variables; a bad value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for fault in FAULTS:
            raw = env.get(fault.env, "").strip()
            if fault.attr == "drop_spans":
                values[fault.attr] = DropPolicy.parse(raw) if raw else None
            elif fault.attr == "hidden_latency_ms":
                values[fault.attr] = _non_negative_ms(env, fault.env)
            else:
                values[fault.attr] = _switch(fault.env, raw)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """The switches that are on, for the start-up log line."""
        return {k: v for k, v in asdict(self).items() if v not in (None, False, 0, 0.0)}


_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


def _switch(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{name}: expected 1/true/yes/on or 0/false/no/off, got {raw!r}")


def markdown_table() -> str:
    """The fault table as Markdown, for the README (a test keeps the two in sync)."""
    rows = ["| variable | example | breaks | must fail | may also fail |", "|---|---|---|---|---|"]
    for f in FAULTS:
        may = ", ".join(f.may_fail) or "—"
        rows.append(f"| `{f.env}` | `{f.example}` | {f.breaks} | {', '.join(f.fails)} | {may} |")
    return "\n".join(rows) + "\n"


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


if __name__ == "__main__":
    print(markdown_table(), end="")
