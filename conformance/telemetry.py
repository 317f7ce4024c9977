"""What telemetry the SUT exported at all, per signal, and the plain words for when it sent none."""

from __future__ import annotations

from typing import Any

from agent.evidence import Evidence
from agent.scrape import NO_ENDPOINT
from conformance.scrapes import answered


def exported(ev: Evidence) -> dict[str, Any]:
    """Counts per signal: OTLP spans, metric points and log records received, and /metrics
    scrapes (answered with a body, failed, and the status of a missing endpoint)."""
    ok = answered(ev)
    missing = next((s for s in ev.scrapes if s.status in NO_ENDPOINT), None)
    return {
        "spans": len(ev.spans),
        "metric_points": len(ev.metrics),
        "log_records": len(ev.logs),
        "scrapes_answered": len(ok),
        "scrapes_failed": len(ev.scrapes) - len(ok),
        "metrics_url": str(ev.meta.target.get("metrics_url") or ""),
        # 404/410: the metrics URL has no endpoint (the run stops scraping it after one try).
        "metrics_endpoint_missing": missing.status if missing and not ok else None,
        "otlp_endpoint": str(ev.meta.target.get("otlp_endpoint") or ""),
    }


def none_exported(t: dict[str, Any]) -> bool:
    return not (t["spans"] or t["metric_points"] or t["log_records"] or t["scrapes_answered"])


def otlp_hint(ev: Evidence) -> str:
    """Where the SUT should export to, in the words of its own configuration."""
    endpoint = str(ev.meta.target.get("otlp_endpoint") or "")
    if not endpoint:
        return "is it instrumented, and does it export OTLP to obsconform's receiver?"
    if ev.meta.target.get("exec"):
        return (f"is it instrumented? obsconform launched it with OTEL_EXPORTER_OTLP_ENDPOINT="
                f"{endpoint}")
    return f"is it instrumented, with OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}?"


def no_spans(ev: Evidence) -> str:
    """``""`` when any span arrived; else why span checks cannot judge, and what to do."""
    if ev.spans:
        return ""
    return f"the SUT exported no span at all: {otlp_hint(ev)}"


def with_no_spans(ev: Evidence, message: str) -> str:
    """``message`` with the no-span reason after it, when no span arrived at all."""
    reason = no_spans(ev)
    return f"{message}: {reason}" if reason else message


def metrics_absent(ev: Evidence) -> str:
    """``""`` when /metrics answered or OTLP metrics arrived; else a user-actionable reason
    the metric checks skip: no metrics URL given, or the URL has no endpoint."""
    t = exported(ev)
    if t["scrapes_answered"] or t["metric_points"]:
        return ""
    if not ev.scrapes:
        where = "no metrics URL was given (--metrics-url or the scenario's metrics_path)"
    elif t["metrics_endpoint_missing"]:
        where = (f"no /metrics endpoint: GET {t['metrics_url']} answered "
                 f"{t['metrics_endpoint_missing']} (a wrong --metrics-url or metrics_path?)")
    else:
        return ""  # scrapes were tried and failed otherwise: not an absence, a failure
    return f"{where} and no OTLP metric arrived"


def statement(t: dict[str, Any]) -> str:
    """One sentence for the summary: what the SUT exported, plainly."""
    if none_exported(t):
        if t["metrics_endpoint_missing"]:
            prom = f"its metrics URL answered {t['metrics_endpoint_missing']}"
        elif t["scrapes_failed"]:
            prom = "no /metrics scrape answered"
        else:
            prom = "no /metrics URL was given"
        return ("the SUT exports no telemetry at all: no span, metric or log record reached "
                f"the OTLP receiver, and {prom}")
    return (f"telemetry: {t['spans']} spans, {t['metric_points']} OTLP metric points, "
            f"{t['log_records']} log records, {t['scrapes_answered']} /metrics scrapes")
