"""Kernel-truth checks on spans and the agent itself: KT-001 (span per request),
KT-003 (latency drift), KT-007 (agent self-loss). KT-002 lives in kt_metrics."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from agent.evidence import KernelRequest
from conformance.gate import agent_loss
from conformance.join import BASE_SLOP_NS, JOIN_KEYS, JOIN_UNJOINABLE, JoinedRequest
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.stats import describe, share_exceeded
from conformance.telemetry import with_no_spans

SAMPLE_LIMIT = 10
WORST_LIMIT = 5
P99_SHARE = 0.01  # a p99 budget: at most 1% of the requests beyond it


def _request_ref(r: JoinedRequest) -> dict[str, Any]:
    k = r.kernel
    return {"request": k.id, "trace_id": r.trace_id or None, "method": k.method,
            "target": k.target, "status": k.status}


@check("KT-001")
def one_server_span_per_request(ctx: CheckContext) -> Finding:
    j = ctx.joined
    budget = ctx.threshold("loss_budget_pct")
    # A caller that did not sample the request (trace-flags 00) lets a parent-based sampler
    # record nothing: no span is then the right answer, not a loss.
    unsampled = [r for r in j.answered
                 if not r.spans and r.traceparent is not None and not r.traceparent.sampled]
    skipped = {id(r) for r in unsampled}
    answered = [r for r in j.answered if id(r) not in skipped]
    # Requests whose span the join could not decide are neither lost nor joined.
    undecided = [r for r in answered if r.span_join == JOIN_UNJOINABLE]
    decided = [r for r in answered if r.span_join != JOIN_UNJOINABLE]
    n = len(decided)
    missing = [r for r in decided if not r.spans]
    dups = [r for r in decided if len(r.spans) + len(r.nested_spans) > 1]
    loss_pct = 100.0 * len(missing) / n if n else 0.0
    by = {key: 0 for key in JOIN_KEYS}
    for r in decided:
        if r.span_join in by:
            by[r.span_join] += 1
    observed = {
        "kernel_requests": n,
        "with_span": n - len(missing),
        "missing": len(missing),
        "duplicates": len(dups),
        "loss_pct": round(loss_pct, 6),
        **{f"joined_by_{key}": count for key, count in by.items()},
        "unjoinable": len(undecided),
        "unjoinable_spans": len(j.unjoinable_spans),
        "unanswered_excluded": len(j.requests) - len(j.answered),
        "unsampled_without_span_excluded": len(unsampled),
        "agent_requests_excluded": len(j.agent_requests),
        "server_spans_without_request": len(j.unjoined_spans),
    }
    expected = {"spans_per_request": 1, "loss_pct_max": budget, "duplicates": 0,
                "unjoinable": 0}
    evidence = {
        "missing_trace_ids": [r.trace_id for r in missing[:SAMPLE_LIMIT] if r.trace_id],
        "duplicate_trace_ids": [r.trace_id for r in dups[:SAMPLE_LIMIT] if r.trace_id],
        "missing_samples": [_request_ref(r) for r in missing[:SAMPLE_LIMIT]],
        "duplicate_samples": [
            {**_request_ref(r), "span_ids": [s.span_id for s in r.spans + r.nested_spans],
             "nested_span_ids": [s.span_id for s in r.nested_spans]}
            for r in dups[:SAMPLE_LIMIT]
        ],
        "unjoinable_samples": [_request_ref(r) for r in undecided[:SAMPLE_LIMIT]],
        "notes": list(j.notes),
    }
    if n == 0 and not undecided:
        return Finding.inconclusive(
            "the kernel saw no answered request under test: nothing to compare (did the "
            "driver reach the SUT's port?)", observed, expected, **evidence)
    problems = []
    if loss_pct > budget:
        problems.append(f"{len(missing)} of {n} requests ({loss_pct:.3g}%) have no server "
                        f"span, budget {budget:g}%")
    if dups:
        nested = sum(1 for r in dups if r.nested_spans)
        problems.append(f"{len(dups)} request(s) have 2 or more server spans"
                        + (f" ({nested} with a SERVER span nested inside the request's own: "
                           "instrumented twice?)" if nested else ""))
    if problems:
        return Finding.failed("; ".join(problems), observed, expected, **evidence)
    if undecided:
        # Lost or not, these could still break the budget: the check cannot vouch for them.
        total = n + len(undecided)
        worst = 100.0 * (len(missing) + len(undecided)) / total
        if worst > budget:
            return Finding.inconclusive(
                f"{len(undecided)} of {total} requests could not be joined to a span with "
                f"certainty: no identifier links them (no continued traceparent, no "
                f"User-Agent or client port recorded on the span) and "
                f"{len(j.unjoinable_spans)} candidate span(s) fit several of them within the "
                f"timing noise; the {n} decided have {len(missing)} missing",
                observed, expected, **evidence)
    if missing:
        return Finding.passed(f"{n - len(missing)} of {n} requests have one server span; "
                              f"{len(missing)} missing is within the {budget:g}% budget",
                              observed, expected, **evidence)
    return Finding.passed(f"{n} requests, one server span each", observed, expected,
                          **evidence)


def _served_alone(requests: list[KernelRequest]) -> set[str]:
    """Ids of the requests read while their process had no other request in flight.

    A request read while the process still serves others may wait for them before its
    handler (and span) starts: an event loop reads eagerly and runs handlers one after the
    other; a thread pool may be full. That wait is queueing, not time the instrumentation
    hides, and it grows with the host's load.
    """
    alone: set[str] = set()
    by_tgid: dict[int, list[KernelRequest]] = defaultdict(list)
    for k in requests:
        by_tgid[k.tgid].append(k)
    for reqs in by_tgid.values():
        busy_until = 0
        for k in sorted(reqs, key=lambda k: k.t_req_first):
            if k.t_req_first >= busy_until:
                alone.add(k.id)
            busy_until = max(busy_until, k.t_resp_last or k.t_req_first)
    return alone


@check("KT-003")
def latency_drift(ctx: CheckContext) -> Finding:
    budget_us = ctx.threshold("drift_p99_ms") * 1000.0
    j = ctx.joined
    rows = []
    for r in j.answered:
        if len(r.spans) != 1:  # missing or duplicated spans are KT-001's business
            continue
        k, s = r.kernel, r.spans[0]
        if k.t_resp_last is None or k.duration_ns is None:  # not answered
            continue
        rows.append((r, (k.duration_ns - s.duration_ns) / 1000.0,
                     (s.start_ns - k.t_req_first) / 1000.0,
                     (k.t_resp_last - s.end_ns) / 1000.0))
    expected = {"abs_p99_drift_us_max": budget_us, "judged": "requests served alone",
                "beyond_budget": f"at most {P99_SHARE:.0%} (one-sided binomial test, 95%)"}
    if not rows:
        return Finding.inconclusive(with_no_spans(
            ctx.evidence, "no answered request is joined to exactly one server span: no "
            "drift to measure (see KT-001)"), {"drift_us": describe([])}, expected)
    alone_ids = _served_alone([r.kernel for r in j.requests] + j.agent_requests)
    judged = [row for row in rows if row[0].kernel.id in alone_ids]
    queued = [row for row in rows if row[0].kernel.id not in alone_ids]
    notes = []
    if not judged:  # nothing was ever served alone: judge them all rather than nothing
        judged, queued = rows, []
        notes.append("no request was served alone: all are judged, queueing included")
    drift = describe([row[1] for row in judged])
    observed = {
        "drift_us": drift,
        "start_offset_us": describe([row[2] for row in judged]),
        "end_offset_us": describe([row[3] for row in judged]),
        "served_alone": len(judged),
        "concurrent_drift_us": describe([row[1] for row in queued]),
    }
    worst = sorted(judged, key=lambda row: abs(row[1]), reverse=True)[:WORST_LIMIT]
    evidence = {"worst": [
        {**_request_ref(r), "kernel_duration_us": round(r.kernel.duration_ns / 1000.0, 1),
         "span_duration_us": round(r.spans[0].duration_ns / 1000.0, 1),
         "drift_us": round(d, 1), "start_offset_us": round(so, 1),
         "end_offset_us": round(eo, 1)}
        for r, d, so, eo in worst
    ], "notes": notes}
    p99 = float(drift["p99"] or 0.0)
    beyond = sum(1 for row in judged if abs(row[1]) > budget_us)
    observed["beyond_budget"] = beyond
    summary = (f"drift p99 {p99:.0f} us (p50 {drift['p50']:.0f}, max {drift['max']:.0f}) "
               f"over {drift['samples']} requests")
    if queued:
        cp99 = float(observed["concurrent_drift_us"]["p99"] or 0.0)
        summary += (f" served alone ({len(queued)} concurrent ones, p99 {cp99:.0f} us, may "
                    "include queueing ahead of the handler: not judged)")
        notes.append(f"{len(queued)} request(s) were read while their process served others: "
                     f"their drift (p99 {cp99:.0f} us) may include queueing before the "
                     "handler started (event loop, full thread pool); not judged")
    if share_exceeded(beyond, len(judged), P99_SHARE):
        return Finding.failed(f"{summary}: {beyond} beyond +/-{budget_us:.0f} us, more than "
                              f"{P99_SHARE:.0%} of them; the span misses time the kernel saw",
                              observed, expected, **evidence)
    if beyond:
        notes.append(f"{beyond} request(s) beyond +/-{budget_us:.0f} us: not more than "
                     f"{P99_SHARE:.0%} of {len(judged)} at 95% confidence (sporadic outliers, "
                     "e.g. the process waited for a CPU or the GIL)")
        return Finding.passed(f"{summary}: {beyond} beyond +/-{budget_us:.0f} us, sporadic "
                              f"(not more than {P99_SHARE:.0%} at 95% confidence)",
                              observed, expected, **evidence)
    return Finding.passed(f"{summary}, within +/-{budget_us:.0f} us", observed, expected,
                          **evidence)


_ADVICE = {
    "ring_drops": "a bigger --ringbuf-pages or a lower load (--concurrency, --requests)",
    "truncated_captures": "a bigger --capture-bytes",
    "map_full": "a bigger --max-connections or a lower --concurrency",
    "other_loss": "see kernel_stats in the run's meta.json (records that did not decode or scan)",
}


@check("KT-007", runs_on_agent_loss=True)
def agent_lost_nothing(ctx: CheckContext) -> Finding:
    # SPEC §3: after a loss the agent counted, kernel-truth results are inconclusive, never
    # pass or fail: KT-007 included, so a lossy run exits 3 (rerun bigger), not 2. What
    # fails is a loss nothing counted: answers the driver got that the kernel never saw.
    meta = ctx.evidence.meta
    counters, missing = agent_loss(meta)
    expected = {name: 0 for name in (*counters, *missing)}
    stats = meta.kernel_stats or {}
    sizes = stats.get("sizes") if isinstance(stats.get("sizes"), dict) else {}
    evidence = {"capture_bytes": meta.capture_bytes, "sizes": dict(sizes)}
    if missing:
        return Finding.inconclusive(
            f"the agent did not report {', '.join(missing)}: its loss is unknown",
            counters, expected, **evidence)
    lost = {k: v for k, v in counters.items() if v}
    if lost:
        detail = ", ".join(f"{k}={v}" for k, v in lost.items())
        advice = "; ".join(_ADVICE[k] for k in lost)
        return Finding.inconclusive(
            f"the agent lost kernel events ({detail}): kernel truth is incomplete, so every "
            f"KT result is inconclusive; rerun with {advice}", counters, expected, **evidence)
    unseen = [d for d in ctx.joined.unmatched_driver if d.status is not None]
    observed = {**counters, "driver_answers_unseen": len(unseen)}
    expected["driver_answers_unseen"] = 0
    slop = BASE_SLOP_NS + int(meta.clock.get("uncertainty_ns") or 0)
    paired = _unpaired_kernel_requests(unseen, ctx.joined.requests, slop) if unseen else []
    if paired:
        # The kernel saw a request then that no driver record joined (a target recorded
        # otherwise than sent, a proxy rewriting it): seen, only not paired by the agent.
        taken = {id(d) for d, _ in paired}
        unseen = [d for d in unseen if id(d) not in taken]
        observed.update(driver_answers_unseen=len(unseen), driver_answers_unpaired=len(paired))
        evidence["unpaired"] = [{"seq": d.seq, "driver": f"{d.method} {d.path}",
                                 "kernel": f"{k.method} {k.target}", "request": k.id}
                                for d, k in paired[:SAMPLE_LIMIT]]
    if unseen:
        evidence["samples"] = [{"seq": d.seq, "method": d.method, "path": d.path,
                                "status": d.status, "trace_id": d.trace_id or None}
                               for d in unseen[:SAMPLE_LIMIT]]
        blind = _server_blind_connections(stats)
        if blind:
            return Finding.inconclusive(
                f"{len(unseen)} answer(s) the driver got were not seen by the kernel, and "
                f"{blind} server connection(s) were not readable (TLS, HTTP/2, other): "
                "kernel truth cannot cover them", observed, expected, **evidence)
        return Finding.failed(
            f"{len(unseen)} answer(s) the driver got were never seen by the kernel in the "
            "target, and the agent counted no loss: its view is incomplete (the URL is "
            "answered by a process outside the target, or requests were missed silently)",
            observed, expected, **evidence)
    if paired:
        d, k = paired[0]
        return Finding.inconclusive(
            f"{len(paired)} answer(s) the driver got joined no kernel request, but the kernel "
            "saw as many requests under test at those times that joined no driver record (e.g. "
            f"driver {d.method} {d.path}, kernel {k.method} {k.target}): the agent could not "
            "pair them; no evidence against the SUT", observed, expected, **evidence)
    return Finding.passed("no ring-buffer drop, truncated capture or full map; the kernel saw "
                          "every answer the driver got", observed, expected, **evidence)


def _unpaired_kernel_requests(unseen: list[Any], requests: list[JoinedRequest], slop: int
                              ) -> list[tuple[Any, KernelRequest]]:
    """Driver records the join left alone, each with a kernel request under test that no
    driver record joined, of its method and arriving inside its send/receive window (each
    kernel request used once, the earliest first): the kernel saw them, the join failed."""
    free = sorted((r.kernel for r in requests if r.driver is None), key=lambda k: k.t_req_first)
    used: set[int] = set()
    out = []
    for d in sorted(unseen, key=lambda d: d.t_send_ns):
        lo, hi = d.t_send_ns - slop, (d.t_recv_ns or d.t_send_ns) + slop
        for i in range(bisect.bisect_left(free, lo, key=lambda k: k.t_req_first), len(free)):
            k = free[i]
            if k.t_req_first > hi:
                break
            if i not in used and k.method == d.method.upper():
                used.add(i)
                out.append((d, k))
                break
    return out


def _server_blind_connections(stats: dict[str, Any]) -> int:
    """Server-side connections the agent could not read (TLS, HTTP/2, other protocols)."""
    blind = stats.get("blind_spots") if isinstance(stats.get("blind_spots"), dict) else {}
    server = (blind.get("by_role") or {}).get("server") or {}
    return sum(v for v in server.values() if isinstance(v, int) and not isinstance(v, bool))
