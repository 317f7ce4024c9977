"""TC-005: the span tree of every trace the driver's requests started is whole: no orphans,
no cycles, one server root per inbound request, children inside their parent (SHOULD)."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from agent.evidence import Span
from conformance.checks.tc import hex_windows
from conformance.index import put_one_or_many
from conformance.model import Finding
from conformance.registry import CheckContext, check
from conformance.telemetry import with_no_spans
from conformance.view import view_of

SAMPLES = 10
# Children may start or end this far outside their parent before it is noted (SHOULD only):
# spans of one process share its clock, so this covers rounding, not skew.
WINDOW_SLACK_NS = 1_000_000


def _span_ref(s: Span) -> dict[str, Any]:
    return {"trace_id": s.trace_id, "span_id": s.span_id, "parent_span_id": s.parent_span_id,
            "name": s.name, "kind": s.kind}


def _cycles(spans: dict[str, Span]) -> list[Span]:
    """Spans whose parent chain loops instead of reaching a root or a missing parent."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    looped: list[Span] = []
    for start in spans:
        path: list[str] = []
        sid: str | None = start
        while sid in spans and state.get(sid) is None:
            state[sid] = 1
            path.append(sid)
            sid = spans[sid].parent_span_id or None
        if sid in spans and state.get(sid) == 1:
            looped.append(spans[sid])
        for p in path:
            state[p] = 2
    return looped


def _values(index: dict[str, Any], key: str) -> list[str]:
    found = index.get(key)
    return [] if found is None else found if type(found) is list else [found]


def _holds(index: dict[str, Any], key: str, value: str) -> bool:
    found = index.get(key)
    return found == value or type(found) is list and value in found


def _sent_values(view: Any) -> dict[str, Any]:
    """Trace → the traceparent values sent by the requests whose server spans are in it."""
    sent_values: dict[str, Any] = {}
    for r in view.requests:
        # A server span parented to what the request carried (even an invalid value the
        # SUT wrongly accepted: TC-003's business) has a remote parent, not a lost one.
        if sent := r.driver.request_headers.get("traceparent", ""):
            for s in r.spans:
                put_one_or_many(sent_values, s.trace_id, sent)
    return sent_values


def _sent_parents(view: Any) -> dict[str, Any]:
    """Trace → the parent-id(s) the driver sent with it (see _add)."""
    sent_parents: dict[str, Any] = {}
    for r in view.requests:
        if r.driver.trace_id:
            put_one_or_many(sent_parents, r.driver.trace_id, r.driver.parent_id)
    return sent_parents


@check("TC-005")
def span_tree_integrity(ctx: CheckContext) -> Finding:
    view = view_of(ctx)
    # Indexes of every request, built at their first use: a conformant run never needs
    # them, as each server span's parent is what its own request sent.
    sent_parents: dict[str, Any] | None = None  # trace → parent-id(s) the driver sent
    # trace → traceparent values its server spans' requests carried: their hex windows join
    # the remote parents only when a span of the trace has a parent outside it.
    sent_values: dict[str, Any] | None = None
    widened: dict[str, set[str]] = {}  # trace → its remote parents, hex windows included
    owned: set[int] | None = None  # ids of the requests' server spans

    def is_remote(trace: str, parent: str) -> bool:
        nonlocal sent_parents, sent_values
        remote = widened.get(trace)
        if remote is not None:
            return parent in remote
        if sent_parents is None:
            sent_parents = _sent_parents(view)
        if _holds(sent_parents, trace, parent):
            return True
        if sent_values is None:
            sent_values = _sent_values(view)
        remote = widened[trace] = set(_values(sent_parents, trace))
        for value in _values(sent_values, trace):
            remote |= hex_windows(value, 16)
        return parent in remote

    def is_owned(s: Span) -> bool:
        nonlocal owned
        if owned is None:
            owned = {id(x) for r in view.requests for x in r.spans}
        return id(s) in owned

    by_trace = view.spans_by_trace
    expected = {"orphans": 0, "cycles": 0, "server_roots_per_request": 1,
                "extra_roots": 0, "duplicate_span_ids": 0}
    orphans, extra_roots, dup_ids, cycles, outside = [], [], [], [], []
    multi_root = [r for r in view.requests if len(r.spans) > 1]
    n_spans = n_traces = 0
    # Each trace a request started or its server spans are in, once, in the order the
    # requests were sent: not in a set's hash order, which at a million traces (far beyond
    # the CPU caches) touched every span at random and took twice the time. The findings
    # are put in trace-id order below, as if the traces had been sorted.
    seen: set[str] = set()
    for r in view.requests:
        d = r.driver
        for t in ([d.trace_id] if d.trace_id else []) + [s.trace_id for s in r.spans]:
            if t in seen:
                continue
            seen.add(t)
            spans = by_trace.get(t)
            if not spans:
                continue
            n_traces += 1
            n_spans += len(spans)
            if len(spans) == 1:  # the usual trace: its server span alone, no indexes needed
                s = spans[0]
                parent = s.parent_span_id
                if parent and parent == s.span_id:  # its own parent: a cycle of one
                    cycles.append(_span_ref(s))
                elif parent and not (t == d.trace_id and parent == d.parent_id
                                     or is_remote(t, parent)):
                    orphans.append(_span_ref(s))
                elif not (r.spans and r.spans[0] is s or any(x is s for x in r.spans)
                          or is_owned(s)):
                    extra_roots.append(_span_ref(s))  # a root that is no request's span
                continue
            by_id: dict[str, Span] = {}
            for s in spans:
                if s.span_id in by_id:
                    dup_ids.append(_span_ref(s))
                by_id[s.span_id] = s
            linked = False  # a parent chain inside the trace: only then can it loop
            for s in spans:
                parent = s.parent_span_id
                if parent and parent in by_id:
                    linked = True
                    p = by_id[parent]
                    if (s.start_ns < p.start_ns - WINDOW_SLACK_NS
                            or s.end_ns > p.end_ns + WINDOW_SLACK_NS):
                        outside.append({**_span_ref(s), "parent_name": p.name,
                                        "start_before_parent_us": (p.start_ns - s.start_ns) // 1000,
                                        "end_after_parent_us": (s.end_ns - p.end_ns) // 1000})
                elif parent and not (t == d.trace_id and parent == d.parent_id
                                     or is_remote(t, parent)):
                    orphans.append(_span_ref(s))
                elif not (any(x is s for x in r.spans) or is_owned(s)):
                    extra_roots.append(_span_ref(s))  # a root that is no request's span
            if linked:
                cycles += [_span_ref(s) for s in _cycles(by_id)]
    if not n_traces:
        return Finding.inconclusive(with_no_spans(ctx.evidence, "no span was exported for any "
                                                  "trace the driver's requests started"),
                                    {"traces": 0}, expected)
    for found in (orphans, extra_roots, dup_ids, cycles, outside):
        found.sort(key=itemgetter("trace_id"))  # stable: in-trace order kept
    observed = {"traces": n_traces, "spans": n_spans, "orphans": len(orphans),
                "cycles": len(cycles), "extra_roots": len(extra_roots),
                "requests_with_several_server_roots": len(multi_root),
                "duplicate_span_ids": len(dup_ids), "children_outside_parent_window": len(outside)}
    evidence = {"orphans": orphans[:SAMPLES], "cycles": cycles[:SAMPLES],
                "extra_roots": extra_roots[:SAMPLES], "duplicate_span_ids": dup_ids[:SAMPLES],
                "several_server_roots": [r.ref(span_ids=[s.span_id for s in r.spans])
                                         for r in multi_root[:SAMPLES]],
                "outside_parent_window (SHOULD)": outside[:SAMPLES]}
    problems = []
    if orphans:
        o = orphans[0]
        problems.append(f"{len(orphans)} orphan span(s), e.g. {o['name']!r} {o['span_id']} of "
                        f"trace {o['trace_id']} names parent {o['parent_span_id']}, which was "
                        "never exported")
    if cycles:
        problems.append(f"{len(cycles)} parent cycle(s), e.g. at span {cycles[0]['span_id']}")
    if extra_roots:
        e = extra_roots[0]
        problems.append(f"{len(extra_roots)} extra root span(s) in the requests' traces, e.g. "
                        f"{e['kind']} {e['name']!r} {e['span_id']} of trace {e['trace_id']}")
    if multi_root:
        r = multi_root[0]
        problems.append(f"{len(multi_root)} request(s) have several server roots, e.g. "
                        f"{r.case or r.driver.phase} {r.driver.method} {r.driver.path}")
    if dup_ids:
        problems.append(f"{len(dup_ids)} span id(s) appear twice in one trace")
    if problems:
        return Finding.failed("; ".join(problems), observed, expected, **evidence)
    note = (f"; {len(outside)} child span(s) outside their parent's window (SHOULD)"
            if outside else "")
    return Finding.passed(f"{n_traces} traces, {n_spans} spans: no orphan, no cycle, one "
                          f"server root per request{note}", observed, expected, **evidence)
