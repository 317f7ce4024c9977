"""Join the three views of each request: kernel ↔ driver record ↔ server span (+ its client
spans and the outbound requests the kernel saw it make).

The checks judge the SUT's propagation, so the join must not depend on it. Keys, strongest
first, each counted in ``Joined.joined_by``:

1. ``traceparent``: the span continues the traceparent captured on the wire
   (``span.trace_id`` = inbound trace-id, ``span.parent_span_id`` = inbound parent-id);
2. ``marker``: the span recorded the driver's User-Agent (``user_agent.original``,
   ``http.user_agent``), whose per-request marker the kernel saw in that request's
   header; no propagation involved. Where 1 and 2 name different requests, 2 wins;
3. ``peer``: the client port the kernel saw at accept equals the span's ``client.port`` /
   ``net.peer.port``, with time ordering the requests of a keep-alive connection;
4. ``time``: method, path (or route template), status and time, as an optimal assignment
   that weighs the span's precise end against the response's writes and tolerates coarse
   start times (conformance.timejoin).

Requests whose span stays ambiguous under 3-4 are ``unjoinable``: never counted as lost.
A SERVER span left over whose parent chain reaches a joined server span is a nested
duplicate of that request (``nested_spans``), not a span without a request.
Everything is indexed in dicts so the join stays O(n log n) for large runs; the span index
it builds (``SpanIndex``) is kept on ``Joined`` for the driver view, which needs the same one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any
from urllib.parse import urlsplit

from agent.evidence import (
    AGENT_USER_AGENT, DriverRecord, Evidence, KernelRequest, Span, driver_marker,
)
from agent.tracecontext import TraceParent, parse_traceparent
from conformance.httpsem import (
    USER_AGENT_ATTRS, route_matches, span_method, span_path, span_peer_port, span_route,
    span_status,
)
from conformance.index import EMPTY, SpanIndex, appended, empty, index_spans, put_one_or_many
from conformance.timejoin import Timing, assign

JOIN_TRACEPARENT = "traceparent"
JOIN_MARKER = "marker"
JOIN_PEER = "peer"
JOIN_TIME = "time"
JOIN_KEYS = (JOIN_TRACEPARENT, JOIN_MARKER, JOIN_PEER, JOIN_TIME)
JOIN_HEURISTIC = JOIN_TIME  # the name earlier reports and callers used for the time join
JOIN_UNJOINABLE = "unjoinable"  # span_join of a request whose span could not be decided
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
    span_join: str = ""  # one of JOIN_KEYS, JOIN_UNJOINABLE, or "" (no span)
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
    # The SUT's own OTLP exports the kernel saw (to obsconform's receivers or sent by an OTel
    # exporter): telemetry about the work, never an outbound call of a request.
    telemetry_exports: list[KernelRequest] = field(default_factory=list)
    heuristic_joins: int = 0  # joined without an identifier (peer or time)
    notes: list[str] = field(default_factory=list)
    span_index: SpanIndex | None = None  # every span indexed (the view reuses it)
    # Requests under test whose span the join could not decide, and the spans that fit them.
    unjoinable: list[JoinedRequest] = field(default_factory=list)
    unjoinable_spans: list[Span] = field(default_factory=list)
    joined_by: dict[str, int] = field(default_factory=dict)  # JOIN_KEYS → requests
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
    by_marker = _by_marker(under_test)
    pool, overridden = _join_by_identity(reqs_by_key, by_marker, server_spans,
                                         index.by_trace)
    del reqs_by_key, by_marker
    everyone = under_test + agent
    _split_nested(everyone)

    unjoinable: list[JoinedRequest] = []
    unjoinable_spans: list[Span] = []
    if pool:
        # Nested duplicates of identified requests first: they must not be handed by time
        # to a request without span (their own request's span is their parent).
        pool = {id(s): s for s in _attach_nested(everyone, evidence.spans,
                                                 [s for s in server_spans if id(s) in pool])}
    if pool:
        identified = [(r.kernel, r.spans[0]) for r in under_test if len(r.spans) == 1]
        timing = Timing.calibrate(uncertainty, identified, server_spans)
        unjoinable, unjoinable_spans = _join_by_time(everyone, pool, timing)
    unjoined = _attach_nested(everyone, evidence.spans,
                              [s for s in server_spans if id(s) in pool]) if pool else []

    unmatched_driver = _join_driver(under_test, evidence.driver, slop)
    unattributed = []
    exports = []
    if client_reqs:
        by_id = {r.kernel.id: r for r in under_test}
        is_export = _telemetry_export_test(evidence.meta.target)
        for c in client_reqs:
            if is_export(c):
                exports.append(c)
                continue
            parent = by_id.get(c.parent_request or "")
            if parent is None:
                unattributed.append(c)
            else:
                parent.outbound = appended(parent.outbound, c)
    _attach_client_spans(under_test, index)

    joined_by = dict.fromkeys(JOIN_KEYS, 0)
    for r in under_test:
        if r.span_join in joined_by:
            joined_by[r.span_join] += 1
    unjoinable = [r for r in unjoinable if r.span_join == JOIN_UNJOINABLE
                  and not is_agent_request(r.kernel)]
    notes = []
    if overridden:
        notes.append(f"{overridden} span(s) carried the traceparent of one request and the "
                     "User-Agent marker of another: joined by the marker (the request the "
                     "instrumentation read them from; a context leak)")
    if joined_by[JOIN_PEER] or joined_by[JOIN_TIME]:
        notes.append(f"joined without an identifier the SUT recorded: "
                     f"{joined_by[JOIN_PEER]} by client port, {joined_by[JOIN_TIME]} by "
                     "method, path, status and time (end times; an optimal assignment)")
    if exports:
        notes.append(f"{len(exports)} outbound request(s) were the SUT's own OTLP exports "
                     "(to obsconform's receiver or from an OTel exporter): not counted as "
                     "outbound calls of the requests they overlapped")
    if unjoinable:
        notes.append(f"{len(unjoinable)} request(s) could not be joined to a span with "
                     f"certainty ({len(unjoinable_spans)} candidate span(s) fit several "
                     "requests within the timing noise): counted as unjoinable, not lost")
    return Joined(
        requests=under_test, agent_requests=[r.kernel for r in agent],
        agent_spans=[s for r in agent for s in r.spans], unjoined_spans=unjoined,
        unattributed_outbound=unattributed, unmatched_driver=unmatched_driver,
        telemetry_exports=exports, heuristic_joins=joined_by[JOIN_TIME] + joined_by[JOIN_PEER], notes=notes,
        span_index=index, unjoinable=unjoinable, unjoinable_spans=unjoinable_spans,
        joined_by=joined_by,
    )


# OTel SDK exporters name themselves so (OTel-OTLP-Exporter-Python/…, -JavaScript/…, -Go/…).
_EXPORTER_UA = "otel-otlp-exporter"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def _telemetry_export_test(target: dict[str, Any]):
    """A test for client requests that are the SUT exporting telemetry, not doing its work.

    On an event-loop runtime an export sent while a request is in flight is kernel-parented
    to that request; taken for its outbound call it would fail TC-002 (no traceparent) on a
    clean service. Known by where it goes (the run's OTLP receivers) or by who sends it."""
    receivers = []
    for key in ("otlp_endpoint", "otlp_grpc_endpoint"):
        url = str(target.get(key) or "")
        if not url:
            continue
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            continue
        if port:
            receivers.append(((parts.hostname or "").strip("[]"), port))

    def is_export(c: KernelRequest) -> bool:
        if (c.header("user-agent") or "").lower().startswith(_EXPORTER_UA):
            return True
        peer = c.peer_addr.removeprefix("::ffff:")  # IPv4 reached over an AF_INET6 socket
        return any(c.peer_port == port and (host in _WILDCARD_HOSTS or peer == host)
                   for host, port in receivers)

    return is_export


def _by_key(requests: list[JoinedRequest], keys: list[str | None]) -> dict[str, Any]:
    """Key → its request, or the list of them when a resent header shares the key."""
    reqs_by_key: dict[str, Any] = {}
    for r, key in zip(requests, keys):
        if key is not None:
            put_one_or_many(reqs_by_key, key, r)
    return reqs_by_key


def _by_marker(requests: list[JoinedRequest]) -> dict[str, Any]:
    """The driver's User-Agent marker → its request (or several: a resent request)."""
    out: dict[str, Any] = {}
    for r in requests:
        ua = r.kernel.headers.get("user-agent")
        if ua and (m := driver_marker(ua[0])) is not None:
            put_one_or_many(out, m, r)
    return out


def span_marker(s: Span) -> str | None:
    """The driver marker in the User-Agent the instrumentation recorded on the span."""
    attrs = s.attributes
    for name in USER_AGENT_ATTRS:
        if (ua := attrs.get(name)) is not None:
            return driver_marker(ua)
    return None


def _pick(reqs: Any, s: Span) -> JoinedRequest:
    """One request per key is the norm; a resent header shares the key, so the span goes to
    the request whose time window it starts in (else the nearest)."""
    return reqs if type(reqs) is not list else min(reqs, key=lambda r: _distance(r, s))


def _join_by_identity(reqs_by_key: dict[str, Any], by_marker: dict[str, Any],
                      spans: list[Span], by_trace: dict[str, list[Span]]
                      ) -> tuple[dict[int, Span], int]:
    """Attach spans by what identifies their request: the inbound traceparent they continue
    (trace-id, parent-id; see _by_key) or the driver's User-Agent marker they recorded. When
    the two name different requests the marker wins: it is what the instrumentation read
    from that very request, while the context may have leaked from another. Return the
    unjoined span pool (export order) and how many spans the marker moved."""
    pool: dict[int, Span] = {}
    overridden = 0
    for s in spans:
        trace, parent = s.trace_id, s.parent_span_id
        # Only strings can be a traceparent's ids (a malformed export's number must not
        # read as hex digits).
        reqs = reqs_by_key.get(f"{trace}-{parent}") \
            if type(trace) is str and type(parent) is str else None
        marked = by_marker.get(m) if by_marker and (m := span_marker(s)) is not None else None
        if marked is not None:
            target = _pick(marked, s)
            if reqs is not None and _pick(reqs, s) is target:
                how = JOIN_TRACEPARENT
            else:
                overridden += reqs is not None
                how = JOIN_MARKER
        elif reqs is not None:
            target, how = _pick(reqs, s), JOIN_TRACEPARENT
        else:
            pool[id(s)] = s
            continue
        if target.spans is EMPTY:  # the key of its first span (_driver_key relies on it)
            target.span_join = how
        target.spans = _plus(target.spans, s, by_trace)
    return pool, overridden


def _split_nested(requests: list[JoinedRequest]) -> None:
    """A request given several spans by its keys keeps as ``spans`` those not nested in
    another of them (double instrumentation records the marker on both)."""
    for r in requests:
        if len(r.spans) < 2:
            continue
        ids = {s.span_id for s in r.spans}
        by_id = {s.span_id: s for s in r.spans}
        top, inner = [], []
        for s in r.spans:
            cur, seen, nested = s, set(), False
            while cur.parent_span_id and cur.parent_span_id not in seen:
                seen.add(cur.parent_span_id)
                if cur.parent_span_id in ids:
                    nested = True
                    break
                cur = by_id.get(cur.parent_span_id) or cur
                if cur is s:
                    break
            (inner if nested else top).append(s)
        if inner and top:
            r.spans, r.nested_spans = top, [*r.nested_spans, *inner]


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


def _join_by_time(requests: list[JoinedRequest], pool: dict[int, Span], timing: Timing
                  ) -> tuple[list[JoinedRequest], list[Span]]:
    """Spans no identifier joined: first by the client port the kernel saw at accept and the
    span recorded, then by method, path (or route template), status and time, each as an
    optimal assignment (conformance.timejoin). Consumes from ``pool``; returns the
    requests and spans left undecided."""
    cands = [r for r in requests if not r.spans and r.answered]
    if not cands:
        return [], []
    kernels = [r.kernel for r in cands]
    unsampled = {i for i, r in enumerate(cands)
                 if (tp := r.traceparent) is not None and not tp.sampled}
    agent_ids = {id(r.kernel) for r in cands if is_agent_request(r.kernel)}
    route_cache: dict[tuple[str, str], bool] = {}

    def compatible(k: KernelRequest, s: Span) -> bool:
        if (ua := _span_user_agent(s)) is not None and \
                ua.startswith(AGENT_USER_AGENT) != (id(k) in agent_ids):
            return False
        if (method := span_method(s)) is not None and method != k.method:
            return False
        if (status := span_status(s)) is not None and k.status is not None and status != k.status:
            return False
        if k.peer_port and (port := span_peer_port(s)) is not None and port != k.peer_port:
            return False
        if (path := span_path(s)) is not None:
            return path == k.path
        if (route := span_route(s)) is not None:
            key = (route, k.path)
            if key not in route_cache:
                route_cache[key] = route_matches(route, k.path)
            return route_cache[key]
        return True

    # A span nested in another pooled SERVER span is its duplicate (double instrumentation
    # records the same port and path): it follows its parent later (_attach_nested) instead
    # of competing with it for a request.
    pooled = {(s.trace_id, s.span_id) for s in pool.values()}
    spans = [s for s in pool.values() if (s.trace_id, s.parent_span_id) not in pooled]
    by_peer = assign(kernels, [s for s in spans if span_peer_port(s) is not None],
                     lambda k: k.peer_port or None, compatible,
                     lambda s: [span_peer_port(s)], timing, unsampled)
    for i, s in by_peer.pairs:
        cands[i].spans, cands[i].span_join = [s], JOIN_PEER
        del pool[id(s)]
    left = [i for i, r in enumerate(cands) if not r.spans]
    if not left or not pool:
        return [], []
    rest = [kernels[i] for i in left]
    methods: dict[str, list[str]] = {}
    for k in rest:
        paths = methods.setdefault(k.method, [])
        if not paths or paths[-1] != k.path:
            paths.append(k.path)
    all_groups = {m: list(dict.fromkeys(p)) for m, p in methods.items()}

    def groups_of_span(s: Span) -> list[Any]:
        method = span_method(s)
        ms = [method] if method is not None else list(all_groups)
        path = span_path(s)
        if path is not None:
            return [(m, path) for m in ms]
        return [(m, p) for m in ms for p in all_groups.get(m, ())]

    top = [s for s in pool.values() if (s.trace_id, s.parent_span_id) not in pooled]
    by_time = assign(rest, top, lambda k: (k.method, k.path), compatible,
                     groups_of_span, timing, {n for n, i in enumerate(left) if i in unsampled})
    for n, s in by_time.pairs:
        r = cands[left[n]]
        r.spans, r.span_join = [s], JOIN_TIME
        del pool[id(s)]
    undecided = []
    for n in by_time.unjoinable:
        r = cands[left[n]]
        r.span_join = JOIN_UNJOINABLE
        undecided.append(r)
    for s in by_time.unjoinable_spans:
        pool.pop(id(s), None)
    return undecided, by_time.unjoinable_spans


def _span_user_agent(s: Span) -> str | None:
    for name in USER_AGENT_ATTRS:
        if type(ua := s.attributes.get(name)) is str:
            return ua
    return None


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
    """Attach driver records by the User-Agent marker, else by traceparent, else by method,
    path and send time."""
    marked: dict[str, DriverRecord] = {}
    for d in driver:
        if (m := driver_marker(d.request_headers.get("user-agent"))) is not None:
            marked.setdefault(m, d)
    if marked:
        left = []
        for r in requests:
            ua = r.kernel.headers.get("user-agent")
            d = marked.pop(m, None) if ua and (m := driver_marker(ua[0])) else None
            if d is None:
                left.append(r)
            else:
                r.driver = d
        taken = {id(r.driver) for r in requests if r.driver is not None}
        driver = [d for d in driver if id(d) not in taken]
        requests = left
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
