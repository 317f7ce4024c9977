"""A client-side mini conformance run: drive traffic at a service, then judge it per check ID.

The client is the witness here (no kernel): what it sent and received is compared with the
spans, downstream calls, logs and scrapes. Each probe returns a list of problems (empty =
pass) and is named after the SPEC §5 check it approximates.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter as Multiset
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from examples.refservice.errcodes import ErrCode, load_catalogue

from .metrics_util import delta, histogram_counts, samples
from .service import RefService, Reply, new_traceparent
from .stubs import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, DownstreamCall, StubSpan

TRACESTATE = "vendor=probe,other=1"
INVALID_TRACEPARENTS = (
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
)
REQUIRED_SERVER_ATTRS = ("http.request.method", "url.path", "url.scheme", "http.response.status_code",
                         "server.address", "server.port", "network.protocol.version")
_HEX_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{16})$")
_NON_BASE_UNITS = ("milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "kilobytes",
                   "megabytes", "percent")


@dataclass
class Sent:
    ref: int  # unique; in the query string (url.query) and, for fan-outs, the quantity
    method: str
    path: str
    route: str
    headers: dict[str, str]
    biz_code: str  # what the service should carry: trimmed inbound or "default"
    group: str  # plain | self-started | invalid | fanout | concurrent | errcode
    trace_id: str = ""  # valid inbound trace id, if one was sent
    parent_id: str = ""
    errcode: ErrCode | None = None
    body: bytes | None = None
    reply: Reply | None = None


@dataclass
class Observed:
    sent: list[Sent]
    spans: list[StubSpan]
    calls: list[DownstreamCall]
    logs: list[dict]
    before: str
    after: str
    openmetrics: str
    span_by_ref: dict[int, StubSpan] = field(default_factory=dict)
    call_by_ref: dict[int, DownstreamCall] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.spans:
            if s.kind == SPAN_KIND_SERVER and str(s.attributes.get("url.query", "")).startswith("ref="):
                self.span_by_ref[int(s.attributes["url.query"][4:])] = s
        for c in self.calls:
            try:
                self.call_by_ref[int(json.loads(c.body)["quantity"])] = c
            except (ValueError, KeyError, TypeError):
                pass


class _Plan:
    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def add(self, method: str, path: str, route: str, group: str, *, traceparent: bool = True,
            biz: str | None = None, headers: dict[str, str] | None = None, **kw: Any) -> Sent:
        ref = len(self.sent) + 1
        hdrs = dict(headers or {})
        s = Sent(ref, method, f"{path}?ref={ref}", route, hdrs, (biz or "").strip() or "default", group, **kw)
        if traceparent:
            hdrs["traceparent"], s.trace_id, s.parent_id = new_traceparent()
            hdrs["tracestate"] = TRACESTATE
        if biz is not None:
            hdrs["X-Biz-Code"] = biz
        self.sent.append(s)
        return s


def _order(plan: _Plan, group: str, headers: dict[str, str] | None = None, **kw: Any) -> Sent:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    s = plan.add("POST", "/orders", "/orders", group, headers=hdrs, **kw)
    s.body = json.dumps({"item_id": 2, "quantity": s.ref}).encode()
    return s


def _send(svc: RefService, s: Sent, keepalive: bool = True) -> None:
    s.reply = svc.request(s.method, s.path, s.headers, s.body, keepalive=keepalive)


def drive(svc: RefService, otlp, downstream) -> Observed:
    """Send the probe traffic, stop the service (flushing its spans) and collect everything."""
    plan = _Plan()
    for i in range(6):
        plan.add("GET", f"/items/{i + 1}", "/items/<int:item_id>", "plain")
    for i in range(4):
        plan.add("GET", "/items/3", "/items/<int:item_id>", "self-started", traceparent=False, biz=f"self-{i}")
    for i, bad in enumerate(INVALID_TRACEPARENTS):
        _order(plan, "invalid", traceparent=False, biz=f"inv-{i}", headers={"traceparent": bad})
    for i in range(3):  # with then without X-Biz-Code, on one connection: the leak shows here
        _order(plan, "fanout", biz=f"  gold-{i} \t")
        _order(plan, "fanout")
    sequential = list(plan.sent)
    concurrent = [_order(plan, "concurrent", biz=f"c-{i}" if i % 2 else None) for i in range(24)]
    errors = []
    for err in load_catalogue().values():
        t = err.trigger
        s = plan.add(t["method"], t["path"], "", "errcode", headers=dict(t["headers"]), errcode=err)
        if t.get("body") is not None:
            s.body = json.dumps(t["body"]).encode()
        errors.append(s)
    for s in errors:
        s.route = _route_of(s.method, s.path)

    before = svc.metrics_text()
    for s in sequential:
        _send(svc, s)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: _send(svc, s, keepalive=False), concurrent))
    for s in errors:
        _send(svc, s)
    total = len(plan.sent)
    try:
        after = svc.wait_metrics(lambda t: sum(delta(histogram_counts(before), histogram_counts(t)).values()) >= total,
                                 timeout=3.0)
    except AssertionError:
        after = svc.metrics_text()  # the KT-002 probe will say what is wrong
    openmetrics = svc.metrics_text(openmetrics=True)
    assert svc.stop() == 0
    return Observed(plan.sent, otlp.spans.snapshot(), downstream.calls.snapshot(), svc.logs.snapshot(),
                    before, after, openmetrics)


_ROUTES = (("GET", r"/items/\d+", "/items/<int:item_id>"), ("GET", "/slow", "/slow"),
           ("GET", "/fanout", "/fanout"), ("POST", "/orders", "/orders"), ("POST", "/payments", "/payments"))


def _route_of(method: str, path: str) -> str:
    """The route template the service matches ('' when none: 404, and 405 on a known path)."""
    bare = path.partition("?")[0]
    return next((route for m, pattern, route in _ROUTES if m == method and re.fullmatch(pattern, bare)), "")


# ----------------------------------------------------------------------------- the probes

def kt_001(o: Observed) -> list[str]:
    counts = Multiset(int(s.attributes["url.query"][4:]) for s in o.spans
                      if s.kind == SPAN_KIND_SERVER and str(s.attributes.get("url.query", "")).startswith("ref="))
    return [f"ref {s.ref}: {counts[s.ref]} server spans" for s in o.sent if counts[s.ref] != 1]


def kt_002(o: Observed) -> list[str]:
    method_of = {s.ref: s.method for s in o.sent}
    expected = Multiset((method_of[s.ref], s.route, str(s.reply.status)) for s in o.sent)
    got = delta(histogram_counts(o.before), histogram_counts(o.after))
    return [] if dict(expected) == got else [f"expected {dict(expected)}, got {got}"]


def kt_003(o: Observed) -> list[str]:
    gaps = [s.reply.elapsed_s - o.span_by_ref[s.ref].duration_s for s in o.sent
            if s.group == "plain" and s.ref in o.span_by_ref]
    if not gaps or statistics.median(gaps) > 0.005:
        return [f"client latency minus span duration: median {statistics.median(gaps) if gaps else None}s"]
    return []


def kt_005(o: Observed) -> list[str]:
    return [f"ref {s.ref}: wire {s.reply.status}, span {span.attributes.get('http.response.status_code')}"
            for s in o.sent if (span := o.span_by_ref.get(s.ref))
            and span.attributes.get("http.response.status_code") != s.reply.status]


def tc_001(o: Observed) -> list[str]:
    return [f"ref {s.ref}: inbound {s.trace_id}/{s.parent_id}, span {span.trace_id}/{span.parent_span_id}"
            for s in o.sent if s.trace_id and (span := o.span_by_ref.get(s.ref))
            and (span.trace_id, span.parent_span_id) != (s.trace_id, s.parent_id)]


def _client_span_ids(o: Observed) -> set[tuple[str, str]]:
    return {(s.trace_id, s.span_id) for s in o.spans if s.kind == SPAN_KIND_CLIENT}


def tc_002(o: Observed) -> list[str]:
    problems, clients = [], _client_span_ids(o)
    for s in o.sent:
        if s.group not in ("fanout", "concurrent") or s.reply.status != 201:
            continue
        call = o.call_by_ref.get(s.ref)
        tp = call.headers.get("traceparent", "") if call else ""
        parts = tp.split("-")
        if len(parts) != 4 or parts[1] != s.trace_id or (parts[1], parts[2]) not in clients:
            problems.append(f"ref {s.ref}: outbound traceparent {tp!r}, inbound trace {s.trace_id}")
        elif call.headers.get("tracestate") != TRACESTATE:
            problems.append(f"ref {s.ref}: outbound tracestate {call.headers.get('tracestate')!r}")
    return problems


def tc_003(o: Observed) -> list[str]:
    problems = []
    for s in o.sent:
        if s.group != "invalid":
            continue
        bad = s.headers["traceparent"].lower()
        span = o.span_by_ref.get(s.ref)
        if span and (span.trace_id in bad or span.parent_span_id):
            problems.append(f"ref {s.ref}: {bad!r} continued as {span.trace_id}/{span.parent_span_id}")
        call = o.call_by_ref.get(s.ref)
        parts = call.headers.get("traceparent", "").split("-") if call else []
        if call and (len(parts) != 4 or parts[2] in bad or parts[1] in bad):
            problems.append(f"ref {s.ref}: outbound traceparent {call.headers.get('traceparent')!r} after {bad!r}")
    return problems


def tc_004(o: Observed) -> list[str]:
    ids = [o.span_by_ref[s.ref].trace_id for s in o.sent if s.group == "self-started" and s.ref in o.span_by_ref]
    bad = [t for t in ids if not re.fullmatch(r"[0-9a-f]{32}", t) or t == "0" * 32]
    return ([f"invalid trace ids {bad}"] if bad else []) + ([f"reused trace ids {ids}"] if len(set(ids)) < len(ids) else [])


def tc_005(o: Observed) -> list[str]:
    """No orphans (every root is a server span) and one server root per inbound request."""
    problems, by_trace = [], {}
    for span in o.spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    requests_per_trace = Multiset(
        m[1].lower() for s in o.sent if (m := re.match(r"^..-([0-9a-fA-F]{32})-", s.headers.get("traceparent", "")))
    )
    for trace_id, spans in by_trace.items():
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if s.parent_span_id not in ids]
        if any(r.kind != SPAN_KIND_SERVER for r in roots) or len(roots) > max(1, requests_per_trace[trace_id]):
            problems.append(f"trace {trace_id}: roots {[(r.name, r.parent_span_id) for r in roots]}")
    return problems


def _biz_calls(o: Observed, groups: tuple[str, ...]) -> list[str]:
    return [f"ref {s.ref}: outbound X-Biz-Code {call.headers.get('x-biz-code')!r}, expected {s.biz_code!r}"
            for s in o.sent if s.group in groups and (call := o.call_by_ref.get(s.ref))
            and call.headers.get("x-biz-code") != s.biz_code]


def bc_001(o: Observed) -> list[str]:
    return _biz_calls(o, ("fanout", "invalid"))


def bc_002(o: Observed) -> list[str]:
    return _biz_calls(o, ("concurrent",))


def bc_003(o: Observed) -> list[str]:
    return [f"ref {s.ref}: span biz.code {span.attributes.get('biz.code')!r}, expected {s.biz_code!r}"
            for s in o.sent if (span := o.span_by_ref.get(s.ref)) and span.attributes.get("biz.code") != s.biz_code]


def _errors(o: Observed) -> list[Sent]:
    return [s for s in o.sent if s.errcode is not None]


def ec_001(o: Observed) -> list[str]:
    return [f"{s.errcode.code}: status {s.reply.status}, catalogue {s.errcode.http_status}"
            for s in _errors(o) if s.reply.status != s.errcode.http_status]


def ec_002(o: Observed) -> list[str]:
    return [f"{s.errcode.code}: header {s.reply.headers.get('x-error-code')!r}, body {s.reply.json().get('code')!r}"
            for s in _errors(o)
            if (s.reply.headers.get("x-error-code"), s.reply.json().get("code")) != (s.errcode.code,) * 2]


def ec_003(o: Observed) -> list[str]:
    return [f"{s.errcode.code}: header {s.reply.headers.get('x-error-trace-id')!r}, body "
            f"{s.reply.json().get('trace_id')!r}, request {s.trace_id}" for s in _errors(o)
            if (s.reply.headers.get("x-error-trace-id"), s.reply.json().get("trace_id")) != (s.trace_id,) * 2]


def ec_004(o: Observed) -> list[str]:
    problems = []
    for s in _errors(o):
        span = o.span_by_ref.get(s.ref)
        if span is None:
            continue
        want = (s.errcode.code, s.errcode.retryable, s.reply.status >= 500)
        got = (span.attributes.get("error.type"), span.attributes.get("retryable"), span.status_code == STATUS_ERROR)
        if want != got:
            problems.append(f"{s.errcode.code}: (error.type, retryable, ERROR) {got}, expected {want}")
    return problems


def sc_003(o: Observed) -> list[str]:
    problems = []
    for s in o.sent:
        span = o.span_by_ref.get(s.ref)
        if span is None:
            continue
        name = f"{s.method} {s.route}" if s.route else s.method
        missing = [a for a in REQUIRED_SERVER_ATTRS if a not in span.attributes]
        if span.name != name or missing or (span.status_code == STATUS_ERROR) != (s.reply.status >= 500):
            problems.append(f"ref {s.ref}: name {span.name!r}/{name!r}, missing {missing}, status {span.status_code}")
    return problems


def al_002(o: Observed) -> list[str]:
    exported = {s.trace_id for s in o.spans}
    refs = {e.labels.get("trace_id") for x in samples(o.openmetrics, openmetrics=True) if (e := x.exemplar)}
    return [f"exemplar trace {t} not exported" for t in refs - exported] + ([] if refs else ["no exemplars"])


def al_003(o: Observed) -> list[str]:
    logged = {(r.get("trace_id"), r.get("span_id")) for r in o.logs if r.get("msg") == "request"}
    return [f"ref {s.ref}: no request log line with trace {span.trace_id}" for s in o.sent
            if (span := o.span_by_ref.get(s.ref)) and (span.trace_id, span.span_id) not in logged]


def al_004(o: Observed) -> list[str]:
    return sorted({f"{x.name}{{{k}={v}}}" for x in samples(o.after) for k, v in x.labels.items()
                   if k in ("trace_id", "span_id") or _HEX_ID.match(v)})[:5]


def sc_002(o: Observed) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(o.after)}
    return [n for n in sorted(names)
            if not re.fullmatch(r"[a-z_:][a-z0-9_:]*", n) or any(u in n for u in _NON_BASE_UNITS)]


PROBES: dict[str, Callable[[Observed], list[str]]] = {
    "KT-001": kt_001, "KT-002": kt_002, "KT-003": kt_003, "KT-005": kt_005,
    "TC-001": tc_001, "TC-002": tc_002, "TC-003": tc_003, "TC-004": tc_004, "TC-005": tc_005,
    "BC-001": bc_001, "BC-002": bc_002, "BC-003": bc_003,
    "EC-001": ec_001, "EC-002": ec_002, "EC-003": ec_003, "EC-004": ec_004,
    "SC-002": sc_002, "SC-003": sc_003, "AL-002": al_002, "AL-003": al_003, "AL-004": al_004,
}


def judge(o: Observed) -> dict[str, list[str]]:
    """Check ID → problems, for every probe."""
    return {check_id: probe(o) for check_id, probe in PROBES.items()}
