"""EC-005: the SUT owner's errcode catalogue is valid (errortrace profile §4): every entry
complete and well-typed, error statuses, gRPC code names, unique names and wire codes."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from agent.errcodes import MAX_REASON, entry_wire_code
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import errcodes

SEVERITIES = ("INFO", "WARN", "FATAL")
# gRPC status codes (grpc/doc/statuscodes.md) an error can map to: every code but OK.
GRPC_ERROR_CODES = (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
_DOMAIN = re.compile(r"[A-Z][A-Z0-9_]*")
_METHOD = re.compile(r"[A-Z]+")  # RFC 9110 token, upper-case as every method in use
SHOWN = 20


def entry_problems(entry: Any) -> list[str]:
    """What is wrong with one raw catalogue entry (empty when it is valid)."""
    if not isinstance(entry, dict):
        return [f"is a {type(entry).__name__}, not a mapping of fields"]
    out = []
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        out.append("name: must be a non-empty string")
    domain = entry.get("domain")
    if not isinstance(domain, str) or not _DOMAIN.fullmatch(domain):
        out.append(f"domain: {domain!r} must be upper-case letters, digits and _ (e.g. AUTH)")
    if entry.get("severity") not in SEVERITIES:
        out.append(f"severity: {entry.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
    reason = entry.get("reason")
    if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= MAX_REASON:
        out.append(f"reason: {reason!r} must be an integer 0..0x{MAX_REASON:X} (3 hex digits)")
    status = entry.get("http_status")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        out.append(f"http_status: {status!r} must be an error status, an integer 400..599")
    grpc = entry.get("grpc_code")
    if grpc not in GRPC_ERROR_CODES:
        hint = " (OK is not an error)" if grpc == "OK" else ""
        out.append(f"grpc_code: {grpc!r} is not a gRPC error code name{hint}")
    if not isinstance(entry.get("retryable"), bool):
        out.append(f"retryable: {entry.get('retryable')!r} must be true or false")
    trigger = entry.get("trigger")
    if not isinstance(trigger, dict):
        out.append("trigger: must be a mapping with method, path, headers, body")
    else:
        method = trigger.get("method", "GET")
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            out.append(f"trigger.method: {method!r} must be an HTTP method such as GET")
        path = trigger.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            out.append(f"trigger.path: {path!r} must be a request target starting with /")
        if not isinstance(trigger.get("headers") or {}, dict):
            out.append("trigger.headers: must be a mapping of header name to value")
    return out


@check("EC-005")
def catalogue_valid(ctx: CheckContext) -> Finding:
    scenario = ctx.evidence.meta.scenario or {}
    source = scenario.get("errcodes_source") or ""
    error = scenario.get("errcodes_error") or ""
    entries = errcodes(scenario)
    expected = {"entries": "complete and well-typed", "http_status": "400..599",
                "grpc_code": "a gRPC error code name", "names_and_wire_codes": "unique"}
    if error:
        return Finding.failed(f"the errcode catalogue {source or ''} does not parse: {error}",
                              {"source": source, "error": error}, expected)
    if not source and not entries:
        return Finding.skipped("no errcode catalogue was given (--catalog or the scenario's "
                               "catalogue)")
    problems = []
    for i, entry in enumerate(entries):
        code = entry_wire_code(entry)
        label = f"errcodes[{i}]" + (f" ({code})" if code else "")
        problems += [f"{label}: {p}" for p in entry_problems(entry)]
    names = Counter(e.get("name") for e in entries if isinstance(e, dict) and e.get("name"))
    codes = Counter(c for c in map(entry_wire_code, entries) if c)
    problems += [f"name {n!r} is used by {k} entries" for n, k in names.items() if k > 1]
    problems += [f"wire code {c} is derived by {k} entries (domain and reason must be unique)"
                 for c, k in codes.items() if k > 1]
    if not entries:
        problems.append("the catalogue has no entry")
    observed = {"source": source, "entries": len(entries), "wire_codes": sorted(codes),
                "problems": len(problems)}
    if problems:
        return Finding.failed(f"{len(problems)} problem(s) in the errcode catalogue, first: "
                              f"{problems[0]}", observed, expected, problems=problems[:SHOWN])
    return Finding.passed(f"{len(entries)} catalogue entries, wire codes "
                          f"{', '.join(sorted(codes)[:6])}{' ...' if len(codes) > 6 else ''}: valid",
                          observed, expected)
