"""The human summary of a report: verdict first, one line per check, key figures; every
line fits in 80 columns but the report's path, which is printed whole to be copied."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from conformance.telemetry import none_exported, statement

WIDTH = 80
_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "inconclusive": "INCONC"}
_VERDICT = {"compliant": "COMPLIANT", "non_compliant": "NON-COMPLIANT",
            "inconclusive": "INCONCLUSIVE"}


def _fit(line: str, width: int = WIDTH) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _kernel_notes(m: dict[str, Any]) -> list[str]:
    """A warning when the wall clock stepped; a note when the probes met blind spots."""
    out = []
    clock = m.get("clock") or {}
    if clock.get("stepped"):
        out.append(f"WARNING: {clock.get('warning') or 'the wall clock was stepped during the run'}")
    blind = m["kernel"].get("blind_spots") or {}
    parts = [f"{blind[k]} {label}" for k, label in (
        ("tls", "TLS"), ("http2", "HTTP/2"), ("other_protocol", "other-protocol"),
        ("upgraded", "upgraded")) if blind.get(k)]
    if parts:
        out.append(f"note: blind spots, not parsed: {', '.join(parts)} connections")
    if blind.get("in_flight_at_attach"):
        out.append(f"note: {blind['in_flight_at_attach']} syscalls were in flight when their process "
                   "became a target (unseen)")
    return out


def _sent(report: dict[str, Any]) -> str:
    """``sent: 215 requests to http://h:8000: GET /items/7 x200, GET /items/7?x=1 x15``:
    where the driver's requests went, so a wrong --url shows before any check does."""
    target = report.get("target") or {}
    line = f"sent: {report['run'].get('requests_sent', 0)} requests"
    parts = urlsplit(str(target.get("base_url") or target.get("url") or ""))
    if parts.netloc:  # the targets below are whole paths: the origin alone, not the prefix
        line += f" to {parts.scheme}://{parts.netloc}"
    sent = target.get("targets_sent")
    if isinstance(sent, dict) and sent:
        line += ": " + ", ".join(f"{t} x{n}" for t, n in sent.items())
    return line


def render_summary(report: dict[str, Any], report_path: Path | str | None = None) -> str:
    """Terminal text for ``report``; ends with the report path when given."""
    summary = report["summary"]
    profile = report["profile"]
    run = report["run"]
    lines = []
    if not run.get("ebpf", True):  # first, so nobody reads a verdict without knowing this
        lines.append(f"DEGRADED MODE, no kernel truth: {run.get('degraded_reason') or 'eBPF off'}")
    # The verdict and its reason are wrapped, never cut: they are what people act on.
    lines += textwrap.wrap(f"obsconform: {_VERDICT.get(summary['verdict'], summary['verdict'])} "
                           f"({profile['name']} {profile['version']}): {summary['verdict_reason']}",
                           WIDTH, subsequent_indent="  ")
    telemetry = report["measurements"].get("telemetry")  # absent in reports before it
    if telemetry and none_exported(telemetry):  # plain words, wrapped like the verdict
        lines += textwrap.wrap(statement(telemetry), WIDTH, subsequent_indent="  ")
    for c in report["checks"]:
        lines.append(f"  {_STATUS.get(c['status'], c['status']):<6} {c['id']} "
                     f"{c['level']:<6} {' '.join(str(c['message']).split())}")
    counts = summary["counts"]["by_status"]
    lines.append("checks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    lines.append(_sent(report))
    m = report["measurements"]
    k = m["kernel"]
    lines.append(f"kernel: {_num(k['requests'])} requests, {_num(k['outbound_requests'])} "
                 f"outbound, {_num(k['agent_drops'])} agent drops, "
                 f"{_num(k['truncated_captures'])} truncated")
    lines += _kernel_notes(m)
    spans = m["loss"]["spans"]
    if spans:
        lines.append(f"span loss: {spans['missing']} of {spans['kernel_requests']} requests "
                     f"({spans['pct']:.3g}%), {spans['duplicates']} duplicated")
    metrics = m["loss"]["metrics"]
    if metrics:
        lines.append(f"metric count: {_num(metrics['metric_count'])} vs kernel "
                     f"{metrics['kernel_count']}, {metrics['mismatched_series']} series off "
                     f"({metrics['metric']})")
    if telemetry and not none_exported(telemetry):
        lines.append(statement(telemetry))
    d = m["latency_drift_us"]
    if d["samples"]:
        lines.append(f"latency drift (us): p50 {_num(d['p50'])} p90 {_num(d['p90'])} "
                     f"p99 {_num(d['p99'])} max {_num(d['max'])} ({d['samples']} requests)")
    lines = [_fit(line) for line in lines]
    if report_path is not None:
        lines.append(f"report: {report_path}")  # never cut: a cut path is no path
    lines.append("not an official CNCF certification; see the report's disclaimer")
    return "\n".join(lines) + "\n"
