"""The driver's view of each request: the DriverRecord joined to its server span(s) and to the
outbound calls the SUT made while serving it. TC, BC, EC, AL and SC checks read this; it needs
no kernel truth (kernel client requests are used when present, the downstream sink otherwise).

Spans: by the driver's User-Agent marker the span recorded, else the traceparent sent
(trace-id, parent-id), else the kernel join's span for the same request, else (unless the
kernel join found the request undecidable) method + path (or route template) + the span
starting inside the request's send/receive window (exactly first, then with a small slop).
Outbound calls, in order of robustness:

- ``kernel``: client requests whose ``parent_request`` is this request's kernel request;
- ``downstream``/``time window``: a sink record received while exactly one fan-out request
  was in flight (no header is trusted, so a wrong trace-id is still seen as wrong);
- ``downstream``/``trace-id``: a sink record whose traceparent trace-id belongs to exactly one
  fan-out request (the trace-id sent, or the one its server span carries).

Which one was used is kept on each ``Outbound`` so failures can say it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from agent.evidence import (
    DownstreamRecord, DriverRecord, Evidence, KernelRequest, Span, driver_marker,
)
from agent.tracecontext import parse_traceparent
from conformance.httpsem import route_matches, span_method, span_path, span_route
from conformance.index import EMPTY, SpanIndex, SpansByParent, appended, empty, index_spans
from conformance.join import BASE_SLOP_NS, JOIN_UNJOINABLE, Joined, span_marker
from conformance.scenario import FANOUT_SUFFIX, base_case, base_path, fans_out, local_path

JOIN_KEY, JOIN_KERNEL, JOIN_HEURISTIC = "traceparent", "kernel", "heuristic"
JOIN_MARKER = "marker"  # the driver's User-Agent marker on the span
SOURCE_KERNEL, SOURCE_DOWNSTREAM = "kernel", "downstream"
HOW_PARENT, HOW_TIME, HOW_TRACE = "parent_request", "time window", "trace-id"


@dataclass(slots=True)
class Outbound:
    """One outbound call the SUT made, as one witness saw it (headers lower-case)."""

    source: str  # SOURCE_KERNEL | SOURCE_DOWNSTREAM
    how: str  # HOW_PARENT | HOW_TIME | HOW_TRACE: how it was tied to its inbound request
    method: str
    path: str
    headers: dict[str, list[str]]
    t_ns: int

    def values(self, name: str) -> list[str]:
        return list(self.headers.get(name.lower(), []))

    @property
    def witness(self) -> str:
        return f"{self.source} ({self.how})"


@dataclass(slots=True)
class RequestView:
    """One request the driver sent, with its server spans and outbound calls (list fields
    nothing was joined to hold the shared read-only ``conformance.index.EMPTY``; ``spans``
    may be the span index's or the join's list: read-only too)."""

    driver: DriverRecord
    fanout: bool
    spans: list[Span] = field(default_factory=empty)  # SERVER spans
    span_join: str = ""
    kernel: KernelRequest | None = None
    outbound: list[Outbound] = field(default_factory=empty)
    overlapped: bool = False  # another request with the same method and path was in flight

    @property
    def span_certain(self) -> bool:
        """Whether the span surely is this request's: joined by the traceparent sent, or the
        only request of its method and path in flight (else spans of concurrent requests
        that did not continue their context cannot be told apart)."""
        return bool(self.spans) and (self.span_join in (JOIN_KEY, JOIN_MARKER)
                                     or not self.overlapped)

    @property
    def case(self) -> str:
        return base_case(self.driver)

    @property
    def span(self) -> Span | None:
        return self.spans[0] if self.spans else None

    @property
    def witnesses(self) -> list[Outbound]:
        """The kernel's view of the outbound calls when it has them, else the sink's."""
        kernel = [o for o in self.outbound if o.source == SOURCE_KERNEL]
        return kernel or [o for o in self.outbound if o.source == SOURCE_DOWNSTREAM]

    def ref(self, **extra: Any) -> dict[str, Any]:
        """How failures name this request (transcript style)."""
        d = self.driver
        out = {"case": d.case or d.phase, "seq": d.seq, "request": f"{d.method} {d.path}",
               "traceparent_sent": d.request_headers.get("traceparent"),
               "status": d.status}
        if self.span is not None:
            out["span"] = {"trace_id": self.span.trace_id, "span_id": self.span.span_id,
                           "parent_span_id": self.span.parent_span_id}
        out.update(extra)
        return out


@dataclass
class View:
    requests: list[RequestView]
    unattributed: list[DownstreamRecord]  # sink records tied to no request
    spans_by_trace: dict[str, list[Span]]
    spans_by_key: SpansByParent  # (trace_id, parent_span_id) → spans of any kind
    _where: dict[str, list[RequestView]] = field(default_factory=dict, init=False,
                                                 repr=False, compare=False)

    def where(self, prefix: str) -> list[RequestView]:
        """Requests whose case (without @fanout) starts with ``prefix`` (found once per
        prefix: several checks ask; a new list each time)."""
        found = self._where.get(prefix)
        if found is None:  # the case as sent starts so too: tested first, it is cheaper
            found = self._where[prefix] = [r for r in self.requests
                                           if r.driver.case.startswith(prefix)
                                           and r.case.startswith(prefix)]
        return list(found)


def build_view(evidence: Evidence, joined: Joined | None, index: SpanIndex | None = None
               ) -> View:
    """The driver's view of ``evidence``; ``index``: its spans indexed (else the join's
    index, else built here)."""
    scenario = evidence.meta.scenario or {}
    base = base_path(evidence.meta)  # driver paths are as sent; the scenario's have no prefix
    slop = BASE_SLOP_NS + int(evidence.meta.clock.get("uncertainty_ns") or 0)
    fan_paths: dict[str, bool] = {}  # targets repeat: each is matched against the routes once

    def fanout(d: DriverRecord) -> bool:
        if d.case.endswith(FANOUT_SUFFIX):
            return True
        if (found := fan_paths.get(d.path)) is None:
            found = fan_paths[d.path] = fans_out(scenario, local_path(base, d.path))
        return found

    reqs = [RequestView(d, fanout(d), EMPTY, "", None, EMPTY)  # positional: a million
            for d in sorted(evidence.driver, key=attrgetter("t_send_ns", "seq"))]
    # A million spans are indexed once per evaluation, not once per reader.
    if index is None:
        index = joined.span_index if joined is not None and joined.span_index is not None \
            else index_spans(evidence.spans)
    agent_spans = {id(s) for s in joined.agent_spans} if joined else set()
    pool = {id(s): s for s in evidence.spans if s.kind == "SERVER" and id(s) not in agent_spans}

    by_trace = index.by_trace
    _join_by_marker(reqs, pool)
    for r in reqs:  # 1. the traceparent sent: spans of its trace whose parent it names
        d = r.driver
        if r.spans:
            continue
        if d.trace_id and (group := by_trace.get(d.trace_id)):
            parent = d.parent_id
            if len(group) == 1:  # the usual trace: its list is the index's (and the join's)
                s = group[0]
                if s.parent_span_id == parent and id(s) in pool:
                    del pool[id(s)]
                    r.spans, r.span_join = group, JOIN_KEY
                continue
            found = [s for s in group if s.parent_span_id == parent and id(s) in pool]
            if found:
                for s in found:
                    del pool[id(s)]
                r.spans, r.span_join = found, JOIN_KEY
    # What is left, in a table of its size: a dict keeps its table when items are deleted,
    # and at a million spans this one would stay next to ``by_driver`` below.
    pool = dict(pool)
    undecided: set[int] = set()
    if joined is not None:  # 2. the kernel join, which timed the request on the wire
        by_driver = {id(j.driver): j for j in joined.requests if j.driver is not None}
        for r in reqs:
            j = by_driver.get(id(r.driver))
            if j is None:
                continue
            r.kernel = j.kernel
            if j.span_join == JOIN_UNJOINABLE:
                undecided.add(id(r))  # the kernel join could not tell: no guess here either
            if not r.spans and j.spans:
                found = [s for s in j.spans if id(s) in pool]
                if len(found) == len(j.spans):
                    found = j.spans  # the join's list (read-only), not a copy
                if found:
                    for s in found:
                        del pool[id(s)]
                    r.spans, r.span_join = found, JOIN_KERNEL
            if j.outbound:  # nothing was added to r.outbound before
                r.outbound = [_from_kernel(c) for c in j.outbound]
        del by_driver  # the view's peak is later: this million-entry table is not kept to it
    # The driver, the sink and (on this host) the SUT read one realtime clock: windows are
    # exact first, so a request never takes the span of the one sent right after it; the
    # slop only helps spans whose clock reading falls a hair outside.
    tight = int(evidence.meta.clock.get("uncertainty_ns") or 0)
    for window in (tight, slop):
        if pool:
            _join_heuristic([r for r in reqs if not r.spans and id(r) not in undecided], pool,
                            window, base)
    del pool, agent_spans
    _mark_overlaps(reqs)
    unattributed = _attach_downstream(reqs, evidence.downstream, tight)
    return View(reqs, unattributed, index.by_trace, index.by_key)


def _join_by_marker(reqs: list[RequestView], pool: dict[int, Span]) -> None:
    """0. The driver's User-Agent marker recorded on the span: read by the instrumentation
    from that very request, so it holds when the context did not propagate or leaked from
    another request. Labelled ``traceparent`` when the span continues the one sent too."""
    by_marker: dict[str, RequestView] = {}
    for r in reqs:
        if (m := driver_marker(r.driver.request_headers.get("user-agent"))) is not None:
            by_marker.setdefault(m, r)
    if not by_marker:
        return
    found: dict[int, list[Span]] = {}
    for s in list(pool.values()):
        r = by_marker.get(m) if (m := span_marker(s)) is not None else None
        if r is not None:
            del pool[id(s)]
            found.setdefault(id(r), []).append(s)
    for r in reqs:
        spans = found.get(id(r))
        if not spans:
            continue
        ids = {s.span_id for s in spans}  # double instrumentation: the outer span(s) only
        outer = [s for s in spans if s.parent_span_id not in ids] or spans
        d = r.driver
        continued = d.trace_id and any(s.trace_id == d.trace_id and s.parent_span_id == d.parent_id
                                       for s in outer)
        r.spans, r.span_join = outer, JOIN_KEY if continued else JOIN_MARKER


def _mark_overlaps(reqs: list[RequestView]) -> None:
    """Flag requests sent while another of the same method and path was in flight
    (``reqs`` in send order)."""
    groups: dict[tuple[str, str], list[RequestView]] = defaultdict(list)
    # method → target as sent → its group: targets repeat, each is normalised once
    group_of: dict[str, dict[str, list[RequestView]]] = {}
    for r in reqs:
        d = r.driver
        targets = group_of.get(d.method)
        if targets is None:
            targets = group_of[d.method] = {}
        group = targets.get(d.path)
        if group is None:
            group = targets[d.path] = groups[(d.method.upper(), d.path.split("?", 1)[0])]
        group.append(r)
    for group in groups.values():  # in send order already: ``reqs`` is
        reach, holder = None, None  # the latest receive time so far, and whose it is
        for r in group:
            d = r.driver
            recv = d.t_recv_ns or d.t_send_ns
            if reach is not None and d.t_send_ns <= reach:
                r.overlapped = holder.overlapped = True
            if reach is None or recv > reach:
                reach, holder = recv, r


def _from_kernel(k: KernelRequest) -> Outbound:
    return Outbound(SOURCE_KERNEL, HOW_PARENT, k.method, k.target, k.headers, k.t_req_first)


def _join_heuristic(reqs: list[RequestView], pool: dict[int, Span], slop: int,
                    base: str = "") -> None:
    """Same method, same path or a route template matching it, starting in the window (an
    app mounted under the --url path ``base`` may leave the prefix out of both)."""
    if not reqs or not pool:
        return
    spans = sorted(pool.values(), key=lambda s: s.start_ns)
    starts = [s.start_ns for s in spans]
    for r in reqs:
        d = r.driver
        path = d.path.split("?", 1)[0]
        paths = (path, local_path(base, path)) if base else (path,)
        lo = d.t_send_ns - slop
        hi = (d.t_recv_ns or d.t_send_ns) + slop
        best = None
        for i in range(bisect.bisect_left(starts, lo), bisect.bisect_right(starts, hi)):
            s = spans[i]
            if id(s) not in pool or (span_method(s) or d.method.upper()) != d.method.upper():
                continue
            sp, route = span_path(s), span_route(s)
            if sp is not None and sp not in paths:
                continue
            if sp is None and (route is None or not any(route_matches(route, p) for p in paths)):
                continue
            if best is None or abs(s.start_ns - d.t_send_ns) < abs(best.start_ns - d.t_send_ns):
                best = s
        if best is not None:
            del pool[id(best)]
            r.spans, r.span_join = [best], JOIN_HEURISTIC


def _trace_ids(r: RequestView) -> set[str]:
    ids = {s.trace_id for s in r.spans} if r.span_certain else set()
    if r.driver.trace_id:
        ids.add(r.driver.trace_id)
    return ids


def _recv(r: RequestView) -> int:
    return r.driver.t_recv_ns or r.driver.t_send_ns


def _attach_downstream(reqs: list[RequestView], records: list[DownstreamRecord],
                       slop: int) -> list[DownstreamRecord]:
    """Tie each sink record to one fan-out request (time window, else trace-id)."""
    fan = sorted((r for r in reqs if r.fanout), key=lambda r: r.driver.t_send_ns)
    sends = [r.driver.t_send_ns for r in fan]
    recvs = [_recv(r) for r in fan]
    longest = max((recv - send for send, recv in zip(sends, recvs)), default=0)
    by_trace: dict[str, list[RequestView]] | None = None  # built when a window is ambiguous
    left: list[DownstreamRecord] = []
    for rec in sorted(records, key=attrgetter("t_ns")):
        t = rec.t_ns
        inflight = [i for i in range(bisect.bisect_left(sends, t - longest - slop),
                                     bisect.bisect_right(sends, t + slop))
                    if t <= recvs[i] + slop]
        target, how = (fan[inflight[0]], HOW_TIME) if len(inflight) == 1 else (None, "")
        if target is None:
            values = rec.headers.get("traceparent", [])
            tp = parse_traceparent(values[0]) if len(values) == 1 else None
            if tp and by_trace is None:
                by_trace = defaultdict(list)
                for r in fan:
                    for tid in _trace_ids(r):
                        by_trace[tid].append(r)
            owners = by_trace.get(tp.trace_id, []) if tp else []
            if len(owners) == 1:
                target, how = owners[0], HOW_TRACE
        if target is None:
            left.append(rec)
            continue
        target.outbound = appended(target.outbound, Outbound(SOURCE_DOWNSTREAM, how, rec.method,
                                                          rec.path, rec.headers, rec.t_ns))
    return left


def span_index(ctx: Any) -> SpanIndex:
    """Every span of a check context by trace and by parent, built once per evaluation: the
    join's index on kernel evidence (the join is computed then anyway), else its own."""
    if ctx.evidence.kernel and ctx.joined.span_index is not None:
        return ctx.joined.span_index
    return ctx.shared("span_index", lambda: index_spans(ctx.evidence.spans))


def view_of(ctx: Any) -> View:
    """The view of a check context, built once per evaluation."""
    joined = ctx.joined if ctx.evidence.kernel else None
    return ctx.shared("view", lambda: build_view(ctx.evidence, joined, span_index(ctx)))
