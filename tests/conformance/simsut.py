"""An in-process stand-in for the reference service, to build check fixtures from real library
output: the agent's own phase planner makes the requests, OTel's W3C propagator extracts and
injects context, the OTel SDK makes the spans (exported through the OTLP encoder and the
agent's decoder), prometheus_client renders /metrics. Fault knobs break one rule each."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest

from agent import scenario as scenario_mod
from agent.driver import PlannedRequest
from agent.errcodes import entry_wire_code
from agent.evidence import DRIVER_USER_AGENT, DownstreamRecord, DriverRecord, LogRecord
from agent.otlp_decode import spans_from_request
from agent.phases import plan
from agent.tracecontext import parse_traceparent
from conformance.scenario import route_of
from tests.conformance.builders import MS, OPENMETRICS, PROM_TEXT, US, RunBuilder

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_FILE = ROOT / "examples" / "refservice" / "scenario.json"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
PROP = TraceContextTextMapPropagator()
FIXED_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
THREADS = 4  # worker threads of the simulated server (for the thread-local leak)


@dataclass
class Faults:
    """One knob per rule; all off = an honest service."""

    restart_traces: bool = False
    accept_invalid: bool = False  # continue version-ff / upper-case / trailing-data values
    first_of_duplicates: bool = False  # ASGI-style getter: the first of two traceparents
    fixed_trace_id: bool = False
    break_propagation: bool = False
    drop_tracestate: bool = False
    drop_spans_every: int = 0
    hidden_latency_ns: int = 0
    leak_bizcode: bool = False
    no_biz_attr: bool = False
    no_biz_header: bool = False  # the outbound call carries no bizCode (profile not implemented)
    wrong_status: dict[str, int] = field(default_factory=dict)  # wire code → status
    no_error_code_header: bool = False
    wrong_error_trace_id: bool = False
    error_on_4xx: bool = False
    ok_on_4xx: bool = False  # span status OK on 4xx answers (semconv: must stay unset)
    retryable_as_string: bool = False
    trace_id_label: bool = False
    logs_without_trace: bool = False
    bad_metric_names: bool = False
    old_semconv: bool = False  # pre-1.21 attribute names only
    span_status_off_by: int = 0  # span http.response.status_code = wire + this
    orphan_child: bool = False  # an INTERNAL child whose parent was never exported
    other_environment: bool = False  # span resource names another environment than target_info


class _FixedTraceIds(RandomIdGenerator):
    def generate_trace_id(self) -> int:
        return FIXED_TRACE_ID


def refservice_scenario(**overrides: Any) -> dict:
    return {**scenario_mod.from_file(SCENARIO_FILE), **overrides}


class SimSut:
    """Serve every request of the real phase plan, writing evidence through ``builder``."""

    def __init__(self, builder: RunBuilder, faults: Faults | None = None,
                 scenario: dict | None = None, kernel: bool = True) -> None:
        self.b, self.f = builder, faults or Faults()
        self.scenario = scenario if scenario is not None else refservice_scenario()
        self.b.scenario = self.scenario
        self.kernel = kernel
        resource = Resource.create({"service.name": "refservice", "deployment.environment.name":
                                    "staging" if self.f.other_environment else "test"})
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        fixed = TracerProvider(resource=resource, id_generator=_FixedTraceIds())
        fixed.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("refservice")
        self.fixed_tracer = fixed.get_tracer("refservice")
        self.registry = CollectorRegistry()
        self.hist = Histogram("http_server_request_duration_seconds",
                              "Duration of HTTP server requests.",
                              ("http_request_method", "http_route", "http_response_status_code"),
                              buckets=BUCKETS, registry=self.registry)
        Info("target", "Target metadata", registry=self.registry).info(
            {"service_name": "refservice", "deployment_environment_name": "test"})
        if self.f.trace_id_label:
            self.by_trace = Counter("refservice_requests_by_trace", "Requests by trace id.",
                                    ("trace_id",), registry=self.registry)
        if self.f.bad_metric_names:
            self.bad = Histogram("refservice_dbQuery_duration_milliseconds", "DB query time.",
                                 registry=self.registry)
        self.dropped: set[int] = set()
        self.served = itertools.count(1)
        self.thread_biz: dict[int, str] = {}

    # ------------------------------------------------------------------ driving
    def run(self, requests: int = 12, concurrency: int = 4) -> "SimSut":
        self.scrape("before")
        for phase in plan(self.scenario, requests=requests, concurrency=concurrency).phases:
            for i, req in enumerate(phase.requests):
                overlap = phase.concurrency > 1
                self.serve(req, thread=i % THREADS, step_ns=1 * MS if overlap else None)
            self.b.t += 10 * MS
        self.scrape("after")
        return self

    def scrape(self, phase: str) -> None:
        self.b.raw_scrape(phase, generate_latest(self.registry), PROM_TEXT, PROM_TEXT)
        self.b.raw_scrape(phase, om_latest(self.registry), OPENMETRICS, OPENMETRICS)

    def build(self):
        spans = [s for s in self.memory.get_finished_spans()
                 if s.context.trace_id not in self.dropped]
        self.b.spans = spans_from_request(encode_spans(spans)) if spans else []
        if not self.kernel:
            self.b.kernel = []  # degraded mode: the scrapes' agent requests went unseen too
        return self.b.build()

    # ------------------------------------------------------------------ one request
    def _extract(self, sent: dict[str, list[str]]) -> Any:
        if self.f.restart_traces:
            return otel_context.Context()
        values = sent.get("traceparent", [])
        joined = ", ".join(values)
        if self.f.accept_invalid and values and parse_traceparent(joined) is None:
            parts = values[0].strip().split("-")
            try:  # a lenient parser: any case, any version, anything after the flags
                if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                    ctx = SpanContext(int(parts[1], 16), int(parts[2], 16), True, TraceFlags(1))
                    if ctx.is_valid:
                        return trace.set_span_in_context(NonRecordingSpan(ctx))
            except ValueError:
                pass
        # WSGI servers join repeated headers with ", " (OTel then sees one invalid value);
        # the ASGI getter hands OTel the list, and it takes the first.
        carrier = {"traceparent": values if self.f.first_of_duplicates else joined} if values else {}
        if sent.get("tracestate"):
            carrier["tracestate"] = ", ".join(sent["tracestate"])
        return PROP.extract(carrier)

    def serve(self, req: PlannedRequest, thread: int = 0, step_ns: int | None = None) -> None:
        f, b = self.f, self.b
        sent = {k.lower(): (v if isinstance(v, list) else [v]) for k, v in req.headers.items()}
        joined = {k: ", ".join(v) for k, v in sent.items()}
        tp = parse_traceparent(joined.get("traceparent"))
        method, path = req.method.upper(), req.path
        status, code, entry = self._outcome(req)
        dur = 3 * MS + f.hidden_latency_ns
        t0 = b.t
        kernel = None
        if self.kernel:
            headers = {"host": ["127.0.0.1:8080"], "user-agent": [f"{DRIVER_USER_AGENT}/0.1"], **sent}
            kernel = b._kernel(method, path, headers, status, dur)
        ctx = self._extract(sent)
        parent_valid = trace.get_current_span(ctx).get_span_context().is_valid
        tracer = self.fixed_tracer if f.fixed_trace_id and not parent_valid else self.tracer
        route = route_of(self.scenario, path) if status != 405 else None
        if status == 404 and code == "REQUEST_002":
            route = None
        attrs = self._attributes(method, path, route, status)
        start = t0 + 100 * US + f.hidden_latency_ns
        span = tracer.start_span(f"{method} {route}" if route else method, context=ctx,
                                 kind=SpanKind.SERVER, attributes=attrs, start_time=start)
        sc = span.get_span_context()
        biz = joined.get(self.scenario["biz_code_header"].lower(), "").strip() or "default"
        if not f.no_biz_attr:
            span.set_attribute("biz.code", biz)
        if f.leak_bizcode:  # a thread-local set when the header is there, never reset
            if joined.get(self.scenario["biz_code_header"].lower()):
                self.thread_biz[thread] = biz
            out_biz = self.thread_biz.get(thread, "default")
        else:
            out_biz = biz
        tid_hex = f"{sc.trace_id:032x}"
        fans = route in self._fanout_templates() or path in self._fanout_templates()
        if fans and code is None:
            self._call_out(span, kernel, out_biz, t0 + dur // 3)
        if f.orphan_child:
            ghost = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                sc.trace_id, 0x1234567890ABCDEF, False, sc.trace_flags)))
            tracer.start_span("lost-parent", context=ghost, start_time=start + 10 * US).end(
                end_time=start + 20 * US)
        resp_headers: dict[str, str] = {"content-type": "application/json"}
        body = '{"ok": true}'
        if code is not None:
            span.set_attribute("error.type", code)
            span.set_attribute("retryable", "true" if f.retryable_as_string else bool(entry["retryable"]))
            err_tid = "0" * 31 + "1" if f.wrong_error_trace_id else tid_hex
            if not f.no_error_code_header:
                resp_headers["x-error-code"] = code
            resp_headers["x-error-trace-id"] = err_tid
            body = json.dumps({"code": code, "trace_id": err_tid, "message": entry["name"]})
        if status >= 500 or (f.error_on_4xx and 400 <= status < 500):
            span.set_status(Status(StatusCode.ERROR))
        elif f.ok_on_4xx and 400 <= status < 500:
            span.set_status(Status(StatusCode.OK))
        key = "http.status_code" if f.old_semconv else "http.response.status_code"
        span.set_attribute(key, status + f.span_status_off_by)
        span.end(end_time=t0 + dur - 100 * US)
        if f.drop_spans_every and next(self.served) % f.drop_spans_every == 0:
            self.dropped.add(sc.trace_id)
        self._record_driver(req, joined, tp, t0, dur, status, resp_headers, body)
        self._telemetry(method, route, status, dur, sc, t0, path, biz)
        b.t = t0 + (step_ns if step_ns is not None else dur + 2 * MS)

    def _fanout_templates(self) -> set[str]:
        return set(self.scenario["fanout"]["routes"])

    def _outcome(self, req: PlannedRequest) -> tuple[int, str | None, dict | None]:
        if req.case.startswith("ec/"):
            for entry in self.scenario["errcodes"]:
                code = entry_wire_code(entry)
                if code == req.case[3:]:
                    status = entry["http_status"] if isinstance(entry["http_status"], int) else 500
                    return self.f.wrong_status.get(code, status), code, entry
        return (201 if req.method.upper() == "POST" else 200), None, None

    def _attributes(self, method: str, path: str, route: str | None, status: int) -> dict:
        target, _, query = path.partition("?")
        if self.f.old_semconv:
            return {"http.method": method, "http.target": path, "http.scheme": "http",
                    **({"http.route": route} if route else {})}
        attrs = {"http.request.method": method, "url.path": target, "url.scheme": "http",
                 "server.address": "127.0.0.1", "server.port": 8080,
                 "network.protocol.version": "1.1", "user_agent.original": DRIVER_USER_AGENT}
        if query:
            attrs["url.query"] = query
        if route:
            attrs["http.route"] = route
        if status >= 500:
            attrs["error.type"] = str(status)
        return attrs

    def _call_out(self, server_span: Any, kernel: Any, biz: str, t: int) -> None:
        f, b = self.f, self.b
        client = self.tracer.start_span("POST", context=trace.set_span_in_context(server_span),
                                        kind=SpanKind.CLIENT, start_time=t,
                                        attributes={"http.request.method": "POST",
                                                    "server.address": "127.0.0.1"})
        headers: dict[str, str] = {}
        if not f.break_propagation:
            PROP.inject(headers, context=trace.set_span_in_context(client))
        if f.drop_tracestate:
            headers.pop("tracestate", None)
        if not f.no_biz_header:
            headers[self.scenario["biz_code_header"]] = biz
        wire = {k.lower(): [v] for k, v in headers.items()}
        b.downstream.append(DownstreamRecord(t_ns=t + 200 * US, method="POST",
                                             path="/inventory/reserve", headers=wire))
        if kernel is not None:
            saved = b.t
            b.t = t
            b._kernel("POST", "/inventory/reserve", wire, 200, 400 * US, direction="client",
                      parent=kernel.id)
            b.t = saved
        client.set_attribute("http.response.status_code", 200)
        client.end(end_time=t + 500 * US)

    def _record_driver(self, req: PlannedRequest, joined: dict[str, str], tp: Any, t0: int,
                       dur: int, status: int, resp_headers: dict, body: str) -> None:
        self.b.driver.append(DriverRecord(
            seq=len(self.b.driver), phase=req.phase, method=req.method, path=req.path,
            request_headers=joined, trace_id=tp.trace_id if tp else "",
            parent_id=tp.parent_id if tp else "", t_send_ns=t0 - 200 * US,
            t_recv_ns=t0 + dur + 200 * US, status=status, response_headers=resp_headers,
            response_body=body, case=req.case))

    def _telemetry(self, method: str, route: str | None, status: int, dur: int, sc: Any,
                   t0: int, path: str, biz: str) -> None:
        f = self.f
        tid, sid = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        exemplar = {"trace_id": tid, "span_id": sid} if sc.trace_flags.sampled else None
        measured = (dur - f.hidden_latency_ns) / 1e9
        self.hist.labels(method, route or "", str(status)).observe(measured, exemplar)
        if f.trace_id_label:
            self.by_trace.labels(tid).inc()
        if f.bad_metric_names:
            self.bad.observe(1.5)
        ids = {} if f.logs_without_trace else {"trace_id": tid, "span_id": sid}
        self.b.logs.append(LogRecord(
            source="stdout", time_ns=t0 + dur // 2, severity_text="INFO", severity_number=9,
            body="request served", **ids,
            attributes={"method": method, "path": path.split("?")[0], "route": route,
                        "status": status, "biz_code": biz}))
