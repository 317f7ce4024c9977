"""Trace-context checks TC-001..TC-004 (W3C Trace Context level 1 on the wire): the server span
continues a valid traceparent, outbound calls carry the trace, invalid values restart it,
and the trace-ids the SUT makes up are valid and unique. ``@harness`` cases (the SUT's W3C
test-harness endpoint) are judged by their callbacks to the sink (``tc_harness``)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from agent.tracecontext import TraceParent, is_valid_trace_id, parse_traceparent
from conformance.checks.tc_harness import (
    HARNESS_SUFFIX, HOW_CALLBACK, callback_gap, harness_callbacks, is_callback, is_harness, tracestate_problems,
)
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.scenario import fanout_routes
from conformance.telemetry import with_no_spans
from conformance.view import SOURCE_DOWNSTREAM, Outbound, RequestView, View, view_of

SAMPLES = 10
_HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")


def outbound_traceparent(o: Outbound) -> tuple[TraceParent | None, str]:
    """The one valid traceparent of an outbound call, else None and what is wrong."""
    values = o.values("traceparent")
    if not values:
        return None, "no traceparent"
    if len(values) > 1:
        return None, f"{len(values)} traceparent headers"
    tp = parse_traceparent(values[0])
    return (tp, "") if tp else (None, f"invalid traceparent {values[0]!r}")


def forwarded_verbatim(o: Outbound, sent: str) -> bool:
    """The outbound call carries the inbound traceparent field(s) byte for byte: a proxy
    passing headers through, not a tracer (which would put its own span in)."""
    values = [v.strip() for v in o.values("traceparent")]
    return bool(values and sent) and [x.strip() for x in ",".join(values).split(",")] == \
        [x.strip() for x in sent.split(",")]


def hex_windows(text: str, width: int) -> set[str]:
    """Every ``width``-long hex window of the hex runs in ``text``, lower-cased: what a
    receiver could have taken as a trace-id (32) or parent-id (16) from a broken value."""
    out: set[str] = set()
    for run in _HEX_RUN.findall(text):
        run = run.lower()
        out.update(run[i:i + width] for i in range(len(run) - width + 1))
    return out


def _unexported_parent(view: View, trace_id: str, parent_id: str) -> bool:
    """The SUT exported spans of the trace, none of them ``parent_id`` (a scan, not a dict
    per call: a trace holds a few spans, a run a million calls)."""
    spans = view.spans_by_trace.get(trace_id)
    return bool(spans) and all(s.span_id != parent_id for s in spans)


def outbound_of(ctx: CheckContext, r: RequestView) -> list[Outbound]:
    """The callbacks of an ``@harness`` case, else the request's outbound witnesses."""
    return harness_callbacks(ctx, r) if is_harness(r) else r.witnesses


def _wire_continues(ctx: CheckContext, r: RequestView) -> bool | None:
    """For an ``@harness`` case without a server span: do its callbacks keep the inbound
    trace-id (True), start another trace (False), or show none (None: TC-002's business)?"""
    tps = [outbound_traceparent(o)[0] for o in harness_callbacks(ctx, r)] if is_harness(r) else []
    tps = [tp for tp in tps if tp is not None]
    if not tps:
        return None
    return all(tp.trace_id == r.driver.trace_id for tp in tps)


def _outbound_ref(o: Outbound) -> dict[str, Any]:
    return {"witness": o.witness, "outbound": f"{o.method} {o.path}",
            "traceparent": o.values("traceparent"), "tracestate": o.values("tracestate")}


@check("TC-001")
def server_span_continues_context(ctx: CheckContext) -> Finding:
    view = view_of(ctx)
    valid = [r for r in view.requests if r.driver.trace_id]
    expected = {"server_span": "trace_id = inbound trace-id, parent_span_id = inbound parent-id"}
    if not valid:
        return Finding.skipped("the driver sent no valid traceparent: nothing to continue")
    continued, broken, without, wire_kept, wire_broken = [], [], [], [], []
    for r in valid:
        d = r.driver
        if (d.trace_id, d.parent_id) in view.spans_by_key:
            continued.append(r)
        elif r.spans:
            broken.append(r)
        elif (kept := _wire_continues(ctx, r)) is not None:
            (wire_kept if kept else wire_broken).append(r)
        else:
            without.append(r)
    observed = {"requests_with_valid_traceparent": len(valid), "continued": len(continued),
                "not_continued": len(broken), "no_server_span": len(without),
                "harness_judged_on_the_wire": len(wire_kept) + len(wire_broken)}
    evidence = {
        "failures": [r.ref(expected_trace_id=r.driver.trace_id,
                           expected_parent_span_id=r.driver.parent_id) for r in broken[:SAMPLES]]
        + [r.ref(expected_trace_id=r.driver.trace_id,
                 callbacks=[_outbound_ref(o) for o in harness_callbacks(ctx, r)])
           for r in wire_broken[:SAMPLES]],
        "no_span_samples": [r.ref() for r in without[:SAMPLES]],
        "notes": ["requests without any server span are KT-001's business (or unsampled)"]
        if without else [],
    }
    if broken:
        r = broken[0]
        return Finding.failed(
            f"{len(broken)} of {len(valid)} requests with a valid traceparent got a server span "
            f"that does not continue it, e.g. {r.case or r.driver.phase}: sent "
            f"{r.driver.request_headers.get('traceparent')}, span trace_id {r.span.trace_id} "
            f"parent {r.span.parent_span_id or '(none)'}", observed, expected, **evidence)
    if wire_broken:
        r = wire_broken[0]
        got = harness_callbacks(ctx, r)[0].values("traceparent")
        return Finding.failed(
            f"{len(wire_broken)} harness case(s) without a server span called back in another "
            f"trace, e.g. {r.case}: sent {r.driver.request_headers.get('traceparent')}, "
            f"callback traceparent {got}", observed, expected, **evidence)
    if not continued and not wire_kept:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no server span was exported "
                                                  "for any request that sent a valid "
                                                  "traceparent"), observed, expected, **evidence)
    wire = f"; {len(wire_kept)} harness case(s) without a span kept it on the wire" if wire_kept else ""
    return Finding.passed(f"{len(continued)} server spans continue the inbound traceparent "
                          f"(trace-id kept, parent = inbound parent-id){wire}", observed,
                          expected, **evidence)


def _judge_outbound(view: View, r: RequestView, o: Outbound) -> list[str]:
    """What is wrong with one outbound call of request ``r`` (TC-002)."""
    tp, why = outbound_traceparent(o)
    if tp is None:
        return [why]
    d = r.driver
    problems = []
    if d.trace_id:
        if tp.trace_id != d.trace_id:
            problems.append(f"trace-id {tp.trace_id} is not the inbound {d.trace_id}")
        if tp.parent_id == d.parent_id:
            problems.append("parent-id is still the caller's (not updated to a span of the SUT)")
    elif r.span is not None and tp.trace_id != r.span.trace_id:
        problems.append(f"trace-id {tp.trace_id} is not the server span's {r.span.trace_id}")
    if _unexported_parent(view, tp.trace_id, tp.parent_id):
        problems.append(f"parent-id {tp.parent_id} is no span the SUT exported for the trace")
    if d.trace_id:  # with a new trace (no valid traceparent) the inbound tracestate goes too
        problems += tracestate_problems(d.request_headers.get("tracestate"), o.values("tracestate"))
    return problems


@check("TC-002")
def outbound_carries_context(ctx: CheckContext) -> Finding:
    view = view_of(ctx)
    fan = [r for r in view.requests if r.fanout or is_harness(r)]
    expected = {"outbound": "one valid traceparent, same trace-id, parent-id = a span of the "
                            "SUT; tracestate members forwarded in order",
                "harness": "one callback per url the harness endpoint was given"}
    if not fan:
        routes = fanout_routes(ctx.evidence.meta.scenario or {})
        return Finding.skipped("no request went to a fan-out route (scenario fanout.routes: "
                               f"{routes or 'none'}): no outbound call to check")
    failures, witnessed, unwitnessed, calls, gaps = [], 0, [], 0, 0
    witnesses: dict[str, int] = defaultdict(int)
    harness = [r for r in fan if is_harness(r)]
    for r in fan:
        outs = outbound_of(ctx, r)
        if is_harness(r) and (gap := callback_gap(ctx, r)):
            gaps += 1
            failures.append(r.ref(problems=[gap], witness=f"{SOURCE_DOWNSTREAM} ({HOW_CALLBACK})",
                                  outbound="(none)", traceparent=[], tracestate=[]))
        if not outs:
            if not is_harness(r):
                unwitnessed.append(r)
            continue
        witnessed += 1
        for o in outs:
            calls += 1
            witnesses[o.witness] += 1
            problems = _judge_outbound(view, r, o)
            if problems:
                failures.append(r.ref(problems=problems, **_outbound_ref(o)))
    harness_failures = [f for f in failures if f["case"].endswith(HARNESS_SUFFIX)]
    observed = {"fanout_requests": len(fan), "witnessed": witnessed,
                "unwitnessed": len(unwitnessed), "outbound_calls": calls,
                "calls_failing": len(failures), "witnesses": dict(witnesses),
                "harness_cases": len(harness), "harness_cases_missing_callbacks": gaps,
                "harness_calls_failing": len(harness_failures),
                "unattributed_downstream_records": sum(not is_callback(x) for x in view.unattributed)}
    evidence = {"failures": failures[:SAMPLES],
                "harness_failures": harness_failures[:SAMPLES],
                "unwitnessed_samples": [r.ref() for r in unwitnessed[:SAMPLES]]}
    if failures:
        f = failures[0]
        return Finding.failed(
            f"{len(failures)} of {calls + gaps} outbound calls break propagation, e.g. {f['case']}: "
            f"sent {f['traceparent_sent']}, outbound ({f['witness']}) traceparent "
            f"{f['traceparent'] or '(none)'}: {f['problems'][0]}", observed, expected, **evidence)
    if not witnessed:
        return Finding.inconclusive(
            f"none of {len(fan)} fan-out requests was seen calling out (no kernel client "
            "request, no downstream sink record): does the SUT call OBSCONFORM_DOWNSTREAM_URL?",
            observed, expected, **evidence)
    return Finding.passed(f"{calls} outbound calls of {witnessed} requests carry the trace "
                          f"(witness: {', '.join(sorted(witnesses))})", observed, expected,
                          **evidence)


@check("TC-003")
def invalid_traceparent_restarts(ctx: CheckContext) -> Finding:
    view = view_of(ctx)
    invalid = view.where("tc/invalid/")
    expected = {"server_span": "new trace-id (none sent), no parent from the header",
                "outbound": "traceparent with a new trace-id and a new parent-id, the trace-id "
                            "of the new server span"}
    if not invalid:
        return Finding.skipped("the driver sent no invalid traceparent (no tc/invalid/* case)")
    failures, judged, by_variant = [], 0, defaultdict(lambda: {"judged": 0, "failed": 0})
    for r in invalid:
        sent = r.driver.request_headers.get("traceparent", "")
        tids, pids = hex_windows(sent, 32), hex_windows(sent, 16)
        problems, seen = [], False
        if r.span is not None:
            seen = True
            if r.span.trace_id.lower() in tids:
                problems.append(f"server span continues the invalid trace-id {r.span.trace_id}")
            if r.span.parent_span_id and r.span.parent_span_id.lower() in pids:
                problems.append(f"server span's parent is the invalid parent-id "
                                f"{r.span.parent_span_id}")
        outs = outbound_of(ctx, r)
        for o in outs:
            if forwarded_verbatim(o, sent):
                seen = True
                problems.append(f"outbound ({o.witness}) forwards the invalid traceparent "
                                "unchanged: no new trace was started")
                continue
            tp, _ = outbound_traceparent(o)
            if tp is None:
                continue  # no or broken outbound traceparent: TC-002 says so
            seen = True
            if tp.trace_id in tids:
                problems.append(f"outbound ({o.witness}) continues the invalid trace-id")
            if tp.parent_id in pids:
                problems.append(f"outbound ({o.witness}) parent-id is the inbound {tp.parent_id}")
            if r.span is not None and tp.trace_id != r.span.trace_id:
                problems.append(f"outbound trace-id {tp.trace_id} is not the new trace "
                                f"{r.span.trace_id} of the server span")
        variant = r.case.removeprefix("tc/invalid/")
        if seen:
            judged += 1
            by_variant[variant]["judged"] += 1
        if problems:
            by_variant[variant]["failed"] += 1
            failures.append(r.ref(problems=problems, outbound=[_outbound_ref(o) for o in outs]))
    observed = {"invalid_requests": len(invalid), "judged": judged, "failed": len(failures),
                "by_variant": {k: dict(v) for k, v in sorted(by_variant.items())}}
    evidence = {"failures": failures[:SAMPLES],
                "notes": ["duplicate-header follows the W3C level 1 test harness "
                          "(test_traceparent_duplicated): two traceparent fields combine per "
                          "RFC 7230 3.2.2 into a value that is not valid, so neither trace "
                          "may be continued"]}
    if failures:
        f = failures[0]
        return Finding.failed(f"{len(failures)} of {len(invalid)} invalid traceparent requests "
                              f"were continued, e.g. {f['case']}: sent {f['traceparent_sent']!r}: "
                              f"{f['problems'][0]}", observed, expected, **evidence)
    if not judged:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no server span or outbound "
                                                  "traceparent was seen for any invalid "
                                                  "traceparent request"),
                                    observed, expected, **evidence)
    return Finding.passed(f"{judged} requests with invalid traceparent variants "
                          f"({len(by_variant)} kinds) started a new trace", observed, expected,
                          **evidence)


@check("TC-004")
def generated_trace_ids_valid_unique(ctx: CheckContext) -> Finding:
    view = view_of(ctx)
    started = [r for r in view.requests if not r.driver.trace_id]
    expected = {"trace_id": "32 lower-case hex, not all zero, one per request"}
    if not started:
        return Finding.skipped("every request carried a valid traceparent: the SUT had no trace "
                               "to start")
    sent = {r.driver.trace_id for r in view.requests if r.driver.trace_id}
    owners: dict[str, list[RequestView]] = defaultdict(list)
    invalid, seen, verbatim = [], 0, 0
    for r in started:
        ids = {s.trace_id for s in r.spans}
        for o in outbound_of(ctx, r):
            if forwarded_verbatim(o, r.driver.request_headers.get("traceparent", "")):
                verbatim += 1  # the driver's own (invalid) header passed through: TC-003's
                continue
            values = o.values("traceparent")
            if len(values) == 1 and len(values[0].split("-")) >= 2:
                ids.add(values[0].strip().split("-")[1])
        if ids:
            seen += 1
        for tid in ids:
            owners[tid].append(r)
            if not is_valid_trace_id(tid):
                invalid.append(r.ref(generated_trace_id=tid))
    dup = {tid: rs for tid, rs in owners.items() if len(rs) > 1 or tid in sent}
    observed = {"requests_without_valid_traceparent": len(started), "with_generated_id": seen,
                "distinct_ids": len(owners), "invalid": len(invalid), "duplicated_ids": len(dup),
                "outbound_forwarding_inbound_verbatim": verbatim}
    evidence = {
        "invalid": invalid[:SAMPLES],
        "duplicates": [{"trace_id": tid, "requests": [r.ref() for r in rs[:5]],
                        "also_sent_by_the_driver": tid in sent}
                       for tid, rs in list(dup.items())[:SAMPLES]],
    }
    if invalid or dup:
        parts = []
        if invalid:
            parts.append(f"{len(invalid)} generated trace-id(s) are not valid, e.g. "
                         f"{invalid[0]['generated_trace_id']!r} ({invalid[0]['case']})")
        if dup:
            tid, rs = next(iter(dup.items()))
            parts.append(f"{len(dup)} trace-id(s) serve several requests, e.g. {tid} for "
                         f"{len(rs)} requests ({', '.join(sorted({x.case for x in rs})[:3])})")
        return Finding.failed("; ".join(parts), observed, expected, **evidence)
    if not seen:
        passed_on = (f" ({verbatim} outbound call(s) only forwarded the inbound traceparent "
                     "unchanged, see TC-003)" if verbatim else "")
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no server span or outbound "
                                                  "call shows a trace-id the SUT generated"
                                                  + passed_on), observed, expected, **evidence)
    return Finding.passed(f"{len(owners)} generated trace-ids for {seen} requests: valid and "
                          "unique", observed, expected, **evidence)
