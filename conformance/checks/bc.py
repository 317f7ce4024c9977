"""bizCode checks BC-001..BC-003 (errortrace profile §4): the outbound X-Biz-Code equals the
request's own (trimmed, ``default`` when missing), never another concurrent request's, and
the server span carries it as ``biz.code``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agent.evidence import DownstreamRecord
from conformance.model import Finding, Status
from conformance.registry import CheckContext, check
from conformance.scenario import biz_header, expected_biz_code, fanout_routes
from conformance.telemetry import with_no_spans
from conformance.view import RequestView, view_of

SAMPLES = 10
CONCURRENT = "bc/concurrent"
SPAN_ATTR = "biz.code"


def _outbound_codes(r: RequestView, header: str) -> list[tuple[str, list[str]]]:
    """(witness, X-Biz-Code values) per outbound call of the request."""
    return [(o.witness, [v.strip(" \t") for v in o.values(header)]) for o in r.witnesses]


def _skip_without_fanout(ctx: CheckContext, reqs: list[RequestView]) -> Finding | None:
    if any(r.fanout for r in reqs):
        return None
    routes = fanout_routes(ctx.evidence.meta.scenario or {})
    return Finding.skipped("no request went to a fan-out route (scenario fanout.routes: "
                           f"{routes or 'none'}): no outbound X-Biz-Code to check")


@check("BC-001")
def outbound_biz_code_equals_inbound(ctx: CheckContext) -> Finding:
    scenario = ctx.evidence.meta.scenario or {}
    header = biz_header(scenario)
    view = view_of(ctx)
    reqs = [r for r in view.requests if r.fanout and r.case != CONCURRENT]
    if (skip := _skip_without_fanout(ctx, reqs)) is not None:
        return skip
    expected = {"outbound": f"one {header} = the inbound value trimmed, 'default' when missing"}
    failures, calls, witnessed = [], 0, 0
    by_case: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "wrong": 0})
    for r in reqs:
        want = expected_biz_code(scenario, r.driver)
        outs = _outbound_codes(r, header)
        witnessed += bool(outs)
        for witness, values in outs:
            calls += 1
            key = r.case if r.case.startswith("bc/") else r.driver.phase
            by_case[key]["calls"] += 1
            if values != [want]:
                by_case[key]["wrong"] += 1
                failures.append(r.ref(sent_biz_code=r.driver.request_headers.get(header),
                                      expected=want, outbound_biz_code=values, witness=witness))
    observed = {"fanout_requests": len(reqs), "witnessed": witnessed, "outbound_calls": calls,
                "wrong": len(failures), "by_case": {k: dict(v) for k, v in sorted(by_case.items())}}
    evidence = {"failures": failures[:SAMPLES]}
    if failures:
        f = failures[0]
        return Finding.failed(
            f"{len(failures)} of {calls} outbound calls carry the wrong {header}, e.g. "
            f"{f['case']}: sent {f['sent_biz_code']!r}, expected {f['expected']!r}, outbound "
            f"({f['witness']}) {f['outbound_biz_code'] or '(none)'}", observed, expected,
            **evidence)
    if not calls:
        return Finding.inconclusive(f"none of {len(reqs)} fan-out requests was seen calling out",
                                    observed, expected, **evidence)
    return Finding.passed(f"{calls} outbound calls carry their request's {header}", observed,
                          expected, **evidence)


@check("BC-002")
def no_biz_code_leak(ctx: CheckContext) -> Finding:
    scenario = ctx.evidence.meta.scenario or {}
    header = biz_header(scenario)
    view = view_of(ctx)
    reqs = view.where(CONCURRENT)
    expected = {"outbound_and_span": "the request's own bizCode, never another request's"}
    if not reqs:
        return Finding.skipped("no concurrent bizCode phase (no bc/concurrent case) was sent")
    codes = {r.driver.seq: expected_biz_code(scenario, r.driver) for r in reqs}
    others = set(codes.values())
    seen_by: dict[int, list[tuple[str, str]]] = {}  # request seq → [(where, value)]
    for r in reqs:
        seen: list[tuple[str, str]] = []
        for witness, values in _outbound_codes(r, header):
            seen += [(f"outbound {witness}", v) for v in values] or [(f"outbound {witness}", "")]
        if r.span_certain and SPAN_ATTR in r.span.attributes:
            seen.append(("span biz.code", str(r.span.attributes[SPAN_ATTR])))
        seen_by[r.driver.seq] = seen
    # A channel (outbound calls, spans) that carries no bizCode for any request lacks the
    # layer, which BC-001/BC-003 judge; its empty values are no leak and not judged here.
    carrying = {where.split()[0] for seen in seen_by.values() for where, v in seen if v}
    leaks, wrong, judged = [], [], 0
    for r in reqs:
        want = codes[r.driver.seq]
        seen = [(w, v) for w, v in seen_by[r.driver.seq] if w.split()[0] in carrying]
        judged += bool(seen)
        for where, value in seen:
            if value == want:
                continue
            row = r.ref(expected=want, got=value or "(none)", where=where)
            (leaks if value in others else wrong).append(row)
    observed = {"concurrent_requests": len(reqs), "distinct_biz_codes": len(others),
                "judged": judged, "leaked": len(leaks), "other_wrong": len(wrong),
                "channels_carrying_biz_code": sorted(carrying)}
    evidence = {"leaks": leaks[:SAMPLES], "other_wrong": wrong[:SAMPLES]}
    if not carrying and any(seen_by.values()):
        return Finding(
            Status.SKIP, f"none of the {len(reqs)} concurrent requests' outbound calls or "
            f"spans carries a bizCode ({header}, {SPAN_ATTR}): nothing to leak; BC-001 and "
            "BC-003 judge the missing layer", observed, expected, evidence)
    if leaks or wrong:
        f = (leaks or wrong)[0]
        what = "another request's bizCode" if leaks else "a wrong bizCode"
        return Finding.failed(
            f"{len(leaks)} leak(s) of another concurrent request's bizCode"
            f"{f' and {len(wrong)} other wrong value(s)' if wrong else ''}: e.g. request "
            f"#{f['seq']} ({f['traceparent_sent']}) expected {f['expected']!r}, its {f['where']} "
            f"carries {f['got']!r} ({what})", observed, expected, **evidence)
    if not judged:
        # Calls the sink received but could tie to no request (no traceparent continued, an
        # event loop serving them all): when none carries any bizCode, none can leak one,
        # whichever request made it; the verdict must not hang on how requests overlapped.
        loose = _untied_calls(view.unattributed, reqs)
        observed["untied_outbound"] = len(loose)
        with_code = [rec for rec in loose if any(v.strip(" \t") for v in
                                                 rec.headers.get(header.lower(), []))]
        observed["untied_with_biz_code"] = len(with_code)
        if loose and not with_code:
            return Finding(
                Status.SKIP, f"the {len(loose)} outbound call(s) the sink received during the "
                f"concurrent phase carry no bizCode ({header}) and no span carries "
                f"{SPAN_ATTR}: nothing to leak, though no call could be tied to its request; "
                "BC-001 and BC-003 judge the missing layer", observed, expected, evidence)
        why = (f"{len(with_code)} outbound call(s) carry a bizCode but none could be tied to "
               "its request (no traceparent continued, no single request in flight)"
               if with_code else "no outbound call or span biz.code was seen for the "
               "concurrent requests")
        return Finding.inconclusive(why, observed, expected, **evidence)
    return Finding.passed(f"{judged} of {len(reqs)} interleaved requests, each with its own "
                          f"bizCode ({len(others)} distinct): no leak", observed, expected,
                          **evidence)


def _untied_calls(records: list[DownstreamRecord],
                  reqs: list[RequestView]) -> list[DownstreamRecord]:
    """The sink records tied to no request that arrived while ``reqs`` were in flight."""
    lo = min(r.driver.t_send_ns for r in reqs)
    hi = max(r.driver.t_recv_ns or r.driver.t_send_ns for r in reqs)
    return [rec for rec in records if lo <= rec.t_ns <= hi]


@check("BC-003")
def span_biz_code(ctx: CheckContext) -> Finding:
    scenario = ctx.evidence.meta.scenario or {}
    view = view_of(ctx)
    reqs = [r for r in view.requests if r.span_certain]
    ambiguous = sum(1 for r in view.requests if r.span is not None and not r.span_certain)
    expected = {"span_attribute": f"{SPAN_ATTR} = the inbound bizCode trimmed, 'default' when "
                                  "missing"}
    if not reqs:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no server span was surely "
                                                  "joined to any request"),
                                    {"requests_with_span": 0, "ambiguous": ambiguous}, expected)
    missing, wrong = [], []
    for r in reqs:
        want = expected_biz_code(scenario, r.driver)
        got: Any = r.span.attributes.get(SPAN_ATTR)
        if got is None:
            missing.append(r.ref(expected=want))
        elif str(got) != want:
            wrong.append(r.ref(expected=want, span_biz_code=got))
    observed = {"requests_with_span": len(reqs), "missing": len(missing), "wrong": len(wrong),
                "ambiguous_not_judged": ambiguous}
    evidence = {"missing": missing[:SAMPLES], "wrong": wrong[:SAMPLES]}
    if missing or wrong:
        parts = []
        if wrong:
            w = wrong[0]
            parts.append(f"{len(wrong)} span(s) carry a wrong {SPAN_ATTR}, e.g. {w['case']}: "
                         f"expected {w['expected']!r}, span {w['span_biz_code']!r}")
        if missing:
            parts.append(f"{len(missing)} span(s) have no {SPAN_ATTR} attribute, e.g. "
                         f"{missing[0]['case']} (span {missing[0]['span']['span_id']})")
        return Finding.failed("; ".join(parts), observed, expected, **evidence)
    return Finding.passed(f"{len(reqs)} server spans carry their request's {SPAN_ATTR}",
                          observed, expected, **evidence)
