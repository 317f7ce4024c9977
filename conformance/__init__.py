"""Judgement: the check catalogue, the join of kernel ↔ driver ↔ telemetry, the checks, and
the CNCF-compliance report (JSON, JUnit, terminal summary)."""

from conformance.catalogue import Catalogue, CheckSpec, load_catalogue, render_markdown
from conformance.engine import evaluate, resolve_thresholds, select_checks
from conformance.join import Joined, JoinedRequest, join
from conformance.junit import render_junit
from conformance.model import CheckResult, Finding, Status
from conformance.report import (
    ReportError, build_report, decide_verdict, exit_code, validate_report, write_report,
)
from conformance.summary import render_summary

__all__ = [
    "Catalogue", "CheckResult", "CheckSpec", "Finding", "Joined", "JoinedRequest",
    "ReportError", "Status", "build_report", "decide_verdict", "evaluate", "exit_code",
    "join", "load_catalogue", "render_junit", "render_markdown", "render_summary",
    "resolve_thresholds", "select_checks", "validate_report", "write_report",
]
