"""Join the three views of each request: kernel ↔ driver record ↔ server span (+ its client
spans and the outbound requests the kernel saw it make).

Primary key: the traceparent captured on the wire. A SERVER span belongs to a kernel request
when ``span.trace_id`` is the inbound trace-id and ``span.parent_span_id`` the inbound
parent-id. Requests without a valid inbound traceparent, or whose context the SUT did not
continue, are joined best effort to the remaining SERVER spans by method, path (or route
template) and time overlap; ``JoinedRequest.span_join`` says which way each one was joined.
A SERVER span left over whose parent chain reaches a joined server span is a nested
duplicate of that request (``nested_spans``), not a span without a request.
Everything is indexed in dicts so the join stays O(n) for large runs; the span index it
builds (``SpanIndex``) is kept on ``Joined`` for the driver view, which needs the same one.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from agent.evidence import AGENT_USER_AGENT, DriverRecord, Evidence, KernelRequest, Span
from agent.tracecontext import TraceParent, parse_traceparent
from conformance.httpsem import route_matches, span_method, span_path, span_route
from conformance.index import EMPTY, SpanIndex, appended, empty, index_spans, put_one_or_many

JOIN_TRACEPARENT = "traceparent"
JOIN_HEURISTIC = "heuristic"
# Time slack for overlap matching on top of the measured clock-conversion uncertainty.
BASE_SLOP_NS = 1_000_000


@dataclass(slots=True)
class JoinedRequest:
    """One kernel-observed server request and everything joined to it.

    List fields nothing was joined to hold the shared read-only ``EMPTY``; ``spans`` of a
    span alone in its trace is the span index's list of that trace. All are read-only."""

    kernel: KernelRequest
    traceparent_values: list[str]  # raw header values as captured (several = duplicated)
    spans: list[Span] = field(default_factory=empty)  # SERVER spans joined to it
    # Further SERVER spans inside one of ``spans``' subtrees (double instrumentation, e.g.
    # framework and WSGI middleware): duplicates of this request, not requests of their own.
    nested_spans: list[Span] = field(default_factory=empty)
    span_join: str = ""  # JOIN_TRACEPARENT | JOIN_HEURISTIC | "" (no span)
    driver: DriverRecord | None = None
    client_spans: list[Span] = field(default_factory=empty)  # CLIENT descendants
    outbound: list[KernelRequest] = field(default_factory=empty)  # parent_request == this

    @property
    def traceparent(self) -> TraceParent | None:
        """The valid inbound traceparent, else None. Parsed on each call, not kept: only the
        join needs it for every request, and a million of them took 350 MB."""
        values = self.traceparent_values
        return parse_traceparent(values[0]) if len(values) == 1 else None

    @property
    def answered(self) -> bool:
        return self.kernel.status is not None and self.kernel.t_resp_last is not None

    @property
    def trace_id(self) -> str:
        """The inbound trace-id, else the trace-id of the joined span, else ""."""
        if tp := self.traceparent:
            return tp.trace_id
        return self.spans[0].trace_id if self.spans else ""


@dataclass
class Joined:
    """The join of one run's evidence, read by every check."""

    requests: list[JoinedRequest]  # server requests under test, in kernel order
    agent_requests: list[KernelRequest]  # the agent's own scrapes and probes (excluded)
    agent_spans: list[Span]  # SERVER spans of the agent's own requests
    unjoined_spans: list[Span]  # SERVER spans that match no kernel request
    unattributed_outbound: list[KernelRequest]  # client requests of no request under test
    unmatched_driver: list[DriverRecord]  # driver records the kernel did not see
    heuristic_joins: int = 0
    notes: list[str] = field(default_factory=list)
    span_index: SpanIndex | None = None  # every span indexed (the view reuses it)
    # Found once: half the checks ask, and a million requests take a while to filter.
    _answered: tuple[JoinedRequest, ...] | None = field(default=None, init=False, repr=False,
                                                         compare=False)

    @property
    def answered(self) -> list[JoinedRequest]:
        """Requests the SUT answered (a final status on the wire); a new list each time."""
        if self._answered is None:
            self._answered = tuple(r for r in self.requests if r.answered)
        return list(self._answered)


def is_agent_request(req: KernelRequest) -> bool:
    ua = req.header("user-agent") or ""
    return ua.startswith(AGENT_USER_AGENT)


def _answered(r: JoinedRequest) -> bool:
    return r.kernel.status is not None and r.kernel.t_resp_last is not None


def join(evidence: Evidence) -> Joined:
    """Join one run's evidence; see the module docstring for the rules."""
    uncertainty = int(evidence.meta.clock.get("uncertainty_ns") or 0)
    slop = BASE_SLOP_NS + uncertainty
    under_test: list[JoinedRequest] = []
    agent: list[JoinedRequest] = []
    # "trace-id-parent-id" of each request's valid traceparent, else None, in the order of
    # under_test and agent: the join's keys, dropped once spans are joined by them (see
    # JoinedRequest and _driver_key). One string each, not a tuple of two: 110 MB less at
    # a million requests. Unambiguous: a valid trace-id is 32 hex digits, no "-".
    test_keys: list[str | None] = []
    agent_keys: list[str | None] = []
    client_reqs: list[KernelRequest] = []
    for k in sorted(evidence.kernel, key=attrgetter("t_req_first")):
        if k.direction != "server":
            client_reqs.append(k)
            continue
        headers = k.headers
        values = headers.get("traceparent", EMPTY)
        tp = parse_traceparent(values[0]) if len(values) == 1 else None
        # The captured list itself, not a copy: evidence is read-only once loaded.
        jr = JoinedRequest(k, values if isinstance(values, list) else list(values),
                           EMPTY, EMPTY, "", None, EMPTY, EMPTY)
        ua = headers.get("user-agent")  # is_agent_request, inlined: a million calls
        is_agent = ua and (ua[0] or "").startswith(AGENT_USER_AGENT)
        (agent if is_agent else under_test).append(jr)
        (agent_keys if is_agent else test_keys).append(
            f"{tp.trace_id}-{tp.parent_id}" if tp else None)

    index = index_spans(evidence.spans)
    server_spans = [s for s in evidence.spans if s.kind == "SERVER"]
    reqs_by_key = _by_key(under_test + agent, test_keys + agent_keys)
    del test_keys, agent_keys
    pool = _join_by_traceparent(reqs_by_key, server_spans, index.by_trace)
    del reqs_by_key
    # Exact kernel windows first, the slop after: otherwise a request without a span (not
    # sampled, lost) takes the span of the request that arrived just after its response.
    heuristic = 0
    for group in (under_test, agent):
        if not pool:
            break
        for window in (uncertainty, slop):
            n = _join_by_overlap([r for r in group if not r.spans and _answered(r)], pool,
                                 window)
            heuristic += n if group is under_test else 0
    unjoined = _attach_nested(under_test + agent, evidence.spans,
                              [s for s in server_spans if id(s) in pool]) if pool else []

    unmatched_driver = _join_driver(under_test, evidence.driver, slop)
    unattributed = []
    if client_reqs:
        by_id = {r.kernel.id: r for r in under_test}
        for c in client_reqs:
            parent = by_id.get(c.parent_request or "")
            if parent is None:
                unattributed.append(c)
            else:
                parent.outbound = appended(parent.outbound, c)
    _attach_client_spans(under_test, index)

    notes = []
    if heuristic:
        notes.append(f"{heuristic} request(s) joined to spans by method, path and time "
                     "(no continued trace context): best effort")
    return Joined(
        requests=under_test, agent_requests=[r.kernel for r in agent],
        agent_spans=[s for r in agent for s in r.spans], unjoined_spans=unjoined,
        unattributed_outbound=unattributed, unmatched_driver=unmatched_driver,
        heuristic_joins=heuristic, notes=notes, span_index=index,
    )


def _by_key(requests: list[JoinedRequest], keys: list[str | None]) -> dict[str, Any]:
    """Key → its request, or the list of them when a resent header shares the key."""
    reqs_by_key: dict[str, Any] = {}
    for r, key in zip(requests, keys):
        if key is not None:
            put_one_or_many(reqs_by_key, key, r)
    return reqs_by_key


def _join_by_traceparent(reqs_by_key: dict[str, Any], spans: list[Span],
                         by_trace: dict[str, list[Span]]) -> dict[int, Span]:
    """Attach spans keyed by (inbound trace-id, parent-id) (see _by_key); return the
    unjoined span pool (grouped by key in order of first appearance, each group in export
    order)."""
    left: dict[tuple[str, str], list[Span]] = {}
    for s in spans:
        trace, parent = s.trace_id, s.parent_span_id
        # Only strings can be a traceparent's ids (a malformed export's number must not
        # read as hex digits).
        reqs = reqs_by_key.get(f"{trace}-{parent}") \
            if type(trace) is str and type(parent) is str else None
        if reqs is None:
            left.setdefault((trace, parent), []).append(s)
            continue
        # One request per key is the norm; a resent header shares the key, so each span
        # goes to the request whose time window it starts in (else the nearest).
        target = reqs if type(reqs) is not list else min(reqs, key=lambda r: _distance(r, s))
        target.spans = _plus(target.spans, s, by_trace)
        target.span_join = JOIN_TRACEPARENT
    return {id(s): s for group in left.values() for s in group}


def _plus(spans: list[Span], s: Span, by_trace: dict[str, list[Span]]) -> list[Span]:
    """``spans`` and ``s``, never appended in place: the first span of a request is the span
    index's own list when it is alone in its trace (a million one-span lists less; the view
    takes the same list), which must not grow."""
    if spans is EMPTY:
        group = by_trace.get(s.trace_id)
        return group if group is not None and len(group) == 1 and group[0] is s else [s]
    return [*spans, s]


def _attach_nested(requests: list[JoinedRequest], spans: list[Span], unjoined: list[Span]
                   ) -> list[Span]:
    """Attach each unjoined SERVER span whose parent chain reaches a joined server span to
    that span's request (``nested_spans``); return the spans still unjoined."""
    if not unjoined:  # the usual case: no index of every span to build
        return []
    owner = {(s.trace_id, s.span_id): r for r in requests for s in r.spans}
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    rest = []
    for s in unjoined:
        cur, seen, found = s, set(), None
        while cur is not None and cur.parent_span_id:
            key = (cur.trace_id, cur.parent_span_id)
            if key in seen:  # a cycle in a broken export must not hang the join
                break
            seen.add(key)
            found = owner.get(key)
            if found is not None:
                break
            cur = by_id.get(key)
        if found is None:
            rest.append(s)
        else:
            found.nested_spans = appended(found.nested_spans, s)
    return rest


def _distance(r: JoinedRequest, s: Span) -> int:
    start, end = r.kernel.t_req_first, r.kernel.t_resp_last or r.kernel.t_req_first
    if start <= s.start_ns <= end:
        return 0
    return min(abs(s.start_ns - start), abs(s.start_ns - end))


def _join_by_overlap(requests: list[JoinedRequest], pool: dict[int, Span], slop: int) -> int:
    """Best effort: a pooled span of the same method whose path (or route template)
    matches and which starts inside the request's kernel window. Consumes from pool."""
    if not requests or not pool:
        return 0
    by_path: dict[tuple[str, str], list[Span]] = defaultdict(list)
    by_route: dict[str, dict[str, list[Span]]] = defaultdict(lambda: defaultdict(list))
    for s in pool.values():
        method = span_method(s) or ""
        path = span_path(s)
        if path is not None:
            by_path[(method, path)].append(s)
        elif (route := span_route(s)) is not None:
            by_route[method][route].append(s)
    for group in by_path.values():
        group.sort(key=lambda s: s.start_ns)
    for routes in by_route.values():
        for group in routes.values():
            group.sort(key=lambda s: s.start_ns)
    joined = 0
    for r in requests:
        k = r.kernel
        candidates = [by_path.get((k.method, k.path), [])]
        candidates += [g for route, g in by_route.get(k.method, {}).items()
                       if route_matches(route, k.path)]
        best = _nearest_in_window(candidates, pool, k.t_req_first - slop,
                                  (k.t_resp_last or k.t_req_first) + slop, k.t_req_first)
        if best is not None:
            del pool[id(best)]
            # Only span-less requests get here; a new list, never an append to one that may
            # be the span index's own (see _plus).
            r.spans = [best]
            r.span_join = JOIN_HEURISTIC
            joined += 1
    return joined


def _nearest_in_window(groups: list[list[Span]], pool: dict[int, Span], lo: int, hi: int,
                       anchor: int) -> Span | None:
    best: Span | None = None
    for group in groups:
        if not group:
            continue
        i = bisect.bisect_left(group, lo, key=lambda s: s.start_ns)
        while i < len(group) and group[i].start_ns <= hi:
            s = group[i]
            if id(s) in pool and (best is None
                                  or abs(s.start_ns - anchor) < abs(best.start_ns - anchor)):
                best = s
            i += 1
    return best


def _driver_key(r: JoinedRequest) -> tuple[str, str] | None:
    """(trace-id, parent-id) of the request's valid traceparent: the key of the spans joined
    by it (no new strings), else parsed again (the few requests without such a span)."""
    if r.span_join == JOIN_TRACEPARENT:
        s = r.spans[0]
        return s.trace_id, s.parent_span_id
    tp = r.traceparent
    return (tp.trace_id, tp.parent_id) if tp else None


def _join_driver(requests: list[JoinedRequest], driver: list[DriverRecord],
                 slop: int) -> list[DriverRecord]:
    """Attach driver records by traceparent, else by method, path and send time."""
    # Key → its record, or the list of them when several were sent with one traceparent.
    by_key: dict[tuple[str, str], Any] = {}
    rest: list[DriverRecord] = []
    for d in driver:
        if not d.trace_id:
            rest.append(d)
            continue
        put_one_or_many(by_key, (d.trace_id, d.parent_id), d)
    pending: list[JoinedRequest] = []
    for r in requests:
        key = _driver_key(r)
        group = by_key.get(key) if key is not None else None
        if not group:  # none sent with it, or all taken
            pending.append(r)
        elif type(group) is not list:
            r.driver = group
            by_key[key] = []  # taken; its place in the order kept
        else:
            d = min(group, key=lambda d: abs(d.t_send_ns - r.kernel.t_req_first))
            group.remove(d)
            r.driver = d
    for group in by_key.values():
        if type(group) is list:
            rest += group
        else:
            rest.append(group)
    by_route: dict[tuple[str, str], list[DriverRecord]] = defaultdict(list)
    for d in sorted(rest, key=attrgetter("t_send_ns")):
        by_route[(d.method.upper(), d.path.split("?", 1)[0])].append(d)
    for r in pending:
        group = by_route.get((r.kernel.method, r.kernel.path))
        if not group:
            continue
        # Sent before the kernel saw it arrive and answered after: the earliest such record.
        for i, d in enumerate(group):
            recv = d.t_recv_ns or d.t_send_ns
            if d.t_send_ns - slop <= r.kernel.t_req_first <= recv + slop:
                r.driver = group.pop(i)
                break
    return [d for group in by_route.values() for d in group]


def _attach_client_spans(requests: list[JoinedRequest], index: SpanIndex) -> None:
    """CLIENT spans among the descendants of each request's server spans."""
    by_trace, by_key = index.by_trace, index.by_key
    for r in requests:
        spans = r.spans
        if not spans:
            continue
        if len(spans) == 1 and len(by_trace[spans[0].trace_id]) == 1:
            continue  # the usual case: one server span, alone in its trace
        found: list[Span] = []
        seen: set[tuple[str, str]] = set()
        stack = list(spans)
        while stack:
            s = stack.pop()
            key = (s.trace_id, s.span_id)
            if key in seen:  # a cycle in a broken export must not hang the join
                continue
            seen.add(key)
            if s.kind == "CLIENT":
                found.append(s)
            if s.span_id:  # spans without a parent are no span's children
                stack.extend(by_key.get(key, ()))
        if found:
            found.sort(key=attrgetter("start_ns"))
            r.client_spans = found
