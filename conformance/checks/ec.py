"""errcode checks EC-001..EC-004 (errortrace profile §4): each catalogue trigger answers the
catalogue's status, names its wire code in X-Error-Code and the body, carries the request's
trace ID, and its server span has error.type, retryable and the semconv status."""

from __future__ import annotations

import json
from typing import Any, Callable

from agent.tracecontext import is_valid_trace_id
from conformance.httpsem import SPAN_STATUS_RULE, server_span_status_problem
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import catalogue_by_code, errcodes
from conformance.view import RequestView, view_of

SAMPLES = 10


def _material(ctx: CheckContext) -> tuple[list[tuple[RequestView, dict[str, Any]]], Finding | None, dict]:
    """(request, catalogue entry) per ec/<CODE> request, or the skip/inconclusive to return."""
    scenario = ctx.evidence.meta.scenario or {}
    if scenario.get("errcodes_error"):
        return [], Finding.skipped(f"the errcode catalogue could not be read "
                                   f"({scenario['errcodes_error']}): see EC-005"), {}
    if not errcodes(scenario):
        return [], Finding.skipped("no errcode catalogue was given (--catalog or the "
                                   "scenario's catalogue): no trigger to check"), {}
    by_code = catalogue_by_code(scenario)
    pairs, unknown = [], []
    for r in view_of(ctx).where("ec/"):
        code = r.case.removeprefix("ec/")
        (pairs.append((r, by_code[code])) if code in by_code else unknown.append(r.case))
    sent = {r.case.removeprefix("ec/") for r, _ in pairs}
    info = {"not_sent": sorted(set(by_code) - sent), "cases_without_entry": unknown}
    if not pairs:
        return [], Finding.inconclusive(
            f"none of the {len(by_code)} catalogue triggers was sent (ec phase empty)",
            {"catalogue_codes": len(by_code)}, None, **info), info
    return pairs, None, info


def _run(ctx: CheckContext, expected: dict, judge: Callable[[RequestView, str, dict], list[str]],
         what: str, needs_span: bool = False) -> Finding:
    pairs, early, info = _material(ctx)
    if early is not None:
        early.expected = expected
        return early
    failures, judged = [], 0
    for r, entry in pairs:
        code = r.case.removeprefix("ec/")
        if needs_span and not r.span_certain:
            continue
        judged += 1
        problems = judge(r, code, entry)
        if problems:
            failures.append(r.ref(code=code, problems=problems,
                                  response_headers={k: v for k, v in r.driver.response_headers.items()
                                                    if k.startswith("x-error")},
                                  response_body=r.driver.response_body[:300]))
    observed = {"triggers_sent": len(pairs), "judged": judged, "failed": len(failures),
                "failed_codes": sorted({f["code"] for f in failures})}
    evidence = {"failures": failures[:SAMPLES], **info}
    if failures:
        f = failures[0]
        return Finding.failed(f"{len(failures)} of {judged} errcode triggers: {what}, e.g. "
                              f"{f['code']} ({f['request']}): {f['problems'][0]}", observed,
                              expected, **evidence)
    if not judged:
        return Finding.inconclusive(f"no server span was joined to any of the {len(pairs)} "
                                    "errcode triggers", observed, expected, **evidence)
    return Finding.passed(f"{judged} errcode triggers checked: all as the catalogue says",
                          observed, expected, **evidence)


def _body(r: RequestView) -> tuple[dict[str, Any] | None, str]:
    try:
        body = json.loads(r.driver.response_body)
    except ValueError:
        return None, f"the body is not JSON: {r.driver.response_body[:80]!r}"
    return (body, "") if isinstance(body, dict) else (None, "the JSON body is not an object")


def _status_problem(r: RequestView) -> list[str]:
    if r.driver.status is None:
        return [f"no response ({r.driver.error or 'unknown error'})"]
    return []


@check("EC-001")
def trigger_status(ctx: CheckContext) -> Finding:
    def judge(r: RequestView, code: str, entry: dict) -> list[str]:
        if (p := _status_problem(r)):
            return p
        want = entry.get("http_status")
        return [] if r.driver.status == want else [f"answered {r.driver.status}, catalogue says {want}"]

    return _run(ctx, {"status": "the entry's http_status"}, judge, "wrong HTTP status")


@check("EC-002")
def error_code_header_and_body(ctx: CheckContext) -> Finding:
    def judge(r: RequestView, code: str, entry: dict) -> list[str]:
        if (p := _status_problem(r)):
            return p
        problems = []
        header = r.driver.response_headers.get("x-error-code")
        if header is None:
            problems.append("no X-Error-Code header")
        elif header.strip() != code:
            problems.append(f"X-Error-Code is {header!r}, not {code}")
        body, why = _body(r)
        if body is None:
            problems.append(why)
        elif body.get("code") != code:
            problems.append(f"body code is {body.get('code')!r}, not {code}")
        return problems

    return _run(ctx, {"x-error-code": "<DOMAIN>_<reason as 3 hex digits>", "body.code": "same"},
                judge, "wrong or missing error code")


@check("EC-003")
def error_trace_id(ctx: CheckContext) -> Finding:
    def judge(r: RequestView, code: str, entry: dict) -> list[str]:
        if (p := _status_problem(r)):
            return p
        want = r.driver.trace_id or (r.span.trace_id if r.span is not None else None)
        problems = []
        header = r.driver.response_headers.get("x-error-trace-id")
        body, why = _body(r)
        got = {"X-Error-Trace-ID": header.strip() if header else None,
               "body trace_id": body.get("trace_id") if body is not None else None}
        if body is None:
            problems.append(why)
        for name, value in got.items():
            if value is None:
                if name == "X-Error-Trace-ID" or body is not None:
                    problems.append(f"no {name}")
            elif want is not None and value != want:
                problems.append(f"{name} is {value!r}, not the request's trace-id {want}")
            elif not is_valid_trace_id(str(value)):
                problems.append(f"{name} {value!r} is not a valid trace-id (32 lower-case hex)")
        if want is None and got["X-Error-Trace-ID"] != got["body trace_id"]:
            problems.append("X-Error-Trace-ID and body trace_id differ")
        return problems

    return _run(ctx, {"x-error-trace-id": "the request's trace-id", "body.trace_id": "same"},
                judge, "error response does not carry the request's trace-id")


@check("EC-004")
def error_span(ctx: CheckContext) -> Finding:
    def judge(r: RequestView, code: str, entry: dict) -> list[str]:
        span = r.span
        assert span is not None
        problems = []
        etype = span.attributes.get("error.type")
        if etype != code:
            problems.append(f"span error.type is {etype!r}, not {code}")
        retry, want = span.attributes.get("retryable"), entry.get("retryable")
        if not isinstance(retry, bool):
            problems.append(f"span retryable is {retry!r} ({type(retry).__name__}), not the "
                            f"boolean {want}")
        elif retry != want:
            problems.append(f"span retryable is {retry}, catalogue says {want}")
        status = r.driver.status if r.driver.status is not None else entry.get("http_status")
        if (bad := server_span_status_problem(status, span.status_code)) is not None:
            problems.append(bad)
        return problems

    return _run(ctx, {"error.type": "the wire code", "retryable": "the entry's flag (bool)",
                      "status": SPAN_STATUS_RULE}, judge,
                "error span does not follow the profile", needs_span=True)
